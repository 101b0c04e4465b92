"""The periodic sweep (beat task `xmlx.sweep_purges`): retention, stalled purges,
orphan files, usage recounts. Each part is bounded per tick so one tick stays short.

- Retention: a tenant's finished explanation and prediction jobs older than its
  `retention_days` (by `finished_at`) are deleted as a DELETE would (training jobs are
  left: a model is deleted explicitly, and its training job with it).
- Stalled purges: pending purges no run holds (lease expired or released) and not
  advanced for `grace`: their message was lost or their worker died. Sent again.
- Orphans: finished jobs not yet checked (`xmlx.orphans`).
- Usage: tenants whose stored bytes were last counted before `recount_every`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from xmlx import deletion, orphans, quotas
from xmlx.db import SessionFactory, session_scope, utcnow
from xmlx.errors import XmlxError
from xmlx.models import FINAL_JOB_STATES, Job, JobKind, Purge, PurgeState, Tenant
from xmlx.storage import ObjectStore


@dataclass
class SweepOutcome:
    send: list[str] = field(default_factory=list)  # purge ids to (re)send
    expired_jobs: int = 0
    orphan_files: int = 0
    recounted: int = 0


def expired_jobs(session: Session, now: datetime, limit: int = 200) -> list[tuple[str, str]]:
    """(tenant id, job id) of finished jobs past their tenant's retention, oldest first.
    One query per tenant with a retention (few): each gets its own cutoff."""
    tenants = session.execute(
        select(Tenant.id, Tenant.retention_days).where(Tenant.retention_days.is_not(None))
    ).tuples()
    found: list[tuple[str, str]] = []
    for tenant_id, days in tenants:
        stmt = (
            select(Job.id)
            .where(
                Job.tenant_id == tenant_id,
                Job.kind != JobKind.TRAIN,
                Job.state.in_(list(FINAL_JOB_STATES)),
                Job.deleted_at.is_(None),
                Job.finished_at < now - timedelta(days=days or 0),
            )
            .order_by(Job.finished_at)
            .limit(limit - len(found))
        )
        found += [(tenant_id, job_id) for job_id in session.scalars(stmt)]
        if len(found) >= limit:
            break
    return found


def stalled_purges(
    session: Session, now: datetime, grace: timedelta, limit: int = 100
) -> list[str]:
    stmt = (
        select(Purge.id)
        .where(
            Purge.state == PurgeState.PENDING,
            or_(Purge.lease_until.is_(None), Purge.lease_until < now),
            Purge.updated_at < now - grace,
        )
        .order_by(Purge.updated_at)
        .limit(limit)
    )
    return list(session.scalars(stmt))


def sweep(
    sessions: SessionFactory,
    store: ObjectStore,
    *,
    grace_seconds: int,
    recount_every_seconds: int,
    now: datetime | None = None,
) -> SweepOutcome:
    now = now or utcnow()
    grace = timedelta(seconds=grace_seconds)
    outcome = SweepOutcome()
    with session_scope(sessions) as session:
        expired = expired_jobs(session, now)
        outcome.send += stalled_purges(session, now, grace)
        due_orphans = orphans.jobs_due(session, now - grace)
        recount = quotas.tenants_due_for_recount(
            session, now - timedelta(seconds=recount_every_seconds)
        )
    for tenant_id, job_id in expired:
        try:
            outcome.send.append(deletion.delete_job(sessions, tenant_id, job_id, now=now).id)
            outcome.expired_jobs += 1
        except XmlxError:
            continue  # deleted meanwhile
    for job_id in due_orphans:
        outcome.orphan_files += orphans.sweep_job(sessions, store, job_id, now=now)
    for tenant_id in recount:
        quotas.recount_usage(sessions, store, tenant_id, now=now)
        outcome.recounted += 1
    return outcome
