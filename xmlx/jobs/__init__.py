"""The job lifecycle: creation, chunk leases, item results, finalisation, cancel.

The database is the truth and the broker only delivers (see ARCHITECTURE.md). Each
public function here is exactly ONE committed transaction built from the
compare-and-set statements in `xmlx.repository.work`, so it is safe to call again
after any crash or duplicate delivery:

- `start_preparing` / `prepare_batch`: a batch named by a prefix or a manifest is
  accepted as a `preparing` job and its items inserted in slices by a background task
  (resumable; see `xmlx.jobs.prepare`).
- `create_job` inserts the job, its items and chunks together; enqueue the returned
  chunk ids only after it returns (the rows are committed by then).
- `claim_next` leases the next chunk chosen fairly across tenants (`xmlx.jobs.dispatch`);
  `hand_back_chunk` queues it again after a transient failure without spending an
  attempt. `claim_chunk` leases a named chunk (attempts + 1) or says why not; a job
  whose cancel was requested drops the chunk; a chunk past `max_attempts` fails its items
  (`chunk.max_attempts`) so a poison chunk cannot loop; a message for a chunk that is
  done or leased by a live worker is a duplicate delivery, counted in `jobs.duplicates`.
- `record_item_success` / `record_item_failure`: the first write wins; a later write
  is a no-op counted in `jobs.duplicates`; with a `LeaseRef` only the chunk's lease
  holder records (`record_model_trained` likewise makes a trained model ready).
  Counters move in the same transaction and the write that brings done + failed to
  total finalises the job (no chords).
  `record_items_success` records a worker's whole batch in one transaction.
- `record_training_progress`: a training's stage, epochs, losses and ETA, written by
  the lease holder (see `xmlx.jobs.progress`).
- `request_cancel` is cooperative: workers see it through `heartbeat`.
- `reconcile` finds chunks to send again (lost messages, dead workers).

States: (preparing ->) queued -> running -> succeeded | partially_succeeded | failed;
preparing -> failed (with a code) | cancelled; queued -> cancelled; running ->
cancelling -> cancelled. Times default to now (UTC); tests pass `now` to move the clock.
"""

from xmlx.jobs.control import fail_job, mark_dispatched, reconcile, request_cancel
from xmlx.jobs.cost import check_job_cost
from xmlx.jobs.create import create_job, get_job
from xmlx.jobs.dispatch import claim_next, hand_back_chunk, rank_jobs
from xmlx.jobs.leases import claim_chunk, complete_chunk, heartbeat, release_chunk
from xmlx.jobs.prepare import (
    Preparation,
    prepare_batch,
    stalled_preparations,
    start_preparing,
)
from xmlx.jobs.progress import EpochRecord, ProgressUpdate, record_training_progress
from xmlx.jobs.results import (
    ItemSuccess,
    record_item_failure,
    record_item_success,
    record_items_success,
    record_model_trained,
)
from xmlx.jobs.types import (
    ChunkRef,
    Claim,
    ClaimStatus,
    CreatedJob,
    Heartbeat,
    ItemOutcome,
    JobError,
    LeaseRef,
    PendingItem,
)

__all__ = [
    "ChunkRef",
    "Claim",
    "ClaimStatus",
    "CreatedJob",
    "EpochRecord",
    "Heartbeat",
    "ItemOutcome",
    "ItemSuccess",
    "JobError",
    "LeaseRef",
    "PendingItem",
    "Preparation",
    "ProgressUpdate",
    "check_job_cost",
    "claim_chunk",
    "claim_next",
    "complete_chunk",
    "create_job",
    "fail_job",
    "get_job",
    "hand_back_chunk",
    "heartbeat",
    "mark_dispatched",
    "prepare_batch",
    "rank_jobs",
    "reconcile",
    "record_item_failure",
    "record_item_success",
    "record_items_success",
    "record_model_trained",
    "record_training_progress",
    "release_chunk",
    "request_cancel",
    "stalled_preparations",
    "start_preparing",
]
