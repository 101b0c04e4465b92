"""Safe image decoding and encoding: untrusted bytes in, ``uint8 (H, W, 3)`` RGB out.

Images come from users, so every step assumes the bytes may be hostile: the byte count is
checked before anything is parsed, only a fixed list of formats is opened, the pixel count
a header claims is checked before a single pixel is decoded, truncation is an error (never
silently padded with grey), and the decoded buffer is checked against the header again.
Every refusal is an ``ImageError`` with a stable code:

``image.empty``, ``image.too_large`` (bytes), ``image.too_many_pixels`` (header claims more
than ``max_pixels``), ``image.decompression_bomb`` (Pillow's own process-wide guard or a
compressed PNG text chunk that inflates beyond Pillow's limit), ``image.unsupported_format``,
``image.truncated``, ``image.corrupt``.
"""

from __future__ import annotations

import io
import threading
import warnings
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from xmlcore.errors import ConfigError, ImageError

ALLOWED_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF")
DEFAULT_MAX_PIXELS = 50_000_000
DEFAULT_MAX_BYTES = 50 * 2**20

# Leading bytes of the allowed formats: lets us call a file whose header Pillow cannot
# parse "corrupt" rather than "unsupported" when it clearly claims to be one of them.
_SIGNATURES = (
    b"\x89PNG\r\n\x1a\n",
    b"\xff\xd8",
    b"GIF87a",
    b"GIF89a",
    b"BM",
    b"II*\x00",
    b"MM\x00*",
)

# warnings.catch_warnings() swaps the process-wide filter list on enter and restores it on
# exit; two threads interleaving those steps could leave the "error" filter installed for
# everybody. Opening (header parsing only, cheap) is therefore serialised; load() is not.
_OPEN_LOCK = threading.Lock()

_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})


