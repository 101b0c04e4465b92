"""What routes depend on: the app's resources, a database session, the caller's tenant.

`ApiState` is built once at start-up (`api.app`); a route asks for it, or for a
`Session`, or for the authenticated `Principal`, with `Annotated[..., Depends(...)]`.
Authentication and the per-tenant rate limit are one dependency, so no tenant-scoped
route can forget either.

Verified keys are cached per process and revocations reach every process within
`api.keyauth.EPOCH_CHECK_SECONDS` (a shared revocation epoch in Redis); see that module.

Scopes: every route says what its key must hold with `Reader`, `Submitter` or `Admin`
(GET reads, creating or cancelling work submits, `/v1/admin/*` is admin). `Caller`
derives the scope from the HTTP method (GET/HEAD read, anything else submit).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Annotated

import redis
from fastapi import Depends, Header, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer, SecurityScopes
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from api import idempotency
from api.broker import Broker
from api.idempotency import ReplayStore
from api.keyauth import Principal as Principal
from api.keyauth import RevocationEpoch, VerifiedKeys
from api.metrics import Metrics
from api.problems import ProblemError
from api.ratelimit import RateLimiter
from xmlx import repository as repo
from xmlx.db import SessionFactory, session_scope
from xmlx.security import parse_scopes
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
    verified_keys: VerifiedKeys = field(default_factory=VerifiedKeys)
    revocations: RevocationEpoch = field(init=False)

    def __post_init__(self) -> None:
        self.revocations = RevocationEpoch(self.redis)

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
    request: Request,
    security_scopes: SecurityScopes,
    state: State,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    """The caller from `Authorization: Bearer <key>`, after the rate limit, holding the
    route's scopes (declared with `Security`, else from the HTTP method)."""
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
    needed = security_scopes.scopes or [scope_for_method(request.method)]
    missing = [scope for scope in needed if scope not in principal.scopes]
    if missing:
        raise ProblemError(
            403,
            "auth.insufficient_scope",
            f"this needs an API key with the {' and '.join(missing)} scope; this key has "
            f"{', '.join(sorted(principal.scopes)) or 'none'}",
        )
    return principal


def scope_for_method(method: str) -> str:
    return "read" if method.upper() in ("GET", "HEAD") else "submit"


def _verified(state: ApiState, plaintext: str) -> Principal:
    # Read the epoch BEFORE the database: a revocation committed after this read
    # publishes a new epoch, which retires the entry stored below.
    epoch = state.revocations.current()
    principal = state.verified_keys.get(plaintext, epoch)
    if principal is not None:
        return principal
    pepper = state.settings.api_key_pepper.get_secret_value()
    with session_scope(state.sessions) as session:
        row = repo.verify_api_key(session, plaintext, pepper)
        if row is None:
            raise _unauthorized("the API key is not valid (unknown, revoked or malformed)")
        principal = Principal(row.tenant_id, row.id, parse_scopes(row.scopes))
    state.verified_keys.put(plaintext, principal, epoch)
    return principal


Caller = Annotated[Principal, Depends(authenticate)]
Reader = Annotated[Principal, Security(authenticate, scopes=["read"])]
Submitter = Annotated[Principal, Security(authenticate, scopes=["submit"])]
Admin = Annotated[Principal, Security(authenticate, scopes=["admin"])]


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
