"""Jobs: status and progress, per-item results (a page, or all as a file), cancel.

Results carry presigned GET URLs for each item's artifacts, valid for
`Settings.presign_expiry_seconds`. `?format=jsonl|csv|parquet` (and the older
`results.jsonl`) streams every item: the items are read a keyset page at a time, each
page in its own short transaction, and written out as it arrives (`api.exports`), so a
1,000,000-item job streams in constant memory and never holds a database connection
for the whole download. Everything here works while a job is still `preparing`: the
items inserted so far are there.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Annotated

from fastapi import APIRouter, Query, Response
from fastapi.responses import StreamingResponse

from api.deps import ApiState, DbSession, Reader, State, Submitter
from api.exports import MEDIA_TYPES, ExportFormat, export
from api.problems import ProblemError, problem_responses
from api.submit import render_job
from api.views import ItemOut, JobOut, Page, item_out
from xmlx import jobs
from xmlx import repository as repo
from xmlx.db import session_scope
from xmlx.models import FINAL_JOB_STATES, ItemState, JobKind, JobState

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])
EXPORT_PAGE = 1000

Limit = Annotated[int, Query(ge=1, le=1000)]
Cursor = Annotated[str | None, Query(max_length=500)]


def _job_not_found(job_id: str) -> ProblemError:
    return ProblemError(404, "job.not_found", f"no job {job_id}")


def _signer(state: ApiState) -> Callable[[str], str]:
    expiry = state.settings.presign_expiry_seconds
    return lambda key: state.store.presigned_get_url(key, expiry)


@router.get(
    "/{job_id}",
    response_model=JobOut,
    summary="A job: state, progress, timings, failures by error code",
    responses=problem_responses(401, 404, 429),
)
def get_job(job_id: str, caller: Reader, state: State, session: DbSession) -> JobOut:
    job = repo.get_job(session, caller.tenant_id, job_id)
    if job is None:
        raise _job_not_found(job_id)
    return render_job(state, job, session)


@router.get(
    "",
    response_model=Page[JobOut],
    summary="Your jobs, newest first",
    responses=problem_responses(401, 422, 429),
)
def list_jobs(
    caller: Reader,
    state: State,
    session: DbSession,
    job_state: Annotated[JobState | None, Query(alias="state")] = None,
    kind: Annotated[JobKind | None, Query()] = None,
    limit: Limit = 50,
    cursor: Cursor = None,
) -> Page[JobOut]:
    page = repo.list_jobs(
        session, caller.tenant_id, state=job_state, kind=kind, limit=limit, cursor=cursor
    )
    data = [render_job(state, job, session) for job in page.rows]
    return Page[JobOut](items=data, next_cursor=page.next_cursor)


@router.get(
    "/{job_id}/results",
    response_model=Page[ItemOut],
    summary="Per-item results in submission order: a page, or with `format` every item "
    "as a streamed JSON Lines, CSV or Parquet file",
    responses={
        200: {"content": {media: {} for media in MEDIA_TYPES.values()}},
        **problem_responses(401, 404, 422, 429),
    },
)
def list_results(
    job_id: str,
    caller: Reader,
    state: State,
    session: DbSession,
    item_state: Annotated[ItemState | None, Query(alias="state")] = None,
    limit: Limit = 100,
    cursor: Cursor = None,
    fmt: Annotated[ExportFormat | None, Query(alias="format")] = None,
) -> Page[ItemOut] | StreamingResponse:
    if fmt is not None:
        if repo.get_job(session, caller.tenant_id, job_id) is None:
            raise _job_not_found(job_id)
        return _export(state, caller.tenant_id, job_id, item_state, fmt)
    page = repo.list_items(
        session, caller.tenant_id, job_id, state=item_state, limit=limit, cursor=cursor
    )
    if page is None:
        raise _job_not_found(job_id)
    sign = _signer(state)
    return Page[ItemOut](items=[item_out(i, sign) for i in page.rows], next_cursor=page.next_cursor)


@router.get(
    "/{job_id}/results.jsonl",
    summary="Every per-item result as JSON Lines (streamed)",
    response_class=StreamingResponse,
    responses={
        200: {"content": {"application/x-ndjson": {}}, "description": "one ItemOut per line"},
        **problem_responses(401, 404, 429),
    },
)
def export_results(
    job_id: str,
    caller: Reader,
    state: State,
    item_state: Annotated[ItemState | None, Query(alias="state")] = None,
) -> StreamingResponse:
    with session_scope(state.sessions) as session:
        if repo.get_job(session, caller.tenant_id, job_id) is None:
            raise _job_not_found(job_id)
    return _export(state, caller.tenant_id, job_id, item_state, "jsonl")


def _export(
    state: ApiState, tenant_id: str, job_id: str, item_state: ItemState | None, fmt: ExportFormat
) -> StreamingResponse:
    pages = _result_pages(state, tenant_id, job_id, item_state)
    headers = {"Content-Disposition": f'attachment; filename="{job_id}.{fmt}"'}
    return StreamingResponse(export(pages, fmt), media_type=MEDIA_TYPES[fmt], headers=headers)


def _result_pages(
    state: ApiState, tenant_id: str, job_id: str, item_state: ItemState | None
) -> Iterator[list[ItemOut]]:
    sign = _signer(state)
    cursor: str | None = None
    while True:
        with session_scope(state.sessions) as session:
            page = repo.list_items(
                session, tenant_id, job_id, state=item_state, limit=EXPORT_PAGE, cursor=cursor
            )
        if page is None:
            return
        yield [item_out(item, sign) for item in page.rows]
        if page.next_cursor is None:
            return
        cursor = page.next_cursor


@router.post(
    "/{job_id}/cancel",
    response_model=JobOut,
    summary="Ask a job to stop (202 while running chunks wind down, 200 once cancelled)",
    responses={202: {"model": JobOut}, **problem_responses(401, 404, 409, 429)},
)
def cancel_job(job_id: str, caller: Submitter, state: State, response: Response) -> JobOut:
    job = jobs.request_cancel(state.sessions, caller.tenant_id, job_id)
    if job.state in FINAL_JOB_STATES and not job.cancel_requested:
        raise ProblemError(409, "job.already_finished", f"job {job_id} is already {job.state}")
    response.status_code = 202 if job.state == JobState.CANCELLING else 200
    return render_job(state, job)
