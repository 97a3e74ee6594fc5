"""docs/settings.md lists every setting of connector/settings.py with its default, and nothing else."""
import re
from pathlib import Path

from connector import settings

DOC = Path(__file__).resolve().parents[1] / "docs" / "settings.md"


def rows():
    found = {}
    for line in DOC.read_text().splitlines():
        match = re.match(r"^\| `([A-Z0-9_]+)` \| (.*?) \| (.*) \|$", line)
        if match:
            found[match.group(1)] = match.group(2)
    return found


def test_every_setting_has_its_row_with_its_default():
    documented = rows()
    assert set(documented) == set(settings.BY_NAME), set(documented) ^ set(settings.BY_NAME)
    for name, setting in settings.BY_NAME.items():
        expected = "`{}`".format(setting.default) if setting.default else "(empty)"
        assert documented[name] == expected, (name, documented[name], expected)


def test_an_undeclared_setting_cannot_be_read():
    import pytest
    with pytest.raises(KeyError, match="not a declared setting"):
        settings.get("CONNECTOR_SOMETHING_NEW", {})
