"""The bad-input corpus (RELIABILITY.md, scenario 6), built in code, and the stack it runs on.

`corpus()` is the table: one `Case(kind, name, data, expected_state, expected_code)`
per kind of input a user can send us.

- `kind="image"`: an object uploaded under the dataset's images and explained by a real
  worker. `expected_state` is `succeeded` for unusual but VALID images (grayscale, RGBA,
  16-bit, 1x1, EXIF-rotated, CMYK, animated GIF, ...) and `failed` with the worker's
  stable `expected_code` for the rest. `data=None` means nothing is uploaded (missing).
- `kind="key"`: an item key that is refused at submission (422 `key.invalid`).
- `kind="manifest"`: a manifest that POST /v1/datasets refuses with its code (and line).

Every byte string is generated here with Pillow and numpy from fixed seeds, or built
by hand where the point is a header that lies (a 20,000 x 20,000 PNG of 40 bytes).

`shared_trained_stack` gives the test modules one embedded stack (API, one Celery
worker, Redis, SeaweedFS) with a tiny model trained through the API, shared by the
bad-input and security tests so the suite pays for one training run.
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

import numpy as np
import pytest
from PIL import Image

from tests.service_fixtures import running_stack
from xmlx.client import Client
from xmlx.demo_service import create_api_key
from xmlx.stack import Stack

MAX_IMAGE_BYTES = 2 * 1024 * 1024  # XMLX_MAX_IMAGE_BYTES of the test stack
IMAGE_SIZE = 32  # the model's input side


@dataclass(frozen=True)
class Case:
    kind: str  # "image", "key" or "manifest"
    name: str
    data: bytes | None
    expected_state: str  # "succeeded", "failed" (worker) or "refused" (API)
    expected_code: str | None
    key: str = ""  # the item key (images, keys) or manifest file name
    line: int | None = None  # manifest errors: the line the API must report


# ----------------------------------------------------------------- image helpers


def _picture(width: int = 48, height: int = 40, seed: int = 0) -> Image.Image:
    """A smooth colour gradient with noise: compresses like a photo, not like a flat fill."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 // max(width - 1, 1), y * 255 // max(height - 1, 1),
                     (x + y) * 127 // max(width + height - 2, 1)], axis=-1)  # fmt: skip
    noise = rng.integers(-20, 20, size=base.shape)
    return Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8))


def _save(img: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _chunk(kind: bytes, payload: bytes) -> bytes:
    crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)


