import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image

from connector.model import imaging
from connector.errors import InvalidImageError
from tests import images
from tests.images import BLUE, GREEN, RED


def colour_at(rgb, fx, fy):
    h, w = rgb.shape[:2]
    return rgb[int(fy * h), int(fx * w)].astype(int)


def assert_scene(rgb, tol=20, size=(240, 320)):
    """The decoded array is 8-bit RGB with the scene's colours where they belong."""
    assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3
    assert rgb.shape[:2] == size
    for (fx, fy), want in (((0.1, 0.1), RED), ((0.9, 0.9), BLUE), ((0.5, 0.5), GREEN)):
        assert np.abs(colour_at(rgb, fx, fy) - want).max() <= tol, (fx, fy, colour_at(rgb, fx, fy), want)


def pil_mode(mode, fmt, **kw):
    img = Image.fromarray(images.scene())
    # An adaptive palette keeps the scene's few colours exact (the default web palette dithers).
    img = img.convert("P", palette=Image.Palette.ADAPTIVE, colors=8) if mode == "P" else img.convert(mode)
    return images.pil_bytes(img, fmt, **kw)


@pytest.mark.parametrize("data", [images.jpeg(), images.png(), images.png16(),
                                  images.jpeg(progressive=True), pil_mode("RGBA", "PNG"),
                                  pil_mode("P", "PNG")],
                         ids=["jpeg", "png", "png16", "progressive", "rgba", "palette"])
def test_colour_inputs_decode_to_rgb(data):
    assert_scene(imaging.decode_image(data))


def test_cmyk_jpeg():
    # CMYK JPEGs (print workflows, Adobe) are inverted-CMYK; colours must still come out right.
    assert_scene(imaging.decode_image(pil_mode("CMYK", "JPEG", quality=95)), tol=30)


@pytest.mark.parametrize("mode,fmt", [("L", "JPEG"), ("L", "PNG"), ("LA", "PNG"), ("I;16", "PNG")])
def test_gray_inputs_become_three_equal_channels(mode, fmt):
    gray = np.tile(np.linspace(0, 255, 320).astype(np.uint8), (240, 1))
    img = Image.fromarray(gray).convert("LA") if mode == "LA" else Image.fromarray(gray)
    if mode == "I;16":
        img = Image.fromarray(gray.astype(np.uint16) * 257)
    rgb = imaging.decode_image(images.pil_bytes(img, fmt))
    assert rgb.shape == (240, 320, 3) and rgb.dtype == np.uint8
    assert np.abs(rgb[:, :, 0].astype(int) - gray).max() <= 3
    assert (rgb[:, :, 0] == rgb[:, :, 1]).all() and (rgb[:, :, 1] == rgb[:, :, 2]).all()


def test_exif_orientation_is_applied():
    # Stored landscape (320x240) with orientation 6 (rotate 90 CW to display): decoded is portrait,
    # and the left half (red) ends up on top.
    exif = Image.Exif()
    exif[0x0112] = 6
    rgb = imaging.decode_image(images.jpeg(exif=exif.tobytes()))
    assert rgb.shape[:2] == (320, 240)
    assert np.abs(colour_at(rgb, 0.5, 0.1) - RED).max() <= 20
    assert np.abs(colour_at(rgb, 0.5, 0.9) - BLUE).max() <= 20


def test_header_size_is_read_without_decoding():
    assert imaging.image_size(images.jpeg()) == ("jpeg", 320, 240)
    assert imaging.image_size(images.png()) == ("png", 320, 240)
    assert imaging.image_size(images.jpeg(progressive=True)) == ("jpeg", 320, 240)


