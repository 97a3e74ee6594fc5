"""migrate-v1 treats every input as hostile: one error line and exit 2 for unusable documents,
caps on size and depth, nothing written outside --out and never through a link, nothing a
document says printed raw.
"""
from __future__ import annotations

import json
import shlex
import os
from pathlib import Path

import pytest

from connector.cli import main
from connector.tools.migrate import source

FIX = Path(__file__).parents[1] / "fixtures" / "greengrass-v1"
GROUP = FIX / "group-x86_64.json"
FIXED = {"params.yaml", "feedback.yaml", "deployment.json", "mqtt-allow.txt", "report.txt"}


def migrate(capsys, *args):
    rc = main(["migrate-v1", *map(str, args)])
    out, err = capsys.readouterr()
    return rc, out, err


def assert_refused(capsys, tmp_path, path, words):
    out = tmp_path / "out"
    rc, stdout, err = migrate(capsys, path, "--out", out)
    assert rc == 2
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert str(path) in lines[0] and words in lines[0], lines[0]
    assert not out.exists(), "nothing is written for unusable input"


@pytest.mark.parametrize("name,words", [
    ("core-definition-version.json", "a core definition document: nothing of it maps"),
    ("foreign-v2-deployment.json", "not a Greengrass V1 group or definition document"),
    ("group-without-detector.json", "no ObjectDetection connector"),
    ("group-bad-parameters.json", "Connectors[0].Parameters must be an object, not list"),
    ("group-bad-timeout.json", "LocalInferenceServiceTimeoutSeconds='0' does not match"),
    ("group-duplicate-keys.json", "duplicate key MLModelDestinationPath"),
    ("not-json.json", "is not JSON"),
    ("truncated-group.json", "is not JSON"),
    ("deep-nesting.json", "nested deeper than 32 levels"),
    ("empty-group.json", "an empty group document"),
])
def test_bad_and_foreign_fixtures_get_one_line_and_exit_2(capsys, tmp_path, name, words):
    assert_refused(capsys, tmp_path, FIX / name, words)


def test_oversize_source_is_refused_before_parsing(capsys, tmp_path):
    big = tmp_path / "group.json"
    text = GROUP.read_text()
    big.write_text(text[:-2] + " " * (source.MAX_BYTES + 1 - len(text)) + "}\n")
    assert len(big.read_bytes()) > source.MAX_BYTES
    assert_refused(capsys, tmp_path, big, "larger than 4194304 bytes")


def test_very_deep_nesting_is_refused_without_a_traceback(capsys, tmp_path):
    deep = tmp_path / "deep.json"
    deep.write_text('{"Connectors": ' + "[" * 200000 + "]" * 200000 + "}")
    assert_refused(capsys, tmp_path, deep, "nested deeper than 32 levels")


