"""What the job lifecycle functions return, and their error."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from xmlx.errors import XmlxError
from xmlx.models import Job


class JobError(XmlxError):
    """`job.not_found`, `job.idempotency_conflict`, `job.invalid_items`, `job.invalid_kind`."""


@dataclass(frozen=True)
class CreatedJob:
    job: Job
    chunk_ids: list[str]
    created: bool  # False: an idempotent replay returned the existing job


class ClaimStatus(StrEnum):
    CLAIMED = "claimed"
    CANCELLED = "cancelled"  # cancel requested: drop the chunk
    FINISHED = "finished"  # chunk or job already final: nothing to do
    LEASED_ELSEWHERE = "leased_elsewhere"  # another live worker holds it
    EXHAUSTED = "exhausted"  # too many attempts: its items are now failed
    NOT_FOUND = "not_found"
    NOTHING = "nothing"  # claim_next: no chunk of any job can run now


@dataclass(frozen=True)
class PendingItem:
    id: int
    seq: int
    item_key: str


@dataclass(frozen=True)
class Claim:
    status: ClaimStatus
    chunk_id: str
    job: Job | None = None
    attempt: int = 0
    items: list[PendingItem] = field(default_factory=list)
    retries: int = 0  # transient failures handed back before this claim

    @property
    def claimed(self) -> bool:
        return self.status is ClaimStatus.CLAIMED


@dataclass(frozen=True)
class Heartbeat:
    alive: bool  # False: the lease is lost (expired and taken, or the chunk was closed)
    cancel_requested: bool


@dataclass(frozen=True)
class ItemOutcome:
    recorded: bool  # False: a duplicate write, or the caller lost its lease; ignored
    job_state: str
    finalised: bool  # True only for the one write that moved the job to a final state
    lease_held: bool = True  # False: the caller no longer holds the chunk's lease


@dataclass(frozen=True)
class LeaseRef:
    """Who records: only the holder of `chunk_id`'s lease counts (`owner`)."""

    chunk_id: str
    owner: str


@dataclass(frozen=True)
class ChunkRef:
    chunk_id: str
    job_id: str
    kind: str
