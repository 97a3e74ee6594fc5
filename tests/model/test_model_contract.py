"""Model directories as DLR reads them, and the input contract read from the artefact.

Neo/DLR cases run the hand-built graph-runtime fixture (tests/dlr_fixture) on the real libdlr.so
of dlr==1.6.0; ONNX cases run graphs built with the `onnx` package on the real ONNX Runtime.
"""
from __future__ import annotations

import json
import os
import platform
import shutil
import struct
import subprocess
import sys

import numpy as np
import pytest

from connector.model import artefacts
from connector.model.backends import dlr_runtime
from connector.model.engine import Engine
from connector.errors import BackendError, ModelDirectoryError
from connector.model.directory import open_model_directory
from tests import images
from tests.onnx_models import BOX, red_detector

HAVE_DLR = (dlr_runtime.find_dlr_package() is not None and shutil.which("gcc") is not None
            and sys.platform.startswith("linux") and platform.machine() == "x86_64")
needs_dlr = pytest.mark.skipif(not HAVE_DLR, reason="needs dlr==1.6.0 (x86_64 Linux) and gcc")

if HAVE_DLR:
    from tests.dlr_fixture.build import GREEN, RED, blank_image, build_dlr_model, draw_box


rgb_png = images.png  # fixture images are RGB, as images.png takes them


def touch(d, *names, text="x"):
    for n in names:
        with open(os.path.join(str(d), n), "w") as f:
            f.write(text)


# ---- which files make a model ----------------------------------------------------------------

@needs_dlr
def test_stock_neo_output_with_auxiliary_json_and_stray_files_loads(tmp_path):
    d = build_dlr_model(tmp_path / "neo")
    # What a SageMaker Neo output holds beside the model, and what people leave lying around.
    touch(d, "model-shapes.json", text='[{"shape": [1, 512, 512, 3], "name": "data"}]')
    touch(d, "hyperparams.json", text='{"epochs": "10"}')
    touch(d, "README.md", "notes.txt", "model.so.partial", "model.params.partial")
    m = open_model_directory(d)
    assert m.kind == "dlr" and os.path.basename(m.files["graph"]) == "model.json"
    img = draw_box(blank_image(), RED, 100, 50, 200, 120)
    rows = Engine.from_model_dir(d).infer(rgb_png(img))["prediction"]
    assert rows == [[0, 1.0, 100 / 512, 50 / 512, 200 / 512, 120 / 512]]  # DLR skipped them too


@needs_dlr
def test_neo_file_names_and_meta_from_a_jetson_compile(tmp_path):
    # Neo's names, an NCHW input as compiled for a Jetson, model-shapes.json beside it.
    d = build_dlr_model(tmp_path / "neo", name="compiled", graph_name="compiled_model.json",
                        layout="NCHW", input_size=(512, 512))
    touch(d, "model-shapes.json", text='[{"shape": [1, 3, 512, 512], "name": "data"}]')
    engine = Engine.from_model_dir(d)
    assert sorted(os.path.basename(p) for p in engine.model.files.values()) == [
        "compiled.meta", "compiled.params", "compiled.so", "compiled_model.json"]
    assert engine.model.metadata.contract_source == "compiled_model.json and compiled.meta"
    assert engine.model.metadata.layout == "NCHW"
    img = draw_box(blank_image(), GREEN, 256, 0, 512, 128)
    assert engine.infer(rgb_png(img))["prediction"] == [[1, 1.0, 0.5, 0.0, 1.0, 0.25]]


def test_stray_json_beside_an_onnx_model_is_ignored(tmp_path):
    red_detector(str(tmp_path / "model.onnx"))
    touch(tmp_path, "notes.json", "config.json", "README", "model.onnx.partial")
    assert open_model_directory(str(tmp_path)).kind == "onnx"
    assert Engine.from_model_dir(str(tmp_path)).infer(images.png())["prediction"]


@pytest.mark.parametrize("files,words", [
    # A second graph-like JSON is ambiguous for DLR too (it reads every *.json but two names).
    (("model.so", "model.json", "model.params", "notes.json", "model-shapes.json"),
     ["*.json graph file, found 2 (model.json, notes.json)",
      "every *.json except model-shapes.json and hyperparams.json",
      "the directory holds: model-shapes.json, model.json, model.params, model.so, notes.json"]),
    # Incomplete: what was found and what is needed.
    (("compiled.so", "compiled.params", "hyperparams.json", "README"),
     ["needs exactly one *.json graph file, found 0 (none)",
      "one *.so, one *.json graph and one *.params",
      "holds: README, compiled.params, compiled.so, hyperparams.json"]),
])
def test_bad_neo_directories_say_what_was_found_and_what_is_needed(tmp_path, files, words):
    touch(tmp_path, *files)
    with pytest.raises(ModelDirectoryError) as e:
        open_model_directory(str(tmp_path))
    for w in words:
        assert w in str(e.value)


