"""Tenants and their API keys.

A key's `last_used_at` is written at most once a minute (`LAST_USE_RESOLUTION`): the
API verifies a key from the database on every cache miss, and a write per
verification would make a poll dearer than the poll itself.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from xmlx.db import new_id, utcnow
from xmlx.models import ApiKey, Tenant, TenantUsage
from xmlx.repository._exec import execute_count
from xmlx.security import (
    DEFAULT_SCOPES,
    api_key_matches,
    format_scopes,
    generate_api_key,
    parse_api_key,
)

LAST_USE_RESOLUTION = timedelta(minutes=1)


def create_tenant(session: Session, name: str) -> Tenant:
    tenant = Tenant(id=new_id("ten"), name=name, created_at=utcnow())
    session.add(tenant)
    session.flush()
    session.add(TenantUsage(tenant_id=tenant.id, stored_bytes=0))
    session.flush()
    return tenant


def get_tenant(session: Session, tenant_id: str) -> Tenant | None:
    return session.get(Tenant, tenant_id)


def get_tenant_by_name(session: Session, name: str) -> Tenant | None:
    return session.scalars(select(Tenant).where(Tenant.name == name)).one_or_none()


def create_api_key(
    session: Session,
    tenant_id: str,
    pepper: str,
    name: str = "",
    scopes: Iterable[str] = DEFAULT_SCOPES,
) -> tuple[ApiKey, str]:
    """A new key row and the plaintext key (show it once; only its hash is stored)."""
    generated = generate_api_key(pepper)
    row = ApiKey(
        id=new_id("key"),
        tenant_id=tenant_id,
        name=name,
        prefix=generated.prefix,
        key_hash=generated.key_hash,
        scopes=format_scopes(scopes),
        created_at=utcnow(),
    )
    session.add(row)
    session.flush()
    return row, generated.plaintext


def verify_api_key(
    session: Session, plaintext: str, pepper: str, now: datetime | None = None
) -> ApiKey | None:
    """The live key row for `plaintext` (its last use recorded if a minute old), or None."""
    prefix = parse_api_key(plaintext)
    if prefix is None:
        return None
    row = session.scalars(select(ApiKey).where(ApiKey.prefix == prefix)).one_or_none()
    if row is None or row.revoked_at is not None:
        return None
    if not api_key_matches(plaintext, row.key_hash, pepper):
        return None
    now = now or utcnow()
    if row.last_used_at is None or _aware(row.last_used_at) <= now - LAST_USE_RESOLUTION:
        row.last_used_at = now
    return row


def _aware(moment: datetime) -> datetime:
    # SQLite hands back naive datetimes; the kernel stores UTC only.
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def get_api_key(session: Session, tenant_id: str, key_id: str) -> ApiKey | None:
    row = session.get(ApiKey, key_id)
    return row if row is not None and row.tenant_id == tenant_id else None


def list_api_keys(session: Session, tenant_id: str) -> list[ApiKey]:
    stmt = select(ApiKey).where(ApiKey.tenant_id == tenant_id).order_by(ApiKey.created_at)
    return list(session.scalars(stmt))


def revoke_api_key(
    session: Session, tenant_id: str, key_id: str, now: datetime | None = None
) -> bool:
    """Revoke a key of this tenant; False when there is no such live key."""
    statement = (
        update(ApiKey)
        .where(ApiKey.id == key_id, ApiKey.tenant_id == tenant_id, ApiKey.revoked_at.is_(None))
        .values(revoked_at=now or utcnow())
    )
    return execute_count(session, statement) == 1
