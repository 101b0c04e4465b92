"""SQL models. Every query lives in `xmlx.repository` / `xmlx.jobs`, not here.

States are plain strings (no SQL ENUM types: adding a state is then a code change,
not a migration). Ids are prefixed ULID-like strings from `xmlx.db.new_id`, except
`items.id`, a 64-bit integer: a job can have 1,000,000 items and the integer key keeps
bulk inserts and keyset pagination cheap.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from xmlx.db import Base, BigIntId, utcnow


class JobKind(StrEnum):
    TRAIN = "train"
    EXPLAIN = "explain"
    PREDICT = "predict"


class JobState(StrEnum):
    # A big batch's items are still being listed and inserted (`xmlx.jobs.prepare`).
    PREPARING = "preparing"
    QUEUED = "queued"
    RUNNING = "running"
    CANCELLING = "cancelling"
    SUCCEEDED = "succeeded"
    PARTIALLY_SUCCEEDED = "partially_succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


FINAL_JOB_STATES = frozenset(
    {JobState.SUCCEEDED, JobState.PARTIALLY_SUCCEEDED, JobState.FAILED, JobState.CANCELLED}
)


class ChunkState(StrEnum):
    QUEUED = "queued"
    LEASED = "leased"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


class ItemState(StrEnum):
    PENDING = "pending"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


class Priority(StrEnum):
    """A job's priority among its tenant's jobs (fairness across tenants comes first)."""

    LOW = "low"
    NORMAL = "normal"
    HIGH = "high"


PRIORITY_RANK: dict[str, int] = {Priority.HIGH: 0, Priority.NORMAL: 1, Priority.LOW: 2}


class ModelState(StrEnum):
    PENDING = "pending"
    TRAINING = "training"
    READY = "ready"
    FAILED = "failed"


MAX_KEY_LENGTH = 1024
MAX_URL_LENGTH = 2048


class Tenant(Base):
    __tablename__ = "tenants"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # The most forward passes one job of this tenant may cost (xmlx.jobs.cost);
    # NULL: Settings.max_job_forward_passes.
    max_job_forward_passes: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    # Limits set by an operator (`xmlx tenants limits`, the admin API); NULL: none.
    # Finished explanation jobs older than `retention_days` are purged (xmlx.deletion).
    retention_days: Mapped[int | None] = mapped_column(Integer, nullable=True)
    max_stored_bytes: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    max_items_in_flight: Mapped[int | None] = mapped_column(BigInteger, nullable=True)


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200), default="")
    prefix: Mapped[str] = mapped_column(String(32), unique=True)
    key_hash: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_used_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]
    # Space-separated `xmlx.security.SCOPES`; keys made before scopes: read and submit.
    scopes: Mapped[str] = mapped_column(
        String(64), default="read submit", server_default="read submit"
    )


class Dataset(Base):
    __tablename__ = "datasets"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(200), default="")
    storage_prefix: Mapped[str] = mapped_column(String(MAX_KEY_LENGTH))
    manifest_key: Mapped[str] = mapped_column(String(MAX_KEY_LENGTH))
    n_images: Mapped[int] = mapped_column(Integer, default=0)
    n_labels: Mapped[int] = mapped_column(Integer, default=0)
    empty_rows: Mapped[int] = mapped_column(Integer, default=0)
    label_counts: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # The images folder: `image_prefix` is the server-built storage prefix the manifest's
    # keys are relative to, `images_prefix` the folder as the client named it under its
    # uploads. NULL on rows created before migration 0002, which kept both in a
    # `dataset.json` next to the manifest copy (`xmlx.dataset_images` reads either).
    image_prefix: Mapped[str | None] = mapped_column(String(MAX_KEY_LENGTH))
    images_prefix: Mapped[str | None] = mapped_column(String(MAX_KEY_LENGTH))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Soft delete: set by DELETE, the row is then 404 everywhere and purged later.
    deleted_at: Mapped[datetime | None]

    __table_args__ = (Index(None, "tenant_id", "created_at", "id"),)


class Model(Base):
    __tablename__ = "models"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    dataset_id: Mapped[str] = mapped_column(ForeignKey("datasets.id"), index=True)
    name: Mapped[str] = mapped_column(String(200), default="")
    state: Mapped[str] = mapped_column(String(16), default=ModelState.PENDING)
    params: Mapped[dict[str, Any]] = mapped_column(default=dict)
    artifact_key: Mapped[str | None] = mapped_column(String(MAX_KEY_LENGTH))
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    history: Mapped[dict[str, Any]] = mapped_column(default=dict)
    hierarchy: Mapped[dict[str, Any] | None]
    error_code: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    deleted_at: Mapped[datetime | None]

    __table_args__ = (Index(None, "tenant_id", "created_at", "id"),)


class Job(Base):
    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(16))
    state: Mapped[str] = mapped_column(String(24), default=JobState.QUEUED)
    params: Mapped[dict[str, Any]] = mapped_column(default=dict)
    model_id: Mapped[str | None] = mapped_column(ForeignKey("models.id"), index=True)
    total: Mapped[int] = mapped_column(Integer, default=0)
    done: Mapped[int] = mapped_column(Integer, default=0)
    failed: Mapped[int] = mapped_column(Integer, default=0)
    duplicates: Mapped[int] = mapped_column(Integer, default=0)
    priority: Mapped[str] = mapped_column(
        String(8), default=Priority.NORMAL, server_default=Priority.NORMAL.value
    )
    # When a worker last leased one of this job's chunks: the fair dispatcher serves the
    # tenant whose jobs were served least recently (`xmlx.jobs.dispatch`).
    served_at: Mapped[datetime | None]
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    idempotency_key: Mapped[str | None] = mapped_column(String(200))
    request_hash: Mapped[str | None] = mapped_column(String(64))
    # The X-Request-ID of the API call that created the job (xmlx.logs): worker log
    # lines about its chunks carry it.
    request_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    # Where the job's final state is POSTed (`xmlx.webhooks`); NULL: the tenant's
    # default (`webhook_settings.url`), if any.
    callback_url: Mapped[str | None] = mapped_column(String(MAX_URL_LENGTH), nullable=True)
    error_code: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)
    # Where a preparing job's items come from ({"prefix": ...} or {"manifest": ...}, both
    # server-built storage keys); NULL for jobs created with their items.
    source: Mapped[dict[str, Any] | None]
    # A training job's live progress (stage, epoch, losses, ETA, per-epoch history),
    # written by its lease holder (`xmlx.jobs.progress`); NULL for other jobs.
    training_progress: Mapped[dict[str, Any] | None]
    # Running sums of the metrics its results carry, e.g. LIME's stability@5
    # (`xmlcore.result_metrics`), updated as items are recorded; NULL when none.
    result_metrics: Mapped[dict[str, Any] | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    prepared_at: Mapped[datetime | None]
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    deleted_at: Mapped[datetime | None]
    # When the orphan sweep (xmlx.orphans) checked the finished job's folder; NULL: due.
    orphans_checked_at: Mapped[datetime | None]

    __table_args__ = (
        UniqueConstraint("tenant_id", "idempotency_key"),
        CheckConstraint("done >= 0 AND failed >= 0 AND done + failed <= total", name="counters"),
        Index(None, "tenant_id", "created_at", "id"),
        Index(None, "state"),
    )


class Chunk(Base):
    __tablename__ = "chunks"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    seq: Mapped[int] = mapped_column(Integer)
    item_start: Mapped[int] = mapped_column(Integer)
    item_stop: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(16), default=ChunkState.QUEUED)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    # Transient failures handed back (storage, database blips): they do not spend
    # `attempts`, which count crashes and lost leases, but are bounded on their own.
    retries: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    lease_owner: Mapped[str | None] = mapped_column(String(200))
    lease_expires_at: Mapped[datetime | None]
    heartbeat_at: Mapped[datetime | None]
    dispatched_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]

    __table_args__ = (
        UniqueConstraint("job_id", "seq"),
        Index(None, "state", "lease_expires_at"),
        # The dispatcher's "next queued chunk of this job": no scan over done chunks.
        Index(None, "job_id", "state", "seq"),
    )


class Item(Base):
    __tablename__ = "items"

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    seq: Mapped[int] = mapped_column(Integer)
    item_key: Mapped[str] = mapped_column(String(MAX_KEY_LENGTH))
    chunk_id: Mapped[str] = mapped_column(ForeignKey("chunks.id", ondelete="CASCADE"), index=True)
    state: Mapped[str] = mapped_column(String(16), default=ItemState.PENDING)
    result: Mapped[dict[str, Any] | None]
    artifacts: Mapped[dict[str, Any] | None]
    timings: Mapped[dict[str, Any] | None]
    error_code: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)
    finished_at: Mapped[datetime | None]

    __table_args__ = (
        UniqueConstraint("job_id", "item_key"),
        Index(None, "job_id", "state", "id"),
        # A job's items in id order without a state filter (the unfiltered pages, the
        # report): (job_id, state, id) would need a sort of the whole job.
        Index(None, "job_id", "id"),
    )


class PurgeState(StrEnum):
    PENDING = "pending"
    DONE = "done"


class Purge(Base):
    """The background removal of one deleted thing's objects and rows (`xmlx.purge`).

    `kind` is job, model, dataset or uploads; `target` the id (or, for uploads, the
    storage prefix). `stage` and `cursor` say where it stands, so a killed purge goes on
    from its last committed page; `lease_until` keeps two tasks off one purge.
    """

    __tablename__ = "purges"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(16))
    target: Mapped[str] = mapped_column(String(MAX_KEY_LENGTH))
    state: Mapped[str] = mapped_column(String(16), default=PurgeState.PENDING)
    stage: Mapped[str] = mapped_column(String(16), default="objects")
    cursor: Mapped[str | None] = mapped_column(String(MAX_KEY_LENGTH))
    objects_deleted: Mapped[int] = mapped_column(BigInteger, default=0)
    bytes_freed: Mapped[int] = mapped_column(BigInteger, default=0)
    rows_deleted: Mapped[int] = mapped_column(BigInteger, default=0)
    lease_until: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None]

    __table_args__ = (
        Index(None, "state", "updated_at"),
        Index(None, "tenant_id", "kind", "target"),
    )


class TenantUsage(Base):
    """Bytes the tenant's jobs, models, datasets and uploads keep in the store.

    Added to as the service writes (artifacts, models, manifests), taken from as purges
    free, and set to a listing's exact sum by the periodic recount (`xmlx.quotas`),
    which also catches uploads: clients PUT those straight to the store.
    """

    __tablename__ = "tenant_usage"

    tenant_id: Mapped[str] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True
    )
    stored_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    counted_at: Mapped[datetime | None]


class WebhookDeliveryState(StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"


class WebhookSettings(Base):
    """A tenant's webhook default and signing secret (`xmlx.webhooks`)."""

    __tablename__ = "webhook_settings"

    tenant_id: Mapped[str] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True
    )
    # The URL a job without its own `callback_url` reports to; NULL: none.
    url: Mapped[str | None] = mapped_column(String(MAX_URL_LENGTH))
    # HMAC-SHA256 key of the `Xmlx-Signature` header: kept in clear, the server signs
    # with it (the receiver holds the same value).
    secret: Mapped[str] = mapped_column(String(128))
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class WebhookDelivery(Base):
    """The outbox: one row per job final state, written in the transaction that makes
    the job final, delivered (and retried) by the `xmlx.deliver_webhooks` beat task."""

    __tablename__ = "webhook_deliveries"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    event: Mapped[str] = mapped_column(String(40))
    url: Mapped[str] = mapped_column(String(MAX_URL_LENGTH))
    # The exact JSON body, fixed when the row is written: every attempt sends the same.
    payload: Mapped[dict[str, Any]] = mapped_column(default=dict)
    state: Mapped[str] = mapped_column(String(16), default=WebhookDeliveryState.PENDING)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_status: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(String(64))
    next_attempt_at: Mapped[datetime] = mapped_column(default=utcnow)
    # A claim by one delivering worker; a killed worker's claim expires at this time.
    lease_owner: Mapped[str | None] = mapped_column(String(200))
    lease_expires_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    delivered_at: Mapped[datetime | None]

    __table_args__ = (
        UniqueConstraint("job_id", "event"),
        Index(None, "state", "next_attempt_at"),
    )
