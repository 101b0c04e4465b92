"""Writing an attempt's artifacts and recording them, so only the lease holder's count.

Each lease of a chunk writes under its own folder (`xmlx.keys.attempt_token`), then
records the batch's items in one owner-checked transaction: the item row names the
files the recording worker wrote, and a worker that lost its lease can neither
overwrite them nor get its own recorded. What a losing worker wrote it deletes again;
what a killed worker left behind, the attempt that finishes the chunk sweeps away.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from workers.context import WorkerContext
from workers.lease import ChunkStoppedError
from workers.metrics import ITEMS
from xmlcore.batch import ImageReport
from xmlx import jobs, quotas
from xmlx.keys import item_artifact_key
from xmlx.models import Job
from xmlx.storage import StorageError

# Object-store round trips of a batch (image fetches, artifact puts) run this many at a
# time: one after another they were ~20 % of a batch's time (bench/service_overhead.py).
IO_THREADS = 8


@dataclass
class Attempt:
    """One lease of one chunk: what every write of this run is tagged and checked with."""

    job: Job
    lease: jobs.LeaseRef
    token: str  # the artifacts' folder: unique to this lease
    sweep: bool = False  # an earlier attempt may have left files: clean up at the end
    recorded: dict[str, set[str]] = field(default_factory=dict)  # item -> keys it owns

    def record_failure(self, ctx: WorkerContext, key: str, code: str, message: str) -> None:
        outcome = jobs.record_item_failure(
            ctx.sessions, self.job.id, key, code=code, message=message, lease=self.lease
        )
        if not outcome.lease_held:
            raise ChunkStoppedError(lease_lost=True)
        if outcome.recorded:
            self.recorded[key] = set()
            ITEMS.labels(self.job.kind, "failed", code).inc()


def persist(
    ctx: WorkerContext,
    attempt: Attempt,
    pairs: Sequence[tuple[str, ImageReport]],
    timings: dict[str, Any],
    pending: list[str],
) -> None:
    """Write every artifact of the batch (in parallel), then record in one transaction
    the items whose artifacts all arrived; they leave `pending`. A failed put is raised
    after that, so a retry redoes only the items it left unrecorded."""
    job = attempt.job

    def key_of(item_key: str, name: str) -> str:
        return item_artifact_key(job.tenant_id, job.id, item_key, name, attempt.token)

    artifacts = {key: {n: key_of(key, n) for n in report.artifacts} for key, report in pairs}
    puts = [
        (key, name, artifacts[key][name], data)
        for key, report in pairs
        for name, data in report.artifacts.items()
    ]

    def put(entry: tuple[str, str, str, bytes]) -> StorageError | None:
        _, name, storage_key, data = entry
        content_type = "image/png" if name.endswith(".png") else "application/octet-stream"
        try:
            ctx.store.put_bytes(storage_key, data, content_type)
        except StorageError as exc:
            return exc
        return None

    with ThreadPoolExecutor(IO_THREADS) as pool:
        errors = list(pool.map(put, puts))
    unwritten = {entry[0] for entry, error in zip(puts, errors, strict=True) if error}
    written = [
        jobs.ItemSuccess(key, report.result, artifacts[key], timings)
        for key, report in pairs
        if key not in unwritten
    ]
    if written:
        sizes = {key: sum(len(data) for data in report.artifacts.values()) for key, report in pairs}
        _record(ctx, attempt, written, [entry[2] for entry in puts], sizes)
    for success in written:
        pending.remove(success.item_key)
    first_error = next((error for error in errors if error is not None), None)
    if first_error is not None:
        raise first_error


def _record(
    ctx: WorkerContext,
    attempt: Attempt,
    written: list[jobs.ItemSuccess],
    put_keys: list[str],
    sizes: dict[str, int],
) -> None:
    outcomes = jobs.record_items_success(ctx.sessions, attempt.job.id, written, lease=attempt.lease)
    if not all(outcome.lease_held for outcome in outcomes):
        delete_quietly(ctx, put_keys)  # nothing of this batch counts: leave no trace
        raise ChunkStoppedError(lease_lost=True)
    stored = 0
    for success, outcome in zip(written, outcomes, strict=True):
        if outcome.recorded:
            attempt.recorded[success.item_key] = set(success.artifacts.values())
            stored += sizes.get(success.item_key, 0)
            ITEMS.labels(attempt.job.kind, "succeeded", "").inc()
        else:  # recorded by an earlier attempt, whose row names its own files
            delete_quietly(ctx, list(success.artifacts.values()))
    # The tenant's storage account (xmlx.quotas); the periodic recount corrects it.
    quotas.record_written(ctx.sessions, attempt.job.tenant_id, stored)


def sweep(ctx: WorkerContext, attempt: Attempt) -> None:
    """Delete what earlier attempts (killed mid-batch) left in the folders of the items
    this attempt recorded: every file there that this attempt's rows do not name."""
    job = attempt.job
    for item_key, keep in attempt.recorded.items():
        folder = item_artifact_key(job.tenant_id, job.id, item_key, "mask.png").rsplit("/", 1)[0]
        try:
            stale = [key for key in ctx.store.list_keys(folder + "/") if key not in keep]
        except StorageError:
            return  # best effort: the results are right either way
        delete_quietly(ctx, stale)


def delete_quietly(ctx: WorkerContext, keys: Sequence[str]) -> None:
    for key in keys:
        try:
            ctx.store.delete(key)
        except StorageError:
            continue