def test_onnx_and_neo_artefacts_together_are_ambiguous(tmp_path):
    touch(tmp_path, "model.onnx", "model.params")
    with pytest.raises(ModelDirectoryError, match=r"ambiguous: .*ONNX model \(model.onnx\) and "
                                                  r"Neo/DLR artifacts \(model.params\)"):
        open_model_directory(str(tmp_path))


# ---- wrong CPU, factory exports -----------------------------------------------------------------

def compile_so(tmp_path, cc, source="int answer(void) { return 42; }\n", name="model.so"):
    src = tmp_path / "lib.c"
    src.write_text(source)
    out = tmp_path / name
    subprocess.run([cc, "-shared", "-fPIC", "-o", str(out), str(src)], check=True)
    return str(out)


CROSS = [("aarch64-linux-gnu-gcc", "aarch64 (64-bit)"), ("arm-linux-gnueabihf-gcc", "armv7 (32-bit)")]


@pytest.mark.parametrize("cc,target", CROSS)
def test_elf_target_of_cross_compiled_libraries(tmp_path, cc, target):
    if shutil.which(cc) is None:
        pytest.skip("{} is not installed".format(cc))
    so = compile_so(tmp_path, cc)
    assert artefacts.describe(artefacts.elf_target(so)) == target
    problem = artefacts.architecture_problem(so, host=("x86_64", 64))
    assert problem == ("{} is compiled for {}, this machine is x86_64 (64-bit): compile the model "
                       "(and take the libdlr.so) for this device's target".format(so, target))


def test_host_target_and_non_elf_files(tmp_path):
    cpu, bits = artefacts.host_target()
    assert bits == struct.calcsize("P") * 8
    if platform.machine() == "x86_64":
        assert cpu == "x86_64"
    touch(tmp_path, "text.so")
    assert artefacts.elf_target(str(tmp_path / "text.so")) is None
    assert artefacts.architecture_problem(str(tmp_path / "text.so")) is None  # the loader says


def patched_elf(path, machine, bits):
    """Rewrite the ELF class and machine of `path` (when no cross compiler is at hand)."""
    with open(path, "r+b") as f:
        f.seek(4)
        f.write(bytes([1 if bits == 32 else 2]))
        f.seek(18)
        f.write(struct.pack("<H", machine))


@needs_dlr
@pytest.mark.parametrize("which", ["so", "libdlr"])
def test_model_built_for_another_cpu_says_so(tmp_path, which):
    d = build_dlr_model(tmp_path / "m", with_libdlr=(which == "libdlr"))
    target = os.path.join(d, "model.so" if which == "so" else "libdlr.so")
    if which == "so" and shutil.which("aarch64-linux-gnu-gcc"):
        shutil.copyfile(compile_so(tmp_path, "aarch64-linux-gnu-gcc", name="arm.so"), target)
    else:
        patched_elf(target, 183, 64)
    with pytest.raises(BackendError) as e:
        Engine.from_model_dir(d)
    assert "{} is compiled for aarch64 (64-bit), this machine is x86_64 (64-bit)".format(target) in str(e.value)
    assert "No such file" not in str(e.value)


FACTORY = 'const char blob[] = "\\x01GraphExecutorFactory\\x00graph_json\\x00";\n'


@needs_dlr
def test_factory_export_gets_the_export_recipe(tmp_path):
    alone = tmp_path / "alone"
    alone.mkdir()
    compile_so(alone, "gcc", FACTORY, name="deploy.so")
    with pytest.raises(ModelDirectoryError) as e:
        open_model_directory(str(alone))
    assert "deploy.so is a TVM factory export" in str(e.value)
    assert "factory.get_lib().export_library('model.so')" in str(e.value)
    # With a graph and params beside it, DLR would say "... loader not registered".
    d = build_dlr_model(tmp_path / "m")
    shutil.copyfile(str(alone / "deploy.so"), os.path.join(d, "model.so"))
    with pytest.raises(BackendError, match="is a TVM factory export"):
        Engine.from_model_dir(d)


def test_factory_scan_finds_the_key_across_chunk_boundaries(tmp_path, monkeypatch):
    monkeypatch.setattr(artefacts, "_CHUNK", 7)
    path = tmp_path / "x.so"
    path.write_bytes(b"\x7fELF" + b"." * 10 + b"GraphRuntimeFactory" + b"." * 10)
    assert "factory export" in artefacts.factory_export_problem(str(path))
    path.write_bytes(b"\x7fELF" + b"GraphExecutor" * 20)
    assert artefacts.factory_export_problem(str(path)) is None


# ---- the input contract ----------------------------------------------------------------------------