@pytest.mark.parametrize("name,data,words", [
    ("empty", b"", "empty"),
    ("text", b"hello, this is not an image\n", "text"),
    ("random", bytes(np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8)), "not a JPEG or PNG"),
    ("gif", pil_mode("P", "GIF"), "GIF"),
    ("bmp", pil_mode("RGB", "BMP"), "BMP"),
    ("tiff", pil_mode("RGB", "TIFF"), "TIFF"),
    ("webp", pil_mode("RGB", "WEBP"), "WebP"),
    ("jpeg-cut-in-half", images.jpeg()[: len(images.jpeg()) // 2], "truncated"),
    ("jpeg-headers-only", images.jpeg()[:300], "truncated"),
    ("jpeg-soi-only", b"\xff\xd8\xff", "truncated"),
    ("progressive-cut", images.jpeg(progressive=True)[:-400], "truncated"),
    ("png-cut-in-half", images.png()[: len(images.png()) // 2], "truncated"),
    ("png-no-iend", images.png()[:-12], "truncated"),
    ("png-signature-only", images.png()[:8], "truncated"),
])
def test_bad_inputs_raise_invalid_image(name, data, words):
    with pytest.raises(InvalidImageError) as e:
        imaging.decode_image(data)
    assert words in str(e.value)


def test_png_bad_crc():
    data = bytearray(images.png())
    data[40] ^= 0xFF  # inside the first IDAT chunk's data
    with pytest.raises(InvalidImageError, match="CRC"):
        imaging.decode_image(bytes(data))


def test_png_corrupt_pixel_data_with_valid_crcs():
    # Recompute the CRC after damaging the zlib stream: only the decoder can notice.
    idat = b"this is not a zlib stream at all"
    data = (b"\x89PNG\r\n\x1a\n" + images.png_chunk(b"IHDR", images.png()[16:29])
            + images.png_chunk(b"IDAT", idat) + images.png_chunk(b"IEND", b""))
    with pytest.raises(InvalidImageError, match="corrupt"):
        imaging.decode_image(data)


def test_jpeg_corrupt_header_marker():
    data = bytearray(images.jpeg())
    data[2:4] = b"\x00\x00"
    with pytest.raises(InvalidImageError, match="JPEG"):
        imaging.decode_image(bytes(data))


def test_zero_size_header():
    data = (b"\x89PNG\r\n\x1a\n" + images.png_chunk(b"IHDR", b"\x00\x00\x00\x00\x00\x00\x00\x10\x08\x02\x00\x00\x00")
            + images.png_chunk(b"IEND", b""))
    with pytest.raises(InvalidImageError, match="empty image"):
        imaging.decode_image(data)


def test_pixel_limit_checked_from_header():
    data = images.png(np.zeros((100, 200, 3), np.uint8))
    assert imaging.decode_image(data, max_pixels=20000).shape == (100, 200, 3)
    with pytest.raises(InvalidImageError, match="200x100 = 20000 pixels, over the limit of 19999"):
        imaging.decode_image(data, max_pixels=19999)


def test_decompression_bomb_never_allocates_its_pixels():
    # 30000 x 30000 decoded to BGR would take 2.7 GB; the check must stop it first.
    script = textwrap.dedent("""
        import resource, sys
        sys.path.insert(0, %r)
        from connector.model import imaging
        from connector.errors import InvalidImageError
        from tests import images
        bomb = images.png_bomb(30000)
        assert len(bomb) < 500_000, len(bomb)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        try:
            imaging.decode_image(bomb)
        except InvalidImageError as e:
            print("refused:", e)
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print("growth_kb", after - before)
    """) % (sys.path[0] if sys.path[0] else ".",)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                         cwd=str(__import__("pathlib").Path(__file__).resolve().parents[2]))
    assert out.returncode == 0, out.stderr
    assert "refused: the image is 30000x30000 = 900000000 pixels, over the limit" in out.stdout
    growth = int(out.stdout.split("growth_kb")[1])
    assert growth < 50_000, out.stdout


@pytest.mark.parametrize("ctype", [None, "", "image/gif", "text/plain", "application/octet-stream", "jpeg"])
def test_content_type_refused(ctype):
    with pytest.raises(InvalidImageError, match="content type"):
        imaging.check_content_type(ctype)


@pytest.mark.parametrize("ctype", ["image/jpeg", "image/png", "IMAGE/JPEG", "image/png; q=1"])
def test_content_type_accepted(ctype):
    assert imaging.check_content_type(ctype) in ("image/jpeg", "image/png")


def test_declared_type_is_checked_but_format_comes_from_bytes():
    # A PNG declared as image/jpeg decodes (the bytes decide); a GIF declared as PNG does not.
    assert_scene(imaging.decode_image(images.png(), "image/jpeg"))
    with pytest.raises(InvalidImageError, match="GIF"):
        imaging.decode_image(pil_mode("P", "GIF"), "image/png")
    with pytest.raises(InvalidImageError, match="content type"):
        imaging.decode_image(images.png(), "image/gif")


# -- the decoder's memory estimate against the real peak (issue 9, point 7) -------------------------

PEAK_SCRIPT = textwrap.dedent("""
    import sys
    sys.path.insert(0, {root!r})
    from connector.model import imaging

    def status(key):
        for line in open("/proc/self/status"):
            if line.startswith(key):
                return int(line.split()[1])

    data = open({path!r}, "rb").read()
    cost = imaging.decode_cost(data)
    open("/proc/self/clear_refs", "w").write("5")  # reset the peak (VmHWM) to now
    before = status("VmRSS:")
    pixels = imaging.decode_bgr(data, max_bytes=cost.bytes)
    print(cost.bytes, (status("VmHWM:") - before) * 1024, cost.kind)
""")


def _encode(kind: str, image: Image.Image) -> bytes:
    import io
    buf = io.BytesIO()
    save = {
        "baseline-420": lambda: image.save(buf, "JPEG", quality=90),
        "baseline-444": lambda: image.save(buf, "JPEG", quality=90, subsampling=0),
        "progressive-420": lambda: image.save(buf, "JPEG", quality=90, progressive=True),
        "progressive-444": lambda: image.save(buf, "JPEG", quality=90, progressive=True, subsampling=0),
        "cmyk": lambda: image.convert("CMYK").save(buf, "JPEG", quality=90),
        "cmyk-progressive": lambda: image.convert("CMYK").save(buf, "JPEG", quality=90, progressive=True),
        "gray-progressive": lambda: image.convert("L").save(buf, "JPEG", quality=90, progressive=True),
        "png-rgb": lambda: image.save(buf, "PNG", compress_level=1),
        "png-rgba": lambda: image.convert("RGBA").save(buf, "PNG", compress_level=1),
        "png-palette": lambda: image.convert("P").save(buf, "PNG", compress_level=1),
        # From a uint16 array: older Pillow (Python 3.7's) cannot convert RGB to I;16.
        "png-gray16": lambda: Image.fromarray(np.asarray(image.convert("L")).astype(np.uint16) * 257)
        .save(buf, "PNG", compress_level=1),
    }[kind]
    save()
    return buf.getvalue()


@pytest.mark.parametrize("kind", ["baseline-420", "baseline-444", "progressive-420", "progressive-444",
                                  "cmyk", "cmyk-progressive", "gray-progressive", "png-rgb",
                                  "png-rgba", "png-palette", "png-gray16"])
def test_decode_memory_estimate_holds_against_the_real_peak(tmp_path, kind):
    """Each kind decoded in a fresh process: the estimate (what the worker checks against its
    memory limit from the header) covers the real peak, and is not so loose it refuses for nothing."""
    rng = np.random.default_rng(7)
    small = rng.integers(0, 255, (250, 375, 3), dtype=np.uint8)
    image = Image.fromarray(small).resize((3000, 2000))  # 6 Mpx of smooth noise
    path = tmp_path / "image.bin"
    path.write_bytes(_encode(kind, image))
    root = str(__import__("pathlib").Path(__file__).resolve().parents[2])
    out = subprocess.run([sys.executable, "-c", PEAK_SCRIPT.format(root=root, path=str(path))],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=120)
    assert out.returncode == 0, out.stderr.decode()
    estimate, peak, label = out.stdout.decode().split(" ", 2)
    estimate, peak = int(estimate), int(peak)
    assert peak > 6_000_000 * 3  # the decoded image itself was measured
    assert estimate >= peak, "{}: estimated {} bytes, the decoder peaked at {}".format(label, estimate, peak)
    assert estimate <= 1.6 * peak, "{}: estimate {} is far above the peak {}".format(label, estimate, peak)


def test_progressive_cmyk_at_the_pixel_limit_is_refused_from_its_header():
    # The pixel limit alone (9 bytes a pixel) let this through and pushed the worker over its limit.
    image = Image.fromarray(np.full((400, 500, 3), 90, np.uint8)).convert("CMYK")
    import io
    buf = io.BytesIO()
    image.save(buf, "JPEG", progressive=True, subsampling=0)
    data = buf.getvalue()
    pixels = 400 * 500
    assert imaging.decode_cost(data).bytes_per_pixel > imaging.BYTES_PER_DECODED_PIXEL
    with pytest.raises(InvalidImageError, match=r"progressive 4-component JPEG needs about"):
        imaging.decode_bgr(data, max_pixels=pixels, max_bytes=pixels * imaging.BYTES_PER_DECODED_PIXEL)
    # without a byte budget, the pixel limit's bytes (8 a pixel) are the budget
    assert imaging.decode_bgr(data, max_pixels=2 * pixels).shape == (400, 500, 3)
