"""The object store on a local directory (one machine, tests, the embedded demo)."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

from xmlx.storage.base import (
    DEFAULT_CONTENT_TYPE,
    MAX_DELETE_BATCH,
    StorageError,
    check_key,
    too_large,
)
from xmlx.storage.signing import sign_local_url

# Partial writes live here until renamed into place; the name is never a valid listing
# result because keys may not start with a dot-folder of this name (see check).
_PARTIAL_DIR = ".partial"


class LocalObjectStore:
    """Objects are files under `root`; writes are atomic (temp file + os.replace).

    Content types are not stored: the API serving `path_for(key)` guesses them from the
    key's suffix. Presigned URLs point at the API (`base_url`), signed with `secret`.
    """

    def __init__(self, root: Path | str, *, base_url: str, secret: str) -> None:
        self.root = Path(root).resolve()
        self.base_url = base_url
        self.secret = secret

    def path_for(self, key: str) -> Path:
        check_key(key)
        if key.split("/", 1)[0] == _PARTIAL_DIR:
            raise StorageError("storage.bad_key", f"{_PARTIAL_DIR}/ is reserved")
        path = (self.root / key).resolve()
        if not path.is_relative_to(self.root):
            raise StorageError("storage.bad_key", f"{key!r} leaves the storage root")
        return path

    def ensure_bucket(self) -> None:
        (self.root / _PARTIAL_DIR).mkdir(parents=True, exist_ok=True)

    def put_bytes(self, key: str, data: bytes, content_type: str = DEFAULT_CONTENT_TYPE) -> None:
        target = self.path_for(key)
        temp = self._temp_path()
        try:
            temp.write_bytes(data)
            self._move_into_place(temp, target)
        finally:
            temp.unlink(missing_ok=True)

    def put_file(
        self, key: str, path: Path | str, content_type: str = DEFAULT_CONTENT_TYPE
    ) -> None:
        target = self.path_for(key)
        temp = self._temp_path()
        try:
            shutil.copyfile(path, temp)
            self._move_into_place(temp, target)
        finally:
            temp.unlink(missing_ok=True)

    def _temp_path(self) -> Path:
        self.ensure_bucket()
        return self.root / _PARTIAL_DIR / uuid.uuid4().hex

    def _move_into_place(self, temp: Path, target: Path) -> None:
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(temp, target)
        except (NotADirectoryError, IsADirectoryError, FileExistsError) as exc:
            raise StorageError("storage.bad_key", f"key collides with a folder: {exc}") from exc

    def get_bytes(self, key: str, max_bytes: int | None = None) -> bytes:
        size = self.head(key)
        if size is None:
            raise StorageError("storage.not_found", f"no object {key}")
        if max_bytes is not None and size > max_bytes:
            raise too_large(key, size, max_bytes)
        with self.path_for(key).open("rb") as handle:
            data = handle.read() if max_bytes is None else handle.read(max_bytes + 1)
        if max_bytes is not None and len(data) > max_bytes:
            raise too_large(key, len(data), max_bytes)  # it grew since we looked
        return data

    def iter_lines(self, key: str) -> Iterator[str]:
        path = self.path_for(key)
        if not path.is_file():
            raise StorageError("storage.not_found", f"no object {key}")
        with path.open(encoding="utf-8", newline="") as handle:
            for line in handle:
                yield line.rstrip("\r\n")

    def head(self, key: str) -> int | None:
        path = self.path_for(key)
        return path.stat().st_size if path.is_file() else None

    def exists(self, key: str) -> bool:
        return self.head(key) is not None

    def delete(self, key: str) -> None:
        path = self.path_for(key)
        if path.is_file():
            path.unlink(missing_ok=True)

    def list_keys(
        self, prefix: str = "", *, limit: int = 1000, start_after: str | None = None
    ) -> list[str]:
        keys = sorted(
            key for key in self._keys_below(prefix) if start_after is None or key > start_after
        )
        return keys[:limit]

    def list_sizes(
        self, prefix: str = "", *, limit: int = 1000, start_after: str | None = None
    ) -> list[tuple[str, int]]:
        keys = self.list_keys(prefix, limit=limit, start_after=start_after)
        return [(key, self.head(key) or 0) for key in keys]

    def delete_many(self, keys: Sequence[str]) -> None:
        if len(keys) > MAX_DELETE_BATCH:
            raise StorageError("storage.error", f"{len(keys)} keys in one delete_many call")
        paths = [self.path_for(key) for key in keys]  # every key checked before any goes
        for path in paths:
            path.unlink(missing_ok=True)

    def _keys_below(self, prefix: str) -> list[str]:
        folder = self.root / prefix.rsplit("/", 1)[0] if "/" in prefix else self.root
        if not folder.is_dir() or not folder.resolve().is_relative_to(self.root):
            return []
        found: list[str] = []
        for dirpath, dirnames, filenames in os.walk(folder):
            if Path(dirpath) == self.root and _PARTIAL_DIR in dirnames:
                dirnames.remove(_PARTIAL_DIR)
            relative = Path(dirpath).relative_to(self.root).as_posix()
            base = "" if relative == "." else relative + "/"
            found.extend(base + name for name in filenames if (base + name).startswith(prefix))
        return found

    def presigned_get_url(self, key: str, expires_seconds: int) -> str:
        return sign_local_url(self.base_url, self.secret, "GET", key, expires_seconds)

    def presigned_put_url(self, key: str, expires_seconds: int, content_type: str) -> str:
        return sign_local_url(
            self.base_url, self.secret, "PUT", key, expires_seconds, content_type=content_type
        )
