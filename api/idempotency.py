"""The `Idempotency-Key` header: a retried POST returns what the first one created.

Jobs (explanations, predictions, model training) use the kernel's support: the key and
a fingerprint of the request are stored in the job row, unique per tenant
(`xmlx.jobs.create_job`). Datasets have no such column, so their replay record lives
in Redis (`ReplayStore`) for `REPLAY_TTL_SECONDS`: first a "pending" marker taken with
SET NX (two racing requests cannot both create), then the dataset id. The pending
marker only lives `PENDING_LEASE_SECONDS` (far longer than a dataset creation takes):
a process that died between the two steps must not leave the key answering
`idempotency.in_progress` for a day; after the lease a retry creates. If Redis cannot
be reached the dataset is created without a replay record (logged): a retry may then
create a second dataset, which is harmless, whereas refusing uploads would not be.
Uploads need nothing: presigning creates no state, and the same keys name the same
objects.

The fingerprint covers the route and the parsed body (canonical JSON), so reordered
fields or whitespace replay, and the same key on another route is a conflict.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import redis
from pydantic import BaseModel

from api.problems import ProblemError
from xmlx.security import request_hash

log = logging.getLogger("xmlx.api")

MAX_KEY_LENGTH = 200
REPLAY_TTL_SECONDS = 24 * 3600
PENDING_LEASE_SECONDS = 60
_PENDING = "pending"


def check_key(key: str | None) -> str | None:
    if key is None:
        return None
    if not 1 <= len(key) <= MAX_KEY_LENGTH or not all(33 <= ord(ch) <= 126 for ch in key):
        raise ProblemError(
            422,
            "idempotency.invalid_key",
            f"Idempotency-Key must be 1..{MAX_KEY_LENGTH} visible ASCII characters",
        )
    return key


def fingerprint(route: str, body: BaseModel) -> str:
    canonical = json.dumps(
        {"route": route, "body": body.model_dump(mode="json")}, sort_keys=True
    ).encode()
    return request_hash(canonical)


def conflict(key: str) -> ProblemError:
    return ProblemError(
        422,
        "idempotency.conflict",
        f"Idempotency-Key {key!r} was already used with a different request",
    )


class ReplayStore:
    def __init__(
        self, client: redis.Redis, namespace: str, pending_seconds: float = PENDING_LEASE_SECONDS
    ) -> None:
        self.client = client
        self.namespace = namespace
        self.pending_ms = max(1, round(pending_seconds * 1000))

    def _key(self, tenant_id: str, key: str) -> str:
        return f"xmlx:idempotency:{self.namespace}:{tenant_id}:{key}"

    def begin(self, tenant_id: str, key: str, fp: str) -> str | None:
        """The id created by an earlier identical request, or None: go ahead and create.

        Raises `idempotency.conflict` (another body) or `idempotency.in_progress`.
        """
        record = json.dumps({"fingerprint": fp, "id": _PENDING})
        try:
            if self.client.set(self._key(tenant_id, key), record, nx=True, px=self.pending_ms):
                return None
            raw: Any = self.client.get(self._key(tenant_id, key))
        except redis.RedisError as exc:
            log.warning("idempotency: Redis unreachable, creating without a record (%s)", exc)
            return None
        if raw is None:  # expired between the two calls
            return self.begin(tenant_id, key, fp)
        stored = json.loads(raw)
        if stored["fingerprint"] != fp:
            raise conflict(key)
        if stored["id"] == _PENDING:
            raise ProblemError(
                409, "idempotency.in_progress", "the first request with this key is still running"
            )
        return str(stored["id"])

    def finish(self, tenant_id: str, key: str, fp: str, resource_id: str) -> None:
        record = json.dumps({"fingerprint": fp, "id": resource_id})
        redis_key = self._key(tenant_id, key)
        self._quietly(lambda: self.client.set(redis_key, record, ex=REPLAY_TTL_SECONDS))

    def abandon(self, tenant_id: str, key: str) -> None:
        """The creation failed: a retry with the same key may try again."""
        self._quietly(lambda: self.client.delete(self._key(tenant_id, key)))

    @staticmethod
    def _quietly(action: Any) -> None:
        try:
            action()
        except redis.RedisError as exc:
            log.warning("idempotency: Redis unreachable (%s)", exc)
