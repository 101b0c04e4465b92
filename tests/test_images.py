"""Safe decoding: every hostile or odd file is built here in code and gets its code."""

from __future__ import annotations

import io
import resource
import struct
import warnings
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image, ImageFile

from xmlcore.errors import ConfigError, ImageError
from xmlcore.images import decode_batch, decode_image, decode_many, encode_jpeg, encode_png

RNG = np.random.default_rng(0)
NOISE = RNG.integers(0, 256, (32, 48, 3), dtype=np.uint8)


def make_bytes(img: Image.Image, fmt: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, fmt, **params)
    return buffer.getvalue()


def make_png(arr: np.ndarray = NOISE) -> bytes:
    return make_bytes(Image.fromarray(arr), "PNG")


def make_jpeg(arr: np.ndarray = NOISE, **params: object) -> bytes:
    return make_bytes(Image.fromarray(arr), "JPEG", quality=95, **params)


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)


def raw_png(
    width: int,
    height: int,
    *,
    depth: int = 8,
    color: int = 2,
    extra: bytes = b"",
    rows: bytes = b"",
) -> bytes:
    """A hand-made PNG: the header may claim anything, the pixel data is ``rows``."""
    header = struct.pack(">IIBBBBB", width, height, depth, color, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + extra
        + png_chunk(b"IDAT", zlib.compress(rows))
        + png_chunk(b"IEND", b"")
    )


def decode_code(data: bytes, **kwargs: object) -> str:
    with pytest.raises(ImageError) as info:
        decode_image(data, **kwargs)  # type: ignore[arg-type]
    return info.value.code


# ------------------------------------------------------------------ good files


@pytest.mark.parametrize("fmt", ["PNG", "BMP", "TIFF", "GIF", "WEBP", "JPEG"])
def test_every_allowed_format_decodes_to_rgb_uint8(fmt: str) -> None:
    lossless = fmt in ("PNG", "BMP", "TIFF")
    params = {"lossless": True} if fmt == "WEBP" else {}
    out = decode_image(make_bytes(Image.fromarray(NOISE), fmt, **params))
    assert out.shape == (32, 48, 3)
    assert out.dtype == np.uint8
    if lossless or fmt == "WEBP":
        np.testing.assert_array_equal(out, NOISE)


def test_one_by_one_is_valid() -> None:
    pixel = np.array([[[10, 200, 30]]], dtype=np.uint8)
    np.testing.assert_array_equal(decode_image(make_png(pixel)), pixel)
    assert decode_image(make_jpeg(pixel)).shape == (1, 1, 3)


def test_sixteen_bit_grayscale_is_rescaled_not_clipped() -> None:
    values = np.array([[0, 257, 32768, 65535]], dtype=np.uint16)
    data = raw_png(4, 1, depth=16, color=0, rows=b"\x00" + values.astype(">u2").tobytes())
    assert Image.open(io.BytesIO(data)).mode.startswith("I")
    out = decode_image(data)
    # v * 255 / 65535 rounded: 0 -> 0, 257 -> 1, 32768 -> 127.5 -> 128, 65535 -> 255.
    np.testing.assert_array_equal(out[0, :, 0], [0, 1, 128, 255])
    np.testing.assert_array_equal(out[..., 0], out[..., 2])


def test_sixteen_bit_rgb_keeps_the_high_byte() -> None:
    values = np.array([[65535, 0, 32768]], dtype=">u2")
    out = decode_image(raw_png(1, 1, depth=16, rows=b"\x00" + values.tobytes()))
    np.testing.assert_array_equal(out[0, 0], [255, 0, 128])


def test_grayscale_and_palette_become_rgb() -> None:
    gray = RNG.integers(0, 256, (5, 7), dtype=np.uint8)
    out = decode_image(make_png(gray))
    np.testing.assert_array_equal(out, np.repeat(gray[..., None], 3, axis=2))
    palette = Image.fromarray(NOISE).quantize(colors=16)
    out = decode_image(make_bytes(palette, "PNG"))
    np.testing.assert_array_equal(out, np.asarray(palette.convert("RGB")))


def test_alpha_is_composited_on_white() -> None:
    rgba = np.array([[[0, 0, 0, 0], [255, 0, 0, 255], [255, 0, 0, 128]]], dtype=np.uint8)
    out = decode_image(make_png(rgba))
    # transparent black -> white; opaque red stays; half red over white: 255 - 255*128/255.
    np.testing.assert_array_equal(out[0, 0], [255, 255, 255])
    np.testing.assert_array_equal(out[0, 1], [255, 0, 0])
    assert out[0, 2, 0] == 255 and abs(int(out[0, 2, 1]) - 127) <= 1
    la = Image.fromarray(np.array([[[0, 0], [0, 255]]], dtype=np.uint8), mode="LA")
    np.testing.assert_array_equal(decode_image(make_bytes(la, "PNG"))[0], [[255] * 3, [0] * 3])


