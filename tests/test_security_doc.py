"""docs/security.md stays true: every test its threat-model tables cite exists.

Each table row ends with a "test" cell holding references ``tests/test_x.py::test_name`` (or
``test_x.py::test_name``; a bare ``test_x.py`` stands for its whole file), or an explicit
``none: <why>``. A reference resolves when the file is in tests/ and defines that function.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Iterator, List, NamedTuple, Optional

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "security.md"
TESTS = ROOT / "tests"
REFERENCE = re.compile(r"(?<![\w/.])(?:tests/)?((?:\w+/)*test_\w+\.py)(?:::(test_\w+))?")


class Row(NamedTuple):
    line: int
    surface: str
    test_cell: str


class Reference(NamedTuple):
    file: str
    name: Optional[str]


def cells(line: str) -> List[str]:
    """The cells of a markdown table line; an escaped pipe (\\|) stays inside its cell."""
    inner = line.strip()[1:-1] if line.strip().endswith("|") else line.strip()[1:]
    return [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", inner)]


def threat_rows(text: str) -> Iterator[Row]:
    """Rows of every table whose last header cell is 'test'."""
    header: Optional[List[str]] = None
    for number, line in enumerate(text.splitlines(), 1):
        if not line.lstrip().startswith("|"):
            header = None
            continue
        row = cells(line)
        if header is None:
            header = row
            continue
        if all(re.fullmatch(r":?-{3,}:?", c) for c in row):
            continue
        if header[-1].lower() == "test":
            assert len(row) == len(header), "docs/security.md:{}: {} cells, the header has {}".format(
                number, len(row), len(header))
            yield Row(number, row[0], row[-1])


def references(cell: str) -> List[Reference]:
    return [Reference(m.group(1), m.group(2)) for m in REFERENCE.finditer(cell)]


def unresolved(ref: Reference, tests: Path = TESTS) -> Optional[str]:
    """Why `ref` does not resolve under `tests`, or None when it does."""
    path = tests / ref.file
    if not path.is_file():
        return "no file tests/{}".format(ref.file)
    if ref.name and not re.search(r"^\s*(?:async\s+)?def {}\(".format(re.escape(ref.name)),
                                  path.read_text(encoding="utf-8"), re.MULTILINE):
        return "tests/{} has no def {}".format(ref.file, ref.name)
    return None


def test_every_cited_test_exists():
    rows = list(threat_rows(DOC.read_text(encoding="utf-8")))
    assert len(rows) >= 60, "the threat model lost its tables ({} rows found)".format(len(rows))
    problems, cited = [], 0
    for row in rows:
        if row.test_cell.lower().startswith("none"):
            assert ":" in row.test_cell, "docs/security.md:{}: a 'none' cell must say why".format(row.line)
            continue
        refs = references(row.test_cell)
        if not refs:
            problems.append("docs/security.md:{} ({}): no test cited".format(row.line, row.surface))
        for ref in refs:
            cited += 1
            why = unresolved(ref)
            if why:
                problems.append("docs/security.md:{} ({}): {}".format(row.line, row.surface, why))
    assert not problems, "\n".join(problems)
    assert cited >= 100


def test_the_checker_catches_a_renamed_test(tmp_path):
    (tmp_path / "test_a.py").write_text("def test_real():\n    pass\n\nasync def test_later():\n    pass\n")
    assert unresolved(Reference("test_a.py", "test_real"), tmp_path) is None
    assert unresolved(Reference("test_a.py", "test_later"), tmp_path) is None
    assert unresolved(Reference("test_a.py", None), tmp_path) is None
    assert "has no def test_rea" in unresolved(Reference("test_a.py", "test_rea"), tmp_path)
    assert "no file" in unresolved(Reference("test_b.py", "test_real"), tmp_path)


def test_rows_and_references_are_parsed_as_written():
    text = ("| surface | who | guarantee | test |\n|---|---|---|---|\n"
            "| a `O_EXCL`\\|`O_NOFOLLOW` | me | x | tests/test_a.py::test_one, test_b.py::test_two, test_c.py |\n"
            "| b | me | y | none: not testable here |\n\n| other | table |\n|---|---|\n| c | d |\n")
    rows = list(threat_rows(text))
    assert [r.surface for r in rows] == ["a `O_EXCL`|`O_NOFOLLOW`", "b"]
    assert references(rows[0].test_cell) == [Reference("test_a.py", "test_one"),
                                             Reference("test_b.py", "test_two"),
                                             Reference("test_c.py", None)]
    assert references(rows[1].test_cell) == []
