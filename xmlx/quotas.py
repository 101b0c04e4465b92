"""Per-tenant limits: bytes kept in the store, items in flight.

Stored bytes are an account (`tenant_usage`), not a listing per request: the service
adds what it writes (item artifacts per recorded batch, model archives, manifest
copies), purges take off what they free, and `recount_usage` (run by the purge sweep,
at most every `Settings.usage_recount_seconds` per tenant) sets it to the exact sum of
a listing of the tenant's folder -- which is also how uploads count, since clients PUT
them straight to the store. Items in flight are counted from the jobs themselves
(total - done - failed over the tenant's live jobs), so they never drift.

Over a limit: `quota.storage_exceeded` (403: waiting does not help, deleting does) or
`quota.items_in_flight` (429: it passes as jobs finish); both carry `usage` and `limit`.

Admission is atomic: `admit` runs in the transaction that inserts the job, and for a
tenant with an items limit it first locks the tenant's row, so two concurrent
submissions cannot both count the same room and together pass the limit. A preparing
batch (`xmlx.jobs.prepare`) checks again once listed, without that lock: its items
were committed slice by slice before, so every admission already counted them.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import case, func, select, update
from sqlalchemy.orm import Session

from xmlx import keys
from xmlx.db import SessionFactory, session_scope, utcnow
from xmlx.errors import XmlxError
from xmlx.models import Job, JobState, Tenant, TenantUsage
from xmlx.repository._exec import execute_count
from xmlx.storage import ObjectStore

IN_FLIGHT_STATES = (JobState.PREPARING, JobState.QUEUED, JobState.RUNNING, JobState.CANCELLING)


class QuotaError(XmlxError):
    """A tenant limit would be passed; `usage` and `limit` say by how much."""

    def __init__(self, code: str, message: str, *, usage: int, limit: int) -> None:
        super().__init__(code, message)
        self.usage = usage
        self.limit = limit


def stored_bytes(session: Session, tenant_id: str) -> int:
    row = session.get(TenantUsage, tenant_id)
    return int(row.stored_bytes) if row is not None else 0


def add_stored_bytes(session: Session, tenant_id: str, delta: int) -> None:
    """Add (or, negative, take off) bytes; never below zero (a recount may have run
    between a write and its purge)."""
    if delta == 0:
        return
    total = TenantUsage.stored_bytes + delta
    statement = (
        update(TenantUsage)
        .where(TenantUsage.tenant_id == tenant_id)
        .values(stored_bytes=case((total < 0, 0), else_=total))
    )
    if execute_count(session, statement) == 0:
        session.add(TenantUsage(tenant_id=tenant_id, stored_bytes=max(delta, 0)))
        session.flush()


def record_written(sessions: SessionFactory, tenant_id: str, n_bytes: int) -> None:
    """Count bytes the service wrote for the tenant, in a transaction of their own."""
    if n_bytes > 0:
        with session_scope(sessions) as session:
            add_stored_bytes(session, tenant_id, n_bytes)


def items_in_flight(session: Session, tenant_id: str) -> int:
    stmt = select(func.coalesce(func.sum(Job.total - Job.done - Job.failed), 0)).where(
        Job.tenant_id == tenant_id, Job.state.in_(IN_FLIGHT_STATES), Job.deleted_at.is_(None)
    )
    return int(session.scalar(stmt) or 0)


def check_storage(session: Session, tenant_id: str) -> None:
    """Refuse new writes once the tenant keeps `max_stored_bytes` or more."""
    tenant = session.get(Tenant, tenant_id)
    limit = tenant.max_stored_bytes if tenant is not None else None
    if limit is None:
        return
    usage = stored_bytes(session, tenant_id)
    if usage >= limit:
        raise QuotaError(
            "quota.storage_exceeded",
            f"the tenant stores {usage} bytes, its limit is {limit}: delete jobs, models, "
            "datasets or uploads (DELETE /v1/...) to make room",
            usage=usage,
            limit=limit,
        )


def check_items(session: Session, tenant_id: str, new_items: int) -> None:
    """Refuse a job whose items would take the tenant past `max_items_in_flight`."""
    tenant = session.get(Tenant, tenant_id)
    limit = tenant.max_items_in_flight if tenant is not None else None
    if limit is None:
        return
    usage = items_in_flight(session, tenant_id)
    if usage + new_items > limit:
        raise QuotaError(
            "quota.items_in_flight",
            f"{usage} items are in flight and this request adds {new_items}; the limit is "
            f"{limit}: retry when some jobs have finished",
            usage=usage,
            limit=limit,
        )


def admit(session: Session, tenant_id: str, new_items: int) -> None:
    """Check both limits for a job of `new_items` items that the caller inserts in this
    same transaction; the items check holds the tenant's lock until it commits."""
    check_storage(session, tenant_id)
    tenant = session.get(Tenant, tenant_id)
    if tenant is None or tenant.max_items_in_flight is None:
        # No limit, nothing to serialise: such tenants (most) take no lock and never
        # wait for each other's submissions. A limit set concurrently applies from the
        # next submission, as it would had it been set a moment later.
        return
    _lock_tenant(session, tenant_id)
    check_items(session, tenant_id, new_items)


