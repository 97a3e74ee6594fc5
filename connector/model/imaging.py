"""Image bytes to pixels, refusing anything that could hurt the service.

The format is taken from the bytes, never from the declared content type or a file name. Before
any pixel is decoded, the structure is walked (cheap: a few `find` calls and CRCs) so that:

* the pixel count comes from the header and is checked against a limit, so a decompression bomb
  never allocates its pixels;
* truncated files are refused. OpenCV would silently grey-fill a JPEG cut in half, and a
  truncated PNG may decode partially;
* PNG chunk CRCs are verified, so a damaged file is named as such.

OpenCV then decodes (with EXIF orientation applied), converting every PNG colour type and bit
depth and CMYK or progressive JPEG to 8-bit colour.

Decoding memory (:func:`decode_cost`, checked against a byte budget before decoding): OpenCV
holds the 3-byte BGR result plus about as much again of working buffers, 6.3 bytes a pixel
measured for every PNG kind and for baseline JPEG with PyPI's OpenCV wheel, 8.1 with Debian 12's
OpenCV 4.6 (ARMv7); we count 9. A progressive JPEG (and a sequential one whose first scan does
not carry every component) is decoded by libjpeg from a buffer of all its DCT coefficients, 2
bytes per sample of every component plane, so 3 for 4:2:0 YCbCr, 6 for 4:4:4 and 8 for CMYK at
full resolution: 9.2 and 11.2 bytes a pixel measured for the last two with the wheel, 11.1 and
13.1 with Debian's OpenCV. Such a file counts 5 + 1.1 x its coefficient bytes a pixel (at least 9).
``tests/model/test_imaging.py`` measures the real peak of each kind against this estimate.
"""
from __future__ import annotations

import struct
import zlib
from typing import Callable, Optional, Tuple

import cv2
import numpy as np

from ..errors import InvalidImageError, excerpt

