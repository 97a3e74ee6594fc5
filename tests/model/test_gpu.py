"""GPUAcceleration=GPU on a machine that has one (run on the lent GPU machine; skipped in CI).

The contract either way: GPU asked means the model really runs on the GPU, or a clear
DeviceUnavailableError; never a silent CPU fallback.
"""
import sys
from pathlib import Path

import numpy as np
import pytest

from connector.model.backends import open_backend
from connector.model.engine import Engine
from connector.errors import DeviceUnavailableError
from connector.model.directory import open_model_directory
from connector.demos import model_path
from tests import images

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
from shapes_dataset import make_sample  # noqa: E402

ort = pytest.importorskip("onnxruntime")
HAS_CUDA = "CUDAExecutionProvider" in ort.get_available_providers()


@pytest.mark.skipif(not HAS_CUDA, reason="no CUDA build of ONNX Runtime here")
@pytest.mark.parametrize("name", ["demo-ssd", "demo-yolov3"])
def test_onnx_model_runs_on_cuda_and_matches_cpu(name):
    gpu = Engine.from_model_dir(model_path(name), device="gpu")
    assert gpu.backend.device == "gpu"
    assert gpu.backend._session.get_providers()[0] == "CUDAExecutionProvider"
    cpu = Engine.from_model_dir(model_path(name), device="cpu")
    for seed in range(3):
        data = images.png(make_sample(seed, 640, 480)[0])
        a, b = gpu.infer(data, "image/png")["prediction"], cpu.infer(data, "image/png")["prediction"]
        strong = [r for r in b if r[1] > 0.3]
        assert strong, "the demo model should find something"
        for ra, rb in zip(a[:len(strong)], strong):
            assert ra[0] == rb[0] and np.allclose(ra[1:], rb[1:], atol=2e-3)


def test_dlr_gpu_is_used_or_refused_never_cpu(tmp_path):
    pytest.importorskip("dlr")
    from tests.dlr_fixture.build import build_dlr_model
    build_dlr_model(tmp_path)
    try:
        backend = open_backend(open_model_directory(str(tmp_path)), "gpu")
    except DeviceUnavailableError as e:
        assert "GPU" in str(e)
    else:
        assert backend.device == "gpu"
