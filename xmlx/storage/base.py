"""The object store interface every adapter implements, and its errors."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Protocol

from xmlx.errors import XmlxError
from xmlx.keys import KeyValidationError, validate_user_key

DEFAULT_CONTENT_TYPE = "application/octet-stream"
MAX_DELETE_BATCH = 1000  # S3 DeleteObjects takes at most 1,000 keys per call


class StorageError(XmlxError):
    """Codes: `storage.not_found`, `storage.too_large`, `storage.bad_key`,
    `storage.unavailable` (transient: retry), `storage.denied`, `storage.no_bucket`,
    `storage.url_expired`, `storage.bad_signature`, `storage.error`."""


def check_key(key: str) -> str:
    """A storage key must be a safe relative key (server-built keys always are)."""
    try:
        return validate_user_key(key)
    except KeyValidationError as exc:
        raise StorageError("storage.bad_key", exc.message) from exc


def too_large(key: str, size: int, max_bytes: int) -> StorageError:
    return StorageError("storage.too_large", f"{key} is {size} bytes, more than {max_bytes}")


class ObjectStore(Protocol):
    """Bytes under string keys. Every method raises StorageError, never a library error."""

    def put_bytes(
        self, key: str, data: bytes, content_type: str = DEFAULT_CONTENT_TYPE
    ) -> None: ...

    def put_file(
        self, key: str, path: Path | str, content_type: str = DEFAULT_CONTENT_TYPE
    ) -> None: ...

    def get_bytes(self, key: str, max_bytes: int | None = None) -> bytes:
        """The object; with `max_bytes`, its size is checked before downloading it
        (`storage.too_large`)."""
        ...

    def iter_lines(self, key: str) -> Iterator[str]:
        """The object's text lines (UTF-8, line ends stripped), streamed: a big manifest
        is never held whole (`storage.not_found` when missing)."""
        ...

    def head(self, key: str) -> int | None:
        """The object's size in bytes, or None when there is no such object."""
        ...

    def exists(self, key: str) -> bool: ...

    def delete(self, key: str) -> None:
        """Remove the object; removing a missing object is not an error."""
        ...

    def list_keys(
        self, prefix: str = "", *, limit: int = 1000, start_after: str | None = None
    ) -> list[str]:
        """Up to `limit` keys under `prefix`, sorted, after `start_after` (pass the last
        key of a page to get the next; a page shorter than `limit` is the last)."""
        ...

    def list_sizes(
        self, prefix: str = "", *, limit: int = 1000, start_after: str | None = None
    ) -> list[tuple[str, int]]:
        """`list_keys` with each object's size in bytes (one listing call on S3)."""
        ...

    def delete_many(self, keys: Sequence[str]) -> None:
        """Remove up to `MAX_DELETE_BATCH` objects in one call (S3 DeleteObjects);
        missing ones are not an error."""
        ...

    def presigned_get_url(self, key: str, expires_seconds: int) -> str: ...

    def presigned_put_url(self, key: str, expires_seconds: int, content_type: str) -> str:
        """A URL that accepts one HTTP PUT with this exact Content-Type header."""
        ...

    def ensure_bucket(self) -> None:
        """Create the bucket (or directory) if missing; safe to call at every start-up."""
        ...


def iter_keys(
    store: ObjectStore, prefix: str, *, start_after: str | None = None, page_size: int = 1000
) -> Iterator[str]:
    """Every key under `prefix` in order, after `start_after`, one listing page at a time
    (a million keys are never held at once; resume from the last key seen)."""
    while True:
        page = store.list_keys(prefix, limit=page_size, start_after=start_after)
        yield from page
        if len(page) < page_size:
            return
        start_after = page[-1]
