"""True labels for a job's cards, from the manifest of the dataset its images come from."""

from __future__ import annotations

import threading
from collections import OrderedDict

from sqlalchemy.orm import Session

from xmlcore.errors import XmlcoreError
from xmlcore.labels import read_manifest
from xmlx import repository as repo
from xmlx.dataset_images import images_storage_prefix
from xmlx.models import Job
from xmlx.report.cards import Truth
from xmlx.storage import ObjectStore, StorageError

MAX_MANIFEST_BYTES = 50 * 1024 * 1024


class TruthCache:
    """True labels of a job's images, read once per dataset from its manifest.

    A job's item keys are relative to `params["image_prefix"]`; a dataset's manifest
    applies when that is the dataset's images folder. Jobs store the folder, not the
    dataset (an explanation names a dataset only to find its folder), so the datasets
    whose folder it is are tried first, then the one the job's model was trained on
    (which also covers rows older than the folder column).
    """

    def __init__(self, max_datasets: int = 8) -> None:
        self._entries: OrderedDict[str, tuple[str, Truth]] = OrderedDict()
        self._lock = threading.Lock()
        self.max_datasets = max_datasets

    def for_job(self, session: Session, store: ObjectStore, job: Job) -> Truth | None:
        prefix = job.params.get("image_prefix")
        model = repo.get_model(session, job.tenant_id, job.model_id) if job.model_id else None
        by_folder = (
            repo.dataset_ids_with_images_at(session, job.tenant_id, prefix) if prefix else []
        )
        candidates = [*by_folder, model.dataset_id if model else None]
        for dataset_id in dict.fromkeys(str(c) for c in candidates if c):
            entry = self._dataset(session, store, job.tenant_id, dataset_id)
            if entry is not None and entry[0] == prefix:
                return entry[1]
        return None

    def _dataset(
        self, session: Session, store: ObjectStore, tenant_id: str, dataset_id: str
    ) -> tuple[str, Truth] | None:
        with self._lock:
            if dataset_id in self._entries:
                self._entries.move_to_end(dataset_id)
                return self._entries[dataset_id]
        dataset = repo.get_dataset(session, tenant_id, dataset_id)
        if dataset is None:
            return None
        try:
            image_prefix = images_storage_prefix(store, dataset)
            space = read_manifest(store.get_bytes(dataset.manifest_key, MAX_MANIFEST_BYTES))
        except (StorageError, XmlcoreError, ValueError):
            return None  # images folder or manifest unreadable: predictions only
        truth = {key: frozenset(space.labels_of(row)) for row, key in enumerate(space.image_keys)}
        entry = (image_prefix, truth)
        with self._lock:
            self._entries[dataset_id] = entry
            while len(self._entries) > self.max_datasets:
                self._entries.popitem(last=False)
        return entry


TRUTH = TruthCache()  # one per process: manifests are immutable, read each once
