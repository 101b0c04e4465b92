"""Where a training's checkpoints and decoded images live while it runs.

Checkpoints go to the object store under the model's prefix, ``checkpoint.*``: each
one to a key of its own (attempt token, stage, epoch), then the small pointer
``checkpoint.current.json`` is rewritten to name it (one PUT: the switch is atomic on
S3 and on the local store), then the previous one is deleted. A reader follows the
pointer, so it never sees a half-written checkpoint; a worker killed between the two
writes leaves an orphan that `clear_checkpoints` removes with the rest once the model
is ready. Only the lease holder writes the pointer (checked just before).

Decoded images go to the worker's local disk (`xmlcore.records`): one record file per
model and image size, made by a bounded loading pass (a window of fetches and decodes
in flight on a thread pool, each written to its row at once), reused by every later
epoch and by later slices that run on the same worker.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from workers.context import WorkerContext
from xmlcore.checkpoint import StageCheckpoint
from xmlcore.errors import XmlcoreError
from xmlcore.images import decode_image
from xmlcore.records import ImageRecordFile
from xmlx import deletion
from xmlx.keys import model_artifact_key, model_prefix
from xmlx.storage import StorageError

POINTER = "checkpoint.current.json"
LOAD_THREADS = 8
LOAD_WINDOW = 64  # images fetched or decoded at once: the loading pass' memory bound


class CheckpointStore:
    """The checkpoints of one model in the object store."""

    def __init__(self, ctx: WorkerContext, tenant_id: str, model_id: str, token: str) -> None:
        self.store, self.token = ctx.store, token
        self.tenant_id, self.model_id = tenant_id, model_id
        self.pointer_key = model_artifact_key(tenant_id, model_id, POINTER)

    def load(self) -> StageCheckpoint | None:
        """The current checkpoint, or None (none yet, or it cannot be read)."""
        try:
            pointer = json.loads(self.store.get_bytes(self.pointer_key))
            return StageCheckpoint.from_bytes(self.store.get_bytes(str(pointer["key"])))
        except StorageError as exc:
            if exc.transient:
                raise
            return None
        except (XmlcoreError, ValueError, KeyError):
            return None  # a damaged checkpoint costs the epochs since the start, no more

    def save(self, checkpoint: StageCheckpoint, still_owner: Callable[[], None]) -> None:
        name = f"checkpoint.{self.token}.{checkpoint.stage}.{checkpoint.epoch:05d}.npz"
        key = model_artifact_key(self.tenant_id, self.model_id, name)
        self.store.put_bytes(key, checkpoint.to_bytes(), "application/octet-stream")
        previous = self._current_key()
        still_owner()  # raises when the lease is lost: the pointer stays the holder's
        record = {"key": key, "stage": checkpoint.stage, "epoch": checkpoint.epoch}
        self.store.put_bytes(self.pointer_key, json.dumps(record).encode(), "application/json")
        if previous is not None and previous != key:
            self.store.delete(previous)

    def _current_key(self) -> str | None:
        try:
            return str(json.loads(self.store.get_bytes(self.pointer_key))["key"])
        except (StorageError, ValueError, KeyError):
            return None

    def clear(self) -> None:
        """Remove every checkpoint of the model (it is ready)."""
        prefix = model_prefix(self.tenant_id, self.model_id) + "checkpoint."
        for key in list(self.store.list_keys(prefix)):
            self.store.delete(key)


def cached_images(
    ctx: WorkerContext,
    tenant_id: str,
    model_id: str,
    prefix: str,
    keys: tuple[str, ...],
    size: tuple[int, int],
) -> tuple[ImageRecordFile, np.ndarray]:
    """The decoded images of `keys` on local disk, and the rows that could be read."""
    base = Path(ctx.settings.train_cache_dir) / f"{model_id}-{size[0]}x{size[1]}"
    records = ImageRecordFile(base.with_suffix(".u8"), len(keys), size)
    kept_path = base.with_suffix(".kept.npy")
    if kept_path.exists() and records.path.exists():
        return records, np.load(kept_path)
    records = ImageRecordFile.create(records.path, len(keys), size)
    ok = np.zeros(len(keys), dtype=bool)
    settings = ctx.settings
    # Uploads deleted but not purged yet are gone already: left out as unreadable.
    deleted = deletion.read_deleted_uploads(ctx.sessions, tenant_id)

    def load(row: int) -> None:
        if deletion.deleted_upload_covering(deleted, prefix + keys[row]) is not None:
            return
        try:
            data = ctx.store.get_bytes(prefix + keys[row], max_bytes=settings.max_image_bytes)
            records.write(row, decode_image(data, size=size, max_pixels=settings.max_image_pixels))
            ok[row] = True
        except StorageError as exc:
            if exc.transient:
                raise
        except XmlcoreError:
            pass  # unreadable: left out of training, counted in the metrics

    with ThreadPoolExecutor(LOAD_THREADS) as pool:
        for start in range(0, len(keys), LOAD_WINDOW):
            list(pool.map(load, range(start, min(start + LOAD_WINDOW, len(keys)))))
    kept = np.flatnonzero(ok)
    tmp = kept_path.with_suffix(".tmp.npy")
    np.save(tmp, kept)
    tmp.replace(kept_path)  # the cache counts only once complete
    return records, kept


def drop_cached_images(ctx: WorkerContext, model_id: str) -> None:
    for path in Path(ctx.settings.train_cache_dir).glob(f"{model_id}-*"):
        path.unlink(missing_ok=True)