def test_cmyk_jpeg_becomes_rgb() -> None:
    data = make_bytes(Image.new("CMYK", (8, 8), (0, 255, 255, 0)), "JPEG", quality=95)
    out = decode_image(data)
    assert out.shape == (8, 8, 3)
    np.testing.assert_allclose(out.mean(axis=(0, 1)), [255, 0, 0], atol=6)


@pytest.mark.parametrize("fmt", ["GIF", "WEBP"])
def test_animated_images_give_their_first_frame(fmt: str) -> None:
    frames = [Image.new("RGB", (8, 6), colour) for colour in [(255, 0, 0), (0, 0, 255)]]
    data = make_bytes(frames[0], fmt, save_all=True, append_images=frames[1:], lossless=True)
    assert getattr(Image.open(io.BytesIO(data)), "n_frames", 1) == 2
    out = decode_image(data)
    assert out.shape == (6, 8, 3)
    np.testing.assert_array_equal(out[0, 0], [255, 0, 0])


def test_exif_orientation_is_applied() -> None:
    # Stored 10 high x 20 wide, left half red, right half blue; orientation 6 means "turn
    # 90 degrees clockwise to display": the left half becomes the top half, shape 20 x 10.
    stored = np.zeros((10, 20, 3), dtype=np.uint8)
    stored[:, :10] = (255, 0, 0)
    stored[:, 10:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6
    out = decode_image(make_jpeg(stored, exif=exif))
    assert out.shape == (20, 10, 3)
    np.testing.assert_allclose(out[:8].mean(axis=(0, 1)), [255, 0, 0], atol=12)
    np.testing.assert_allclose(out[12:].mean(axis=(0, 1)), [0, 0, 255], atol=12)


def test_resize_gives_the_exact_shape_with_an_area_aware_filter() -> None:
    checker = ((np.indices((64, 64)).sum(axis=0) % 2) * 255).astype(np.uint8)
    out = decode_image(make_png(checker), size=(8, 5))
    assert out.shape == (8, 5, 3)
    # A filter that averages over the source area turns a 1-pixel checkerboard grey;
    # nearest-neighbour or point-sampled bilinear would give 0s and 255s.
    assert np.abs(out.astype(int) - 127).max() <= 8
    assert decode_image(make_jpeg(), size=(7, 100)).shape == (7, 100, 3)


def test_jpeg_fast_path_matches_full_decode_closely() -> None:
    smooth = np.linspace(0, 255, 512 * 512 * 3).reshape(512, 512, 3).astype(np.uint8)
    data = make_jpeg(smooth)
    fast = decode_image(data, size=(64, 64)).astype(int)
    full = np.asarray(Image.fromarray(decode_image(data)).resize((64, 64))).astype(int)
    assert np.abs(fast - full).mean() < 2


# ------------------------------------------------------------------- bad files


def test_zero_bytes_and_too_many_bytes() -> None:
    assert decode_code(b"") == "image.empty"
    assert decode_code(make_png(), max_bytes=100) == "image.too_large"


@pytest.mark.parametrize(
    "data",
    [
        b"this is not a picture, only text in a file named photo.jpg\n",
        b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>',
        make_bytes(Image.new("RGB", (16, 16)), "ICO"),
        make_bytes(Image.new("RGB", (16, 16)), "PPM"),
    ],
    ids=["text", "svg", "ico", "ppm"],
)
def test_unsupported_formats(data: bytes) -> None:
    assert decode_code(data) == "image.unsupported_format"


def test_truncated_png_and_jpeg() -> None:
    png, jpeg = make_png(), make_jpeg()
    assert decode_code(png[: len(png) // 2]) == "image.truncated"
    assert decode_code(jpeg[: len(jpeg) // 2]) == "image.truncated"
    assert decode_code(jpeg[:100]) == "image.truncated"  # cut inside the header tables
    assert not ImageFile.LOAD_TRUNCATED_IMAGES


def test_corrupt_files() -> None:
    png = bytearray(make_png())
    start = png.find(b"IDAT") + 8
    png[start : start + 40] = b"\xff" * 40
    assert decode_code(bytes(png)) == "image.corrupt"
    jpeg = make_jpeg()
    broken_frame_header = jpeg.replace(b"\xff\xc0", b"\xff\xc0\x00\x00", 1)
    assert decode_code(broken_frame_header) == "image.corrupt"
    assert decode_code(make_png()[:40]) == "image.corrupt"  # a PNG whose header is cut


def test_header_claiming_20000_squared_is_refused_without_allocating() -> None:
    tiny = raw_png(20000, 20000, rows=b"\x00" * 100)
    assert len(tiny) < 200
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert decode_code(tiny) == "image.too_many_pixels"
    assert decode_code(tiny, max_pixels=10**9) == "image.decompression_bomb"
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown_kib < 100_000  # decoding would need 1.2 GB


def test_bomb_between_our_limit_and_pillows_warning() -> None:
    # 10000 x 9000 = 90 M pixels: above Pillow's warning threshold (89.5 M), below its
    # hard error. Pillow only warns; we turn that into a refusal.
    data = raw_png(10000, 9000, rows=b"\x00" * 100)
    assert decode_code(data) == "image.too_many_pixels"
    assert decode_code(data, max_pixels=10**9) == "image.decompression_bomb"


def test_own_pixel_limit_checked_before_decoding() -> None:
    assert decode_code(make_png(), max_pixels=32 * 48 - 1) == "image.too_many_pixels"
    assert decode_image(make_png(), max_pixels=32 * 48).shape == (32, 48, 3)
    with pytest.raises(ConfigError):
        decode_image(make_png(), max_pixels=0)


def test_compressed_text_chunk_bomb() -> None:
    bomb = png_chunk(b"zTXt", b"Comment\x00\x00" + zlib.compress(b"a" * 4 * 2**20))
    data = raw_png(2, 2, extra=bomb, rows=b"\x00" * 14)
    assert len(data) < 10_000
    assert decode_code(data) == "image.decompression_bomb"


def test_global_pillow_and_warning_state_untouched() -> None:
    filters_before = list(warnings.filters)
    limit_before = Image.MAX_IMAGE_PIXELS
    bad = [raw_png(10000, 9000, rows=b""), b"junk", make_png()] * 8
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda d: decode_many([d], (4, 4)), bad))
    assert warnings.filters == filters_before
    assert limit_before == Image.MAX_IMAGE_PIXELS
    assert not ImageFile.LOAD_TRUNCATED_IMAGES


# ---------------------------------------------------------------- batches, encoding


def test_decode_batch_stacks_and_names_the_bad_item() -> None:
    good = [make_png(), make_jpeg(), make_png(NOISE[:5, :9])]
    batch = decode_batch(good, (16, 24))
    assert batch.shape == (3, 16, 24, 3) and batch.dtype == np.uint8
    assert decode_batch([], (4, 4)).shape == (0, 4, 4, 3)
    with pytest.raises(ImageError) as info:
        decode_batch([make_png(), b"", make_png()], (4, 4))
    assert info.value.code == "image.empty"
    assert "item 1" in info.value.message
    with pytest.raises(ConfigError):
        decode_batch(good, (0, 4))


def test_decode_many_keeps_going() -> None:
    items = [make_png(), b"", b"junk", make_jpeg(), make_jpeg()[:300]]
    good, errors = decode_many(items, (8, 8))
    assert good.shape == (2, 8, 8, 3)
    codes = [e.code if e else None for e in errors]
    assert codes == [None, "image.empty", "image.unsupported_format", None, "image.truncated"]
    np.testing.assert_array_equal(good[0], decode_image(items[0], size=(8, 8)))
    none_good, _ = decode_many([b""], (8, 8))
    assert none_good.shape == (0, 8, 8, 3)


@pytest.mark.parametrize(
    "arr",
    [NOISE, NOISE[..., 0], RNG.integers(0, 256, (6, 5, 4), dtype=np.uint8)],
    ids=["rgb", "gray", "rgba"],
)
def test_encode_png_round_trips_exactly(arr: np.ndarray) -> None:
    decoded = np.asarray(Image.open(io.BytesIO(encode_png(arr))))
    np.testing.assert_array_equal(decoded, arr)


def test_encode_jpeg() -> None:
    smooth = np.full((16, 16, 3), (40, 120, 200), dtype=np.uint8)
    out = decode_image(encode_jpeg(smooth, quality=90))
    assert np.abs(out.astype(int) - smooth).max() <= 3
    assert len(encode_jpeg(NOISE, quality=10)) < len(encode_jpeg(NOISE, quality=95))
    transparent = np.zeros((4, 4, 4), dtype=np.uint8)
    assert decode_image(encode_jpeg(transparent)).min() >= 250  # composited on white
    assert decode_image(encode_jpeg(NOISE[..., 0])).shape == (32, 48, 3)


@pytest.mark.parametrize(
    "arr",
    [
        NOISE.astype(np.float32),
        NOISE[..., :2],
        np.zeros((0, 4, 3), np.uint8),
        np.zeros(5, np.uint8),
    ],
)
def test_encoders_refuse_bad_arrays(arr: np.ndarray) -> None:
    with pytest.raises(ConfigError):
        encode_png(arr)
    with pytest.raises(ConfigError):
        encode_jpeg(arr)
    with pytest.raises(ConfigError):
        encode_jpeg(NOISE, quality=0)
