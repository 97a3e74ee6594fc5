"""Fixtures shared by the tests that run the service as a real process."""
import logging

import pytest

from tests.dlr_fixture.build import build_dlr_model


@pytest.fixture(autouse=True)
def _restore_root_logging():
    """A test that runs a command in-process (cli.main) points the root logger at that test's
    captured stderr; the next test would then log into a closed capture ('--- Logging error ---')."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A DLR fixture model directory (see tests/dlr_fixture), one per test module."""
    d = tmp_path_factory.mktemp("dlr-model")
    build_dlr_model(d)
    return d


@pytest.fixture()
def sdk_env(monkeypatch):
    """The SDK finds the host through the client file only (no Greengrass variables)."""
    for k in ("AWS_CONTAINER_AUTHORIZATION_TOKEN", "MY_FUNCTION_ARN", "GG_DAEMON_PORT", "AWS_REGION",
              "GGC_MAX_INTERFACE_VERSION", "GG_ML_INFERENCE_FUNCTION_ARNS"):
        monkeypatch.delenv(k, raising=False)
    return monkeypatch


@pytest.fixture(scope="session")
def s3_server():
    """moto's S3 server checking signatures (tests/feedback_servers.py), one per test session; a
    test that stops it starts it again."""
    from tests.feedback_servers import S3Server
    server = S3Server()
    yield server
    server.stop()


@pytest.fixture()
def broker(tmp_path):
    """A real mosquitto on a free loopback port for one test (tests/feedback_servers.py)."""
    from tests.feedback_servers import Broker
    b = Broker(tmp_path).start()
    yield b
    b.close()
