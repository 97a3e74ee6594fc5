"""Image bytes for tests, made with Pillow and OpenCV (every mode the decoder must handle)."""
from __future__ import annotations

import io
import struct
import zlib

import cv2
import numpy as np
from PIL import Image

RED, GREEN, BLUE = (230, 20, 20), (20, 200, 30), (20, 30, 220)


def scene(width=320, height=240):
    """RGB uint8: left half red, right half blue, a green square in the middle."""
    rgb = np.zeros((height, width, 3), np.uint8)
    rgb[:, : width // 2] = RED
    rgb[:, width // 2:] = BLUE
    rgb[height // 3: 2 * height // 3, width // 3: 2 * width // 3] = GREEN
    return rgb


def pil_bytes(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def jpeg(rgb=None, **kw) -> bytes:
    return pil_bytes(Image.fromarray(scene() if rgb is None else rgb), "JPEG", quality=95, **kw)


def png(rgb=None, **kw) -> bytes:
    return pil_bytes(Image.fromarray(scene() if rgb is None else rgb), "PNG", **kw)


def png_chunk(ctype: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + ctype + body + struct.pack(">I", zlib.crc32(body, zlib.crc32(ctype)))


def png_bomb(side=30000) -> bytes:
    """A valid 1-bit grayscale PNG of side x side pixels that compresses to about 100 KB."""
    row = b"\x00" + b"\x00" * ((side + 7) // 8)
    comp = zlib.compressobj(9)
    data = b"".join(comp.compress(row) for _ in range(side)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", data) + png_chunk(b"IEND", b"")


def png16(rgb=None) -> bytes:
    rgb = scene() if rgb is None else rgb
    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR).astype(np.uint16) * 257)
    assert ok
    return buf.tobytes()
