"""ONNX Runtime failing inside its own graph optimisers, on the real GluonCV exports.

tests/models/gluoncv-yolo3-416-onnx is GluonCV's YOLOv3 exported with mx.onnx.export_model (made by
scripts/tools, see its MANIFEST): ONNX Runtime >= 1.25 refuses it in constant folding
("AddInitializedOrtValue Attempt to replace the existing tensor"). The backend retries with that
optimiser off and says so in one log line; nothing of ORT's own logging reaches stderr.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from connector.model.backends import onnx_backend
from connector.model.engine import Engine
from connector.errors import BackendError
from tests import images

ROOT = Path(__file__).resolve().parents[2]
YOLO3 = ROOT / "tests" / "models" / "gluoncv-yolo3-416-onnx"

ort = pytest.importorskip("onnxruntime")
needs_yolo3 = pytest.mark.skipif(not (YOLO3 / "model.onnx").exists(),
                                 reason="tests/models/gluoncv-yolo3-416-onnx is not there")


def version(text):
    return tuple(int(p) for p in text.split(".")[:2])


@needs_yolo3
def test_plain_session_fails_where_the_issue_says(capfd):
    options = ort.SessionOptions()
    options.log_severity_level = 4
    if version(ort.__version__) < (1, 25):
        pytest.skip("ONNX Runtime {} optimises this export fine".format(ort.__version__))
    with pytest.raises(Exception, match="Attempt to replace the existing tensor"):
        ort.InferenceSession(str(YOLO3 / "model.onnx"), options, providers=["CPUExecutionProvider"])


@needs_yolo3
def test_gluoncv_yolo3_export_loads_with_the_failing_optimizer_off(caplog, capfd):
    caplog.set_level("DEBUG", logger="connector")
    engine = Engine.from_model_dir(str(YOLO3))
    assert engine.format.name == "gluoncv" and engine.model.metadata.height == 416
    retried = [r for r in caplog.records if "failed to optimise" in r.getMessage()]
    if version(ort.__version__) >= (1, 25):
        [record] = retried
        assert record.levelname == "WARNING"
        message = record.getMessage()
        assert "ONNX Runtime {}".format(ort.__version__) in message
        assert "Attempt to replace the existing tensor" in message
        assert message.endswith("loaded it with the ConstantFolding optimizer disabled")
    rng = np.random.RandomState(1)
    doc = engine.infer(images.jpeg(rng.randint(0, 256, (300, 400, 3)).astype(np.uint8)))
    assert doc["prediction"] and all(0 <= v <= 1 for row in doc["prediction"] for v in row[1:])
    err = capfd.readouterr().err
    assert "onnxruntime" not in err and "[E:" not in err and "[W:" not in err


def test_retry_steps_follow_the_error():
    add = ("[ONNXRuntimeError] : 1 : FAIL : graph.cc:4164 AddInitializedOrtValue Attempt to "
           "replace the existing tensor")
    assert [how for _, how in onnx_backend.retries(add)] == [
        {"disabled_optimizers": ["ConstantFolding"]},
        {"disabled_optimizers": ["ConstantFolding", "MatMulAddFusion"]},
        {"level": "ORT_ENABLE_BASIC"}, {"level": "ORT_DISABLE_ALL"}]
    named = ("This is an invalid model. Error: two nodes with same node name "
             "(/GatherSliceToSplitFusion/).")
    assert onnx_backend.retries(named)[0] == (
        "the GatherSliceToSplitFusion optimizer",
        {"disabled_optimizers": ["GatherSliceToSplitFusion"]})
    for hopeless in ("Protobuf parsing failed.", "Unsupported model IR version: 10, max supported "
                     "IR version: 9", "Load model from x failed: No such file or directory"):
        assert onnx_backend.retries(hopeless) == []


def test_a_model_that_no_setting_can_load_keeps_the_first_error(tmp_path, capfd):
    bad = tmp_path / "model.onnx"
    # A valid protobuf of a graph whose node uses an undefined input: invalid at every level.
    from onnx import TensorProto, helper
    graph = helper.make_graph([helper.make_node("Relu", ["missing"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    bad.write_bytes(model.SerializeToString())
    with pytest.raises(BackendError) as e:
        Engine.from_model_dir(str(tmp_path))
    assert "not even with graph optimizations disabled" in str(e.value) and "missing" in str(e.value)
    assert capfd.readouterr().err == ""
