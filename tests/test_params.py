import json
import os
import threading

import pytest

from connector.errors import ParameterError
from connector.params import RULES, load_parameters, parse_parameters

GOOD = {
    "MLModelDestinationPath": "/greengrass/models/ssd",
    "MLModelResourceId": "my-ml-resource",
    "LocalInferenceServiceName": "objectDetection",
    "LocalInferenceServiceTimeoutSeconds": "10",
    "LocalInferenceServiceMemoryLimitKB": "500000",
    "MLFeedbackConnectorConfigId": "object-detector-random-sampling",
}


def with_(**changes):
    values = dict(GOOD)
    for k, v in changes.items():
        if v is None:
            values.pop(k, None)
        else:
            values[k] = v
    return values


def test_seed_example_parses():
    p = parse_parameters(GOOD)
    assert p.model_path == "/greengrass/models/ssd"
    assert p.model_resource_id == "my-ml-resource"
    assert p.service_name == "objectDetection"
    assert (p.timeout_seconds, p.memory_limit_kb) == (10, 500000)
    assert p.gpu is False and p.device == "cpu"
    assert p.feedback_config_id == "object-detector-random-sampling"


def test_defaults_timeout_gpu_and_feedback():
    p = parse_parameters(with_(LocalInferenceServiceTimeoutSeconds=None, MLFeedbackConnectorConfigId=None))
    assert p.timeout_seconds == 10
    assert p.device == "cpu"
    assert p.feedback_config_id == ""


def test_gpu_acceleration_gpu():
    assert parse_parameters(with_(GPUAcceleration="GPU")).device == "gpu"


@pytest.mark.parametrize("name", ["MLModelDestinationPath", "MLModelResourceId",
                                  "LocalInferenceServiceName", "LocalInferenceServiceMemoryLimitKB"])
def test_required_parameter_missing_is_named(name):
    with pytest.raises(ParameterError) as e:
        parse_parameters(with_(**{name: None}))
    assert name in str(e.value) and "missing" in str(e.value)


# One case per rule: (parameter, bad value). The message must name parameter, value and rule.
BAD = [
    ("MLModelDestinationPath", ""),
    ("MLModelDestinationPath", "relative/path"),
    ("MLModelResourceId", "my resource"),
    ("MLModelResourceId", "id/with/slash"),
    ("LocalInferenceServiceName", "x"),  # too short: 2..63 characters
    ("LocalInferenceServiceName", "-starts-with-dash"),
    ("LocalInferenceServiceName", "a" * 64),
    ("LocalInferenceServiceName", "under_score"),
    ("LocalInferenceServiceTimeoutSeconds", "0"),
    ("LocalInferenceServiceTimeoutSeconds", "-5"),
    ("LocalInferenceServiceTimeoutSeconds", "ten"),
    ("LocalInferenceServiceTimeoutSeconds", "10\n"),
    ("LocalInferenceServiceTimeoutSeconds", ""),
    ("LocalInferenceServiceMemoryLimitKB", "012"),
    ("LocalInferenceServiceMemoryLimitKB", "1.5"),
    ("GPUAcceleration", "gpu"),
    ("GPUAcceleration", "TPU"),
    ("MLFeedbackConnectorConfigId", "-bad"),
    ("MLFeedbackConnectorConfigId", "has space"),
]


@pytest.mark.parametrize("name,value", BAD)
def test_each_rule_is_enforced(name, value):
    with pytest.raises(ParameterError) as e:
        parse_parameters(with_(**{name: value}))
    msg = str(e.value)
    assert name in msg and repr(value) in msg
    if value and not value.startswith("relative"):
        assert RULES[name].pattern in msg


def test_boundaries_accepted():
    p = parse_parameters(with_(LocalInferenceServiceName="ab", MLModelResourceId="arn:a_b-c",
                               MLFeedbackConnectorConfigId=""))
    assert p.service_name == "ab"
    assert parse_parameters(with_(LocalInferenceServiceName="a" * 63)).service_name == "a" * 63


def test_non_string_value_refused():
    with pytest.raises(ParameterError, match="LocalInferenceServiceTimeoutSeconds"):
        parse_parameters(with_(LocalInferenceServiceTimeoutSeconds=True))


