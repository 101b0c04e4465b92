"""Object storage: one `ObjectStore` interface, an S3 adapter and a local-directory adapter.

`make_object_store(settings)` picks the adapter from `XMLX_STORAGE_BACKEND`. Keys come
from `xmlx.keys` (built by the server); every adapter still refuses unsafe keys
(`storage.bad_key`). Errors are `StorageError` with a code; `transient=True` marks the
ones a worker should retry (`storage.unavailable`).
"""

from xmlx.settings import Settings
from xmlx.storage.base import (
    DEFAULT_CONTENT_TYPE,
    ObjectStore,
    StorageError,
    check_key,
    iter_keys,
)
from xmlx.storage.local import LocalObjectStore
from xmlx.storage.s3 import S3ObjectStore
from xmlx.storage.signing import (
    FILES_ROUTE,
    derive_signing_secret,
    local_url_signature,
    sign_local_url,
    verify_local_url,
)


def make_object_store(settings: Settings) -> ObjectStore:
    """The configured store. Call `ensure_bucket()` once at start-up."""
    if settings.storage_backend == "local":
        return LocalObjectStore(
            settings.local_storage_root,
            base_url=settings.public_base_url,
            secret=derive_signing_secret(settings.api_key_pepper.get_secret_value()),
        )
    return S3ObjectStore(
        settings.s3_bucket,
        endpoint_url=settings.s3_endpoint_url,
        public_endpoint_url=settings.s3_public_endpoint_url,
        region=settings.s3_region,
        access_key=settings.s3_access_key.get_secret_value(),
        secret_key=settings.s3_secret_key.get_secret_value(),
        max_attempts=settings.s3_max_attempts,
        connect_timeout=settings.s3_connect_timeout_seconds,
        read_timeout=settings.s3_read_timeout_seconds,
        multipart_threshold=settings.s3_multipart_threshold_bytes,
        multipart_chunksize=settings.s3_multipart_chunk_bytes,
    )


__all__ = [
    "DEFAULT_CONTENT_TYPE",
    "FILES_ROUTE",
    "LocalObjectStore",
    "ObjectStore",
    "S3ObjectStore",
    "StorageError",
    "check_key",
    "derive_signing_secret",
    "iter_keys",
    "local_url_signature",
    "make_object_store",
    "sign_local_url",
    "verify_local_url",
]
