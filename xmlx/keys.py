"""Storage key layout, and validation of the keys users give us.

Every storage key is built here by the server; a request never names a raw key. The
layout (one tenant never reads another's prefix):

    tenants/{tenant}/uploads/{user key}                 images sent for prediction
    tenants/{tenant}/datasets/{dataset}/manifest.csv    (or .jsonl)
    tenants/{tenant}/datasets/{dataset}/images/{user key}
    tenants/{tenant}/models/{model}/{artifact name}   model.{attempt}.zip (model.zip before)
    tenants/{tenant}/jobs/{job}/items/{sha256(item key)[:16]}/{attempt}/{heatmap.png, ...}

`{attempt}` (`attempt_token`) names the lease that wrote the files: a worker that lost
its lease writes beside the winner, never over it, and the item row (or the model row)
records the keys the lease holder wrote, so stored JSON and files come from one run.
Rows recorded before attempt tokens keep their old keys, which readers take as recorded.

User keys (image names inside a dataset or an upload area) are validated by
`validate_user_key`; ids by `_check_id` (they come from our own tables, but a key built
from a forged id must still not escape its prefix).
"""

from __future__ import annotations

import hashlib
import re
import unicodedata

from xmlx.errors import XmlxError

MAX_KEY_BYTES = 1024
ITEM_ARTIFACT_NAMES = frozenset(
    {"heatmap.png", "mask.png", "weights.npy", "overlay.png", "segments.npy", "explanation.json"}
    # one overlay per explained target, up to xmlcore.batch.MAX_HEATMAPS (8)
    | {f"heatmap_{k}.png" for k in range(2, 9)}
)
_TOKEN_PATTERN = re.compile(r"^a[0-9]{1,6}-[0-9a-f]{8}$")
_ID_PATTERN = re.compile(r"^[a-z]{2,8}_[0-9a-z]{4,40}$")
_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class KeyValidationError(XmlxError):
    """A key that must not be used; `reason` says which rule it broke."""

    def __init__(self, reason: str, key: str) -> None:
        shown = key if len(key) <= 80 else key[:77] + "..."
        super().__init__("key.invalid", f"invalid key {shown!r}: {reason}")
        self.reason = reason


def validate_user_key(key: str) -> str:
    """Return `key` unchanged if it is a safe relative key, else raise KeyValidationError.

    Rules: not empty; at most 1,024 bytes of UTF-8; relative (no leading `/`); no empty
    segment (`//`, trailing `/`); no `.` or `..` segment; no backslash; no NUL or other
    control character.
    """
    if not isinstance(key, str) or not key:
        raise KeyValidationError("empty", str(key))
    reason = _key_problem(key)
    if reason:
        raise KeyValidationError(reason, key)
    return key


def _key_problem(key: str) -> str | None:
    if len(key.encode("utf-8", errors="surrogatepass")) > MAX_KEY_BYTES:
        return f"longer than {MAX_KEY_BYTES} bytes of UTF-8"
    if any(unicodedata.category(ch) in ("Cc", "Cs") for ch in key):
        return "contains a control character"
    if "\\" in key:
        return "contains a backslash"
    if key.startswith("/"):
        return "absolute (starts with '/')"
    segments = key.split("/")
    if any(segment == "" for segment in segments):
        return "has an empty segment ('//' or a trailing '/')"
    if any(segment in (".", "..") for segment in segments):
        return "has a '.' or '..' segment"
    return None


def validate_prefix(prefix: str) -> str:
    """A user-given listing prefix: empty, or a valid key optionally ending with `/`."""
    if prefix:
        validate_user_key(prefix[:-1] if prefix.endswith("/") else prefix)
    return prefix


def item_key_hash(item_key: str) -> str:
    """The first 16 hex digits of sha256(item key): a fixed-length, path-safe folder name."""
    return hashlib.sha256(item_key.encode("utf-8")).hexdigest()[:16]


def _check_id(value: str) -> str:
    if not _ID_PATTERN.fullmatch(value):
        raise KeyValidationError("not a valid id", value)
    return value


