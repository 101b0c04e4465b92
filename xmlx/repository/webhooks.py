"""Webhook settings and the deliveries outbox (`xmlx.webhooks` has the rules).

Claims are leases, like chunks': a row is taken by a conditional UPDATE (due, not
leased or lease expired) that only one worker can win, so two delivery tasks never send
the same row at once, and a worker killed mid-POST leaves a lease that simply expires.
On PostgreSQL the candidates are read with `FOR UPDATE SKIP LOCKED`, so concurrent
deliverers skip each other's rows instead of queueing behind them; SQLite has one
writer at a time, and the conditional UPDATE alone is the guard there.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from xmlx.db import new_id, utcnow
from xmlx.models import WebhookDelivery, WebhookDeliveryState, WebhookSettings
from xmlx.repository._exec import execute_count

PENDING = WebhookDeliveryState.PENDING


def get_settings(session: Session, tenant_id: str) -> WebhookSettings | None:
    return session.get(WebhookSettings, tenant_id)


def put_settings(
    session: Session, tenant_id: str, *, url: str | None, secret: str | None
) -> WebhookSettings:
    """Set the tenant's default URL; `secret` replaces the signing secret when given."""
    row = session.get(WebhookSettings, tenant_id, with_for_update=True)
    if row is None:
        assert secret is not None, "a tenant's first settings need a secret"
        row = WebhookSettings(tenant_id=tenant_id, url=url, secret=secret, updated_at=utcnow())
        session.add(row)
    else:
        row.url = url
        row.secret = secret or row.secret
        row.updated_at = utcnow()
    session.flush()
    return row


def ensure_secret(session: Session, tenant_id: str, secret: str) -> WebhookSettings:
    """The tenant's settings, created with `secret` (and no default URL) if missing."""
    _insert_ignore(session, WebhookSettings, {
        "tenant_id": tenant_id, "url": None, "secret": secret, "updated_at": utcnow()
    })  # fmt: skip
    row = session.get(WebhookSettings, tenant_id)
    assert row is not None
    return row


def add_delivery(
    session: Session, *, job_id: str, tenant_id: str, event: str, url: str, payload: dict[str, Any]
) -> bool:
    """Queue one delivery; a second one for the same job and event is ignored."""
    now = utcnow()
    values = {
        "id": new_id("whd"), "job_id": job_id, "tenant_id": tenant_id, "event": event,
        "url": url, "payload": payload, "state": PENDING, "attempts": 0,
        "next_attempt_at": now, "created_at": now,
    }  # fmt: skip
    return _insert_ignore(session, WebhookDelivery, values) == 1


def _insert_ignore(session: Session, model: Any, values: dict[str, Any]) -> int:
    dialect = session.get_bind().dialect.name
    insert = pg_insert if dialect == "postgresql" else sqlite_insert
    statement = insert(model).values(**values).on_conflict_do_nothing()
    return execute_count(session, statement)


def due_delivery_ids(session: Session, now: datetime, limit: int) -> list[str]:
    statement = (
        select(WebhookDelivery.id)
        .where(_claimable(now))
        .order_by(WebhookDelivery.next_attempt_at)
        .limit(limit)
    )
    if session.get_bind().dialect.name == "postgresql":
        statement = statement.with_for_update(skip_locked=True)
    return list(session.scalars(statement))


def claim(session: Session, delivery_id: str, owner: str, now: datetime, lease: timedelta) -> bool:
    return (
        execute_count(
            session,
            update(WebhookDelivery)
            .where(WebhookDelivery.id == delivery_id, _claimable(now))
            .values(lease_owner=owner, lease_expires_at=now + lease),
        )
        == 1
    )


def _claimable(now: datetime) -> Any:
    return and_(
        WebhookDelivery.state == PENDING,
        WebhookDelivery.next_attempt_at <= now,
        or_(WebhookDelivery.lease_expires_at.is_(None), WebhookDelivery.lease_expires_at < now),
    )


def get_delivery(session: Session, delivery_id: str) -> WebhookDelivery | None:
    return session.get(WebhookDelivery, delivery_id)


def record_attempt(session: Session, delivery_id: str, owner: str, **values: Any) -> bool:
    """Write an attempt's outcome, only while `owner` still holds the claim (a worker
    whose lease expired mid-POST must not overwrite the next holder's record)."""
    return (
        execute_count(
            session,
            update(WebhookDelivery)
            .where(WebhookDelivery.id == delivery_id, WebhookDelivery.lease_owner == owner)
            .values(
                attempts=WebhookDelivery.attempts + 1,
                lease_owner=None,
                lease_expires_at=None,
                **values,
            ),
        )
        == 1
    )


def list_deliveries(session: Session, job_id: str) -> Sequence[WebhookDelivery]:
    statement = (
        select(WebhookDelivery)
        .where(WebhookDelivery.job_id == job_id)
        .order_by(WebhookDelivery.created_at, WebhookDelivery.id)
    )
    return session.scalars(statement).all()
