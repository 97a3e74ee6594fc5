"""DLRBackend against the real libdlr.so (dlr==1.6.0) running the hand-built fixture model.

No part of DLR is mocked: the fixture (tests/dlr_fixture) is a genuine TVM graph-runtime model
directory whose operator finds saturated red/green/blue regions, so boxes and classes can be
checked exactly.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from connector.model.backends import dlr_runtime
from connector.model.backends import open_backend
from connector.errors import BackendError, DeviceUnavailableError, ModelDirectoryError
from connector.model.directory import open_model_directory

if dlr_runtime.find_dlr_package() is None or shutil.which("gcc") is None:
    pytest.skip("needs the dlr package (dlr==1.6.0 wheel) and gcc", allow_module_level=True)
if not sys.platform.startswith("linux"):
    pytest.skip("the fixture is a Linux shared library", allow_module_level=True)

from tests.dlr_fixture.build import (BLUE, CRASH_PIXEL, ERROR_PIXEL, GREEN, RED,  # noqa: E402
                                     blank_image, build_dlr_model, detections, draw_box,
                                     installed_libdlr, metadata_json, params_bytes, set_trigger,
                                     sleep_pixel, to_tensor)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def load(path, device="cpu"):
    return open_backend(open_model_directory(str(path)), device)


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return build_dlr_model(tmp_path_factory.mktemp("dlr") / "model")


@pytest.fixture(scope="module")
def backend(model_path):
    b = load(model_path)
    yield b
    b.close()


def three_boxes():
    img = blank_image()
    draw_box(img, RED, 100, 50, 200, 120)     # 100 x 70 = 7000 px
    draw_box(img, GREEN, 300, 200, 420, 260)  # 120 x 60 = 7200 px
    draw_box(img, BLUE, 10, 400, 60, 500)     # 50 x 100 = 5000 px
    return img


def test_detects_classes_and_boxes_in_gluoncv_layout(backend):
    assert backend.name == "dlr" and backend.device == "cpu"
    assert backend.input_name == "data"
    assert backend.output_names == ["ids", "scores", "bboxes"]
    outputs = backend.run(to_tensor(three_boxes()))
    assert [o.shape for o in outputs] == [(1, 16, 1), (1, 16, 1), (1, 16, 4)]
    assert all(o.dtype == np.float32 for o in outputs)
    # Equal scores (solid rectangles fill their box) are ordered by pixel count.
    assert detections(outputs) == [
        (1, 1.0, [300.0, 200.0, 420.0, 260.0]),
        (0, 1.0, [100.0, 50.0, 200.0, 120.0]),
        (2, 1.0, [10.0, 400.0, 60.0, 500.0]),
    ]
    ids, scores, boxes = outputs
    assert (ids[0, 3:] == -1).all() and (scores[0, 3:] == -1).all() and (boxes[0, 3:] == -1).all()


def test_score_is_the_fill_ratio_and_rows_are_sorted_by_it(backend):
    import cv2
    img = blank_image()
    cv2.circle(img, (256, 256), 80, RED, thickness=-1)
    draw_box(img, BLUE, 10, 10, 30, 30)
    found = detections(backend.run(to_tensor(img)))
    assert [d[0] for d in found] == [2, 0]
    cls, score, box = found[1]
    assert abs(score - np.pi / 4) < 0.02
    assert box == [176.0, 176.0, 337.0, 337.0]


def test_each_connected_region_is_one_object_and_tiny_ones_are_ignored(backend):
    img = blank_image()
    draw_box(img, RED, 10, 10, 20, 20)      # 100 px
    draw_box(img, RED, 100, 100, 110, 110)  # a second red object
    draw_box(img, GREEN, 200, 200, 203, 203)  # 9 px < min_area 16
    found = detections(backend.run(to_tensor(img)))
    assert sorted(d[2] for d in found) == [[10.0, 10.0, 20.0, 20.0], [100.0, 100.0, 110.0, 110.0]]
    assert detections(backend.run(to_tensor(blank_image()))) == []


def test_keeps_the_best_n_rows_when_there_are_more_objects(backend):
    img = blank_image()
    for i in range(20):
        draw_box(img, BLUE, 20 * i + 2, 10, 20 * i + 12, 10 + 5 + i)  # growing heights
    found = detections(backend.run(to_tensor(img)))
    assert len(found) == 16
    # All fill their boxes; the 16 largest survive, largest first.
    assert [d[2][3] for d in found] == [10.0 + 5 + i for i in range(19, 3, -1)]


def test_parameters_from_the_params_file_are_used(tmp_path, backend):
    img = blank_image()
    draw_box(img, (220, 10, 10), 50, 50, 150, 150)  # red-ish: R 220
    draw_box(img, GREEN, 300, 300, 304, 304)         # 16 px
    assert [d[0] for d in detections(backend.run(to_tensor(img)))] == [0, 1]
    strict = load(build_dlr_model(tmp_path / "strict", high=250.0, min_area=17.0))
    assert detections(strict.run(to_tensor(img))) == []
    lenient = load(build_dlr_model(tmp_path / "lenient", low=5.0))  # G and B 10 > low
    assert [d[0] for d in detections(lenient.run(to_tensor(img)))] == [1]


@pytest.mark.parametrize("layout,dtype", [("NCHW", "float32"), ("NHWC", "uint8")])
def test_other_input_layouts_and_dtypes(tmp_path, layout, dtype):
    b = load(build_dlr_model(tmp_path / "m", layout=layout, input_dtype=dtype,
                             input_size=(300, 400)))
    img = blank_image(300, 400)
    draw_box(img, GREEN, 350, 20, 400, 300)
    assert detections(b.run(to_tensor(img, layout, dtype))) == [
        (1, 1.0, [350.0, 20.0, 400.0, 300.0])]


def test_operator_error_is_a_backend_error_and_the_model_stays_usable(model_path):
    b = load(model_path)
    img = set_trigger(three_boxes(), ERROR_PIXEL)
    with pytest.raises(BackendError) as e:
        b.run(to_tensor(img))
    assert "injected failure" in str(e.value) and model_path in str(e.value)
    assert "Stack trace" not in str(e.value)
    assert len(detections(b.run(to_tensor(three_boxes())))) == 3


def test_dlr_logs_are_routed_not_printed(model_path, capfd, caplog):
    caplog.set_level("DEBUG", logger="connector")
    b = load(model_path)
    with pytest.raises(BackendError):
        b.run(to_tensor(set_trigger(blank_image(), ERROR_PIXEL)))
    err = capfd.readouterr().err
    # dlr 1.6's own console handler would print these, with a traceback.
    assert "error in running inference" not in err and "Traceback" not in err
    assert any("error in running inference" in r.getMessage() and r.levelname == "DEBUG"
               for r in caplog.records)


def test_sleep_trigger_makes_the_run_slow(backend):
    img = set_trigger(three_boxes(), sleep_pixel(3))
    start = time.monotonic()
    found = detections(backend.run(to_tensor(img)))
    assert time.monotonic() - start >= 0.3
    assert len(found) == 3


CHILD = textwrap.dedent("""
    import json, sys
    import numpy as np
    from connector.model.backends import open_backend
    from connector.model.directory import open_model_directory
    from tests.dlr_fixture.build import blank_image, set_trigger, to_tensor
    model_dir, pixel = sys.argv[1], json.loads(sys.argv[2])
    b = open_backend(open_model_directory(model_dir), "cpu")
    img = blank_image()
    if pixel:
        set_trigger(img, tuple(pixel))
    b.run(to_tensor(img))
    with open("/proc/self/maps") as f:
        maps = sorted({line.split()[-1] for line in f if line.rstrip().endswith("libdlr.so")})
    print(json.dumps({"library": b.library, "mapped": maps}))
