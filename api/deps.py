"""What routes depend on: the app's resources, a database session, the caller's tenant.

`ApiState` is built once at start-up (`api.app`); a route asks for it, or for a
`Session`, or for the authenticated `Principal`, with `Annotated[..., Depends(...)]`.
Authentication and the per-tenant rate limit are one dependency, so no tenant-scoped
route can forget either.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
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

    def close(self) -> None:
        self.broker.close()
        self.engine.dispose()


@dataclass(frozen=True)
class Principal:
    tenant_id: str
    key_id: str


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
    pepper = state.settings.api_key_pepper.get_secret_value()
    with session_scope(state.sessions) as session:
        row = repo.verify_api_key(session, credentials.credentials.strip(), pepper)
        if row is None:
            raise _unauthorized("the API key is not valid (unknown, revoked or malformed)")
        principal = Principal(tenant_id=row.tenant_id, key_id=row.id)
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
