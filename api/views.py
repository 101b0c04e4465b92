"""Response bodies, and how rows become them.

Storage keys built by the server (manifest copies, artifacts) are never shown raw: a
client gets presigned URLs for what it may download, and the keys it gave itself.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, Field

from xmlcore.result_metrics import mean_metrics
from xmlx.models import Dataset, Item, Job, Model

T = TypeVar("T")


class ErrorInfo(BaseModel):
    code: str
    message: str | None = None


class Progress(BaseModel):
    total: int = Field(description="items so far: grows while the job is `preparing`")
    done: int
    failed: int
    pending: int


class EpochSeries(BaseModel):
    """One stage's finished epochs, as parallel lists (one entry per epoch)."""

    epoch: list[int] = Field(description="1-based; a resumed training continues the count")
    loss: list[float | None]
    val_loss: list[float | None]
    seconds: list[float] = Field(description="wall time of each epoch")


class TrainingProgress(BaseModel):
    """A training job's live progress, updated by its worker about once a second."""

    stage: Literal["loading", "autoencoder", "cnn", "evaluating"]
    epoch: int | None = Field(description="the stage's last finished epoch (1-based)")
    epochs: int | None = Field(
        description="the stage's most epochs (early stopping may end it sooner)"
    )
    loss: float | None = Field(description="training loss of the last finished epoch")
    val_loss: float | None = Field(description="validation loss of the last finished epoch")
    eta_seconds: float | None = Field(
        description="time left in this stage, from its recent epoch times (an upper bound)"
    )
    updated_at: datetime
    history: dict[str, EpochSeries] = Field(
        description="per stage (`autoencoder`, `cnn`): every epoch so far, the curves"
    )


class JobLinks(BaseModel):
    self: str
    results: str
    results_jsonl: str
    cancel: str


class JobOut(BaseModel):
    id: str
    kind: str
    state: str
    model_id: str | None
    progress: Progress
    training: TrainingProgress | None = Field(
        default=None, description="training jobs: stage, epoch, losses, ETA, curves"
    )
    duplicates: int = Field(
        description="work delivered twice and ignored: chunk messages for work already "
        "done or held by another worker, and item results written twice"
    )
    cancel_requested: bool
    priority: str = Field(description="low, normal or high: order among the tenant's jobs")
    callback_url: str | None = Field(
        default=None,
        description="where the job's end is POSTed (its own; null: the tenant's default, "
        "if any, is used at delivery)",
    )
    params: dict[str, Any]
    error: ErrorInfo | None
    errors_by_code: dict[str, int] = Field(description="failed items per error code")
    metrics: dict[str, float] = Field(
        default_factory=dict,
        description="means over the succeeded items of the metrics each result carries "
        "(an item counts the mean over its targets), e.g. `stability@5` of LIME: the "
        "expected share of the top-5 superpixels a rerun would keep",
    )
    created_at: datetime
    prepared_at: datetime | None = Field(
        description="when a big batch's last item went in (`preparing` -> `queued`)"
    )
    started_at: datetime | None
    finished_at: datetime | None
    elapsed_seconds: float | None = Field(description="started (or created) to finished/now")
    links: JobLinks


class ModelOut(BaseModel):
    id: str
    name: str
    dataset_id: str
    state: str
    params: dict[str, Any]
    metrics: dict[str, Any]
    history: dict[str, Any]
    error: ErrorInfo | None
    training_job_id: str | None = None
    created_at: datetime
    updated_at: datetime


class ModelCreated(BaseModel):
    model: ModelOut
    job: JobOut


class DatasetOut(BaseModel):
    id: str
    name: str
    n_images: int
    n_labels: int
    empty_rows: int
    created_at: datetime


class DatasetDetail(DatasetOut):
    images_prefix: str | None = Field(description="the images folder, under your uploads")
    label_counts: dict[str, int]


class UploadTarget(BaseModel):
    key: str
    url: str
    method: str = "PUT"
    headers: dict[str, str]


class UploadsOut(BaseModel):
    uploads: list[UploadTarget]
    expires_in: int


class ItemOut(BaseModel):
    key: str
    state: str
    result: dict[str, Any] | None
    artifacts: dict[str, str] = Field(description="artifact name -> presigned GET URL")
    error: ErrorInfo | None
    timings: dict[str, Any] | None
    finished_at: datetime | None


class Page(BaseModel, Generic[T]):
    items: list[T]
    next_cursor: str | None


def _error(code: str | None, message: str | None) -> ErrorInfo | None:
    return ErrorInfo(code=code, message=message) if code else None


def job_out(job: Job, errors_by_code: dict[str, int], now: datetime) -> JobOut:
    start = job.started_at or job.created_at
    end = job.finished_at or now
    base = f"/v1/jobs/{job.id}"
    return JobOut(
        id=job.id,
        kind=job.kind,
        state=job.state,
        model_id=job.model_id,
        progress=Progress(
            total=job.total,
            done=job.done,
            failed=job.failed,
            pending=job.total - job.done - job.failed,
        ),
        training=TrainingProgress.model_validate(job.training_progress)
        if job.training_progress
        else None,
        duplicates=job.duplicates,
        cancel_requested=job.cancel_requested,
        priority=job.priority or "normal",
        callback_url=job.callback_url,
        params=job.params,
        error=_error(job.error_code, job.error_message),
        errors_by_code=errors_by_code,
        metrics=mean_metrics(job.result_metrics),
        created_at=job.created_at,
        prepared_at=job.prepared_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        elapsed_seconds=round(max((end - start).total_seconds(), 0.0), 3),
        links=JobLinks(
            self=base,
            results=f"{base}/results",
            results_jsonl=f"{base}/results.jsonl",
            cancel=f"{base}/cancel",
        ),
    )


def model_out(model: Model, training_job_id: str | None = None) -> ModelOut:
    return ModelOut(
        id=model.id,
        name=model.name,
        dataset_id=model.dataset_id,
        state=model.state,
        params=model.params,
        metrics=model.metrics,
        history=model.history,
        error=_error(model.error_code, model.error_message),
        training_job_id=training_job_id,
        created_at=model.created_at,
        updated_at=model.updated_at,
    )


def dataset_out(dataset: Dataset) -> DatasetOut:
    return DatasetOut(
        id=dataset.id,
        name=dataset.name,
        n_images=dataset.n_images,
        n_labels=dataset.n_labels,
        empty_rows=dataset.empty_rows,
        created_at=dataset.created_at,
    )


def dataset_detail(dataset: Dataset, images_prefix: str | None) -> DatasetDetail:
    return DatasetDetail(
        **dataset_out(dataset).model_dump(),
        images_prefix=images_prefix,
        label_counts={str(k): int(v) for k, v in dataset.label_counts.items()},
    )


def item_out(item: Item, sign: Callable[[str], str]) -> ItemOut:
    """`sign(storage key) -> URL` turns each stored artifact into a download link."""
    artifacts = {name: sign(key) for name, key in (item.artifacts or {}).items()}
    return ItemOut(
        key=item.item_key,
        state=item.state,
        result=item.result,
        artifacts=artifacts,
        error=_error(item.error_code, item.error_message),
        timings=item.timings,
        finished_at=item.finished_at,
    )
