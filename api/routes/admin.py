"""Tenants and API keys, for operators: every route needs a key with the `admin` scope.

The first admin key comes from the server's shell (`xmlx keys create --tenant ops
--scope admin`); from then on tenants and keys are managed here. A key's secret is in
the answer that creates it and nowhere else: listings show its prefix, scopes, creation
and last use (recorded at most once a minute), never the secret or its hash.

`/tenants/{id}/limits` reads and sets a tenant's retention and quotas (`xmlx.quotas`;
the same as `xmlx tenants limits`), with its current usage.

Revoking a key stops it on every API process within a second (`api.keyauth`): the
revocation is written to the database, then announced on the shared revocation epoch.
If Redis cannot take the announcement the answer is 503 -- the key IS revoked in the
database, but a process could honour its cached verification for up to a minute, so
retry the DELETE (revoking twice is harmless) until it answers 204.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

import redis
from fastapi import APIRouter, Path, Response
from pydantic import BaseModel, Field
from sqlalchemy.orm import Session

from api.deps import Admin, State
from api.problems import ProblemError, problem_responses
from api.views import Page
from xmlx import quotas
from xmlx import repository as repo
from xmlx.db import session_scope
from xmlx.models import ApiKey, Tenant
from xmlx.security import parse_scopes

router = APIRouter(prefix="/v1/admin", tags=["admin"])

Scope = Literal["read", "submit", "admin"]
TenantId = Annotated[str, Path(min_length=1, max_length=40)]
KeyId = Annotated[str, Path(min_length=1, max_length=40)]


class TenantIn(BaseModel):
    name: str = Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9][A-Za-z0-9._ -]*$")


class TenantOut(BaseModel):
    id: str
    name: str
    created_at: datetime


class KeyIn(BaseModel):
    name: str = Field(default="", max_length=200)
    scopes: list[Scope] = Field(default=["read", "submit"], min_length=1, max_length=3)


class KeyOut(BaseModel):
    id: str
    tenant_id: str
    name: str
    prefix: str
    scopes: list[Scope]
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


class LimitsIn(BaseModel):
    """A tenant's limits; null (or left out) removes one."""

    retention_days: int | None = Field(default=None, ge=1, le=36_500)
    max_stored_bytes: int | None = Field(default=None, ge=0, le=2**62)
    max_items_in_flight: int | None = Field(default=None, ge=0, le=2**62)


class LimitsOut(LimitsIn):
    tenant_id: str
    stored_bytes: int = Field(description="bytes the tenant keeps in the store (accounted)")
    items_in_flight: int = Field(description="items of its live jobs not yet finished")


class CreatedKey(BaseModel):
    key: KeyOut
    secret: str = Field(description="the API key itself; shown in this answer only")


def _key_out(row: ApiKey) -> KeyOut:
    return KeyOut(
        id=row.id, tenant_id=row.tenant_id, name=row.name, prefix=row.prefix,
        scopes=sorted(parse_scopes(row.scopes)),  # type: ignore[arg-type]
        created_at=row.created_at, last_used_at=row.last_used_at, revoked_at=row.revoked_at,
    )  # fmt: skip


def _tenant_not_found(tenant_id: str) -> ProblemError:
    return ProblemError(404, "tenant.not_found", f"no tenant {tenant_id}")


@router.post(
    "/tenants",
    response_model=TenantOut,
    status_code=201,
    summary="Create a tenant",
    responses=problem_responses(401, 403, 409, 422, 429),
)
def create_tenant(body: TenantIn, caller: Admin, state: State) -> TenantOut:
    with session_scope(state.sessions) as session:
        if repo.get_tenant_by_name(session, body.name) is not None:
            raise ProblemError(409, "tenant.exists", f"a tenant is already named {body.name!r}")
        tenant = repo.create_tenant(session, body.name)
        return TenantOut(id=tenant.id, name=tenant.name, created_at=tenant.created_at)


