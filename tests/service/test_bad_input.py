"""Bad input through one real ``serve`` process (DLR fixture model, the SDK, real HTTP).

One case per test id. For each: the caller gets an error naming what was wrong (asserted on key
words that only that case's message has), no worker died or was replaced (same worker pid in
/healthz, restarts == crashes == 0), the service counted the request as refused when it reached
the service (image errors) and not when the IPC host refused it first (token, body size), and the
next good request is answered with the exact box.

The host's body limit (IPCHost max_body_bytes, 16 MiB) is not a parameter of ``serve``; the
over-the-limit case sends 16 MiB + 1 bytes to the real process, and tests/ipc/test_fuzz_ipc.py checks
a configured small limit at the host level.
"""
from __future__ import annotations

import http.client
import io
import json
import struct
import sys
import zlib
from typing import Callable, NamedTuple, Optional, Sequence

import cv2
import numpy as np
import pytest
from PIL import Image

from connector.model import imaging
from connector.ipc import protocol
from connector.ipc.host import DEFAULT_MAX_BODY_BYTES
from tests import images
from tests.dlr_fixture.build import RED, blank_image, build_dlr_model, draw_box
from tests.service_process import ROOT, healthz, start_serve

sys.path.insert(0, str(ROOT / "ml_sdk"))
import greengrass_machine_learning_sdk as ml  # noqa: E402

SERVICE = "objectDetection"
BOX = (64, 128, 256, 384)


# -- inputs -----------------------------------------------------------------------------------------

def scene() -> np.ndarray:
    return draw_box(blank_image(), RED, *BOX)


def good_png() -> bytes:
    return images.png(scene())


def good_jpeg() -> bytes:
    return images.jpeg(scene())