def _check_name(value: str) -> str:
    if not _NAME_PATTERN.fullmatch(value):
        raise KeyValidationError("not a valid artifact name", value)
    return value


def tenant_prefix(tenant_id: str) -> str:
    return f"tenants/{_check_id(tenant_id)}/"


def upload_key(tenant_id: str, user_key: str) -> str:
    return f"{tenant_prefix(tenant_id)}uploads/{validate_user_key(user_key)}"


def uploads_prefix(tenant_id: str, user_prefix: str = "") -> str:
    return f"{tenant_prefix(tenant_id)}uploads/{validate_prefix(user_prefix)}"


def dataset_prefix(tenant_id: str, dataset_id: str) -> str:
    return f"{tenant_prefix(tenant_id)}datasets/{_check_id(dataset_id)}/"


def dataset_manifest_key(tenant_id: str, dataset_id: str, suffix: str = "csv") -> str:
    if suffix not in ("csv", "jsonl"):
        raise KeyValidationError("manifest suffix must be csv or jsonl", suffix)
    return f"{dataset_prefix(tenant_id, dataset_id)}manifest.{suffix}"


def dataset_image_key(tenant_id: str, dataset_id: str, image_key: str) -> str:
    return f"{dataset_prefix(tenant_id, dataset_id)}images/{validate_user_key(image_key)}"


def model_prefix(tenant_id: str, model_id: str) -> str:
    return f"{tenant_prefix(tenant_id)}models/{_check_id(model_id)}/"


def model_artifact_key(tenant_id: str, model_id: str, name: str) -> str:
    return f"{model_prefix(tenant_id, model_id)}{_check_name(name)}"


def job_prefix(tenant_id: str, job_id: str) -> str:
    return f"{tenant_prefix(tenant_id)}jobs/{_check_id(job_id)}/"


def attempt_token(attempt: int, owner: str) -> str:
    """`a{attempt}-{sha256(owner)[:8]}`: unique per lease of a chunk (each lease counts
    one more attempt; the owner tells apart a refunded attempt taken by another worker)."""
    token = f"a{attempt}-{hashlib.sha256(owner.encode('utf-8')).hexdigest()[:8]}"
    if not _TOKEN_PATTERN.fullmatch(token):
        raise KeyValidationError("not a valid attempt", token)
    return token


def item_artifact_key(
    tenant_id: str, job_id: str, item_key: str, name: str, attempt: str | None = None
) -> str:
    """Where an item's artifact goes. With `attempt` (an `attempt_token`), under that
    attempt's folder, so two workers running the same item never write the same key;
    without it, the layout of rows recorded before attempt tokens."""
    if name not in ITEM_ARTIFACT_NAMES:
        raise KeyValidationError(
            f"artifact name must be one of {sorted(ITEM_ARTIFACT_NAMES)}", name
        )
    folder = f"{job_prefix(tenant_id, job_id)}items/{item_key_hash(item_key)}/"
    if attempt is not None:
        if not _TOKEN_PATTERN.fullmatch(attempt):
            raise KeyValidationError("not a valid attempt", attempt)
        folder += f"{attempt}/"
    return folder + name


# Segments of visible ASCII (no backslash), never empty, "." or "..": keys that
# `validate_user_key` accepts, recognised with one regex (long keys aside).
_SEGMENT = r"(?!\.\.?(?:/|$))[ !-.0-\[\]-~]+"
_PLAIN_KEY = re.compile(rf"{_SEGMENT}(?:/{_SEGMENT})*")


def user_key_problem(key: str, base_prefix: str = "") -> str | None:
    """Why `key` cannot be used under `base_prefix`, or None when it can (fast path for
    plain ASCII keys: a million of them are checked per big batch)."""
    if not _PLAIN_KEY.fullmatch(key):
        try:
            validate_user_key(key)
        except KeyValidationError as exc:
            return exc.reason
    if len((base_prefix + key).encode("utf-8")) > MAX_KEY_BYTES:
        return f"longer than {MAX_KEY_BYTES} bytes once placed under its folder"
    return None