def decode_image(
    data: bytes,
    *,
    size: tuple[int, int] | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> np.ndarray:
    """Decode ``data`` into an RGB ``uint8`` array ``(H, W, 3)``.

    The EXIF orientation is applied; animated images give their first frame; 16-bit
    grayscale is rescaled to 0..255; palette, grayscale, CMYK and alpha images become RGB
    (alpha composited on white). With ``size=(H, W)`` the result is resized to exactly
    that shape (bilinear with antialiasing). Raises ``ImageError`` (codes above).
    """
    _check_limits(max_pixels, max_bytes)
    target = _check_size(size)
    if len(data) == 0:
        raise ImageError("image.empty", "the image has 0 bytes")
    if len(data) > max_bytes:
        raise ImageError("image.too_large", f"{len(data)} bytes exceed the limit of {max_bytes}")
    img = _open(bytes(data), max_pixels)
    if target is not None and img.format == "JPEG":
        # Let libjpeg decode at 1/2, 1/4 or 1/8 scale when that still covers the target in
        # both axes (max() because EXIF rotation may swap them): much faster, same result.
        side = max(target)
        img.draft(img.mode, (side, side))
    _load(img, max_pixels)
    rgb = _to_rgb(img)
    if target is not None and rgb.size != (target[1], target[0]):
        rgb = rgb.resize((target[1], target[0]), Image.Resampling.BILINEAR, reducing_gap=3.0)
    return np.asarray(rgb, dtype=np.uint8)


def _check_limits(max_pixels: int, max_bytes: int) -> None:
    if max_pixels < 1 or max_bytes < 1:
        raise ConfigError("image.bad_limits", "max_pixels and max_bytes must be positive")


def _check_size(size: tuple[int, int] | None) -> tuple[int, int] | None:
    if size is None:
        return None
    if len(size) != 2 or not all(isinstance(s, int | np.integer) and s >= 1 for s in size):
        raise ConfigError("image.bad_size", f"size must be (H, W) of positive ints, got {size}")
    return int(size[0]), int(size[1])


def _open(data: bytes, max_pixels: int) -> Image.Image:
    """Parse the header only (no pixel is decoded) and check the claimed size."""
    with _OPEN_LOCK, warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            img = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
        except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
            raise _bomb_error(max_pixels, exc) from exc
        except UnidentifiedImageError as exc:
            if data.startswith(_SIGNATURES) or data[8:12] == b"WEBP":
                raise ImageError("image.corrupt", "the image header cannot be read") from exc
            raise ImageError(
                "image.unsupported_format", f"not one of {', '.join(ALLOWED_FORMATS)}"
            ) from exc
        except Exception as exc:
            raise _decode_error(exc) from exc
    _check_pixels(img.size, max_pixels)
    return img


def _bomb_error(max_pixels: int, exc: Exception) -> ImageError:
    """Pillow fires only above its global limit; if ours is lower, ours is the reason."""
    pillow_limit = Image.MAX_IMAGE_PIXELS
    if pillow_limit is not None and max_pixels <= pillow_limit:
        return ImageError("image.too_many_pixels", f"more than {max_pixels} pixels ({exc})")
    return ImageError("image.decompression_bomb", str(exc))


def _check_pixels(size: tuple[int, int], max_pixels: int) -> None:
    width, height = size
    if width < 1 or height < 1:
        raise ImageError("image.corrupt", f"the image claims a size of {width}x{height}")
    if width * height > max_pixels:
        raise ImageError(
            "image.too_many_pixels", f"{width}x{height} exceeds the limit of {max_pixels} pixels"
        )


def _load(img: Image.Image, max_pixels: int) -> None:
    """Decode the pixels; then make sure the buffer is what the header promised."""
    expected = img.size
    try:
        img.load()
        ImageOps.exif_transpose(img, in_place=True)
    except Exception as exc:
        raise _decode_error(exc) from exc
    decoded = img.im.size
    if decoded not in (expected, expected[::-1]) or decoded != img.size:
        raise ImageError("image.corrupt", f"decoded {decoded}, header said {expected}")
    _check_pixels(decoded, max_pixels)


def _decode_error(exc: Exception) -> ImageError:
    message = str(exc) or type(exc).__name__
    if isinstance(exc, MemoryError):
        return ImageError("image.too_many_pixels", "not enough memory to decode the image")
    if isinstance(exc, ValueError) and "decompressed data too large" in message.lower():
        return ImageError("image.decompression_bomb", message)
    if isinstance(exc, OSError | EOFError) and "truncated" in message.lower():
        return ImageError("image.truncated", message)
    return ImageError("image.corrupt", message)


def _to_rgb(img: Image.Image) -> Image.Image:
    mode = img.mode
    if mode == "I" or mode.startswith("I;16"):
        return Image.fromarray(_sixteen_bit_to_8(np.asarray(img))).convert("RGB")
    if mode == "F":
        raise ImageError("image.unsupported_format", "floating-point pixels have no fixed range")
    try:
        if mode in _ALPHA_MODES or img.has_transparency_data:
            # Transparent pixels carry arbitrary colour (often black or leftovers); dropping
            # alpha would show that garbage. White is what viewers and product shots use.
            rgba = img.convert("RGBA")
            white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return Image.alpha_composite(white, rgba).convert("RGB")
        return img.convert("RGB")
    except ValueError as exc:
        raise ImageError("image.unsupported_format", f"cannot convert mode {mode}") from exc


def _sixteen_bit_to_8(gray: np.ndarray) -> np.ndarray:
    """0..65535 -> 0..255 by rounding v * 255 / 65535 (a plain cast would clip at 255).

    Mode ``I`` (32-bit) is what Pillow uses for 16-bit data from some files; values
    outside 0..65535 are clipped since they have no 16-bit meaning.
    """
    wide = np.clip(gray.astype(np.int64), 0, 65535)
    return ((wide * 255 + 32767) // 65535).astype(np.uint8)


def decode_batch(
    images: Sequence[bytes],
    size: tuple[int, int],
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> np.ndarray:
    """Decode and resize every image to ``size=(H, W)``: ``(N, H, W, 3)`` uint8.

    Raises the ``ImageError`` of the first bad item, its message prefixed with the index.
    """
    height, width = _require_size(size)
    out = np.empty((len(images), height, width, 3), dtype=np.uint8)
    for i, data in enumerate(images):
        try:
            out[i] = decode_image(data, size=size, max_pixels=max_pixels, max_bytes=max_bytes)
        except ImageError as exc:
            raise ImageError(exc.code, f"item {i}: {exc.message}") from exc
    return out


def decode_many(
    images: Sequence[bytes],
    size: tuple[int, int],
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> tuple[np.ndarray, list[ImageError | None]]:
    """Like ``decode_batch`` but goes past bad items.

    Returns ``(good, errors)``: ``good`` is ``(M, H, W, 3)`` uint8 holding the decodable
    images in input order; ``errors[i]`` is ``None`` for a good item, else its error.
    """
    height, width = _require_size(size)
    good: list[np.ndarray] = []
    errors: list[ImageError | None] = []
    for data in images:
        try:
            good.append(decode_image(data, size=size, max_pixels=max_pixels, max_bytes=max_bytes))
            errors.append(None)
        except ImageError as exc:
            errors.append(exc)
    stacked = np.stack(good) if good else np.empty((0, height, width, 3), dtype=np.uint8)
    return stacked, errors


def _require_size(size: tuple[int, int] | None) -> tuple[int, int]:
    checked = _check_size(size)
    if checked is None:
        raise ConfigError("image.bad_size", "a batch needs one size=(H, W) for every image")
    return checked


def encode_png(arr: np.ndarray) -> bytes:
    """PNG bytes of a ``uint8`` array ``(H, W)``, ``(H, W, 3)`` or ``(H, W, 4)``."""
    buffer = io.BytesIO()
    _to_pil(arr).save(buffer, format="PNG")
    return buffer.getvalue()


def encode_jpeg(arr: np.ndarray, quality: int = 90) -> bytes:
    """JPEG bytes of a ``uint8`` array ``(H, W)``, ``(H, W, 3)`` or ``(H, W, 4)``.

    JPEG has no alpha: a 4-channel array is composited on white, as in ``decode_image``.
    """
    if not isinstance(quality, int | np.integer) or not 1 <= quality <= 100:
        raise ConfigError("image.bad_quality", f"quality must be an int in 1..100, got {quality}")
    img = _to_pil(arr)
    if img.mode == "RGBA":
        img = _to_rgb(img)
    buffer = io.BytesIO()
    img.save(buffer, format="JPEG", quality=int(quality))
    return buffer.getvalue()


def _to_pil(arr: np.ndarray) -> Image.Image:
    array = np.asarray(arr)
    channels = 1 if array.ndim == 2 else (array.shape[-1] if array.ndim == 3 else 0)
    if array.dtype != np.uint8 or channels not in (1, 3, 4) or 0 in array.shape:
        raise ConfigError(
            "image.bad_array",
            f"expected uint8 (H, W), (H, W, 3) or (H, W, 4); got {array.dtype} {array.shape}",
        )
    if array.ndim == 3 and channels == 1:
        array = array[..., 0]
    return Image.fromarray(np.ascontiguousarray(array))
