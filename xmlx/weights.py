"""Pretrained backbone weights: imported once by an operator, fetched by every worker.

Workers have no internet egress and xmlcore never downloads weights, so ImageNet
weights are an operator's action: ``xmlx weights import FILE --base vgg16`` checks that
the file loads into that base's architecture, then stores it in the object store,
shared by all tenants:

    system/weights/{base}/{sha256}{suffix}   the file (content-addressed: never rewritten)
    system/weights/{base}/current.json       which file ``weights: "imagenet"`` means

The record is written after the file, so a reader never finds a record without its
file. The API reads the records to refuse ``weights: "imagenet"`` at submit when none
was imported (``config.weights_unavailable``) and to list them in ``/v1/capabilities``.
A worker copies the file into its local cache on first use (``cached_weights_file``):
written to a temporary name, checked against the recorded SHA-256, then renamed, so a
crash or a corrupt download never leaves a file that looks complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from xmlx.errors import XmlxError
from xmlx.storage import ObjectStore, StorageError

# Bases with published ImageNet weights (the "small" base is trained from scratch).
PRETRAINED_BASES = ("vgg16", "mobilenet_v2", "efficientnet_b0")
WEIGHTS_PREFIX = "system/weights/"
MAX_WEIGHTS_BYTES = 2 * 1024**3
_READ_CHUNK = 1024 * 1024


class WeightsError(XmlxError):
    """``config.base`` (no pretrained weights for it), ``weights.bad_file`` (not a weights
    file), ``weights.corrupt`` (the stored file does not match its checksum)."""


@dataclass(frozen=True)
class WeightsRecord:
    """One imported weights file: which base, its checksum and size, where it is."""

    base: str
    sha256: str
    size: int
    key: str
    source: str
    imported_at: str

    @property
    def suffix(self) -> str:
        """How Keras must read it: ``.weights.h5`` (Keras 3) or ``.h5`` (Keras 2 files)."""
        return ".weights.h5" if self.key.endswith(".weights.h5") else ".h5"


def record_key(base: str) -> str:
    return f"{WEIGHTS_PREFIX}{_checked_base(base)}/current.json"


def weights_record(store: ObjectStore, base: str) -> WeightsRecord | None:
    """The weights imported for ``base``, or None."""
    try:
        data = store.get_bytes(record_key(base), max_bytes=64 * 1024)
    except StorageError as exc:
        if exc.code == "storage.not_found":
            return None
        raise
    return WeightsRecord(**json.loads(data))


def import_weights(
    store: ObjectStore, base: str, path: Path, check: Callable[[str, Path], object]
) -> WeightsRecord:
    """Check ``path`` with ``check(base, path)`` (it raises when the file does not load
    into the base), store it, and make it the base's ``imagenet`` weights."""
    _checked_base(base)
    if not path.is_file() or not path.name.endswith(".h5"):
        raise WeightsError("weights.bad_file", f"{path} is not a .h5 / .weights.h5 file")
    size = path.stat().st_size
    if size > MAX_WEIGHTS_BYTES:
        raise WeightsError("weights.bad_file", f"{path} is {size} bytes, over the 2 GiB limit")
    check(base, path)
    digest = file_sha256(path)
    suffix = ".weights.h5" if path.name.endswith(".weights.h5") else ".h5"
    key = f"{WEIGHTS_PREFIX}{base}/{digest}{suffix}"
    store.put_file(key, path)
    record = WeightsRecord(
        base, digest, size, key, path.name, datetime.now(UTC).isoformat(timespec="seconds")
    )
    store.put_bytes(record_key(base), json.dumps(asdict(record)).encode(), "application/json")
    return record


def cached_weights_file(store: ObjectStore, record: WeightsRecord, cache_dir: Path) -> Path:
    """The local copy of ``record``'s file, downloaded and checked on first use."""
    target = cache_dir / record.base / f"{record.sha256}{record.suffix}"
    if target.is_file() and target.stat().st_size == record.size:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    data = store.get_bytes(record.key, max_bytes=MAX_WEIGHTS_BYTES)
    if hashlib.sha256(data).hexdigest() != record.sha256:
        raise WeightsError(
            "weights.corrupt",
            f"{record.key} does not match its recorded SHA-256; import the weights again",
        )
    fd, temp = tempfile.mkstemp(dir=target.parent, prefix=".partial-")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, target)  # atomic: a reader sees no file or the whole file
    finally:
        Path(temp).unlink(missing_ok=True)
    return target


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_READ_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _checked_base(base: str) -> str:
    if base not in PRETRAINED_BASES:
        raise WeightsError(
            "config.base", f"base {base!r} has no pretrained weights; one of {PRETRAINED_BASES}"
        )
    return base