ACCEPTED_CONTENT_TYPES = ("image/jpeg", "image/png")
DEFAULT_MAX_PIXELS = 40_000_000  # about 8K x 5K; the service lowers it from its memory limit
# Decoding holds the 3-byte BGR image plus the codec's buffers; 9 bytes a pixel leaves room for both.
BYTES_PER_DECODED_PIXEL = 9
# A coefficient-buffered JPEG (see the module docstring): output and working rows, plus its
# coefficients with a margin for block padding.
BUFFERED_JPEG_BASE = 5.0
COEFFICIENT_MARGIN = 1.1
_PROGRESSIVE_SOF = frozenset((0xC2, 0xC6, 0xCA, 0xCE))
_REDUCED_FLAGS = {2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4, 8: cv2.IMREAD_REDUCED_COLOR_8}

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_JPEG_SOI = b"\xff\xd8\xff"
# Signatures of formats people send by mistake, so the error can say what was received.
_OTHER_FORMATS = (
    (b"GIF87a", "GIF"), (b"GIF89a", "GIF"), (b"BM", "BMP"), (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"), (b"RIFF", "RIFF/WebP"), (b"\x00\x00\x01\x00", "ICO"),
    (b"%PDF", "PDF"), (b"\x1f\x8b", "gzip"), (b"PK\x03\x04", "ZIP"),
)
# Start-of-frame markers carry the image size; C4 (DHT), C8 (JPG) and CC (DAC) do not.
_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def pixel_limit_for_memory(free_kb: int) -> int:
    """The largest image (in pixels) of the cheapest kind whose decoding fits in `free_kb` of
    memory (the worker passes what the loaded model leaves of LocalInferenceServiceMemoryLimitKB);
    dearer kinds are held to the same bytes by :func:`decode_cost`."""
    return max(1, min(DEFAULT_MAX_PIXELS, free_kb * 1024 // BYTES_PER_DECODED_PIXEL))


class DecodeCost(object):
    """What decoding an image will take, from its header alone."""

    __slots__ = ("fmt", "width", "height", "kind", "bytes_per_pixel")

    def __init__(self, fmt: str, width: int, height: int, kind: str, bytes_per_pixel: float) -> None:
        self.fmt, self.width, self.height = fmt, width, height
        self.kind, self.bytes_per_pixel = kind, bytes_per_pixel

    @property
    def pixels(self) -> int:
        return self.width * self.height

    @property
    def bytes(self) -> int:
        return int(self.pixels * self.bytes_per_pixel)


def decode_cost(data: bytes) -> DecodeCost:
    """The estimated peak memory of decoding `data` (see the module docstring)."""
    fmt = sniff_format(data)
    if fmt == "png":
        width, height = _png_size(data)
        return _checked(DecodeCost("png", width, height, "PNG", BYTES_PER_DECODED_PIXEL))
    frame = _jpeg_frame(data)
    width, height = frame[0], frame[1]
    kind = "{}{}-component JPEG".format("progressive " if frame[2] else "", len(frame[3]))
    if not frame[2] and not frame[4]:
        return _checked(DecodeCost("jpeg", width, height, kind, BYTES_PER_DECODED_PIXEL))
    h_max = max(h for h, _ in frame[3]) or 1
    v_max = max(v for _, v in frame[3]) or 1
    coefficients = 2.0 * sum(h * v for h, v in frame[3]) / (h_max * v_max)
    per_pixel = max(float(BYTES_PER_DECODED_PIXEL),
                    BUFFERED_JPEG_BASE + COEFFICIENT_MARGIN * coefficients)
    return _checked(DecodeCost("jpeg", width, height, kind, per_pixel))


def _checked(cost: DecodeCost) -> DecodeCost:
    if cost.width <= 0 or cost.height <= 0:
        raise InvalidImageError("the {} header declares an empty image ({}x{})".format(
            cost.fmt.upper(), cost.width, cost.height))
    return cost


def check_content_type(content_type: Optional[str]) -> str:
    """Return the normalised content type, or raise if it is not image/jpeg or image/png."""
    if content_type is None or not str(content_type).strip():
        raise InvalidImageError("no content type given; send ContentType image/jpeg or image/png")
    media = str(content_type).split(";", 1)[0].strip().lower()
    if media not in ACCEPTED_CONTENT_TYPES:
        raise InvalidImageError("content type {} is not supported; send image/jpeg or image/png"
                                .format(excerpt(str(content_type), 100)))
    return media


def sniff_format(data: bytes) -> str:
    """'jpeg' or 'png' from the leading bytes; a clear error for anything else."""
    if not data:
        raise InvalidImageError("the image is empty (0 bytes)")
    if data.startswith(_PNG_SIGNATURE):
        return "png"
    if data.startswith(_JPEG_SOI):
        return "jpeg"
    for magic, name in _OTHER_FORMATS:
        if data.startswith(magic):
            raise InvalidImageError("the image is {}, not JPEG or PNG".format(name))
    head = bytes(data[:256])
    if all(32 <= b < 127 or b in (9, 10, 13) for b in head):
        raise InvalidImageError("the body is text ({!r}...), not a JPEG or PNG image".format(
            head[:40].decode("ascii")))
    raise InvalidImageError("the body is not a JPEG or PNG image (unknown leading bytes {})".format(
        head[:8].hex()))


def image_size(data: bytes) -> Tuple[str, int, int]:
    """(format, width, height) from the header, after checking the file is complete."""
    cost = decode_cost(data)
    return cost.fmt, cost.width, cost.height


def decode_bgr(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS,
               max_bytes: Optional[int] = None,
               reduction: Optional[Callable[[int, int], int]] = None) -> np.ndarray:
    """Decode to an 8-bit BGR array (OpenCV's native order), refusing bombs and broken files.

    :param max_bytes: memory decoding may take (default: max_pixels at 9 bytes a pixel), so a
        progressive CMYK JPEG within the pixel limit is still refused when it would not fit.
    :param reduction: (width, height) from the header -> 1, 2, 4 or 8: a JPEG is then decoded at
        1/factor of its size by libjpeg's DCT scaling (each side rounded up), which is cheaper
        than decoding it whole and averages like an area resize. PNGs are always decoded whole.
        The limits above still apply to the full size (a reduced decode needs less).
    """
    cost = decode_cost(data)
    fmt, width, height = cost.fmt, cost.width, cost.height
    if width * height > max_pixels:
        raise InvalidImageError("the image is {}x{} = {} pixels, over the limit of {} pixels".format(
            width, height, width * height, max_pixels))
    budget = max_bytes if max_bytes is not None else max_pixels * BYTES_PER_DECODED_PIXEL
    if cost.bytes > budget:
        raise InvalidImageError(
            "the {}x{} {} needs about {} MB to decode ({:.1f} bytes a pixel), over the {} MB the "
            "memory limit leaves; send a baseline JPEG or a smaller image".format(
                width, height, cost.kind, cost.bytes // 2 ** 20, cost.bytes_per_pixel,
                budget // 2 ** 20))
    # IMREAD_COLOR applies EXIF orientation and converts gray/alpha/palette/16-bit/CMYK to 8-bit BGR;
    # the IMREAD_REDUCED_COLOR_* flags do the same at 1/2, 1/4 or 1/8 of the size.
    factor = reduction(width, height) if reduction is not None and fmt == "jpeg" else 1
    pixels = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), _REDUCED_FLAGS.get(factor, cv2.IMREAD_COLOR))
    if pixels is None or pixels.size == 0:
        raise InvalidImageError("the {} image is corrupt: its pixel data cannot be decoded".format(
            fmt.upper()))
    return pixels


def decode_image(data: bytes, content_type: Optional[str] = None,
                 max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """JPEG or PNG bytes to an 8-bit RGB array (H, W, 3). A given content type is checked first."""
    if content_type is not None:
        check_content_type(content_type)
    return cv2.cvtColor(decode_bgr(data, max_pixels), cv2.COLOR_BGR2RGB)


def _png_size(data: bytes) -> Tuple[int, int]:
    pos, size, first, width, height = 8, len(data), True, 0, 0
    while True:
        if pos + 8 > size:
            raise InvalidImageError("the PNG image is truncated: it ends at byte {} before its IEND "
                                    "chunk".format(size))
        length, ctype = struct.unpack(">I4s", data[pos:pos + 8])
        end = pos + 12 + length
        if length > 0x7FFFFFFF or end > size:
            raise InvalidImageError("the PNG image is truncated: chunk {!r} at byte {} needs {} "
                                    "bytes, only {} remain".format(ctype, pos, length + 12, size - pos))
        body = data[pos + 8:pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length:end])
        if zlib.crc32(body, zlib.crc32(ctype)) != crc:
            raise InvalidImageError("the PNG image is corrupt: chunk {!r} at byte {} fails its CRC"
                                    .format(ctype, pos))
        if first:
            if ctype != b"IHDR" or length != 13:
                raise InvalidImageError("the PNG image is corrupt: it does not start with an IHDR "
                                        "header")
            width, height = struct.unpack(">II", body[:8])
            first = False
        if ctype == b"IEND":
            return width, height
        pos = end


def _jpeg_frame(data: bytes) -> Tuple[int, int, bool, "list[Tuple[int, int]]", bool]:
    """(width, height, progressive, [(h, v) sampling per component], buffered) of a complete
    JPEG; buffered: its first scan lacks some component, so libjpeg keeps all coefficients."""
    pos, size, dims = 2, len(data), None
    progressive, components = False, []
    while True:
        # Markers may be preceded by any number of 0xFF fill bytes.
        while pos < size and data[pos] == 0xFF and pos + 1 < size and data[pos + 1] == 0xFF:
            pos += 1
        if pos + 4 > size:
            raise InvalidImageError("the JPEG image is truncated inside its headers (at byte {})"
                                    .format(pos))
        if data[pos] != 0xFF:
            raise InvalidImageError("the JPEG image is corrupt: expected a marker at byte {}, found "
                                    "0x{:02x}".format(pos, data[pos]))
        marker = data[pos + 1]
        if marker == 0xD9:
            raise InvalidImageError("the JPEG image has no image data (end marker before any scan)")
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:
            pos += 2
            continue
        (length,) = struct.unpack(">H", data[pos + 2:pos + 4])
        if length < 2 or pos + 2 + length > size:
            raise InvalidImageError("the JPEG image is truncated: segment 0xFF{:02X} at byte {} "
                                    "needs {} bytes".format(marker, pos, length))
        if marker in _SOF_MARKERS:
            if length < 8:
                raise InvalidImageError("the JPEG image is corrupt: its frame header is too short")
            height, width = struct.unpack(">HH", data[pos + 5:pos + 9])
            dims = (width, height)
            progressive = marker in _PROGRESSIVE_SOF
            count = data[pos + 9] if pos + 9 < size else 0
            table = data[pos + 10:pos + 10 + 3 * count]
            components = [(table[i + 1] >> 4, table[i + 1] & 0x0F)
                          for i in range(0, len(table) - 2, 3)]
        if marker == 0xDA:  # start of scan: entropy-coded data follows
            if dims is None:
                raise InvalidImageError("the JPEG image is corrupt: a scan starts before any frame "
                                        "header")
            # 0xFF in entropy data is always stuffed (FF00) or a restart marker, so the first
            # FFD9 after the first scan is the real end of image; without it the file was cut.
            if data.find(b"\xff\xd9", pos + 2 + length) < 0:
                raise InvalidImageError("the JPEG image is truncated: its end-of-image marker is "
                                        "missing ({} bytes received)".format(size))
            scan_components = data[pos + 4] if pos + 4 < size else 0
            components = components or [(1, 1)]
            return (dims[0], dims[1], progressive, components,
                    progressive or scan_components < len(components))
        pos += 2 + length
