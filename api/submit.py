"""Creating jobs: look for an idempotent replay, create the rows, then enqueue.

The order is the point (ARCHITECTURE.md): `xmlx.jobs.create_job` commits the job, its
items and chunks in one transaction and only then are the chunk messages sent, so a
fast worker never looks for rows that are not there. If sending fails the job stands
and the reconciler sends its chunks later.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fastapi import Response
from sqlalchemy.orm import Session

from api.deps import ApiState
from api.idempotency import conflict
from api.problems import ProblemError
from api.views import JobOut, job_out
from xmlx import jobs, webhooks
from xmlx import repository as repo
from xmlx.db import session_scope, utcnow
from xmlx.models import Job, Model, ModelState
from xmlx.repository import webhooks as webhook_repo

REPLAYED_HEADER = "Idempotent-Replayed"


def replayed_job(state: ApiState, tenant_id: str, key: str | None, fp: str) -> Job | None:
    """The job an earlier request with this Idempotency-Key created (same body), or None."""
    if key is None:
        return None
    with session_scope(state.sessions) as session:
        job = repo.get_job_by_idempotency_key(session, tenant_id, key)
    if job is not None and job.request_hash != fp:
        raise conflict(key)
    return job


def mark_replayed(response: Response) -> None:
    response.headers[REPLAYED_HEADER] = "true"


def create_and_enqueue(
    state: ApiState,
    tenant_id: str,
    *,
    kind: str,
    item_keys: Sequence[str],
    params: dict[str, Any],
    model_id: str | None,
    idempotency_key: str | None,
    fp: str,
    chunk_size: int,
    priority: str = "normal",
    callback_url: str | None = None,
) -> jobs.CreatedJob:
    created = jobs.create_job(
        state.sessions,
        tenant_id=tenant_id,
        kind=kind,
        item_keys=item_keys,
        params=params,
        model_id=model_id,
        idempotency_key=idempotency_key,
        request_hash=fp,
        chunk_size=chunk_size,
        max_items=state.settings.max_batch_items,
        priority=priority,
        callback_url=callback_url,
    )
    if created.created:  # committed by now: safe to enqueue
        if state.broker.send_chunks([(chunk_id, kind) for chunk_id in created.chunk_ids]):
            jobs.mark_dispatched(state.sessions, created.chunk_ids)
        else:
            state.metrics.enqueue_failures.inc()
    return created


def checked_callback(state: ApiState, tenant_id: str, url: str | None) -> str | None:
    """`url` if the service may POST to it (422 `webhook.url_not_allowed` if not); the
    tenant gets a signing secret now if it has none, so the first delivery is signed
    with a secret it can read (GET /v1/webhook-settings)."""
    if url is None:
        return None
    try:
        webhooks.check_callback_url(url, state.settings.webhook_allowed_host_set)
    except webhooks.WebhookUrlError as exc:
        raise ProblemError(422, exc.code, exc.message) from exc
    with session_scope(state.sessions) as session:
        webhook_repo.ensure_secret(session, tenant_id, webhooks.new_secret())
    return url


def render_job(state: ApiState, job: Job, session: Session | None = None) -> JobOut:
    """The job as the API shows it. A route that already holds the request's session
    passes it: a second one per request would hold two pooled connections at once, and
    concurrent polls of partly failed jobs would exhaust the pool (bench/load.py)."""
    errors: dict[str, int] = {}
    if job.failed and session is not None:
        errors = repo.error_counts(session, job.id)
    elif job.failed:
        with session_scope(state.sessions) as own:
            errors = repo.error_counts(own, job.id)
    return job_out(job, errors, utcnow())


def find_model(state: ApiState, tenant_id: str, model_id: str, *, ready: bool) -> Model:
    with session_scope(state.sessions) as session:
        model = repo.get_model(session, tenant_id, model_id)
    if model is None:
        raise ProblemError(404, "model.not_found", f"no model {model_id}")
    if ready and model.state != ModelState.READY:
        raise ProblemError(409, "model.not_ready", f"model {model_id} is {model.state}, not ready")
    return model
