"""What a worker does when a message wakes it: run the fairest chunks, one after another.

The message does not say what to run (`xmlx.messaging`): the worker asks the database
for the next chunk chosen fairly (`xmlx.jobs.claim_next`), runs it, and asks again, until
nothing can run or `wakeup_budget_seconds` have passed. Looping keeps a worker busy even
when messages were lost, without waiting for the reconciler; the budget keeps one
message short of the task's time limit. Training chunks are not taken here: they have
their own queue and task (`xmlx.train`, `run_training_wakeup`), one slice per message,
under the `train_*` time limits. A worker that finds nothing returns at once: more
messages than chunks is normal (a looping worker took theirs).
"""

from __future__ import annotations

import logging
import time

from workers.context import WorkerContext
from workers.metrics import CHUNKS, LEASE_LOSSES
from xmlx import jobs
from xmlx.logs import request_id_context
from xmlx.models import JobKind

log = logging.getLogger("xmlx.worker")
ITEM_KINDS = frozenset({JobKind.EXPLAIN.value, JobKind.PREDICT.value})
TRAIN_KINDS = frozenset({JobKind.TRAIN.value})


def run_wakeup(ctx: WorkerContext, *, budget_seconds: float | None = None) -> list[str]:
    """Run chunks until none is left or the budget has passed; their end statuses."""
    from workers.runner import run_claimed

    settings = ctx.settings
    budget = settings.wakeup_budget_seconds if budget_seconds is None else budget_seconds
    deadline = time.monotonic() + budget
    statuses: list[str] = []
    while True:
        claim = _claim_next(ctx, ITEM_KINDS)
        if not claim.claimed or claim.job is None:
            return statuses
        with request_id_context(claim.job.request_id):
            log.info("chunk claimed", extra=_chunk_fields(claim))
            status = run_claimed(ctx, claim).status
            log.info("chunk finished", extra={"chunk_id": claim.chunk_id, "status": status})
        _count(claim, status)
        statuses.append(status)
        if time.monotonic() >= deadline:
            return statuses


def run_training_wakeup(ctx: WorkerContext) -> str:
    """Run one slice of the fairest training chunk (`workers.training`); its status, or
    "nothing" when no training can run."""
    from workers.training import run_training_claimed

    claim = _claim_next(ctx, TRAIN_KINDS)
    if not claim.claimed or claim.job is None:
        return "nothing"
    with request_id_context(claim.job.request_id):
        log.info("training chunk claimed", extra=_chunk_fields(claim))
        status = run_training_claimed(ctx, claim)
        log.info("training slice finished", extra={"chunk_id": claim.chunk_id, "status": status})
    _count(claim, status)
    return status


def _chunk_fields(claim: jobs.Claim) -> dict[str, object]:
    assert claim.job is not None
    return {"chunk_id": claim.chunk_id, "job_id": claim.job.id, "attempt": claim.attempt}


def _count(claim: jobs.Claim, status: str) -> None:
    kind = claim.job.kind if claim.job is not None else "unknown"
    CHUNKS.labels(kind, status).inc()
    if status == "lease_lost":
        LEASE_LOSSES.labels(kind).inc()


def _claim_next(ctx: WorkerContext, kinds: frozenset[str]) -> jobs.Claim:
    """The fairest chunk of `kinds` `ctx.owner` may lease now (see `jobs.claim_next`)."""
    settings = ctx.settings
    return jobs.claim_next(
        ctx.sessions,
        ctx.owner,
        lease_seconds=settings.lease_seconds,
        max_attempts=settings.max_attempts_per_chunk,
        max_retries=settings.max_transient_retries_per_chunk,
        kinds=kinds,
    )
