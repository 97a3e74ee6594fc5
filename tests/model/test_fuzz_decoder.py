"""Fuzz the decoder (bounded): whatever the bytes, the answer is pixels or InvalidImageError.

Mutations of real JPEG/PNG files reach deep into the header walk and the codecs; random bytes
and random prefixes exercise the format sniffing. Anything else (struct.error, IndexError, a
crash) would become a 500 or kill a worker.
"""
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from connector.model import imaging
from connector.errors import InvalidImageError
from tests import images

SEEDS = [images.jpeg(), images.jpeg(progressive=True), images.png(), images.png16(),
         images.png(np.zeros((7, 5, 3), np.uint8))]
FUZZ = settings(max_examples=400, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow])


def decode_or_refuse(data: bytes) -> None:
    try:
        rgb = imaging.decode_image(data, max_pixels=4_000_000)
    except InvalidImageError as e:
        assert str(e)  # a message a user can read
        return
    assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3 and rgb.size > 0


@st.composite
def mutated(draw):
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(["flip", "cut", "insert", "delete", "splice"]))
        pos = draw(st.integers(0, max(0, len(data) - 1)))
        if op == "flip" and data:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "cut":
            del data[pos:]
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif op == "delete":
            del data[pos:pos + draw(st.integers(1, 64))]
        elif op == "splice":
            data[pos:pos + 4] = draw(st.sampled_from([b"\xff\xd9", b"\xff\xda", b"\xff\xc0\x00\x11",
                                                      b"\xff\xff\xff\xff", b"\x00\x00\x00\x00", b"IEND"]))
    return bytes(data)


@FUZZ
@given(mutated())
def test_mutated_images(data):
    decode_or_refuse(data)


@FUZZ
@given(st.binary(max_size=2048))
def test_random_bytes(data):
    decode_or_refuse(data)


@FUZZ
@given(st.sampled_from([b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n"]), st.binary(max_size=512))
def test_valid_signature_then_garbage(head, tail):
    decode_or_refuse(head + tail)
