"""`python -m connector migrate-v1`: V1 documents in, a working set-up out.

The fixtures (tests/fixtures/greengrass-v1/, sources in its README.md) are modelled on the AWS CLI
examples (aws/aws-cli awscli/examples/greengrass/get-*-definition-version.rst), the V1 Developer
Guide (awsdocs/aws-greengrass-developer-guide doc_source/deployments.md, gg-troubleshooting.md,
access-ml-resources.md, connectors-cli.md, ml-feedback-connector.md, twilio-notifications-
connector.md) and are checked here against botocore's `greengrass` shapes, offline. The written
deployment is checked against botocore's `greengrassv2` CreateDeployment input shape.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from connector.cli import main
from connector.feedback import config as feedback_config
from connector.tools.migrate.topics import filter_problem
from connector.params import load_parameters
from tests.service_process import ROOT, Proc, clean_env, wait_for_client_file, wait_ready

FIX = Path(__file__).parents[1] / "fixtures" / "greengrass-v1"
DEFINITIONS = [FIX / n for n in ("connector-definition-version.json",
                                 "function-definition-version.json",
                                 "resource-definition-version.json",
                                 "subscription-definition-version.json")]


def migrate(capsys, *args):
    """Run the command in-process: (exit status, stdout, stderr)."""
    rc = main(["migrate-v1", *map(str, args)])
    out, err = capsys.readouterr()
    return rc, out, err


def _validator():
    botocore_session = pytest.importorskip("botocore.session")
    from botocore.validate import ParamValidator
    return botocore_session.get_session(), ParamValidator()


def shape_errors(doc, service, shape=None, operation=None, output=True):
    session, validator = _validator()
    model = session.get_service_model(service)
    if operation:
        op = model.operation_model(operation)
        shape = op.output_shape if output else op.input_shape
    else:
        shape = model.shape_for(shape)
    report = validator.validate(doc, shape)
    return report.generate_report() if report.has_errors() else ""


# --- the fixtures are what the AWS API and CLI produce ------------------------------------------

@pytest.mark.parametrize("name,operation", [
    ("connector-definition-version.json", "GetConnectorDefinitionVersion"),
    ("function-definition-version.json", "GetFunctionDefinitionVersion"),
    ("resource-definition-version.json", "GetResourceDefinitionVersion"),
    ("subscription-definition-version.json", "GetSubscriptionDefinitionVersion"),
    ("core-definition-version.json", "GetCoreDefinitionVersion")])
def test_definition_version_fixtures_have_botocore_output_shapes(name, operation):
    doc = json.loads((FIX / name).read_text())
    assert shape_errors(doc, "greengrass", operation=operation) == ""


@pytest.mark.parametrize("name", ["group-x86_64.json", "group-jetson-gpu.json"])
def test_group_fixture_entries_have_botocore_definition_shapes(name):
    doc = json.loads((FIX / name).read_text())
    kinds = {"Connectors": "ConnectorDefinitionVersion", "Functions": "FunctionDefinitionVersion",
             "Resources": "ResourceDefinitionVersion", "Subscriptions": "SubscriptionDefinitionVersion",
             "Cores": "CoreDefinitionVersion", "Loggers": "LoggerDefinitionVersion"}
    checked = 0
    for kind, shape in kinds.items():
        body = doc.get(shape) or ({kind: doc[kind]} if kind in doc else None)
        if body is None:
            continue
        body = json.loads(json.dumps(body))
        for function in body.get("Functions", []):
            function.pop("Handler", None)   # on the device the core adds the Lambda's handler
        assert shape_errors(body, "greengrass", shape=shape) == "", kind
        checked += 1
    assert checked >= 5


# --- what is written -----------------------------------------------------------------------------

def test_x86_group_json_gives_params_serve_accepts(tmp_path, capsys):
    out = tmp_path / "out"
    rc, stdout, err = migrate(capsys, FIX / "group-x86_64.json", "--out", out,
                              "--thing-group", "Cameras")
    assert rc == 0, err
    params = load_parameters(str(out / "params.yaml"), environ={})
    assert (params.model_path, params.model_resource_id, params.service_name) == (
        "/ml/object-detection", "ssd-model", "objectDetection")
    assert (params.timeout_seconds, params.memory_limit_kb, params.gpu) == (10, 500000, False)
    assert sorted(p.name for p in out.iterdir()) == ["deployment.json", "mqtt-allow.txt",
                                                     "params.yaml", "report.txt"]
    assert (out / "mqtt-allow.txt").read_text() == "factory1/camera1/detections\nfactory1/+/alerts\n"
    assert "install-x86_64.sh --systemd --config" in stdout
    assert "--mqtt-allow factory1/camera1/detections --mqtt-allow factory1/+/alerts" in stdout
    assert len(stdout.splitlines()) <= 24  # one screen


def test_deployment_validates_with_botocore_and_carries_the_configuration(tmp_path, capsys):
    out = tmp_path / "out"
    assert migrate(capsys, *DEFINITIONS, "--out", out, "--thing-group", "Shops",
                   "--component-version", "1.2.0")[0] == 0
    deployment = json.loads((out / "deployment.json").read_text())
    assert shape_errors(deployment, "greengrassv2", operation="CreateDeployment", output=False) == ""
    assert deployment["targetArn"] == "arn:aws:iot:eu-west-1:123456789012:thinggroup/Shops"
    component = deployment["components"]["com.example.ObjectDetectionService"]
    assert component["componentVersion"] == "1.2.0"
    merge = json.loads(component["configurationUpdate"]["merge"])
    assert merge["Parameters"] == yaml.safe_load((out / "params.yaml").read_text())
    assert merge["MqttAllow"] == ("shop/entrance/people-count,feedback/message/prediction,"
                                  "feedback/message/status")
    policies = deployment["deploymentPolicies"]
    assert policies["failureHandlingPolicy"] == "ROLLBACK"
    assert policies["componentUpdatePolicy"]["action"] == "NOTIFY_COMPONENTS"


def test_four_definition_versions_combine_feedback_twilio_and_lambda(tmp_path, capsys):
    out = tmp_path / "out"
    rc, stdout, err = migrate(capsys, *DEFINITIONS, "--out", out)
    assert rc == 0, err
    params = load_parameters(str(out / "params.yaml"), environ={})
    assert params.feedback_config_id == "RandomSamplingConfiguration"
    assert params.model_path == "/path-to-model"
    feedback = feedback_config.load_parameters(str(out / "feedback.yaml"), environ={})
    assert sorted(feedback.configs) == ["LeastConfidenceConfiguration", "RandomSamplingConfiguration"]
    assert feedback.request_limit == 10
    report = (out / "report.txt").read_text()
    for expected in [
            "arn:aws:greengrass:eu-west-1::/connectors/TwilioNotifications/versions/5",
            "no V2 equivalent found",
            "arn:aws:lambda:eu-west-1:123456789012:function:PeopleCounter:prod",
            "handler counter.function_handler; pinned true; memory 131072 KB; timeout 15 s",
            "V2 generic component",
            "GGIPDetector:1: Greengrass V1 system function",
            "TriggerNotification", "input of the TwilioNotifications connector",
            "OutputStatus", "published by the TwilioNotifications connector",
            "config-from-cloud", "cloud to a local function",
            "counter-shadow", "shadow traffic", "door-sensor", "client-device traffic",
            "camera-device (camera): LocalDeviceResourceData /dev/video0",
            "frames (frames): LocalVolumeResourceData /var/lib/frames -> /frames",
            "MyTwilioSecret", "install-armv7.sh --systemd --config"]:
        assert expected in report, expected
    assert "feedback.yaml" in stdout and "--feedback-config" in stdout


def test_jetson_gpu_group_keeps_gpu_and_reports_its_device(tmp_path, capsys):
    out = tmp_path / "out"
    rc, stdout, err = migrate(capsys, FIX / "group-jetson-gpu.json", "--out", out)
    assert rc == 0, err
    params = load_parameters(str(out / "params.yaml"), environ={})
    assert params.gpu and params.device == "gpu" and params.model_path == "/opt/models/shelf"
    assert params.timeout_seconds == 20 and params.memory_limit_kb == 1500000
    report = (out / "report.txt").read_text()
    assert "install-aarch64.sh" in report
    assert "isolation NoContainer" in report and "memory (not set)" in report
    assert "gpu (nvidia0): LocalDeviceResourceData /dev/nvidia0" in report
    assert "SageMakerMachineLearningModelResourceData arn:aws:sagemaker:us-east-1" in report
    assert (out / "mqtt-allow.txt").read_text() == "store42/shelf/events\nstore42/shelf/#\n"
    deployment = json.loads((out / "deployment.json").read_text())
    assert deployment["targetArn"] == "arn:aws:iot:us-east-1:123456789012:thinggroup/EDIT-ME-thing-group"
    assert "--thing-group" in err


def test_dollar_topics_never_reach_the_allow_list(tmp_path, capsys):
    out = tmp_path / "out"
    assert migrate(capsys, FIX / "group-x86_64.json", "--out", out)[0] == 0
    assert "$" not in (out / "mqtt-allow.txt").read_text()
    merge = json.loads(json.loads((out / "deployment.json").read_text())["components"][
        "com.example.ObjectDetectionService"]["configurationUpdate"]["merge"])
    assert "$" not in merge["MqttAllow"]
    report = (out / "report.txt").read_text()
    assert "shadow-report" in report and "a $-topic (reserved" in report
    assert "shadow-delta" in report


@pytest.mark.parametrize("topic,problem", [
    ("a/b", None), ("a/+/c", None), ("a/#", None), ("#", None),
    ("$aws/things/x/shadow/update", "$-topic"), ("a/#/b", "'#'"), ("a/b#", "'#'"),
    ("a/x+/c", "'+'"), ("a,b", "comma"), ("a\nb", "control"), ("", "empty"),
    ("a/" + "x" * 300, "256 bytes"), ("a\x85b", "control"), ("/".join("abcdefghi"), "8 levels"),
    ("a/b\u2028c", "U+2028, a line separator"), ("a\u2029", "U+2029"), ("a/\u202eb", "U+202E"),
    ("\u2066a\u2069", "U+2066"), ("a\u200fb", "U+200F"), ("a\u061cb", "U+061C"),
    (" a/b", "starts or ends with a blank"), ("a/b ", "blank"), ("a b/c d", None),
    ("caf\u00e9/\u6e29\u5ea6", None)])
def test_topic_filter_rules(topic, problem):
    found = filter_problem(topic)
    assert (found is None) if problem is None else (problem in found)


def test_connector_definition_alone_warns_and_names_placeholders(tmp_path, capsys):
    out = tmp_path / "out"
    rc, stdout, err = migrate(capsys, ROOT / "manifests" / "create-connector-definition.json",
                              "--out", out)
    assert rc == 0
    assert "no resource definition given" in err
    assert "MLFeedbackConnectorConfigId is object-detector-random-sampling but the group has no "\
           "ML Feedback connector" in err
    report = (out / "report.txt").read_text()
    assert "arn:aws:iot:region:account-id:thinggroup/EDIT-ME-thing-group" in (
        out / "deployment.json").read_text()
    assert "the region in deployment.json's targetArn (region): give --region" in report
    assert "the account in deployment.json's targetArn (account-id): give --account" in report
    assert "no subscription definition given" in report
    assert (out / "mqtt-allow.txt").read_text() == ""


def test_missing_model_path_gets_a_placeholder(tmp_path, capsys):
    doc = json.loads((ROOT / "manifests" / "create-connector-definition.json").read_text())
    del doc["Connectors"][0]["Parameters"]["MLModelDestinationPath"]
    src = tmp_path / "connectors.json"
    src.write_text(json.dumps(doc))
    rc, stdout, err = migrate(capsys, src, "--out", tmp_path / "out", "--region", "us-west-2",
                              "--account", "123456789012", "--thing-group", "g")
    assert rc == 0
    assert load_parameters(str(tmp_path / "out" / "params.yaml"), environ={}).model_path == \
        "/EDIT-ME/model-directory"
    assert "EDIT" in stdout and "MLModelDestinationPath in params.yaml" in err


def test_this_projects_v1_lambda_migrates_from_its_environment(tmp_path, capsys):
    manifests = ROOT / "manifests" / "greengrass-v1"
    rc, stdout, err = migrate(capsys, manifests / "function-definition.json",
                              manifests / "resource-definition.json", "--out", tmp_path / "out")
    assert rc == 0, err
    params = load_parameters(str(tmp_path / "out" / "params.yaml"), environ={})
    assert (params.model_path, params.model_resource_id) == ("/path-to-model", "my-ml-resource")
    assert "this project's V1 Lambda" in (tmp_path / "out" / "report.txt").read_text()


def test_this_projects_v1_feedback_lambda_migrates_without_its_container_spool(tmp_path, capsys):
    manifests = ROOT / "manifests" / "greengrass-v1"
    functions = json.loads((manifests / "function-definition.json").read_text())
    feedback = json.loads((ROOT / "manifests" / "feedback" / "greengrass-v1" /
                           "function-definition.json").read_text())
    functions["Functions"] += feedback["Functions"]
    src = tmp_path / "functions.json"
    src.write_text(json.dumps(functions))
    rc, stdout, err = migrate(capsys, src, manifests / "resource-definition.json",
                              "--out", tmp_path / "out")
    assert rc == 0, err
    values = yaml.safe_load((tmp_path / "out" / "feedback.yaml").read_text())
    assert sorted(values) == ["FeedbackConfigurationMap", "RequestLimit"]
    assert "FeedbackSpoolDirectory '/greengrass-ml/feedback-spool'" not in err
    assert "FeedbackSpoolDirectory /greengrass-ml/feedback-spool was a path inside" in err
    parsed = feedback_config.load_parameters(str(tmp_path / "out" / "feedback.yaml"), environ={})
    assert list(parsed.configs) == ["object-detector-random-sampling"]


def test_kind_is_recognised_from_content_not_the_file_name(tmp_path, capsys):
    names = ["subscription-definition-version.json", "group.json", "connectors.json", "x.txt"]
    copies = []
    for fixture, name in zip(DEFINITIONS, reversed(names)):
        copies.append(tmp_path / name)
        copies[-1].write_bytes(fixture.read_bytes())
    rc, stdout, err = migrate(capsys, *copies, "--out", tmp_path / "out")
    assert rc == 0, err
    report = (tmp_path / "out" / "report.txt").read_text()
    assert "x.txt: connector definition version" in report
    assert "connectors.json: function definition version" in report
    assert "group.json: resource definition version" in report
    assert "subscription-definition-version.json: subscription definition version" in report


def test_model_path_and_param_overrides(tmp_path, capsys):
    out = tmp_path / "out"
    model = tmp_path / "model"
    model.mkdir()
    rc, stdout, err = migrate(capsys, FIX / "group-x86_64.json", "--out", out, "--model-path", model,
                              "--param", "LocalInferenceServiceTimeoutSeconds=30")
    assert rc == 0
    params = load_parameters(str(out / "params.yaml"), environ={})
    assert params.model_path == str(model) and params.timeout_seconds == 30
    assert "does not exist on this machine" not in err


def test_help_explains_inputs_outputs_and_exit_status(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["migrate-v1", "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for word in ("group.json", "get-connector-definition-version", "params.yaml", "feedback.yaml",
                 "deployment.json", "mqtt-allow.txt", "report.txt", "--model-path",
                 "--thing-group", "exit status", "4 MiB"):
        assert word in text, word


# --- end to end: the command as a process, then serve on what it wrote ---------------------------

def test_migrated_params_serve_a_model_through_the_sdk(tmp_path, model_dir, sdk_env):
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "connector", "migrate-v1",
                           str(FIX / "group-x86_64.json"), "--out", str(out),
                           "--model-path", str(model_dir)],
                          cwd=ROOT, env=dict(clean_env(tmp_path / "unused.json")),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "wrote:" in done.stdout
    ipc = tmp_path / "ipc.json"
    proc = Proc(["serve", "--config", str(out / "params.yaml"), "--port", "0"], clean_env(ipc),
                tmp_path / "serve.log")
    try:
        info = wait_for_client_file(ipc, proc)
        wait_ready(info["port"], proc)
        sys.path.insert(0, str(ROOT / "ml_sdk"))
        import greengrass_machine_learning_sdk as ml
        from tests import images
        from tests.dlr_fixture.build import RED, blank_image, draw_box
        sdk_env.setenv("GG_ML_IPC_FILE", str(ipc))
        img = blank_image()
        draw_box(img, RED, 64, 128, 256, 384)
        resp = ml.client("inference").invoke_inference_service(
            AlgoType="object-detection", ServiceName="objectDetection", ContentType="image/png",
            Body=images.png(img))
        prediction = json.loads(resp["Body"].read().decode("utf-8"))["prediction"]
        assert prediction == [[0, 1.0, 0.125, 0.25, 0.5, 0.75]]
    finally:
        assert proc.stop() == 0, proc.log()
