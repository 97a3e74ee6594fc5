import json
import ast

import numpy as np
import pytest

from connector.model import formats, postprocess
from connector.model.backends import open_backend
from connector.model.engine import Engine
from connector.errors import (BackendError, DeviceUnavailableError, InvalidImageError,
                              ModelDirectoryError)
from connector.model.directory import ModelMetadata, open_model_directory
from connector.model.preprocess import Frame
from tests import images
from tests.onnx_models import BOX, red_detector


@pytest.fixture()
def red_model(tmp_path):
    d = tmp_path / "red"
    d.mkdir()
    red_detector(str(d / "model.onnx"))
    (d / "labels.txt").write_text("red\n")
    return d


def solid(rgb, w=640, h=480):
    return np.full((h, w, 3), rgb, np.uint8)


def test_bytes_to_document_through_onnx_runtime(red_model):
    engine = Engine.from_model_dir(str(red_model))
    assert engine.backend.name == "onnxruntime" and engine.backend.device == "cpu"
    assert engine.model.labels == ("red",)
    doc = engine.infer(images.png(solid((255, 0, 0))), "image/png")
    [[cls, score, *box]] = doc["prediction"]  # the padding row is gone
    assert cls == 0 and isinstance(cls, int)
    assert score == pytest.approx(1.0, abs=1e-3)
    assert box == pytest.approx([v / 512 for v in BOX])
    # The red channel of the RGB input reaches the model, not the blue one (BGR/RGB order).
    blue = engine.infer(images.png(solid((0, 0, 255))), "image/png")["prediction"][0][1]
    assert blue == pytest.approx(0.0, abs=1e-3)
    half = engine.infer(images.png(solid((128, 0, 0))))["prediction"][0][1]
    assert half == pytest.approx(128 / 255, abs=2e-3)


def test_text_is_json_and_python_literal(red_model):
    text = Engine.from_model_dir(str(red_model)).infer_text(images.jpeg(solid((250, 10, 10))), "image/jpeg")
    assert json.loads(text) == ast.literal_eval(text) == eval(text)  # user code calls eval
    assert list(json.loads(text)) == ["prediction"]


def test_bad_input_then_good_input(red_model):
    engine = Engine.from_model_dir(str(red_model))
    with pytest.raises(InvalidImageError):
        engine.infer(images.jpeg()[:500], "image/jpeg")
    with pytest.raises(InvalidImageError, match="content type"):
        engine.infer(images.jpeg(), "image/gif")
    assert engine.infer(images.jpeg(), "image/jpeg")["prediction"]


def test_nchw_layout_and_metadata(tmp_path):
    red_detector(str(tmp_path / "m.onnx"), size=300, layout="NCHW", outputs=("scores", "bboxes", "ids"))
    (tmp_path / "model.yaml").write_text("layout: NCHW\ninput_size: [300, 300]\noutputs: [scores, bboxes, ids]\n"
                                         "labels: [thing]\n")
    engine = Engine.from_model_dir(str(tmp_path))
    [[cls, score, *box]] = engine.infer(images.png(solid((255, 0, 0))))["prediction"]
    assert cls == 0 and score == pytest.approx(1.0, abs=1e-3)
    assert box == pytest.approx([min(v / 300, 1.0) for v in BOX])  # clipped to the image
    assert engine.model.labels == ("thing",)


def test_gpu_without_gpu_is_an_error_not_a_fallback(red_model):
    import onnxruntime
    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this machine has CUDA; covered by the GPU run")
    with pytest.raises(DeviceUnavailableError, match="GPU"):
        open_backend(open_model_directory(str(red_model)), "gpu")


def test_broken_onnx_file(tmp_path):
    (tmp_path / "model.onnx").write_bytes(b"\x08\x07garbage that is not a protobuf" * 10)
    with pytest.raises(BackendError, match="cannot load"):
        Engine.from_model_dir(str(tmp_path))


def gluoncv_rows(outputs, size=512):
    meta = ModelMetadata(format="gluoncv")
    return postprocess.to_predictions(formats.decode_gluoncv(outputs, meta),
                                      Frame(size, size, 1.0, 1.0))


def test_wrong_output_count():
    with pytest.raises(BackendError, match="2 outputs"):
        gluoncv_rows([np.zeros((1, 2, 1)), np.zeros((1, 2, 1))])


# --- post-processing ---------------------------------------------------------------------------

def test_postprocess_sorts_clips_and_drops_padding():
    ids = np.array([[[2], [-1], [0], [1], [1]]], np.float32)
    scores = np.array([[[0.5], [-1], [0.9], [0.7], [float("nan")]]], np.float32)
    boxes = np.array([[[-10, 0, 256, 600], [-1] * 4, [0, 0, 512, 512], [128, 128, 384, 384],
                       [0, 0, 1, 1]]], np.float32)
    rows = gluoncv_rows([ids, scores, boxes])
    assert [r[0] for r in rows] == [0, 1, 2]
    assert all(type(r[0]) is int and all(type(v) is float for v in r[1:]) for r in rows)
    assert rows[0][2:] == [0.0, 0.0, 1.0, 1.0]
    assert rows[1][2:] == [0.25, 0.25, 0.75, 0.75]
    assert rows[2][2:] == [0.0, 0.0, 0.5, 1.0]  # clipped
    assert [r[1] for r in rows] == pytest.approx([0.9, 0.7, 0.5])


def test_postprocess_empty_and_mismatched():
    empty = gluoncv_rows([np.full((1, 3, 1), -1.0), np.full((1, 3, 1), -1.0),
                          np.full((1, 3, 4), -1.0)])
    assert empty == [] and postprocess.render({"prediction": empty}) == '{"prediction": []}'
    with pytest.raises(BackendError, match="disagree"):
        gluoncv_rows([np.zeros((1, 3, 1)), np.zeros((1, 2, 1)), np.zeros((1, 3, 4))])