@pytest.mark.timeout(120)  # a hang guard: the quadratic depth scan took hours on this input
def test_escaped_quotes_do_not_make_the_depth_scan_quadratic(capsys, tmp_path):
    bad = tmp_path / "group.json"
    bad.write_text('{"Connectors": "' + '\\"' * ((source.MAX_BYTES - 20) // 2))
    assert_refused(capsys, tmp_path, bad, "is not JSON: Unterminated string")


@pytest.mark.parametrize("content,words", [
    (b'{"Connectors": [] \xff}', "not UTF-8 text (byte 0xff at offset 18)"),
    (b"[1, 2]", "a JSON list, not an object"),
    (b'{"Connectors": NaN}', "NaN is not JSON"),
    (b"   \n", "empty file"),
    (b'{"Connectors": [{"ConnectorArn": 7}]}', "Connectors[0].ConnectorArn must be a string"),
    (b'{"Subscriptions": {"a": 1}}', "Subscriptions must be a list"),
    (b'{"Resources": [{"Id": "r", "ResourceDataContainer": {}}]}', "must hold exactly one of"),
    (b'{"Connectors": [], "ConnectorDefinitionVersion": {"Connectors": []}}', "both"),
])
def test_malformed_content_gets_one_line(capsys, tmp_path, content, words):
    bad = tmp_path / "group.json"
    bad.write_bytes(content)
    assert_refused(capsys, tmp_path, bad, words)


def test_not_a_regular_file_is_refused_without_blocking(capsys, tmp_path):
    fifo = tmp_path / "group.fifo"
    os.mkfifo(str(fifo))   # a FIFO with no writer would block a plain open() forever
    assert_refused(capsys, tmp_path, fifo, "not a regular file")
    assert_refused(capsys, tmp_path, tmp_path, "not a regular file")
    assert_refused(capsys, tmp_path, tmp_path / "missing.json", "No such file or directory")


def test_same_kind_from_two_documents_is_refused(capsys, tmp_path):
    rc, _, err = migrate(capsys, GROUP, FIX / "connector-definition-version.json", "--out",
                         tmp_path / "out")
    assert rc == 2 and "its connectors were already given by" in err


def test_several_detectors_need_a_connector_id(capsys, tmp_path):
    doc = json.loads(GROUP.read_text())
    second = dict(doc["Connectors"][0], Id="SecondDetector")
    doc["Connectors"].append(second)
    two = tmp_path / "group.json"
    two.write_text(json.dumps(doc))
    rc, _, err = migrate(capsys, two, "--out", tmp_path / "out")
    assert rc == 2 and "pick one with --connector-id ID" in err
    rc, _, err = migrate(capsys, two, "--out", tmp_path / "out", "--connector-id", "SecondDetector")
    assert rc == 0, err


def test_group_whose_resources_lack_the_ml_resource_is_refused(capsys, tmp_path):
    doc = json.loads(GROUP.read_text())
    doc["Resources"] = [r for r in doc["Resources"] if r["Id"] != "ssd-model"]
    broken = tmp_path / "group.json"
    broken.write_text(json.dumps(doc))
    assert_refused(capsys, tmp_path, broken, "no ML model resource (S3 or SageMaker) has the Id "
                                             "ssd-model")
    rc, _, err = migrate(capsys, broken, "--out", tmp_path / "out", "--model-path", str(tmp_path))
    assert rc == 0 and "no ML model resource" in err


@pytest.mark.parametrize("option,value,words", [
    ("--model-path", "relative/model", "must be an absolute path"),
    ("--param", "Unknown=1", "must be NAME=VALUE"),
    ("--param", "LocalInferenceServiceTimeoutSeconds=99999", "above the maximum of 900"),
    ("--thing-group", "bad/group", "a thing group name"),
    ("--region", "mars", "an AWS region"),
    ("--account", "12", "a 12-digit AWS account id"),
    ("--component-version", "latest", "a semantic version"),
    ("--connector-id", "nope", "no ObjectDetection connector has that Id"),
])
def test_bad_options_get_one_line(capsys, tmp_path, option, value, words):
    rc, _, err = migrate(capsys, GROUP, "--out", tmp_path / "out", option, value)
    assert rc == 2 and err.count("\n") == 1 and words in err, err
    assert not (tmp_path / "out").exists()


def test_feedback_map_nested_too_deep_is_reported_not_crashed(capsys, tmp_path):
    doc = json.loads((FIX / "connector-definition-version.json").read_text())
    doc["Definition"]["Connectors"][1]["Parameters"]["FeedbackConfigurationMap"] = "[" * 100000
    src = tmp_path / "connectors.json"
    src.write_text(json.dumps(doc))
    rc, stdout, err = migrate(capsys, src, "--out", tmp_path / "out")
    assert rc == 0
    assert "feedback.yaml not written: FeedbackConfigurationMap is nested deeper than 32" in err
    assert not (tmp_path / "out" / "feedback.yaml").exists()


def test_a_quote_in_a_value_is_carried_as_data(capsys, tmp_path):
    """The V2 component hands its configuration to its scripts through Setenv only, quoted there
    (tests/deploy/test_greengrass_v2.py::test_a_quote_in_a_configuration_value_is_data_not_code):
    a value with quotes and shell syntax is written into deployment.json as it is, and the
    commands the report prints quote it."""
    doc = json.loads(GROUP.read_text())
    lam = doc["Functions"][1]["FunctionArn"]
    doc["Subscriptions"].append({"Id": "q", "Source": lam, "Subject": "a/'$(reboot)'", "Target": "cloud"})
    src = tmp_path / "group.json"
    src.write_text(json.dumps(doc))
    model = tmp_path / "it's; reboot; '"
    rc, stdout, err = migrate(capsys, src, "--out", tmp_path / "out", "--model-path", model)
    assert rc == 0
    out = tmp_path / "out"
    merge = json.loads(json.loads((out / "deployment.json").read_text())[
        "components"]["com.example.ObjectDetectionService"]["configurationUpdate"]["merge"])
    assert merge["Parameters"]["MLModelDestinationPath"] == str(model)
    assert "a/'$(reboot)'" in merge["MqttAllow"].split(",")
    assert "a/'$(reboot)'" in (out / "mqtt-allow.txt").read_text().splitlines()
    here = next(line.strip() for line in stdout.splitlines() if line.strip().startswith("here:"))
    assert shlex.split(here[len("here:"):])[-1] == "a/'$(reboot)'"


# --- writing: only under --out, fixed names, never through a link -----------------------------

def test_out_that_is_a_symlink_or_a_file_is_refused(capsys, tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    link = tmp_path / "link"
    link.symlink_to(real)
    rc, _, err = migrate(capsys, GROUP, "--out", link)
    assert rc == 2 and "is a symbolic link" in err and list(real.iterdir()) == []
    afile = tmp_path / "afile"
    afile.write_text("keep")
    rc, _, err = migrate(capsys, GROUP, "--out", afile)
    assert rc == 2 and "not a directory" in err and afile.read_text() == "keep"


def test_planted_links_in_out_are_replaced_never_followed(capsys, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    victims = {}
    for name in FIXED:
        victim = tmp_path / ("victim-" + name)
        victim.write_text("precious")
        (out / name).symlink_to(victim)
        victims[name] = victim
    assert migrate(capsys, GROUP, "--out", out)[0] == 0
    for name, victim in victims.items():
        assert victim.read_text() == "precious", name
    written = {"params.yaml", "deployment.json", "mqtt-allow.txt", "report.txt"}
    for name in written:
        assert not (out / name).is_symlink() and (out / name).is_file(), name
    assert not os.path.lexists(str(out / "feedback.yaml")), "stale fixed name removed (the link)"
    assert sorted(p.name for p in out.iterdir()) == sorted(written)


def test_a_later_run_removes_the_stale_feedback_file(capsys, tmp_path):
    out = tmp_path / "out"
    definitions = [FIX / n for n in ("connector-definition-version.json",
                                     "resource-definition-version.json")]
    assert migrate(capsys, *definitions, "--out", out)[0] == 0
    assert (out / "feedback.yaml").is_file()
    assert migrate(capsys, GROUP, "--out", out)[0] == 0
    assert not (out / "feedback.yaml").exists()


def test_paths_in_a_document_never_decide_where_files_go(capsys, tmp_path):
    doc = json.loads(GROUP.read_text())
    doc["Connectors"][0]["Id"] = "../../escaped"
    doc["Resources"][0]["Id"] = doc["Connectors"][0]["Parameters"]["MLModelResourceId"] = \
        "../../../escaped"
    doc["Resources"][0]["ResourceDataContainer"]["S3MachineLearningModelResourceData"][
        "DestinationPath"] = str(tmp_path / "escaped-model")
    doc["Group"]["Id"] = "../../escaped"
    src = tmp_path / "in" / "group.json"
    src.parent.mkdir()
    src.write_text(json.dumps(doc))
    out = tmp_path / "work" / "out"
    out.parent.mkdir()
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    rc, _, err = migrate(capsys, src, "--out", out)
    assert rc == 2 and "MLModelResourceId" in err   # the rule refuses the id itself
    doc["Resources"][0]["Id"] = doc["Connectors"][0]["Parameters"]["MLModelResourceId"] = "ok"
    src.write_text(json.dumps(doc))
    assert migrate(capsys, src, "--out", out)[0] == 0
    after = sorted(str(p) for p in tmp_path.rglob("*"))
    assert sorted(set(after) - set(before)) == sorted(
        [str(out)] + [str(out / n) for n in ("deployment.json", "mqtt-allow.txt", "params.yaml",
                                             "report.txt")])


def test_document_text_cannot_forge_report_lines_or_terminal_escapes(capsys, tmp_path):
    doc = json.loads(GROUP.read_text())
    lam = doc["Functions"][1]["FunctionArn"]
    doc["Subscriptions"].append({"Id": "evil\nWARNINGS\n  none\x1b[2J", "Source": lam,
                                 "Subject": "a/b\n\x1b]0;owned\x07", "Target": "cloud"})
    doc["Functions"][1]["FunctionConfiguration"]["Executable"] = "h\r\nFORGED LINE"
    src = tmp_path / "group.json"
    src.write_text(json.dumps(doc))
    rc, stdout, err = migrate(capsys, src, "--out", tmp_path / "out")
    assert rc == 0
    report = (tmp_path / "out" / "report.txt").read_text()
    for text in (report, stdout, err):
        assert "\x1b" not in text and "\x07" not in text and "\r" not in text
    assert "FORGED LINE" not in [line.strip() for line in report.splitlines()]
    assert [line for line in report.splitlines() if line == "WARNINGS"] == ["WARNINGS"]
    assert "contains the control character U+000A" in report
    assert "a/b" not in (tmp_path / "out" / "mqtt-allow.txt").read_text()


FORGING_SUBJECT = "a/b\u2028EDIT BEFORE USE\u2028  nothing\u202e"
LAYOUT = ("\u2028", "\u2029", "\u202e", "\x85")


def test_line_separators_and_bidi_controls_in_a_topic_forge_nothing(capsys, tmp_path):
    """U+2028 passes the service's topic grammar but str.splitlines() breaks a line there, and
    U+202E turns what follows around on screen: such a subject is left out of the allow-list
    (with the reason) and appears nowhere raw."""
    doc = json.loads(GROUP.read_text())
    lam = doc["Functions"][1]["FunctionArn"]
    doc["Subscriptions"].append({"Id": "bidi", "Source": lam, "Subject": FORGING_SUBJECT,
                                 "Target": "cloud"})
    src = tmp_path / "group.json"
    src.write_text(json.dumps(doc))
    rc, stdout, err = migrate(capsys, src, "--out", tmp_path / "out")
    assert rc == 0
    out = tmp_path / "out"
    report = (out / "report.txt").read_text()
    for text in (report, stdout, err, (out / "mqtt-allow.txt").read_text(),
                 (out / "deployment.json").read_text()):
        assert not any(c in text for c in LAYOUT), repr(text)
    assert [line for line in report.splitlines() if line == "EDIT BEFORE USE"] == ["EDIT BEFORE USE"]
    assert "U+2028, a line separator or bidirectional-text control" in report
    assert "a/b" not in (out / "mqtt-allow.txt").read_text().splitlines()


def test_the_report_and_printed_commands_never_carry_a_filter_raw(tmp_path):
    """Whatever reaches the allow-list, the report and the printed commands show it through
    show(): a filter with a line separator or a bidi control is escaped, not printed."""
    from dataclasses import replace

    from connector.tools.migrate import render
    from connector.tools.migrate.group import V1Group, add_document
    from connector.tools.migrate.plan import Options, make_plan
    from connector.tools.migrate.topics import Allowed

    group = V1Group()
    add_document(group, str(GROUP), source.read_source(str(GROUP)))
    plan = make_plan(group, Options(thing_group="g"))
    sub = plan.allowed[0].subscription
    plan = replace(plan, allowed=[Allowed(FORGING_SUBJECT, sub), Allowed("ok/\u202etxt.exe", sub)])
    texts = [render.report(plan, str(tmp_path), ["report.txt"]),
             render.summary(plan, str(tmp_path), ["report.txt"]), render.allow_flags(plan)]
    texts += render.next_steps(plan, str(tmp_path))
    for text in texts:
        assert not any(c in text for c in LAYOUT), repr(text)
    assert "EDIT BEFORE USE" in texts[0].splitlines() and texts[0].splitlines().count("EDIT BEFORE USE") == 1
    assert "\\u202e" in render.allow_flags(plan)


def test_files_planted_at_the_old_temporary_names_do_not_stop_the_run(capsys, tmp_path):
    """The writer used to create `.{name}.{pid}.tmp` with O_EXCL: a file planted at that
    predictable name made the run fail with EEXIST. Temporary names are random now."""
    out = tmp_path / "out"
    out.mkdir()
    for name in FIXED:
        (out / ".{}.{}.tmp".format(name, os.getpid())).write_text("planted")
    rc, _, err = migrate(capsys, GROUP, "--out", out)
    assert rc == 0, err
    for name in ("params.yaml", "mqtt-allow.txt", "report.txt", "deployment.json"):
        assert (out / name).is_file() and (out / name).stat().st_mode & 0o777 == 0o644, name
        assert (out / ".{}.{}.tmp".format(name, os.getpid())).read_text() == "planted"
    assert not [p.name for p in out.iterdir() if p.name.startswith(".tmp-")]
