"""Service settings: the one place that reads `XMLX_*` environment variables.

Only `xmlx`, `api` and `workers` read settings; `xmlcore` takes plain arguments.
Defaults make a one-machine development run work out of the box (SQLite file, local
directory store under `.xmlx/`). Outside `env="development"` the validators refuse the
defaults that would be unsafe in a shared deployment (the development pepper, the
development S3 credentials, SQLite in production), so a misconfigured service fails at
start-up with a message naming the variable instead of running insecurely.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEV_API_KEY_PEPPER = "xmlx-development-pepper-do-not-use-in-production"
DEV_S3_ACCESS_KEY = "xmlx-dev-access"
DEV_S3_SECRET_KEY = "xmlx-dev-secret"
MIN_PEPPER_LENGTH = 32

Environment = Literal["development", "test", "production"]


def _default_database_url(data: dict[str, Any]) -> str:
    data_dir = Path(data.get("data_dir") or ".xmlx")
    return f"sqlite:///{data_dir / 'xmlx.sqlite'}"


def _default_storage_root(data: dict[str, Any]) -> Path:
    return Path(data.get("data_dir") or ".xmlx") / "storage"


def _default_train_cache(data: dict[str, Any]) -> Path:
    return Path(data.get("data_dir") or ".xmlx") / "train-cache"


def _default_weights_cache(data: dict[str, Any]) -> Path:
    return Path(data.get("data_dir") or ".xmlx") / "weights-cache"


class Settings(BaseSettings):
    """Every knob of the service; each field is `XMLX_<FIELD NAME>` in the environment."""

    model_config = SettingsConfigDict(env_prefix="XMLX_", extra="ignore")

    env: Environment = "development"
    data_dir: Path = Path(".xmlx")

    # Database and broker.
    database_url: str = Field(default_factory=_default_database_url)
    database_echo: bool = False
    # PostgreSQL ends a session left idle inside a transaction this long (0: the
    # server's setting). A worker frozen mid-transaction (SIGSTOP, a paused VM, a long
    # GC pause) otherwise keeps its row locks, say on a job, and every other worker of
    # that job waits on them for as long as it stays frozen. Behind PgBouncer in
    # transaction mode set it on the role instead (DEPLOY.md) and leave this 0.
    database_idle_transaction_timeout_seconds: int = Field(default=120, ge=0, le=86_400)
    redis_url: str = "redis://127.0.0.1:6379/0"

    # Object storage.
    storage_backend: Literal["s3", "local"] = "local"
    s3_endpoint_url: str | None = None
    # Where clients reach S3, when it differs from the service's view (signed URLs only).
    s3_public_endpoint_url: str | None = None
    s3_region: str = "us-east-1"
    s3_bucket: str = "xmlx"
    s3_access_key: SecretStr = SecretStr(DEV_S3_ACCESS_KEY)
    s3_secret_key: SecretStr = SecretStr(DEV_S3_SECRET_KEY)
    s3_max_attempts: int = Field(default=5, ge=1)
    s3_connect_timeout_seconds: float = Field(default=5.0, gt=0)
    s3_read_timeout_seconds: float = Field(default=30.0, gt=0)
    s3_multipart_threshold_bytes: int = Field(default=16 * 1024 * 1024, ge=5 * 1024 * 1024)
    s3_multipart_chunk_bytes: int = Field(default=16 * 1024 * 1024, ge=5 * 1024 * 1024)
    local_storage_root: Path = Field(default_factory=_default_storage_root)
    public_base_url: str = "http://127.0.0.1:8000"
    presign_expiry_seconds: int = Field(default=3600, ge=1, le=7 * 24 * 3600)

    # Jobs.
    max_batch_items: int = Field(default=1_000_000, ge=1)
    # Keys a batch may list in its JSON body; more go in a manifest object (one key a
    # line, `manifest_key`), read by the preparation task: a body of 1,000,000 keys is
    # ~50 MB that the API would have to parse and hold.
    max_inline_batch_keys: int = Field(default=10_000, ge=1)
    # Slices (5,000 items each) one preparation task inserts before it hands over to a
    # fresh task: keeps a task far inside its time limit however slow the listing is.
    prepare_slices_per_task: int = Field(default=40, ge=1)
    # A job's estimated forward passes (items x samples per item, xmlx.jobs.cost) may
    # not exceed this unless the tenant row says otherwise: 10^9 is a million images at
    # LIME's default 1,000 samples, days of one GPU.
    max_job_forward_passes: int = Field(default=1_000_000_000, ge=1)
    chunk_size: int = Field(default=32, ge=1)
    lease_seconds: int = Field(default=120, ge=1)
    max_attempts_per_chunk: int = Field(default=3, ge=1)
    # Transient failures (storage, database) hand a chunk back without spending an
    # attempt; this bounds them separately, so an error wrongly deemed transient ends.
    max_transient_retries_per_chunk: int = Field(default=20, ge=1)
    # A woken worker keeps taking the next fair chunk until none is left or this long
    # has passed (then the next message goes on); below the soft time limit.
    wakeup_budget_seconds: int = Field(default=60, ge=0)
    reconcile_grace_seconds: int = Field(default=60, ge=1)
    reconcile_interval_seconds: int = Field(default=30, ge=1)
    task_soft_time_limit_seconds: int = Field(default=540, ge=1)
    task_hard_time_limit_seconds: int = Field(default=600, ge=1)
    visibility_timeout_seconds: int = Field(default=3600, ge=1)
    # Training runs in slices on the `train` queue: a task starts no new epoch after
    # `train_slice_seconds`, checkpoints, and hands over to a fresh task (so a
    # redeploy or a preempted GPU loses at most an epoch). The time limits bound one
    # slice plus its last epoch: set them above the longest epoch of your data.
    train_slice_seconds: int = Field(default=1800, ge=1)
    train_soft_time_limit_seconds: int = Field(default=6 * 3600, ge=1)
    train_hard_time_limit_seconds: int = Field(default=6 * 3600 + 600, ge=1)
    # Decoded uint8 training images (one record file per training) on the worker's
    # disk: later epochs and later slices read them instead of the object store.
    train_cache_dir: Path = Field(default_factory=_default_train_cache)
    # Deletion (xmlx.purge): a purge task works this long, then sends its continuation;
    # the sweep (retention, stalled purges, orphan files, usage recounts) runs this
    # often; a tenant's stored bytes are recounted from a listing this often.
    purge_budget_seconds: int = Field(default=60, ge=1)
    purge_lease_seconds: int = Field(default=120, ge=1)
    purge_sweep_interval_seconds: int = Field(default=60, ge=1)
    purge_grace_seconds: int = Field(default=60, ge=1)
    usage_recount_seconds: int = Field(default=6 * 3600, ge=1)

    # Workers.
    images_per_batch: int = Field(default=16, ge=1)  # images per heartbeat / forward batch
    # A worker child above this resident size is replaced after its task (Celery, KiB);
    # None: no limit.
    worker_max_memory_kib: int | None = Field(default=None, ge=1)
    # Imported backbone weights (`xmlx weights import`), copied here on first use.
    weights_cache_dir: Path = Field(default_factory=_default_weights_cache)
    # When the worker has a GPU: mixed precision (bfloat16 compute, float32 weights) and
    # XLA compilation for training and inference. Ignored on a CPU.
    gpu_mixed_precision: bool = True
    gpu_xla: bool = True

    # API.
    api_key_pepper: SecretStr = SecretStr(DEV_API_KEY_PEPPER)
    rate_limit_per_minute: int = Field(default=600, ge=1)

    # Images.
    max_image_bytes: int = Field(default=20 * 1024 * 1024, ge=1)
    max_image_pixels: int = Field(default=25_000_000, ge=1)
    image_size: tuple[int, int] = (224, 224)

    # Webhooks (xmlx.webhooks). Hosts a callback URL may name although they resolve to
    # a private, loopback or otherwise internal address (comma-separated host names or
    # IP literals, e.g. "127.0.0.1,hooks.internal"); every other such address is refused.
    webhook_allowed_hosts: str = ""
    webhook_interval_seconds: float = Field(default=5.0, gt=0, le=3600)
    # Retries: base x 2^(attempt-1), +-20 % jitter, capped at the max step, until
    # `webhook_give_up_seconds` after the final state; then the delivery is `failed`.
    webhook_retry_base_seconds: float = Field(default=30.0, gt=0)
    webhook_retry_max_seconds: float = Field(default=3600.0, gt=0)
    webhook_give_up_seconds: float = Field(default=24 * 3600.0, gt=0)
    webhook_connect_timeout_seconds: float = Field(default=3.0, gt=0, le=60)
    webhook_read_timeout_seconds: float = Field(default=10.0, gt=0, le=120)
    # A delivering worker's claim on a row; a killed worker's rows are retried after it.
    webhook_lease_seconds: int = Field(default=60, ge=5)
    webhook_batch_size: int = Field(default=50, ge=1, le=1000)
    # POSTs one delivery task sends side by side: a slow receiver holds one of them.
    webhook_concurrency: int = Field(default=8, ge=1, le=64)

    # Observability (xmlx.logs): `json` for log shippers, `text` for people.
    log_format: Literal["text", "json"] = "text"
    # The Celery parent serves the workers' Prometheus metrics on this port
    # (xmlx.metrics_export; `xmlx worker --metrics-port` sets it). None: no exporter.
    worker_metrics_port: int | None = Field(default=None, ge=1, le=65535)

    @model_validator(mode="after")
    def _check_time_limits(self) -> Settings:
        if self.wakeup_budget_seconds >= self.task_soft_time_limit_seconds:
            raise ValueError(
                "XMLX_WAKEUP_BUDGET_SECONDS must be below XMLX_TASK_SOFT_TIME_LIMIT_SECONDS: "
                "a woken worker starts no new chunk after it"
            )
        if self.task_soft_time_limit_seconds >= self.task_hard_time_limit_seconds:
            raise ValueError(
                "XMLX_TASK_SOFT_TIME_LIMIT_SECONDS must be below "
                "XMLX_TASK_HARD_TIME_LIMIT_SECONDS so a task can clean up before it is killed"
            )
        if self.visibility_timeout_seconds <= self.task_hard_time_limit_seconds:
            # Redis redelivers a message still running after the visibility timeout.
            raise ValueError(
                "XMLX_VISIBILITY_TIMEOUT_SECONDS must exceed XMLX_TASK_HARD_TIME_LIMIT_SECONDS, "
                "otherwise Redis delivers running tasks a second time"
            )
        return self

    @model_validator(mode="after")
    def _check_train_limits(self) -> Settings:
        if not (
            self.train_slice_seconds
            < self.train_soft_time_limit_seconds
            < self.train_hard_time_limit_seconds
        ):
            raise ValueError(
                "XMLX_TRAIN_SLICE_SECONDS < XMLX_TRAIN_SOFT_TIME_LIMIT_SECONDS < "
                "XMLX_TRAIN_HARD_TIME_LIMIT_SECONDS must hold: a slice ends (and checkpoints) "
                "at an epoch's end, inside the task's limits"
            )
        return self

    @model_validator(mode="after")
    def _refuse_unsafe_defaults(self) -> Settings:
        if self.env == "development":
            return self
        problems = _unsafe_defaults(self)
        if problems:
            raise ValueError(f"unsafe settings for env={self.env!r}: " + "; ".join(problems))
        return self

    @property
    def webhook_allowed_host_set(self) -> frozenset[str]:
        return frozenset(
            h.strip().lower() for h in self.webhook_allowed_hosts.split(",") if h.strip()
        )

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")


def _unsafe_defaults(settings: Settings) -> list[str]:
    problems = []
    pepper = settings.api_key_pepper.get_secret_value()
    if pepper == DEV_API_KEY_PEPPER or len(pepper) < MIN_PEPPER_LENGTH:
        problems.append(
            f"set XMLX_API_KEY_PEPPER to a random secret of at least {MIN_PEPPER_LENGTH} "
            "characters (the development pepper is public)"
        )
    if settings.storage_backend == "s3" and (
        settings.s3_access_key.get_secret_value() == DEV_S3_ACCESS_KEY
        or settings.s3_secret_key.get_secret_value() == DEV_S3_SECRET_KEY
    ):
        problems.append("set XMLX_S3_ACCESS_KEY and XMLX_S3_SECRET_KEY (development defaults)")
    if settings.env == "production" and settings.is_sqlite:
        problems.append("set XMLX_DATABASE_URL to PostgreSQL (SQLite is for one machine)")
    return problems


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once from the environment."""
    return Settings()