def pillow(fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(scene()).save(buf, fmt, **kw)
    return buf.getvalue()


def png_with_bad_crc() -> bytes:
    data = bytearray(good_png())
    idat = data.index(b"IDAT")
    data[idat + 4 + 20] ^= 0x55  # a byte of the compressed pixels; the chunk's CRC is left as it was
    return bytes(data)


def png_claiming(width: int, height: int) -> bytes:
    """A complete, CRC-correct PNG whose IHDR promises width x height; its IDAT holds one row."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" + b"\x00" * 3)
    return (b"\x89PNG\r\n\x1a\n" + images.png_chunk(b"IHDR", ihdr) + images.png_chunk(b"IDAT", idat)
            + images.png_chunk(b"IEND", b""))


def png_bomb(side: int = 30000) -> bytes:
    """A real single-colour (red) side x side PNG: 1-bit palette rows, about 110 KB compressed,
    2.7 GB as decoded RGB."""
    row = b"\x00" * (1 + (side + 7) // 8)  # filter "none", every pixel palette index 0
    assert side % 1000 == 0
    compressor = zlib.compressobj(9)
    block = row * 1000
    idat = b"".join(compressor.compress(block) for _ in range(side // 1000)) + compressor.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 3, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + images.png_chunk(b"IHDR", ihdr)
            + images.png_chunk(b"PLTE", bytes(RED)) + images.png_chunk(b"IDAT", idat)
            + images.png_chunk(b"IEND", b""))


def jpeg_claiming(width: int, height: int) -> bytes:
    data = bytearray(good_jpeg())
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def cv2_encoded(ext: str) -> bytes:
    ok, buf = cv2.imencode(ext, cv2.cvtColor(scene(), cv2.COLOR_RGB2BGR))
    assert ok
    return buf.tobytes()


class Case(NamedTuple):
    id: str
    body: Callable[[], bytes]
    content_type: Optional[str]
    words: Sequence[str]  # all must be in the error message
    via: str = "sdk"  # "sdk", "sdk-wrong-token" or "http-no-token"
    refused_by_service: bool = True  # False: the IPC host refuses it before the service sees it


CASES = [
    Case("truncated-png", lambda: good_png()[:len(good_png()) // 2], "image/png",
         ["PNG image is truncated", "IDAT"]),
    Case("truncated-jpeg", lambda: good_jpeg()[:len(good_jpeg()) // 2], "image/jpeg",
         ["JPEG image is truncated", "end-of-image marker is missing"]),
    Case("truncated-png-header", lambda: good_png()[:20], "image/png", ["PNG image is truncated"]),
    Case("png-bad-crc", png_with_bad_crc, "image/png", ["PNG image is corrupt", "IDAT", "fails its CRC"]),
    Case("random-bytes", lambda: b"\x13\x37" + np.random.default_rng(1).bytes(4094), "image/jpeg",
         ["not a JPEG or PNG image", "unknown leading bytes 1337"]),
    Case("plain-text", lambda: b"This is not an image, it is a sentence.", "image/png",
         ["the body is text", "This is not an image"]),
    Case("empty-body", lambda: b"", "image/png", ["the image is empty (0 bytes)"]),
    Case("gif", lambda: pillow("GIF"), "image/png", ["the image is GIF, not JPEG or PNG"]),
    Case("bmp", lambda: cv2_encoded(".bmp"), "image/png", ["the image is BMP, not JPEG or PNG"]),
    Case("tiff", lambda: pillow("TIFF"), "image/jpeg", ["the image is TIFF, not JPEG or PNG"]),
    Case("webp", lambda: pillow("WEBP", quality=90), "image/png", ["WebP, not JPEG or PNG"]),
    Case("png-header-claims-huge-size", lambda: png_claiming(2 ** 31 - 1, 2 ** 31 - 1), "image/png",
         ["2147483647x2147483647", "over the limit of"]),
    Case("jpeg-header-claims-huge-size", lambda: jpeg_claiming(65500, 65500), "image/jpeg",
         ["65500x65500", "over the limit of"]),
    Case("png-decompression-bomb", png_bomb, "image/png",
         ["30000x30000 = 900000000 pixels", "over the limit of"]),
    Case("content-type-gif", good_png, "image/gif", ["content type 'image/gif' is not supported"]),
    Case("content-type-text", good_png, "text/plain", ["content type 'text/plain' is not supported"]),
    Case("content-type-missing", good_png, None, ["no content type given"]),
    Case("body-over-host-limit", lambda: good_png().ljust(DEFAULT_MAX_BODY_BYTES + 1, b"\x00"),
         "image/png", ["413", "over the limit of {} bytes".format(DEFAULT_MAX_BODY_BYTES)],
         refused_by_service=False),
    Case("missing-token", good_png, "image/png", ["401", "missing Authorization header"],
         via="http-no-token", refused_by_service=False),
    Case("wrong-token", good_png, "image/png", ["403", "wrong Authorization token"],
         via="sdk-wrong-token", refused_by_service=False),
]


# -- the service ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def service(tmp_path_factory):
    model_dir = tmp_path_factory.mktemp("dlr-model")
    build_dlr_model(model_dir)
    tmp = tmp_path_factory.mktemp("serve")
    with pytest.MonkeyPatch.context() as env:
        for name in ("AWS_CONTAINER_AUTHORIZATION_TOKEN", "MY_FUNCTION_ARN", "GG_DAEMON_PORT",
                     "AWS_REGION", "GGC_MAX_INTERFACE_VERSION", "GG_ML_INFERENCE_FUNCTION_ARNS"):
            env.delenv(name, raising=False)
        proc, info, proc_env = start_serve(tmp, model_dir)
        env.setenv("GG_ML_IPC_FILE", proc_env["GG_ML_IPC_FILE"])
        try:
            status, health = healthz(info["port"], info["token"])
            assert status == 200 and health["worker"]["restarts"] == 0, health
            yield {"proc": proc, "info": info, "pid": health["worker"]["worker_pid"], "tmp": tmp, "used": set(),
                   "ipc_file": proc_env["GG_ML_IPC_FILE"]}
        finally:
            assert proc.stop() == 0, proc.log()


def invoke(body: bytes, content_type: Optional[str] = "image/png") -> str:
    kwargs = dict(AlgoType="object-detection", ServiceName=SERVICE, Body=body)
    if content_type is not None:
        kwargs["ContentType"] = content_type
    response = ml.client("inference").invoke_inference_service(**kwargs)
    return response["Body"].read().decode("utf-8")


def post_without_token(port: int, body: bytes, content_type: str) -> "tuple[int, str]":
    arn = protocol.inference_function_arn("us-east-1", "object-detection", SERVICE)
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request("POST", protocol.function_path(arn), body=body, headers={
            protocol.HEADER_CLIENT_CONTEXT: protocol.encode_client_context({"Content-Type": content_type})})
        response = connection.getresponse()
        return response.status, protocol.error_message_of(response.read())
    finally:
        connection.close()


def error_of(case: Case, service, monkeypatch) -> str:
    """The message the caller gets for `case` (and checks the kind of failure)."""
    body = case.body()
    if case.via == "http-no-token":
        status, message = post_without_token(service["info"]["port"], body, case.content_type)
        assert status == 401
        return "{} {}".format(status, message)
    if case.via == "sdk-wrong-token":
        forged = service["tmp"] / "wrong-token-ipc.json"
        forged.write_text(json.dumps(dict(service["info"], token=service["info"]["token"][::-1])))
        monkeypatch.setenv("GG_ML_IPC_FILE", str(forged))
    expected = ml.GreengrassInferenceException if case.refused_by_service \
        else ml.GreengrassDependencyException
    with pytest.raises(expected) as error:
        invoke(body, case.content_type)
    if case.refused_by_service:
        assert error.value.error_type == "InvalidImageError", error.value.error_type
    return str(error.value)


def next_box(service) -> "tuple[int, int, int, int]":
    """A box no earlier good request used, so that an answer cannot be a stale one."""
    index = len(service["used"]) + 1
    box = (8 * index, 4 * index, 8 * index + 100, 4 * index + 150)
    service["used"].add(box)
    return box


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_refused_clearly_and_the_worker_survives(case, service, monkeypatch):
    port, token = service["info"]["port"], service["info"]["token"]
    before = healthz(port, token)[1]
    message = error_of(case, service, monkeypatch)
    for words in case.words:
        assert words in message, message
    monkeypatch.setenv("GG_ML_IPC_FILE", service["ipc_file"])  # the real token again

    status, health = healthz(port, token)
    assert status == 200, health
    assert health["worker"]["worker_pid"] == service["pid"], health  # the same worker, never restarted
    assert health["worker"]["restarts"] == 0 and health["worker"]["crashes"] == 0, health
    assert health["board"]["timeouts"] == 0 and health["worker"]["memory_limit_exceeded"] == 0, health
    assert health["worker"]["state"] == "ready", health
    assert health["requests"]["refused"] - before["requests"]["refused"] == (1 if case.refused_by_service else 0), health

    x0, y0, x1, y1 = next_box(service)
    text = invoke(images.png(draw_box(blank_image(), RED, x0, y0, x1, y1)))
    assert json.loads(text) == {"prediction": [[0, 1.0, x0 / 512, y0 / 512, x1 / 512, y1 / 512]]}
    assert healthz(port, token)[1]["worker"]["worker_pid"] == service["pid"]


def test_the_inputs_are_what_their_names_say():
    """The matrix is only worth something if the files are real: check them outside the service."""
    assert imaging.image_size(good_png()) == ("png", 512, 512)
    bomb = png_bomb()
    assert len(bomb) < 200_000 and imaging.image_size(bomb) == ("png", 30000, 30000)
    idat = bomb[bomb.index(b"IDAT") + 4:bomb.index(b"IEND") - 8]
    assert len(zlib.decompress(idat)) == 30000 * (1 + 30000 // 8)  # 2.7 GB of RGB once decoded
    assert imaging.image_size(png_claiming(2 ** 31 - 1, 2 ** 31 - 1))[1:] == (2 ** 31 - 1,) * 2
    assert imaging.image_size(jpeg_claiming(65500, 65500)) == ("jpeg", 65500, 65500)
    for make, fmt in ((lambda: pillow("GIF"), "GIF"), (lambda: cv2_encoded(".bmp"), "BMP"),
                      (lambda: pillow("TIFF"), "TIFF"), (lambda: pillow("WEBP", quality=90), "WEBP")):
        assert Image.open(io.BytesIO(make())).format == fmt
    corrupt = png_with_bad_crc()
    assert len(corrupt) == len(good_png()) and corrupt != good_png()