def _png_with_header(width: int, height: int, extra: bytes = b"") -> bytes:
    """A PNG whose IHDR claims `width` x `height` RGB, with a token IDAT (the header lies)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + extra
            + _chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + _chunk(b"IEND", b""))  # fmt: skip


def _png_insert_before_idat(png: bytes, chunk: bytes) -> bytes:
    at = png.index(b"IDAT") - 4
    return png[:at] + chunk + png[at:]


def _png_ztxt_bomb() -> bytes:
    """A zTXt text chunk of 3 KB that inflates to 64 MiB (Pillow's text limit is 1 MiB)."""
    payload = b"comment\x00\x00" + zlib.compress(b"A" * (64 * 1024 * 1024), 9)
    return _png_insert_before_idat(_save(_picture(), "PNG"), _chunk(b"zTXt", payload))


def _png_flipped_idat() -> bytes:
    """Deflate data damaged inside IDAT, with the CRC recomputed so only the data is wrong."""
    png = bytearray(_save(_picture(seed=3), "PNG"))
    start = png.index(b"IDAT")
    length = struct.unpack(">I", png[start - 4 : start])[0]
    data = bytes(b ^ 0x5A for b in png[start + 4 : start + 4 + length])
    return bytes(png[: start - 4]) + _chunk(b"IDAT", data) + bytes(png[start + 8 + length :])


def _png_padded(total: int) -> bytes:
    """A valid PNG made larger than `total` bytes by an ancillary private chunk."""
    rng = np.random.default_rng(7)
    padding = _chunk(b"prVt", rng.bytes(total))
    return _png_insert_before_idat(_save(_picture(), "PNG"), padding)


def _jpeg_with_header(width: int, height: int) -> bytes:
    """SOI + a baseline SOF0 claiming `width` x `height`, then nothing useful."""
    sof = struct.pack(">BHHB", 8, height, width, 3) + b"\x01\x11\x00\x02\x11\x00\x03\x11\x00"
    return b"\xff\xd8" + b"\xff\xc0" + struct.pack(">H", len(sof) + 2) + sof + b"\xff\xd9"


def _gif_with_header(width: int, height: int) -> bytes:
    screen = struct.pack("<HHBBB", width, height, 0, 0, 0)
    image = b"\x2c" + struct.pack("<HHHHB", 0, 0, width, height, 0) + b"\x02\x02\x44\x01\x00"
    return b"GIF89a" + screen + image + b"\x3b"


def _exif_rotated_jpeg() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    return _save(_picture(48, 24), "JPEG", quality=90, exif=exif.tobytes())


def _animated_gif() -> bytes:
    frames = [_picture(seed=s).convert("P") for s in range(3)]
    return _save(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=80, loop=0)


def _sixteen_bit_png() -> bytes:
    ramp = (np.arange(40 * 48, dtype=np.uint32).reshape(40, 48) * 34).astype(np.uint16)
    return _save(Image.fromarray(ramp), "PNG")  # uint16 -> mode I;16


def _float_tiff() -> bytes:
    return _save(Image.fromarray(np.linspace(0, 1, 40 * 48, dtype=np.float32).reshape(40, 48)),
                 "TIFF")  # fmt: skip


def _palette_png_with_transparency() -> bytes:
    img = _picture(seed=4).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    return _save(img, "PNG", transparency=0)


def _half(data: bytes) -> bytes:
    return data[: len(data) // 2]


# ------------------------------------------------------------------- the table


def _valid(name: str, ext: str, make: Callable[[], bytes]) -> Case:
    return Case("image", name, make(), "succeeded", None, key=f"{name}.{ext}")


def _broken(name: str, ext: str, data: bytes | None, code: str) -> Case:
    return Case("image", name, data, "failed", code, key=f"{name}.{ext}")


def image_cases() -> list[Case]:
    png = _save(_picture(), "PNG")
    jpeg = _save(_picture(), "JPEG", quality=90)
    return [
        # Unusual but valid: decoded to RGB and explained.
        _valid("png_rgb", "png", lambda: png),
        _valid("jpeg_rgb", "jpg", lambda: jpeg),
        _valid("png_grayscale", "png", lambda: _save(_picture().convert("L"), "PNG")),
        _valid("png_gray_alpha", "png", lambda: _save(_picture().convert("LA"), "PNG")),
        _valid("png_rgba", "png", lambda: _save(_picture().convert("RGBA"), "PNG")),
        _valid("png_16bit", "png", _sixteen_bit_png),
        _valid("png_palette_transparent", "png", _palette_png_with_transparency),
        _valid("png_1x1", "png", lambda: _save(_picture(1, 1), "PNG")),
        _valid("png_1x500", "png", lambda: _save(_picture(1, 500), "PNG")),
        _valid("jpeg_exif_rotated", "jpg", _exif_rotated_jpeg),
        _valid("jpeg_cmyk", "jpg", lambda: _save(_picture().convert("CMYK"), "JPEG")),
        _valid("jpeg_grayscale", "jpg", lambda: _save(_picture().convert("L"), "JPEG")),
        _valid("jpeg_progressive", "jpg", lambda: _save(_picture(), "JPEG", progressive=True)),
        _valid("gif_animated", "gif", _animated_gif),
        _valid("bmp_rgb", "bmp", lambda: _save(_picture(), "BMP")),
        _valid("tiff_rgb", "tif", lambda: _save(_picture(), "TIFF")),
        _valid("webp_rgb", "webp", lambda: _save(_picture(), "WEBP")),
        # Broken or hostile: each fails alone with its code.
        _broken("zero_bytes", "jpg", b"", "image.empty"),
        _broken(
            "text_named_jpg",
            "jpg",
            b"these are not the pixels you are looking for\n",
            "image.unsupported_format",
        ),
        _broken(
            "html_named_png",
            "png",
            b"<!doctype html><html><body>hi</body></html>",
            "image.unsupported_format",
        ),
        _broken(
            "svg_named_png",
            "png",
            b'<svg xmlns="http://www.w3.org/2000/svg"/>',
            "image.unsupported_format",
        ),
        _broken(
            "pdf_named_jpg",
            "jpg",
            b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n",
            "image.unsupported_format",
        ),
        _broken("ico_not_allowed", "png", _save(_picture(), "ICO"), "image.unsupported_format"),
        _broken(
            "random_bytes", "jpg", np.random.default_rng(1).bytes(4096), "image.unsupported_format"
        ),
        _broken("tiff_float_pixels", "tif", _float_tiff(), "image.unsupported_format"),
        _broken("png_truncated", "png", _half(png), "image.truncated"),
        _broken("jpeg_truncated", "jpg", _half(jpeg), "image.truncated"),
        _broken("png_corrupt_header", "png", png[:8] + b"\x00" * 40, "image.corrupt"),
        _broken("png_corrupt_idat", "png", _png_flipped_idat(), "image.corrupt"),
        _broken("jpeg_corrupt_header", "jpg", b"\xff\xd8\xff" + b"\x13" * 200, "image.corrupt"),
        _broken("png_zero_width", "png", _png_with_header(0, 10), "image.corrupt"),
        _broken(
            "png_decompression_bomb",
            "png",
            _save(Image.new("1", (8000, 8000)), "PNG", optimize=True),
            "image.too_many_pixels",
        ),
        _broken("png_ztxt_bomb", "png", _png_ztxt_bomb(), "image.decompression_bomb"),
        _broken(
            "png_header_20000x20000",
            "png",
            _png_with_header(20_000, 20_000),
            "image.too_many_pixels",
        ),
        _broken(
            "jpeg_header_20000x20000",
            "jpg",
            _jpeg_with_header(20_000, 20_000),
            "image.too_many_pixels",
        ),
        _broken(
            "gif_header_65535x65535",
            "gif",
            _gif_with_header(65_535, 65_535),
            "image.too_many_pixels",
        ),
        _broken(
            "png_over_byte_limit", "png", _png_padded(MAX_IMAGE_BYTES + 1024), "image.too_large"
        ),
        _broken("missing_object", "png", None, "image.missing"),
    ]


def key_cases() -> list[Case]:
    """Item keys refused at submission, whatever the object store holds."""
    bad = {
        "key_dotdot": "../other-tenant/secret.png",
        "key_dotdot_inside": "a/../../b.png",
        "key_dot_segment": "a/./b.png",
        "key_double_slash": "a//b.png",
        "key_leading_slash": "/etc/passwd",
        "key_trailing_slash": "folder/",
        "key_nul": "a\x00b.png",
        "key_control_char": "bell\x07.png",
        "key_backslash": "..\\windows.png",
        "key_over_1024_bytes": "k" * 1021 + ".png",
        "key_empty": "",
    }
    return [Case("key", name, None, "refused", "key.invalid", key=key) for name, key in bad.items()]


def manifest_cases(image_keys: list[str]) -> list[Case]:
    """Manifests that POST /v1/datasets refuses; `line` is the line the answer must name."""
    first, second = image_keys[0], image_keys[1]
    header = b"image,labels\n"
    rows = [
        ("manifest_empty", b"", "manifest.empty", 1),
        ("manifest_blank_lines", b"\n\n  \n", "manifest.empty", 1),
        ("manifest_missing_column", b"image,tags\na.png,x\n", "manifest.missing_column", 1),
        ("manifest_duplicate_image",
         header + f"{first},salt\n{second},rice\n{first},oil\n".encode(),
         "manifest.duplicate_image", 4),
        ("manifest_not_utf8", header + f"{first},salt\n".encode() + b"\xff\xfe,rice\n",
         "manifest.not_utf8", 3),
        ("manifest_csv_short_row", header + f"{first},salt\n{second}\n".encode(),
         "manifest.bad_row", 3),
        ("manifest_jsonl_bad_json", f'{{"image": "{first}", "labels": ["salt"]}}\n{{oops\n'
         .encode(), "manifest.bad_json", 2),
        ("manifest_jsonl_labels_not_list",
         f'{{"image": "{first}", "labels": "salt"}}\n'.encode(), "manifest.bad_row", 1),
        ("manifest_jsonl_no_image", b'{"labels": ["salt"]}\n', "manifest.bad_row", 1),
        ("manifest_key_escapes", header + b"../../x.png,salt\n", "key.invalid", None),
        ("manifest_not_uploaded", None, "manifest.not_found", None),
    ]  # fmt: skip
    return [
        Case("manifest", name, data, "refused", code, key=f"bad-manifests/{name}", line=line)
        for name, data, code, line in rows
    ]


def corpus(image_keys: list[str]) -> list[Case]:
    """The whole table: images, keys and manifests."""
    return image_cases() + key_cases() + manifest_cases(image_keys)


# -------------------------------------------------------------- the shared stack


@dataclass(frozen=True)
class TrainedStack:
    """A running stack with tenant A's dataset and a tiny trained model."""

    stack: Stack
    api_key: str  # tenant A
    dataset_id: str
    model_id: str
    image_keys: list[str]  # keys of the generated dishes, relative to the dataset's images

    def client(self, api_key: str | None = None) -> Client:
        return Client(self.stack.api_url, api_key or self.api_key, timeout=60.0)


_SHARED = pytest.StashKey[TrainedStack]()


def shared_trained_stack(request: pytest.FixtureRequest) -> TrainedStack:
    """The session's trained stack, started on first use and stopped when pytest ends.

    Test modules wrap this in their own session fixture; keeping the one instance in the
    config's stash is what lets two modules share it.
    """
    stash = request.config.stash
    if _SHARED not in stash:
        env = {"XMLX_MAX_IMAGE_BYTES": str(MAX_IMAGE_BYTES), "XMLX_IMAGES_PER_BATCH": "8"}
        factory: pytest.TempPathFactory = request.getfixturevalue("tmp_path_factory")
        exits = ExitStack()
        request.config.add_cleanup(exits.close)  # stops every process, drops the database
        start = contextmanager(running_stack)
        root = factory.mktemp("trained-stack")
        stack = exits.enter_context(start(root, workers=1, beat=False, extra_env=env))
        stash[_SHARED] = _train(stack)
    return stash[_SHARED]


def _train(stack: Stack) -> TrainedStack:
    from xmlcore.datasets import generate_dishes
    from xmlcore.images import encode_png
    from xmlcore.labels import manifest_to_csv

    data = generate_dishes("tiny", seed=0, image_size=IMAGE_SIZE)
    space = data.label_space
    api_key = create_api_key(stack, "tenant-a")
    with Client(stack.api_url, api_key, timeout=60.0) as client:
        client.upload({f"dishes/images/{k}": encode_png(data.images[i])
                       for i, k in enumerate(space.image_keys)})  # fmt: skip
        manifest = manifest_to_csv(list(space.image_keys), data.label_sets())
        client.upload({"dishes/manifest.csv": manifest}, content_type="text/csv")
        dataset = client.create_dataset("dishes", "dishes/images/", "dishes/manifest.csv")
        created = client.train(dataset["id"], "tiny", epochs=1, seed=0,
                               image_size=[IMAGE_SIZE, IMAGE_SIZE])  # fmt: skip
        job = client.wait(created["job"]["id"], timeout=300, poll=0.5)
        if job.state != "succeeded":
            log = stack.log_path("worker1").read_text(errors="replace")[-3000:]
            raise RuntimeError(f"training ended {job.state}: {job.raw}\n{log}")
    return TrainedStack(stack, api_key, dataset["id"], created["model"]["id"],
                        list(space.image_keys))  # fmt: skip