def test_environment_variables(tmp_path):
    p = load_parameters(environ=dict(GOOD, UNRELATED="x"))
    assert p.service_name == "objectDetection"


def test_yaml_file_overlaid_by_environment(tmp_path):
    f = tmp_path / "params.yaml"
    f.write_text("MLModelDestinationPath: /models/a\nMLModelResourceId: res\n"
                 "LocalInferenceServiceName: svc-a\nLocalInferenceServiceMemoryLimitKB: 1000\n")
    p = load_parameters(str(f), environ={"LocalInferenceServiceName": "svc-b"})
    assert p.model_path == "/models/a" and p.memory_limit_kb == 1000
    assert p.service_name == "svc-b"


def test_create_connector_definition_json_works_as_file(tmp_path):
    connector = {"Id": "MyObjectDetectionConnector",
                 "ConnectorArn": "arn:aws:greengrass:us-east-1::/connectors/ObjectDetectionARMv7/versions/1",
                 "Parameters": GOOD}
    for doc in (GOOD, connector):
        f = tmp_path / "p.json"
        f.write_text(json.dumps(doc))
        assert load_parameters(str(f), environ={}).service_name == "objectDetection"


def test_file_errors_are_clear(tmp_path):
    with pytest.raises(ParameterError, match="cannot read parameter file"):
        load_parameters(str(tmp_path / "absent.yaml"), environ={})
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [unclosed")
    with pytest.raises(ParameterError, match="not valid YAML"):
        load_parameters(str(bad), environ={})
    lst = tmp_path / "list.yaml"
    lst.write_text("- a\n- b\n")
    with pytest.raises(ParameterError, match="mapping"):
        load_parameters(str(lst), environ={})
    typo = tmp_path / "typo.yaml"
    typo.write_text(json.dumps(dict(GOOD, LocalInferenceServiceNmae="x")))
    with pytest.raises(ParameterError, match="LocalInferenceServiceNmae"):
        load_parameters(str(typo), environ={})


@pytest.fixture
def fifo(tmp_path):
    """A FIFO with no writer: a plain open() of it blocks until one comes. If the reader under
    test does block, a rescue writer opens and closes it after a while, so that the test fails
    on its assertion instead of hanging the run (it is not a timing assertion)."""
    path = tmp_path / "params.fifo"
    os.mkfifo(str(path))

    def rescue():
        try:
            os.close(os.open(str(path), os.O_WRONLY | os.O_NONBLOCK))
        except OSError:  # ENXIO: nobody is blocked reading it, as it should be
            pass

    timer = threading.Timer(15, rescue)
    timer.start()
    yield path
    timer.cancel()


def test_a_fifo_as_parameter_file_is_refused_without_blocking(fifo):
    with pytest.raises(ParameterError, match=r"cannot read parameter file .*params\.fifo.*: it is "
                                             r"not a regular file \(a FIFO\)"):
        load_parameters(str(fifo), environ={})


def test_a_directory_or_an_oversize_file_is_refused(tmp_path):
    with pytest.raises(ParameterError, match=r"not a regular file \(a directory\)"):
        load_parameters(str(tmp_path), environ={})
    big = tmp_path / "big.yaml"
    big.write_text("# " + "x" * 70000 + "\n")
    with pytest.raises(ParameterError, match="larger than 65536 bytes"):
        load_parameters(str(big), environ={})


def test_a_parameter_file_reached_through_links_is_read_like_a_configmap_key(tmp_path):
    """Kubernetes mounts a ConfigMap key as params.yaml -> ..data/params.yaml, ..data ->
    ..2024_01_01_00_00_00.1/: `serve --config` must keep reading it."""
    version = tmp_path / "..2024_01_01_00_00_00.1"
    version.mkdir()
    (version / "params.yaml").write_text(json.dumps(GOOD))
    (tmp_path / "..data").symlink_to(version.name)
    (tmp_path / "params.yaml").symlink_to("..data/params.yaml")
    assert load_parameters(str(tmp_path / "params.yaml"), environ={}).service_name == "objectDetection"
