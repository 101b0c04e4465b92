"""Per-process worker state: settings, database, object store, and a model cache.

Built lazily in the worker child after the fork (TensorFlow and database connections
are not fork-safe), then reused by every task the process runs, so a model is loaded
from storage once per process, not once per chunk.
"""

from __future__ import annotations

import os
import socket
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from functools import cache
from typing import TYPE_CHECKING

from xmlx import repository as repo
from xmlx.db import SessionFactory, engine_from_settings, make_session_factory, session_scope
from xmlx.migrate import ensure_migrated
from xmlx.settings import Settings, get_settings
from xmlx.storage import ObjectStore, StorageError, make_object_store

if TYPE_CHECKING:
    from xmlcore.model import TwoStepModel

MODELS_CACHED_PER_PROCESS = 2


@dataclass
class WorkerContext:
    settings: Settings
    sessions: SessionFactory
    store: ObjectStore
    owner: str
    _models: OrderedDict[str, TwoStepModel] = field(default_factory=OrderedDict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

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
        from xmlcore.model import TwoStepModel  # Keras loads in the worker child only

        model = TwoStepModel.from_bytes(self.store.get_bytes(artifact_key))
        with self._lock:
            self._models[model_id] = model
            while len(self._models) > MODELS_CACHED_PER_PROCESS:
                self._models.popitem(last=False)
        return model


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
