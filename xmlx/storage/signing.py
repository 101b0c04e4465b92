"""Signed, expiring URLs for the local directory store, served by the API.

S3 signs its own URLs; a local directory has nobody to check a signature, so the API
does: `/v1/files/{key}?expires={unix time}&signature={hex}` where the signature is
HMAC-SHA256 over method, key, expiry and content type. The API route calls
`verify_local_url` and then reads or writes `LocalObjectStore.path_for(key)`.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from urllib.parse import quote, urlencode

from xmlx.storage.base import StorageError, check_key

FILES_ROUTE = "/v1/files/"


def derive_signing_secret(pepper: str) -> str:
    """A key for URL signatures derived from the API pepper (never the pepper itself)."""
    return hmac.new(pepper.encode(), b"xmlx local file urls", hashlib.sha256).hexdigest()


def local_url_signature(
    secret: str, method: str, key: str, expires_at: int, content_type: str = ""
) -> str:
    message = "\n".join((method.upper(), key, str(expires_at), content_type))
    return hmac.new(secret.encode(), message.encode(), hashlib.sha256).hexdigest()


def sign_local_url(
    base_url: str,
    secret: str,
    method: str,
    key: str,
    expires_seconds: int,
    *,
    content_type: str = "",
    now: float | None = None,
) -> str:
    check_key(key)
    expires_at = int((time.time() if now is None else now) + expires_seconds)
    signature = local_url_signature(secret, method, key, expires_at, content_type)
    query = urlencode({"expires": expires_at, "signature": signature})
    return f"{base_url.rstrip('/')}{FILES_ROUTE}{quote(key, safe='/')}?{query}"


def verify_local_url(
    secret: str,
    method: str,
    key: str,
    expires_at: int,
    signature: str,
    *,
    content_type: str = "",
    now: float | None = None,
) -> None:
    """Raise StorageError `storage.bad_signature` or `storage.url_expired`, else return."""
    check_key(key)
    expected = local_url_signature(secret, method, key, expires_at, content_type)
    # compare_digest raises TypeError on non-ASCII str: such a signature is simply wrong.
    if not signature.isascii() or not hmac.compare_digest(expected, signature):
        raise StorageError("storage.bad_signature", "the URL signature does not match")
    if (time.time() if now is None else now) > expires_at:
        raise StorageError("storage.url_expired", "the URL has expired")
