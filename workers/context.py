"""Per-process worker state: settings, database, object store, and a model cache.

Built lazily in the worker child after the fork (TensorFlow and database connections
are not fork-safe), then reused by every task the process runs, so a model is loaded
from storage once per process, not once per chunk.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from functools import cache
from typing import TYPE_CHECKING

from xmlx import repository as repo
from xmlx.db import SessionFactory, engine_from_settings, make_session_factory, session_scope
from xmlx.gpus import nvidia_smi_free_bytes
from xmlx.migrate import ensure_migrated
from xmlx.settings import Settings, get_settings
from xmlx.storage import ObjectStore, StorageError, make_object_store

if TYPE_CHECKING:
    from xmlcore.device import AcceleratorSetup
    from xmlcore.model import TwoStepModel

MODELS_CACHED_PER_PROCESS = 2
log = logging.getLogger("xmlx.worker")


@dataclass
class WorkerContext:
    settings: Settings
    sessions: SessionFactory
    store: ObjectStore
    owner: str
    _models: OrderedDict[str, TwoStepModel] = field(default_factory=OrderedDict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _batch_sizes: dict[str | None, int | None] = field(default_factory=dict)

    def model(self, model_id: str) -> TwoStepModel:
        """The trained model ``model_id``, from the cache or loaded from storage."""
        with self._lock:
            if model_id in self._models:
                self._models.move_to_end(model_id)
                return self._models[model_id]
        with session_scope(self.sessions) as session:
            row = repo.get_model_unscoped(session, model_id)
            artifact_key = row.artifact_key if row is not None else None
        if artifact_key is None:
            raise StorageError("model.not_ready", f"model {model_id} has no artifact yet")
        configure_accelerator(self.settings)
        from xmlcore.model import TwoStepModel  # Keras loads in the worker child only

        model = TwoStepModel.from_bytes(self.store.get_bytes(artifact_key))
        with self._lock:
            self._models[model_id] = model
            while len(self._models) > MODELS_CACHED_PER_PROCESS:
                self._models.popitem(last=False)
        return model

    def forward_batch_size(self, model: TwoStepModel) -> int | None:
        """Images per forward call that fit the GPU's free memory, or None on a CPU (the
        method's own default then applies). Cached per model: one batch shape, one
        compiled program."""
        with self._lock:
            if model.metadata.model_id in self._batch_sizes:
                return self._batch_sizes[model.metadata.model_id]
        from xmlcore.device import (
            batch_size_for_memory,
            forward_bytes_per_sample,
            free_accelerator_memory,
        )

        if not configure_accelerator(self.settings).gpus:
            return None
        free = free_accelerator_memory() or nvidia_smi_free_bytes(os.environ)
        size = None
        if free is not None:
            size = batch_size_for_memory(free, forward_bytes_per_sample(model.regressor.model_))
            log.info("forward batch size from free GPU memory",
                     extra={"free_bytes": free, "batch_size": size})  # fmt: skip
        with self._lock:
            self._batch_sizes[model.metadata.model_id] = size
        return size

    def gpu_memory_in_use(self) -> int | None:
        """Accelerator memory this process uses, or None (no GPU, or nothing loaded yet:
        asking would initialise a backend just to say zero)."""
        if not _accelerator or not _accelerator[0].gpus:
            return None
        from xmlcore.device import accelerator_memory_in_use

        return accelerator_memory_in_use()


_accelerator: list[AcceleratorSetup] = []


def configure_accelerator(settings: Settings) -> AcceleratorSetup:
    """Once per worker process, before the first model is built or loaded: mixed
    precision and XLA when a GPU is present (``XMLX_GPU_MIXED_PRECISION``, ``XMLX_GPU_XLA``)."""
    if not _accelerator:
        from xmlcore.device import configure_accelerator as configure

        setup = configure(mixed_precision=settings.gpu_mixed_precision, xla=settings.gpu_xla)
        log.info("accelerator", extra=vars(setup))
        _accelerator.append(setup)
    return _accelerator[0]


def build_context(settings: Settings) -> WorkerContext:
    engine = engine_from_settings(settings)
    ensure_migrated(engine)
    store = make_object_store(settings)
    return WorkerContext(
        settings=settings,
        sessions=make_session_factory(engine),
        store=store,
        owner=f"{socket.gethostname()}:{os.getpid()}",
    )


@cache
def worker_context() -> WorkerContext:
    """The process's context, built on first use (after the fork)."""
    return build_context(get_settings())
