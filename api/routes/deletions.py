"""DELETE for jobs, models, datasets and uploads; the purges that follow them.

A DELETE answers 202 with a purge record: the thing is gone for every read at once
(404), and a worker on the default queue removes its objects and rows in the
background (`xmlx.deletion`, `xmlx.purge`); `GET /v1/purges/{id}` shows how far it
got. A second DELETE is 404. Deleting a running job cancels it first; a model used by
a live job is 409 `model.in_use`, a dataset read by a training in flight 409
`dataset.in_use`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query
from pydantic import BaseModel, Field

from api.deps import ApiState, DbSession, Reader, State, Submitter
from api.problems import ProblemError, problem_responses
from xmlx import deletion
from xmlx.models import Purge

router = APIRouter(tags=["deletion"])

Id = Annotated[str, Path(min_length=1, max_length=40)]
UploadPrefix = Annotated[
    str,
    Query(
        min_length=1,
        max_length=1000,
        description="every upload whose key starts with this (e.g. `batch1/`)",
    ),
]


class PurgeOut(BaseModel):
    id: str
    kind: Literal["job", "model", "dataset", "uploads"]
    target: str = Field(description="the id deleted, or the uploads prefix")
    state: Literal["pending", "done"]
    stage: str = Field(description="start, wait, jobs, objects, rows or done")
    objects_deleted: int
    bytes_freed: int
    rows_deleted: int
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None


def purge_out(purge: Purge) -> PurgeOut:
    return PurgeOut(
        id=purge.id, kind=purge.kind, target=deletion.shown_target(purge),  # type: ignore[arg-type]
        state=purge.state, stage=purge.stage,  # type: ignore[arg-type]
        objects_deleted=purge.objects_deleted, bytes_freed=purge.bytes_freed,
        rows_deleted=purge.rows_deleted, created_at=purge.created_at,
        updated_at=purge.updated_at, finished_at=purge.finished_at,
    )  # fmt: skip


def _started(state: ApiState, purge: Purge) -> PurgeOut:
    """Send the purge's message (committed by now); a broker outage only delays it:
    the purge sweep sends idle purges again."""
    state.broker.send_purge(purge.id)
    return purge_out(purge)


_DELETE = {"status_code": 202, "response_model": PurgeOut}


@router.delete(
    "/v1/jobs/{job_id}",
    summary="Delete a job, its results and artifacts (a running one is cancelled first)",
    responses=problem_responses(401, 404, 429),
    **_DELETE,  # type: ignore[arg-type]
)
def delete_job(job_id: Id, caller: Submitter, state: State) -> PurgeOut:
    return _started(state, deletion.delete_job(state.sessions, caller.tenant_id, job_id))


@router.delete(
    "/v1/models/{model_id}",
    summary="Delete a model, its artifacts and every job made with it",
    responses=problem_responses(401, 404, 409, 429),
    **_DELETE,  # type: ignore[arg-type]
)
def delete_model(model_id: Id, caller: Submitter, state: State) -> PurgeOut:
    return _started(state, deletion.delete_model(state.sessions, caller.tenant_id, model_id))


@router.delete(
    "/v1/datasets/{dataset_id}",
    summary="Delete a dataset (its manifest copy; the uploaded images stay in uploads)",
    responses=problem_responses(401, 404, 409, 429),
    **_DELETE,  # type: ignore[arg-type]
)
def delete_dataset(dataset_id: Id, caller: Submitter, state: State) -> PurgeOut:
    purge = deletion.delete_dataset(state.sessions, caller.tenant_id, dataset_id)
    return _started(state, purge)


@router.delete(
    "/v1/uploads",
    summary="Delete your uploads under a prefix",
    responses=problem_responses(401, 404, 422, 429),
    **_DELETE,  # type: ignore[arg-type]
)
def delete_uploads(prefix: UploadPrefix, caller: Submitter, state: State) -> PurgeOut:
    purge = deletion.delete_uploads(state.sessions, state.store, caller.tenant_id, prefix)
    return _started(state, purge)


@router.get(
    "/v1/purges/{purge_id}",
    response_model=PurgeOut,
    summary="How far a deletion's background purge got",
    responses=problem_responses(401, 404, 429),
)
def get_purge(purge_id: Id, caller: Reader, session: DbSession) -> PurgeOut:
    purge = deletion.get_purge(session, caller.tenant_id, purge_id)
    if purge is None:
        raise ProblemError(404, "purge.not_found", f"no purge {purge_id}")
    return purge_out(purge)