""")


def run_child(model_dir, pixel=None):
    env = dict(os.environ, PYTHONPATH=REPO)
    env.pop("PYTHONFAULTHANDLER", None)
    return subprocess.run([sys.executable, "-c", CHILD, str(model_dir), json.dumps(pixel)],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, timeout=120)


def test_crash_trigger_is_a_real_segfault(model_path):
    proc = run_child(model_path, CRASH_PIXEL)
    assert proc.returncode == -signal.SIGSEGV, proc.stderr.decode(errors="replace")


def test_libdlr_in_the_model_directory_is_the_one_loaded(tmp_path, model_path):
    shipped = build_dlr_model(tmp_path / "shipped", with_libdlr=True)
    proc = run_child(shipped)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    report = json.loads(proc.stdout.decode().splitlines()[-1])
    own = os.path.join(shipped, "libdlr.so")
    assert report == {"library": own, "mapped": [own]}
    # Without a copy in the directory the installed one is used.
    assert load(model_path).library == installed_libdlr()


def test_gpu_without_a_gpu_is_device_unavailable(model_path):
    if dlr_runtime.cuda_problem() is None:
        pytest.skip("this machine has a usable CUDA GPU")
    with pytest.raises(DeviceUnavailableError) as e:
        load(model_path, "gpu")
    assert "no usable GPU" in str(e.value) and "no CPU fallback" in str(e.value)


def test_gpu_with_a_cpu_only_runtime_is_device_unavailable(model_path, monkeypatch):
    # Pretend the CUDA driver is fine so that libdlr itself is asked for a GPU context: the
    # dlr 1.6.0 x86_64 wheel is built without CUDA and refuses ("Device API gpu is not enabled").
    from connector.model.backends import dlr_backend
    monkeypatch.setattr(dlr_backend, "cuda_problem", lambda: None)
    with pytest.raises(DeviceUnavailableError) as e:
        load(model_path, "gpu")
    assert "Device API gpu is not enabled" in str(e.value)
    assert "no CPU fallback" in str(e.value)


def truncate_params(d):
    with open(os.path.join(d, "model.params"), "r+b") as f:
        f.truncate(70)


def garbage_so(d):
    with open(os.path.join(d, "model.so"), "wb") as f:
        f.write(b"\x7fELF but not really" * 8)


def invalid_graph(d):
    with open(os.path.join(d, "model.json"), "w") as f:
        f.write('{"nodes": [], "arg_nodes": [0]')


def missing_operator(d):
    with open(os.path.join(d, "model.json")) as f:
        graph = f.read()
    with open(os.path.join(d, "model.json"), "w") as f:
        f.write(graph.replace("fixture_detect_nhwc", "no_such_function"))


def params_of_other_shape(d):
    with open(os.path.join(d, "model.params"), "wb") as f:
        f.write(params_bytes({"thresholds": np.zeros(5, np.float32)}))


def params_for_nothing(d):
    with open(os.path.join(d, "model.params"), "wb") as f:
        f.write(params_bytes({"weights": np.zeros(3, np.float32)}))


def compiled_for_gpu(d):
    with open(os.path.join(d, "model.meta"), "w") as f:
        json.dump(metadata_json(target_device_type="gpu"), f)


def garbage_libdlr(d):
    with open(os.path.join(d, "libdlr.so"), "wb") as f:
        f.write(b"not a library")


@pytest.mark.parametrize("breakage,words", [
    (truncate_params, "model.params is truncated or corrupt"),
    (garbage_so, "model.so is not a loadable shared library"),
    (invalid_graph, "model.json is not a valid TVM graph JSON"),
    (missing_operator, "names an operator function that"),
    (params_of_other_shape, "model.params does not match the graph"),
    (params_for_nothing, "has 2 inputs (data, thresholds)"),
    (compiled_for_gpu, 'requires device type "gpu"'),
    (garbage_libdlr, "broken/libdlr.so is not a loadable libdlr.so for this platform"),
])
def test_broken_model_directories_are_clear_backend_errors(tmp_path, model_path, breakage, words):
    d = str(tmp_path / "broken")
    shutil.copytree(model_path, d)
    breakage(d)
    with pytest.raises(BackendError) as e:
        load(d)
    assert words in str(e.value)
    assert repr(d) in str(e.value)


@pytest.mark.parametrize("name", ["model.params", "model.so", "model.json"])
def test_missing_or_empty_files_are_model_directory_errors(tmp_path, model_path, name):
    d = str(tmp_path / "broken")
    shutil.copytree(model_path, d)
    os.remove(os.path.join(d, name))
    with pytest.raises(ModelDirectoryError):
        load(d)
    open(os.path.join(d, name), "w").close()
    with pytest.raises(ModelDirectoryError, match="empty"):
        load(d)


def test_input_name_from_model_yaml_or_the_single_dlr_input(tmp_path, caplog):
    caplog.set_level("DEBUG", logger="connector")
    d = build_dlr_model(tmp_path / "m", input_name="image", with_meta=False)
    b = load(d)  # metadata default 'data' disagrees: the model's only input is used, and said
    assert b.input_name == "image" and b.output_names == []
    assert any("'image'" in r.getMessage() and "'data'" in r.getMessage() for r in caplog.records)
    assert len(detections(b.run(to_tensor(three_boxes())))) == 3
    with open(os.path.join(d, "model.yaml"), "w") as f:
        f.write("input_name: image\n")
    assert load(d).input_name == "image"


def test_wrong_input_size_and_closed_backend(model_path):
    b = load(model_path)
    with pytest.raises(BackendError, match="Mismatch found in input data size"):
        b.run(np.zeros((1, 256, 256, 3), np.float32))
    assert len(detections(b.run(to_tensor(three_boxes())))) == 3
    b.close()
    with pytest.raises(BackendError, match="closed"):
        b.run(to_tensor(three_boxes()))


def test_stderr_written_during_a_load_is_passed_through(model_path, capfd):
    # The load captures fd 2 to read libdlr's messages; other writers must not lose output.
    import logging

    class Fd2Handler(logging.Handler):
        # Straight to fd 2, like native code: pytest's capfd swaps sys.stderr separately.
        def emit(self, record):
            os.write(2, (self.format(record) + "\n").encode())

    handler = Fd2Handler()
    logger = logging.getLogger("connector.model.backends.dlr_backend")
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        load(model_path)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    err = capfd.readouterr().err
    assert "Could not find libdlr.so in model artifact" in err  # DLR's record, demoted
    assert "loaded DLR model" in err


def test_split_native_output_keeps_other_writers_text():
    text = ("[21:18:24] /workspace/src/dlr.cc:321: [21:18:24] /x/dso_library.cc:79: Check failed: "
            "lib_handle_ != nullptr: Failed to load\nStack trace:\n  [bt] (0) libdlr.so(+0x1)\n\n"
            "INFO other thread says hello\n")
    native, other = dlr_runtime.split_native_output(text)
    assert native == ["Check failed: lib_handle_ != nullptr: Failed to load"]
    assert other == "INFO other thread says hello\n"
