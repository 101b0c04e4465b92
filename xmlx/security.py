"""API keys: generation, hashing, parsing. Only a keyed hash of a key is ever stored.

A key reads `xmlx_<prefix>_<secret>`. The prefix (public, unique) finds the row in one
indexed lookup; the secret (256 bits) is checked against HMAC-SHA256(pepper, key) in
constant time. The pepper lives in settings, not in the database, so a leaked database
dump alone does not allow testing guesses.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Iterable
from dataclasses import dataclass

KEY_SCHEME = "xmlx"
# What a key may do: `read` (GET), `submit` (create and cancel work), `admin` (tenants
# and keys of every tenant). Keys made before scopes existed hold the default.
SCOPES = ("read", "submit", "admin")
DEFAULT_SCOPES = ("read", "submit")
PREFIX_LENGTH = 12
_PREFIX_ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyz"


@dataclass(frozen=True)
class GeneratedKey:
    """A fresh key: `plaintext` is shown to the user once; store `prefix` and `key_hash`."""

    plaintext: str
    prefix: str
    key_hash: str


def generate_api_key(pepper: str) -> GeneratedKey:
    prefix = "".join(secrets.choice(_PREFIX_ALPHABET) for _ in range(PREFIX_LENGTH))
    plaintext = f"{KEY_SCHEME}_{prefix}_{secrets.token_urlsafe(32)}"
    return GeneratedKey(
        plaintext=plaintext, prefix=prefix, key_hash=hash_api_key(plaintext, pepper)
    )


def hash_api_key(plaintext: str, pepper: str) -> str:
    return hmac.new(pepper.encode(), plaintext.encode(), hashlib.sha256).hexdigest()


def parse_api_key(plaintext: str) -> str | None:
    """The lookup prefix of a well-formed key, or None (so junk never reaches the DB)."""
    parts = plaintext.split("_", 2)
    if len(parts) != 3 or parts[0] != KEY_SCHEME or len(parts[1]) != PREFIX_LENGTH:
        return None
    if not all(ch in _PREFIX_ALPHABET for ch in parts[1]) or len(parts[2]) < 32:
        return None
    return parts[1]


def api_key_matches(plaintext: str, key_hash: str, pepper: str) -> bool:
    return hmac.compare_digest(hash_api_key(plaintext, pepper), key_hash)


def format_scopes(scopes: Iterable[str]) -> str:
    """Scopes as stored: known names, space-separated, in `SCOPES` order."""
    chosen = set(scopes)
    unknown = chosen - set(SCOPES)
    if unknown:
        raise ValueError(f"unknown scopes {sorted(unknown)}; known: {', '.join(SCOPES)}")
    if not chosen:
        raise ValueError("a key needs at least one scope")
    return " ".join(scope for scope in SCOPES if scope in chosen)


def parse_scopes(stored: str) -> frozenset[str]:
    return frozenset(stored.split()) & frozenset(SCOPES)


def request_hash(body: bytes) -> str:
    """The fingerprint of a request body, for idempotency (same key, same body)."""
    return hashlib.sha256(body).hexdigest()
