"""Verified API keys, cached per process, and revocation seen by every process at once.

Verifying a key costs a database round trip (bench/load.py: several times a status
poll), so each API process remembers the keys it has verified. A revoked key must stop
working on EVERY process within a second, so the cache is checked against a shared
*revocation epoch*: a random token in Redis (`REVOCATION_EPOCH_KEY`) that every
revocation replaces. A cached entry is used only while the epoch is the one it was
verified under; any change -- a revocation anywhere, or a Redis that restarted empty --
retires every cached entry, and the next request of each key goes to the database.

Why an epoch read rather than pub/sub: a GET is stateless. A subscriber thread can
miss a message while its connection is down and then trust a stale cache with no way
to know; a GET that fails says so. Its cost is bounded: each process reads the epoch
at most every `EPOCH_CHECK_SECONDS` (one GET per 0.25 s however many requests), which
also bounds how late a revocation is seen.

Redis down: fall back to the database. While the epoch cannot be read the cache is
neither read nor filled, so every request verifies its key in the database: a revoked
key is refused at once, and the API keeps serving (slower). After a failure Redis is
not asked again for `OUTAGE_BACKOFF_SECONDS`, so an outage costs one timeout per
second, not one per request. A revocation whose epoch cannot be published is
recorded in the database anyway and answered 503 so the caller retries it (revoking
twice is harmless).
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import redis

from xmlx.security import DEFAULT_SCOPES

log = logging.getLogger("xmlx.api")

REVOCATION_EPOCH_KEY = "xmlx:auth:revocation-epoch"
EPOCH_CHECK_SECONDS = 0.25
OUTAGE_BACKOFF_SECONDS = 1.0
AUTH_CACHE_SECONDS = 60.0
AUTH_CACHE_ENTRIES = 10_000


@dataclass(frozen=True)
class Principal:
    tenant_id: str
    key_id: str
    scopes: frozenset[str] = field(default=frozenset(DEFAULT_SCOPES))


class RevocationEpoch:
    """The shared revocation epoch as this process last read it."""

    def __init__(self, client: redis.Redis, clock: Callable[[], float] = time.monotonic) -> None:
        self.client = client
        self.clock = clock
        self._lock = threading.Lock()
        self._value: str | None = None
        self._known = False
        self._read_at = float("-inf")
        self._skip_until = float("-inf")

    def current(self) -> str | None:
        """The epoch ("" when none was ever published), or None when Redis cannot say."""
        now = self.clock()
        with self._lock:
            if now < self._skip_until:
                return None
            if self._known and now - self._read_at < EPOCH_CHECK_SECONDS:
                return self._value
        try:
            raw = self.client.get(REVOCATION_EPOCH_KEY)
        except redis.RedisError as exc:
            with self._lock:
                self._known = False
                self._skip_until = now + OUTAGE_BACKOFF_SECONDS
            log.warning("auth: revocation epoch unreadable (%s); verifying keys in the DB", exc)
            return None
        value = raw.decode() if isinstance(raw, bytes) else (raw or "")
        with self._lock:
            self._value, self._known, self._read_at = value, True, now
        return value

    def publish(self) -> None:
        """Announce a revocation to every process; raises redis.RedisError if it cannot."""
        self.client.set(REVOCATION_EPOCH_KEY, uuid.uuid4().hex)
        with self._lock:
            self._known = False  # this process reads the new epoch at once


class VerifiedKeys:
    """Keys verified under an epoch: SHA-256 of the key -> (Principal, expiry, epoch)."""

    def __init__(self, ttl: float = AUTH_CACHE_SECONDS) -> None:
        self.ttl = ttl
        self._entries: dict[str, tuple[Principal, float, str]] = {}
        self._lock = threading.Lock()

    @staticmethod
    def _digest(plaintext: str) -> str:
        return hashlib.sha256(plaintext.encode()).hexdigest()

    def get(self, plaintext: str, epoch: str | None) -> Principal | None:
        if epoch is None:
            return None
        with self._lock:
            entry = self._entries.get(self._digest(plaintext))
        if entry is None or entry[1] <= time.monotonic() or entry[2] != epoch:
            return None
        return entry[0]

    def put(self, plaintext: str, principal: Principal, epoch: str | None) -> None:
        if epoch is None:
            return
        with self._lock:
            if len(self._entries) >= AUTH_CACHE_ENTRIES:
                self._entries.clear()  # crude but bounded; a miss only costs a lookup
            expires = time.monotonic() + self.ttl
            self._entries[self._digest(plaintext)] = (principal, expires, epoch)
