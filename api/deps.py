"""What routes depend on: the app's resources, a database session, the caller's tenant.

`ApiState` is built once at start-up (`api.app`); a route asks for it, or for a
`Session`, or for the authenticated `Principal`, with `Annotated[..., Depends(...)]`.
Authentication and the per-tenant rate limit are one dependency, so no tenant-scoped
route can forget either.

A verified key is remembered for `AUTH_CACHE_SECONDS` (per process, by the SHA-256 of
the key): verifying costs a database round trip and a write (the key's `last_used_at`),
which made a status poll several times dearer than the poll itself (bench/load.py).
The price: a revoked key keeps working for at most that long on a replica that has
just seen it, and `last_used_at` is as fresh as that.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Annotated

import redis
from fastapi import Depends, Header, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from api import idempotency
from api.broker import Broker
from api.idempotency import ReplayStore
from api.metrics import Metrics
from api.problems import ProblemError
from api.ratelimit import RateLimiter
from xmlx import repository as repo
from xmlx.db import SessionFactory, session_scope
from xmlx.settings import Settings
from xmlx.storage import ObjectStore

AUTH_CACHE_SECONDS = 10.0
AUTH_CACHE_ENTRIES = 10_000


@dataclass(frozen=True)
class Principal:
    tenant_id: str
    key_id: str


class VerifiedKeys:
    """Keys verified in the last `AUTH_CACHE_SECONDS`: SHA-256 of the key -> Principal."""

    def __init__(self, ttl: float = AUTH_CACHE_SECONDS) -> None:
        self.ttl = ttl
        self._entries: dict[str, tuple[Principal, float]] = {}
        self._lock = threading.Lock()

    @staticmethod
    def _digest(plaintext: str) -> str:
        return hashlib.sha256(plaintext.encode()).hexdigest()

    def get(self, plaintext: str) -> Principal | None:
        now = time.monotonic()
        with self._lock:
            entry = self._entries.get(self._digest(plaintext))
        return entry[0] if entry is not None and entry[1] > now else None

    def put(self, plaintext: str, principal: Principal) -> None:
        with self._lock:
            if len(self._entries) >= AUTH_CACHE_ENTRIES:
                self._entries.clear()  # crude but bounded; a miss only costs a lookup
            self._entries[self._digest(plaintext)] = (principal, time.monotonic() + self.ttl)


@dataclass
class ApiState:
    settings: Settings
    engine: Engine
    sessions: SessionFactory
    store: ObjectStore
    redis: redis.Redis
    broker: Broker
    limiter: RateLimiter
    replays: ReplayStore
    metrics: Metrics
    verified_keys: VerifiedKeys = field(default_factory=VerifiedKeys)

    def close(self) -> None:
        self.broker.close()
        self.engine.dispose()


def get_state(request: Request) -> ApiState:
    state: ApiState | None = getattr(request.app.state, "xmlx", None)
    if state is None:
        raise ProblemError(503, "service.starting", "the service has not finished starting")
    return state


State = Annotated[ApiState, Depends(get_state)]


def get_session(state: State) -> Iterator[Session]:
    """A read session for one request (writes open their own transaction)."""
    with session_scope(state.sessions) as session:
        yield session


DbSession = Annotated[Session, Depends(get_session)]

_bearer = HTTPBearer(auto_error=False, description="an API key: `Bearer xmlx_...`")


def _unauthorized(detail: str) -> ProblemError:
    return ProblemError(
        401, "auth.invalid", detail, headers={"WWW-Authenticate": 'Bearer realm="xmlx"'}
    )


def authenticate(
    state: State,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    """The caller's tenant from `Authorization: Bearer <key>`, after the rate limit."""
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise _unauthorized("send an API key as `Authorization: Bearer <key>`")
    principal = _verified(state, credentials.credentials.strip())
    decision = state.limiter.hit(principal.tenant_id)
    if not decision.allowed:
        raise ProblemError(
            429,
            "rate.limited",
            f"more than {decision.limit} requests this minute; retry later",
            headers={
                "Retry-After": str(decision.retry_after),
                "X-RateLimit-Limit": str(decision.limit),
                "X-RateLimit-Remaining": "0",
            },
        )
    return principal


def _verified(state: ApiState, plaintext: str) -> Principal:
    principal = state.verified_keys.get(plaintext)
    if principal is not None:
        return principal
    pepper = state.settings.api_key_pepper.get_secret_value()
    with session_scope(state.sessions) as session:
        row = repo.verify_api_key(session, plaintext, pepper)
        if row is None:
            raise _unauthorized("the API key is not valid (unknown, revoked or malformed)")
        principal = Principal(tenant_id=row.tenant_id, key_id=row.id)
    state.verified_keys.put(plaintext, principal)
    return principal


Caller = Annotated[Principal, Depends(authenticate)]


def get_idempotency_key(
    key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            description="retrying with the same key and body returns the first answer",
        ),
    ] = None,
) -> str | None:
    return idempotency.check_key(key)


IdempotencyKey = Annotated[str | None, Depends(get_idempotency_key)]