@router.post(
    "/tenants/{tenant_id}/keys",
    response_model=CreatedKey,
    status_code=201,
    summary="Create an API key for a tenant (its secret is shown once)",
    responses=problem_responses(401, 403, 404, 422, 429),
)
def create_key(tenant_id: TenantId, body: KeyIn, caller: Admin, state: State) -> CreatedKey:
    pepper = state.settings.api_key_pepper.get_secret_value()
    with session_scope(state.sessions) as session:
        if repo.get_tenant(session, tenant_id) is None:
            raise _tenant_not_found(tenant_id)
        row, secret = repo.create_api_key(session, tenant_id, pepper, body.name, body.scopes)
        return CreatedKey(key=_key_out(row), secret=secret)


@router.get(
    "/tenants/{tenant_id}/keys",
    response_model=Page[KeyOut],
    summary="A tenant's API keys: prefix, scopes, creation, last use (never the secret)",
    responses=problem_responses(401, 403, 404, 429),
)
def list_keys(tenant_id: TenantId, caller: Admin, state: State) -> Page[KeyOut]:
    with session_scope(state.sessions) as session:
        if repo.get_tenant(session, tenant_id) is None:
            raise _tenant_not_found(tenant_id)
        keys = [_key_out(row) for row in repo.list_api_keys(session, tenant_id)]
    return Page[KeyOut](items=keys, next_cursor=None)


@router.delete(
    "/tenants/{tenant_id}/keys/{key_id}",
    status_code=204,
    summary="Revoke an API key: refused by every API process within a second",
    responses=problem_responses(401, 403, 404, 429, 503),
)
def revoke_key(tenant_id: TenantId, key_id: KeyId, caller: Admin, state: State) -> Response:
    with session_scope(state.sessions) as session:
        if repo.get_api_key(session, tenant_id, key_id) is None:
            raise ProblemError(404, "key.not_found", f"tenant {tenant_id} has no key {key_id}")
        repo.revoke_api_key(session, tenant_id, key_id)
    try:
        state.revocations.publish()
    except redis.RedisError as exc:
        raise ProblemError(
            503,
            "service.unavailable",
            "the key is revoked, but the API processes could not be told (Redis is "
            "unreachable); retry this request",
            headers={"Retry-After": "1"},
        ) from exc
    return Response(status_code=204)


def _limits_out(session: Session, tenant: Tenant) -> LimitsOut:
    return LimitsOut(
        tenant_id=tenant.id, retention_days=tenant.retention_days,
        max_stored_bytes=tenant.max_stored_bytes, max_items_in_flight=tenant.max_items_in_flight,
        stored_bytes=quotas.stored_bytes(session, tenant.id),
        items_in_flight=quotas.items_in_flight(session, tenant.id),
    )  # fmt: skip


@router.get(
    "/tenants/{tenant_id}/limits",
    response_model=LimitsOut,
    summary="A tenant's retention and quotas, with its current usage",
    responses=problem_responses(401, 403, 404, 429),
)
def get_limits(tenant_id: TenantId, caller: Admin, state: State) -> LimitsOut:
    with session_scope(state.sessions) as session:
        tenant = repo.get_tenant(session, tenant_id)
        if tenant is None:
            raise _tenant_not_found(tenant_id)
        return _limits_out(session, tenant)


@router.put(
    "/tenants/{tenant_id}/limits",
    response_model=LimitsOut,
    summary="Set a tenant's retention (days) and quotas (stored bytes, items in flight)",
    responses=problem_responses(401, 403, 404, 422, 429),
)
def set_limits(tenant_id: TenantId, body: LimitsIn, caller: Admin, state: State) -> LimitsOut:
    with session_scope(state.sessions) as session:
        tenant = quotas.set_limits(session, tenant_id, **body.model_dump())
        if tenant is None:
            raise _tenant_not_found(tenant_id)
        return _limits_out(session, tenant)
