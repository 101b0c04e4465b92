"""Where a dataset's images are: its row's columns, or `dataset.json` for older rows.

Datasets created since migration 0002 carry their images folder in `image_prefix` (the
server-built storage prefix the manifest's keys are relative to) and `images_prefix`
(the folder as the client named it under its uploads). Rows created before have NULL
there; the API then kept both in `dataset.json` next to the manifest copy, and this
module is the one place that still reads that file, so existing deployments keep
working without a backfill.
"""

from __future__ import annotations

import json
from typing import Any

from xmlx.models import Dataset
from xmlx.storage import ObjectStore, StorageError

LEGACY_INFO_NAME = "dataset.json"
MAX_LEGACY_INFO_BYTES = 1 << 20


def images_storage_prefix(store: ObjectStore, dataset: Dataset) -> str:
    """The resolved storage prefix of the dataset's images.

    Raises `StorageError` (`storage.not_found`) for a pre-0002 row whose `dataset.json`
    is gone, and ValueError when that file is not the JSON the API wrote.
    """
    if dataset.image_prefix is not None:
        return dataset.image_prefix
    prefix = _legacy_info(store, dataset).get("image_prefix")
    if not isinstance(prefix, str):
        raise ValueError(f"{LEGACY_INFO_NAME} of dataset {dataset.id} has no image_prefix")
    return prefix


def images_user_prefix(store: ObjectStore, dataset: Dataset) -> str | None:
    """The images folder as the client named it; None when it is not known (a pre-0002
    row without its `dataset.json`)."""
    if dataset.image_prefix is not None:
        return dataset.images_prefix
    try:
        info = _legacy_info(store, dataset)
    except StorageError:
        return None
    return str(info.get("images_prefix", ""))


def _legacy_info(store: ObjectStore, dataset: Dataset) -> dict[str, Any]:
    key = dataset.storage_prefix + LEGACY_INFO_NAME
    info = json.loads(store.get_bytes(key, max_bytes=MAX_LEGACY_INFO_BYTES))
    if not isinstance(info, dict):
        raise ValueError(f"{LEGACY_INFO_NAME} of dataset {dataset.id} is not a JSON object")
    return info
