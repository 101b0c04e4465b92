"""Turning what a client names (keys, prefixes, datasets) into server-built storage keys.

A client only ever names keys relative to an area the server chose for it (its uploads,
or a dataset's image folder); every key is validated with `xmlx.keys` before anything
is stored, and all the bad keys of a request are reported at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from api.problems import ProblemError
from xmlx import deletion, keys
from xmlx.db import SessionFactory
from xmlx.keys import KeyValidationError
from xmlx.storage import ObjectStore, StorageError

MAX_MANIFEST_BYTES = 50 * 1024 * 1024
MAX_REPORTED_ERRORS = 20


def check_user_keys(user_keys: Sequence[str], base_prefix: str = "") -> None:
    """Raise 422 `key.invalid` listing the bad keys (each checked under `base_prefix`)."""
    errors: list[dict[str, Any]] = []
    for index, key in enumerate(user_keys):
        reason = keys.user_key_problem(key, base_prefix)
        if reason is not None:
            errors.append({"index": index, "key": key[:200], "reason": reason})
            if len(errors) >= MAX_REPORTED_ERRORS:
                break
    if errors:
        raise ProblemError(
            422, "key.invalid", f"{len(errors)} invalid key(s), e.g. {errors[0]['reason']}",
            errors=errors,
        )  # fmt: skip


def folder(prefix: str) -> str:
    """A user folder as a prefix: '' stays '', 'a/b' becomes 'a/b/'."""
    return prefix if not prefix or prefix.endswith("/") else prefix + "/"


def uploads_folder(tenant_id: str, user_prefix: str) -> str:
    """The tenant's uploads area, or a folder in it (422 `key.invalid` if unsafe)."""
    try:
        return keys.uploads_prefix(tenant_id, folder(user_prefix))
    except KeyValidationError as exc:
        raise ProblemError(422, "key.invalid", exc.message) from exc


def upload_key(tenant_id: str, user_key: str) -> str:
    try:
        return keys.upload_key(tenant_id, user_key)
    except KeyValidationError as exc:
        raise ProblemError(422, "key.invalid", exc.message) from exc


def check_manifest_visible(sessions: SessionFactory, tenant_id: str, key: str) -> None:
    """422 `manifest.not_found` for a manifest under uploads deleted but not purged yet:
    a DELETE makes them gone for every read at once, not when the purge gets there."""
    if deletion.deleted_upload_covering(deletion.read_deleted_uploads(sessions, tenant_id), key):
        raise ProblemError(422, "manifest.not_found", "no object at manifest_key (deleted)")


def read_manifest_bytes(store: ObjectStore, key: str) -> bytes:
    try:
        return store.get_bytes(key, max_bytes=MAX_MANIFEST_BYTES)
    except StorageError as exc:
        if exc.code == "storage.not_found":
            raise ProblemError(422, "manifest.not_found", "no object at manifest_key") from exc
        raise
