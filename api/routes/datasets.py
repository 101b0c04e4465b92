"""Datasets: a manifest of labelled images the client uploaded, checked and recorded.

Creating one reads the manifest from the tenant's uploads (at most 50 MiB), validates
it with `xmlcore.labels.read_manifest` (a bad one is 422 with the manifest error's code
and line), copies it into the dataset's own storage prefix, and records the counts.
The images stay where they were uploaded; the row records their folder twice: the
server-built storage prefix (`image_prefix`, what training and batches read from) and
the folder as the client named it (`images_prefix`, what the API shows back). Rows made
before those columns existed are read through `xmlx.dataset_images`.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response
from sqlalchemy.orm import Session

from api import inputs
from api.deps import DbSession, IdempotencyKey, Reader, State, Submitter
from api.idempotency import fingerprint
from api.problems import ProblemError, problem_responses
from api.schemas import DatasetRequest
from api.submit import mark_replayed
from api.views import DatasetDetail, DatasetOut, Page, dataset_detail, dataset_out
from xmlcore.labels import read_manifest
from xmlx import quotas
from xmlx import repository as repo
from xmlx.dataset_images import images_user_prefix
from xmlx.db import session_scope
from xmlx.models import Dataset

router = APIRouter(prefix="/v1/datasets", tags=["datasets"])
ROUTE = "POST /v1/datasets"
_BLANKS = b"\xef\xbb\xbf \t\r\n"


def find_dataset(session: Session, tenant_id: str, dataset_id: str) -> Dataset:
    dataset = repo.get_dataset(session, tenant_id, dataset_id)
    if dataset is None:
        raise ProblemError(404, "dataset.not_found", f"no dataset {dataset_id}")
    return dataset


@router.post(
    "",
    status_code=201,
    response_model=DatasetDetail,
    summary="Register a dataset from an uploaded manifest and images folder",
    responses=problem_responses(401, 403, 404, 409, 413, 422, 429),
)
def create_dataset(
    body: DatasetRequest,
    caller: Submitter,
    state: State,
    idempotency_key: IdempotencyKey,
    response: Response,
) -> DatasetDetail:
    tenant_id = caller.tenant_id
    fp = fingerprint(ROUTE, body)
    if idempotency_key is not None:
        existing = state.replays.begin(tenant_id, idempotency_key, fp)
        if existing is not None:
            mark_replayed(response)
            return _detail(state, tenant_id, existing)
    try:
        detail = _create(state, tenant_id, body)
    except BaseException:
        if idempotency_key is not None:
            state.replays.abandon(tenant_id, idempotency_key)
        raise
    if idempotency_key is not None:
        state.replays.finish(tenant_id, idempotency_key, fp, detail.id)
    return detail


def _create(state: State, tenant_id: str, body: DatasetRequest) -> DatasetDetail:
    image_prefix = inputs.uploads_folder(tenant_id, body.images_prefix)
    manifest_key = inputs.upload_key(tenant_id, body.manifest_key)
    inputs.check_manifest_visible(state.sessions, tenant_id, manifest_key)
    data = inputs.read_manifest_bytes(state.store, manifest_key)
    space = read_manifest(data)
    inputs.check_user_keys(space.image_keys, image_prefix)
    suffix = "jsonl" if data.lstrip(_BLANKS).startswith(b"{") else "csv"
    counts = space.label_counts()
    user_prefix = inputs.folder(body.images_prefix)
    with session_scope(state.sessions) as session:
        quotas.check_storage(session, tenant_id)
        dataset = repo.create_dataset(
            session,
            tenant_id,
            name=body.name,
            manifest_suffix=suffix,
            n_images=space.n_images,
            n_labels=space.n_labels,
            empty_rows=space.empty_rows,
            label_counts={label: int(n) for label, n in zip(space.vocabulary, counts, strict=True)},
            image_prefix=image_prefix,
            images_prefix=user_prefix,
        )
        # Written before the commit: a dataset row never exists without its manifest.
        state.store.put_bytes(dataset.manifest_key, data, f"text/{suffix}")
        quotas.add_stored_bytes(session, tenant_id, len(data))
    return dataset_detail(dataset, user_prefix)


def _detail(state: State, tenant_id: str, dataset_id: str) -> DatasetDetail:
    with session_scope(state.sessions) as session:
        dataset = find_dataset(session, tenant_id, dataset_id)
    return dataset_detail(dataset, images_user_prefix(state.store, dataset))


@router.get(
    "/{dataset_id}",
    response_model=DatasetDetail,
    summary="One dataset, with its label counts",
    responses=problem_responses(401, 404, 429),
)
def get_dataset(dataset_id: str, caller: Reader, state: State) -> DatasetDetail:
    return _detail(state, caller.tenant_id, dataset_id)


@router.get(
    "",
    response_model=Page[DatasetOut],
    summary="Your datasets, newest first",
    responses=problem_responses(401, 422, 429),
)
def list_datasets(
    caller: Reader,
    session: DbSession,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    cursor: Annotated[str | None, Query(max_length=500)] = None,
) -> Page[DatasetOut]:
    page = repo.list_datasets(session, caller.tenant_id, limit=limit, cursor=cursor)
    return Page[DatasetOut](items=[dataset_out(d) for d in page.rows], next_cursor=page.next_cursor)