@needs_dlr
@pytest.mark.parametrize("size", [300, 416, 512, 608])
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("dtype", ["float32", "uint8"])
@pytest.mark.parametrize("with_meta", [True, False])
def test_neo_input_contract_comes_from_the_model(tmp_path, size, layout, dtype, with_meta):
    d = build_dlr_model(tmp_path / "m", input_size=(size, size), layout=layout, input_dtype=dtype,
                        with_meta=with_meta)
    engine = Engine.from_model_dir(d)  # no model.yaml
    meta = engine.model.metadata
    assert (meta.layout, meta.height, meta.width, meta.dtype) == (layout, size, size, dtype)
    assert meta.contract_source == ("model.json and model.meta" if with_meta else "model.json")
    # A box only comes back where it was drawn when the pixels are laid out as the model reads
    # them: NHWC pixels fed to an NCHW model would be garbage (DLR checks only the size).
    img = draw_box(blank_image(size, size), GREEN, size // 4, size // 8, size // 2, size // 3)
    rows = engine.infer(rgb_png(img))["prediction"]
    assert rows == [[1, 1.0, 0.25, (size // 8) / size, 0.5, (size // 3) / size]]


@needs_dlr
def test_nchw_neo_model_is_fed_nchw_even_from_a_non_square_image(tmp_path):
    d = build_dlr_model(tmp_path / "m", input_size=(512, 512), layout="NCHW")
    img = draw_box(blank_image(480, 640), RED, 320, 240, 480, 360)
    rows = Engine.from_model_dir(d).infer(rgb_png(img))["prediction"]
    assert rows == [[0, 1.0, pytest.approx(0.5, abs=2e-3), pytest.approx(0.5, abs=3e-3),
                     pytest.approx(0.75, abs=2e-3), pytest.approx(0.75, abs=3e-3)]]


@pytest.mark.parametrize("size", [300, 416, 512, 608])
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_onnx_input_contract_comes_from_the_graph(tmp_path, size, layout):
    red_detector(str(tmp_path / "m.onnx"), size=size, layout=layout)
    engine = Engine.from_model_dir(str(tmp_path))
    meta = engine.model.metadata
    assert (meta.layout, meta.height, meta.width, meta.contract_source) == (layout, size, size, "m.onnx")
    [[cls, score, *box]] = engine.infer(images.png(np.full((100, 200, 3), (255, 0, 0), np.uint8)))["prediction"]
    assert score == pytest.approx(1.0, abs=1e-3)  # red reaches channel 0 in either layout
    assert box == pytest.approx([min(v / size, 1.0) for v in BOX])


@pytest.mark.parametrize("yaml,words", [
    ("layout: NHWC\n", "model.yaml says layout: NHWC but the model (m.onnx) takes 'data' "
                       "(1, 3, 300, 300) float32, i.e. layout NCHW"),
    ("input_size: [512, 512]\n", "model.yaml says input_size: [512, 512] but the model (m.onnx) "
                                 "takes 'data' (1, 3, 300, 300) float32, i.e. input_size [300, 300]"),
    ("dtype: uint8\n", "dtype: uint8 but the model (m.onnx) takes 'data' (1, 3, 300, 300) float32"),
    ("input_name: image\n", "input_name: image but the model (m.onnx) takes 'data'"),
])
def test_model_yaml_contradicting_the_model_is_a_load_error(tmp_path, yaml, words):
    red_detector(str(tmp_path / "m.onnx"), size=300, layout="NCHW")
    (tmp_path / "model.yaml").write_text(yaml)
    with pytest.raises(ModelDirectoryError) as e:
        Engine.from_model_dir(str(tmp_path))
    assert words in str(e.value)


@needs_dlr
def test_model_yaml_contradicting_a_neo_graph_is_a_load_error(tmp_path):
    d = build_dlr_model(tmp_path / "m", layout="NCHW")
    touch(d, "model.yaml", text="layout: NHWC\ninput_size: 512\n")
    with pytest.raises(ModelDirectoryError, match=r"layout: NHWC but the model \(model.json and "
                                                  r"model.meta\) takes 'data' \(1, 3, 512, 512\)"):
        Engine.from_model_dir(d)
    touch(d, "model.yaml", text="layout: NCHW\ninput_size: 512\ncolor: BGR\n")  # agreeing: fine
    assert Engine.from_model_dir(d).model.metadata.color == "BGR"


@needs_dlr
def test_graph_json_wins_over_stale_meta_names(tmp_path):
    d = build_dlr_model(tmp_path / "m", input_name="input0")
    with open(os.path.join(d, "model.meta")) as f:
        meta = json.load(f)
    meta["Model"]["Inputs"][0]["shape"] = [1, 3, 512, 512]  # the graph says NHWC: it is run so
    with open(os.path.join(d, "model.meta"), "w") as f:
        json.dump(meta, f)
    engine = Engine.from_model_dir(d)
    assert engine.model.metadata.layout == "NHWC" and engine.model.metadata.input_name == "input0"


@needs_dlr
def test_uint8_input_takes_raw_pixels_and_refuses_a_mean_std(tmp_path):
    d = build_dlr_model(tmp_path / "m", input_dtype="uint8")
    touch(d, "model.yaml", text="std: 255\n")
    with pytest.raises(ModelDirectoryError, match="model.yaml gives mean/std but the model .* uint8"):
        Engine.from_model_dir(d)