def _lock_tenant(session: Session, tenant_id: str) -> None:
    """Serialise the tenant's admissions until this transaction ends, and refresh its
    limits. PostgreSQL: FOR NO KEY UPDATE, which waits for another admission but not for
    inserts that only reference the tenant (their foreign keys take KEY SHARE). Counts
    made after it see what the previous holder committed (READ COMMITTED takes a new
    snapshot per statement). SQLite ignores FOR UPDATE and runs plain SELECTs outside a
    transaction, so a no-op UPDATE takes the database's write lock first."""
    if session.get_bind().dialect.name == "sqlite":
        execute_count(session, update(Tenant).where(Tenant.id == tenant_id).values(id=Tenant.id))
    locked = select(Tenant).where(Tenant.id == tenant_id).with_for_update(key_share=True)
    session.execute(locked.execution_options(populate_existing=True)).scalar_one_or_none()


def recount_usage(
    sessions: SessionFactory, store: ObjectStore, tenant_id: str, *, now: datetime | None = None
) -> int:
    """Set the tenant's stored bytes to the sum of a listing of its whole folder."""
    total = 0
    start_after: str | None = None
    prefix = keys.tenant_prefix(tenant_id)
    while True:
        page = store.list_sizes(prefix, limit=1000, start_after=start_after)
        total += sum(size for _, size in page)
        if len(page) < 1000:
            break
        start_after = page[-1][0]
    now = now or utcnow()
    with session_scope(sessions) as session:
        row = session.get(TenantUsage, tenant_id)
        if row is None:
            session.add(TenantUsage(tenant_id=tenant_id, stored_bytes=total, counted_at=now))
        else:
            row.stored_bytes = total
            row.counted_at = now
    return total


def tenants_due_for_recount(session: Session, before: datetime, limit: int = 10) -> list[str]:
    """Tenants never counted, or last counted before `before`."""
    stmt = (
        select(Tenant.id)
        .outerjoin(TenantUsage, TenantUsage.tenant_id == Tenant.id)
        .where((TenantUsage.counted_at.is_(None)) | (TenantUsage.counted_at < before))
        .order_by(TenantUsage.counted_at.asc().nulls_first(), Tenant.id)
        .limit(limit)
    )
    return list(session.scalars(stmt))


def set_limits(
    session: Session,
    tenant_id: str,
    *,
    retention_days: int | None,
    max_stored_bytes: int | None,
    max_items_in_flight: int | None,
) -> Tenant | None:
    """Set the three limits (None clears one); None when there is no such tenant."""
    tenant = session.get(Tenant, tenant_id)
    if tenant is None:
        return None
    tenant.retention_days = retention_days
    tenant.max_stored_bytes = max_stored_bytes
    tenant.max_items_in_flight = max_items_in_flight
    session.flush()
    return tenant