def test_non_finite_and_empty_boxes_are_dropped_and_counted(caplog):
    caplog.set_level("DEBUG", logger="connector.model.postprocess")
    ids = np.array([[[0], [1], [2], [0], [1]]], np.float32)
    scores = np.array([[[0.9], [0.8], [0.7], [0.6], [0.5]]], np.float32)
    inf = float("inf")
    boxes = np.array([[[10, 10, 100, 100],      # kept
                       [0, 0, inf, 50],          # non-finite
                       [50, 50, 50, 80],         # no width
                       [600, 600, 700, 700],     # wholly outside the image: empty once clipped
                       [90, 80, 10, 20]]],       # corners swapped: no area
                     np.float32)
    rows = gluoncv_rows([ids, scores, boxes])
    assert rows == [[0, pytest.approx(0.9), 10 / 512, 10 / 512, 100 / 512, 100 / 512]]
    [message] = [r.getMessage() for r in caplog.records if "dropped" in r.getMessage()]
    assert "1 detection(s) with non-finite values and 3 with an empty box" in message
    assert all(r.levelname == "DEBUG" for r in caplog.records)


# --- model directories ---------------------------------------------------------------------------

def test_model_directory_errors(tmp_path):
    with pytest.raises(ModelDirectoryError, match="does not exist"):
        open_model_directory(str(tmp_path / "absent"))
    with pytest.raises(ModelDirectoryError, match="is empty"):
        open_model_directory(str(tmp_path))
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ModelDirectoryError, match="holds no model"):
        open_model_directory(str(tmp_path))
    for n in ("a.onnx", "b.onnx"):
        (tmp_path / n).write_bytes(b"x")
    with pytest.raises(ModelDirectoryError, match="2 ONNX files"):
        open_model_directory(str(tmp_path))
    (tmp_path / "b.onnx").unlink()
    (tmp_path / "model.so").write_bytes(b"x")
    with pytest.raises(ModelDirectoryError, match="ambiguous"):
        open_model_directory(str(tmp_path))


def test_neo_directory_needs_exactly_one_of_each(tmp_path):
    for n in ("model.so", "model.json"):
        (tmp_path / n).write_bytes(b"x")
    with pytest.raises(ModelDirectoryError, match=r"\*.params parameters file, found 0"):
        open_model_directory(str(tmp_path))
    (tmp_path / "model.params").write_bytes(b"x")
    (tmp_path / "other.json").write_bytes(b"x")
    with pytest.raises(ModelDirectoryError, match=r"\*.json graph file, found 2"):
        open_model_directory(str(tmp_path))
    (tmp_path / "other.json").unlink()
    (tmp_path / "libdlr.so").write_bytes(b"x")
    (tmp_path / "model.meta").write_bytes(b"{}")
    m = open_model_directory(str(tmp_path))
    assert m.kind == "dlr" and set(m.files) == {"so", "graph", "params", "meta", "libdlr"}
    (tmp_path / "model.params").write_bytes(b"")
    with pytest.raises(ModelDirectoryError, match="is empty"):
        open_model_directory(str(tmp_path))


@pytest.mark.parametrize("text,words", [
    ("layout: NWHC\n", "layout must be one of"),
    ("input_size: [0, 512]\n", "input_size"),
    ("outputs: [ids, scores]\n", "outputs must list"),
    ("std: [1, 0, 1]\n", "std must not contain 0"),
    ("colour: RGB\n", "unknown setting"),
    ("- just a list\n", "mapping"),
    ("a: [unclosed\n", "not valid YAML"),
])
def test_bad_metadata(tmp_path, text, words):
    (tmp_path / "m.onnx").write_bytes(b"x")
    (tmp_path / "model.yaml").write_text(text)
    with pytest.raises(ModelDirectoryError, match=words):
        open_model_directory(str(tmp_path))


def test_normalisation_metadata_reaches_the_model(tmp_path):
    red_detector(str(tmp_path / "m.onnx"))
    (tmp_path / "model.yaml").write_text("mean: [127.5, 0, 0]\nstd: [127.5, 1, 1]\n")
    engine = Engine.from_model_dir(str(tmp_path))
    score = engine.infer(images.png(solid((255, 0, 0))))["prediction"][0][1]
    assert score == pytest.approx(1.0 / 255, abs=1e-4)  # (255 - 127.5) / 127.5 = 1, then / 255


@pytest.mark.parametrize("color", ["RGB", "BGR"])
@pytest.mark.parametrize("batch", [True, False])
@pytest.mark.parametrize("std", [(127.5, 127.5, 127.5), (58.4, 57.1, 57.4)])
def test_nchw_tensor_matches_the_plain_numpy_recipe(color, batch, std):
    from connector.model import preprocess
    rng = np.random.RandomState(0)
    bgr = rng.randint(0, 256, (48, 64, 3)).astype(np.uint8)
    meta = ModelMetadata(layout="NCHW", height=48, width=64, color=color, mean=(127.5, 10.0, 0.0),
                         std=std, batch_axis=batch)
    tensor, frame = preprocess.to_tensor(bgr, meta)
    pixels = bgr[:, :, ::-1] if color == "RGB" else bgr
    expected = ((pixels.astype(np.float32) - np.array(meta.mean, np.float32))
                / np.array(std, np.float32)).transpose(2, 0, 1)
    assert tensor.shape == ((1,) if batch else ()) + (3, 48, 64) and tensor.dtype == np.float32
    assert np.allclose(tensor.reshape(expected.shape), expected, atol=1e-6)
    assert (frame.scale_x, frame.scale_y, frame.pad_x, frame.pad_y) == (1.0, 1.0, 0.0, 0.0)
