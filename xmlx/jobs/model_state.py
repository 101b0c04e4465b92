"""A model's state follows its training job: the ONE place that moves it.

Every lifecycle transaction that can change a training job's state calls
`follow_job` before it commits (`xmlx.jobs.common`: finalisation, cancel; `fail_job`;
the lease that starts the job; `create_job`), so no end of a job (success, item
failure, cancel while queued or running, attempts or transient retries exhausted, the
reconciler closing it) can leave its model `pending` or `training`:

    job queued            -> model pending   (also a failed model being retrained)
    job running/cancelling -> model training
    job succeeded          -> model ready    (`record_model_trained`, with its artifact)
    job failed / partially_succeeded / cancelled -> model failed, with a code

The failure code is the training item's (`chunk.max_attempts`, `dataset.no_images`,
...), else the job's, else `job.cancelled`. Only the model's NEWEST training job moves
it: an old job closed late (a reconciled cancel) never touches a retrained model.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from xmlx import repository as repo
from xmlx.models import Item, ItemState, Job, JobKind, JobState, ModelState

_TO_MODEL = {
    JobState.QUEUED: ModelState.PENDING,
    JobState.RUNNING: ModelState.TRAINING,
    JobState.CANCELLING: ModelState.TRAINING,
    JobState.FAILED: ModelState.FAILED,
    JobState.PARTIALLY_SUCCEEDED: ModelState.FAILED,
    JobState.CANCELLED: ModelState.FAILED,
}
_FROM = {
    ModelState.PENDING: (ModelState.PENDING, ModelState.FAILED),
    ModelState.TRAINING: (ModelState.PENDING, ModelState.FAILED),
    ModelState.FAILED: (ModelState.PENDING, ModelState.TRAINING),
}


def follow_job(session: Session, job: Job) -> bool:
    """Move `job`'s model to the state its job's state implies; True when it moved."""
    target = _TO_MODEL.get(JobState(job.state))
    if job.kind != JobKind.TRAIN or job.model_id is None or target is None:
        return False
    if repo.training_job_id(session, job.tenant_id, job.model_id) != job.id:
        return False
    fields: dict[str, str | None] = {"error_code": None, "error_message": None}
    if target == ModelState.FAILED:
        fields = dict(zip(("error_code", "error_message"), _failure(session, job), strict=True))
    return repo.transition_model(session, job.model_id, _FROM[target], target, **fields)


def _failure(session: Session, job: Job) -> tuple[str, str]:
    stmt = (
        select(Item.error_code, Item.error_message)
        .where(Item.job_id == job.id, Item.state == ItemState.FAILED)
        .limit(1)
    )
    row = session.execute(stmt).first()
    if row is not None and row[0]:
        return str(row[0]), str(row[1] or "")
    if job.state == JobState.CANCELLED:
        return "job.cancelled", "the training job was cancelled"
    return str(job.error_code or "job.failed"), str(job.error_message or "the training job failed")
