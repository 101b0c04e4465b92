"""The gallery pages: jobs, one job's cards, models, one model; and the progress poll.

Every page needs a signed-in browser (`auth.current_user`); every read is scoped to its
tenant, so another tenant's job or model is a plain 404 page. Item pages use keyset
cursors and never load more than one page of items, so a 100,000-item job opens as
fast as a 10-item one.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response

from api.deps import ApiState, get_state
from api.web import model_view
from api.web.auth import current_user, login_redirect
from api.web.render import bad_request, not_found, render
from xmlcore.result_metrics import mean_metrics
from xmlx import repository as repo
from xmlx.db import session_scope
from xmlx.models import FINAL_JOB_STATES, Item, ItemState, JobKind, JobState
from xmlx.report import TRUTH, hierarchy_units, item_card
from xmlx.repository import InvalidCursorError, Page

router = APIRouter()
PAGE_SIZE = 24
Cursor = Annotated[str | None, Query(max_length=500)]
Filter = Annotated[str | None, Query(max_length=200)]


def _choice(
    value: str | None, allowed: type[JobState] | type[ItemState] | type[JobKind]
) -> str | None:
    if not value:
        return None
    if value not in {member.value for member in allowed}:
        raise ValueError(f"unknown filter value {value!r}")
    return value


@router.get("/ui", include_in_schema=False)
@router.get("/ui/", include_in_schema=False)
def home() -> RedirectResponse:
    return RedirectResponse("/ui/jobs", status_code=303)


@router.get("/ui/jobs", response_model=None)
def jobs_page(
    request: Request, state: Filter = None, kind: Filter = None, cursor: Cursor = None
) -> Response:
    user = current_user(request)
    if user is None:
        return login_redirect(request)
    try:
        job_state, job_kind = _choice(state, JobState), _choice(kind, JobKind)
        with session_scope(get_state(request).sessions) as session:
            page = repo.list_jobs(
                session, user.tenant_id, state=job_state, kind=job_kind, limit=50, cursor=cursor
            )
    except (ValueError, InvalidCursorError) as exc:
        return bad_request(request, str(exc))
    context = {
        "jobs": page.rows,
        "next_cursor": page.next_cursor,
        "state": job_state or "",
        "kind": job_kind or "",
        "states": list(JobState),
        "kinds": list(JobKind),
    }
    return render(request, "jobs.html", context)


@router.get("/ui/jobs/{job_id}/progress", response_model=None)
def job_progress(request: Request, job_id: str) -> Response:
    """What the pages poll every 2 s while a job runs (the cookie, not a Bearer key)."""
    user = current_user(request)
    if user is None:
        return JSONResponse({"code": "auth.invalid"}, status_code=401)
    with session_scope(get_state(request).sessions) as session:
        job = repo.get_job(session, user.tenant_id, job_id)
    if job is None:
        return JSONResponse({"code": "job.not_found"}, status_code=404)
    body = {
        "state": job.state,
        "total": job.total,
        "done": job.done,
        "failed": job.failed,
        "final": job.state in FINAL_JOB_STATES,
    }
    return JSONResponse(body, headers={"Cache-Control": "no-store"})


@router.get("/ui/jobs/{job_id}/training", response_model=None)
def training_progress(request: Request, job_id: str) -> Response:
    """The training panel alone, re-fetched every second while a training runs."""
    user = current_user(request)
    if user is None:
        return JSONResponse({"code": "auth.invalid"}, status_code=401)
    with session_scope(get_state(request).sessions) as session:
        job = repo.get_job(session, user.tenant_id, job_id)
    if job is None or job.kind != JobKind.TRAIN:
        return JSONResponse({"code": "job.not_found"}, status_code=404)
    return render(request, "_training.html", model_view.training_panel(job))


@router.get("/ui/jobs/{job_id}", response_model=None)
def job_page(
    request: Request,
    job_id: str,
    state: Filter = None,
    label: Filter = None,
    cursor: Cursor = None,
    limit: Annotated[int, Query(ge=1, le=100)] = PAGE_SIZE,
) -> Response:
    user = current_user(request)
    if user is None:
        return login_redirect(request)
    app = get_state(request)
    try:
        item_state = _choice(state, ItemState)
        context = _job_context(
            app, user.tenant_id, job_id, item_state, label or None, cursor, limit
        )
    except (ValueError, InvalidCursorError) as exc:
        return bad_request(request, str(exc))
    if context is None:
        return not_found(request, f"You have no job {job_id}.")
    return render(request, "job.html", context)


def _job_context(
    app: ApiState,
    tenant_id: str,
    job_id: str,
    item_state: str | None,
    label: str | None,
    cursor: str | None,
    limit: int,
) -> dict[str, Any] | None:
    with session_scope(app.sessions) as session:
        job = repo.get_job(session, tenant_id, job_id)
        if job is None:
            return None
        if label is not None and item_state not in (None, ItemState.SUCCEEDED):
            page: Page[Item] | None = Page(rows=[], next_cursor=None)  # only successes have labels
        elif label is not None:
            page = repo.items_with_label(
                session, tenant_id, job_id, label, limit=limit, cursor=cursor
            )
        else:
            page = repo.list_items(
                session, tenant_id, job_id, state=item_state, limit=limit, cursor=cursor
            )
        model = repo.get_model(session, tenant_id, job.model_id) if job.model_id else None
        errors = repo.error_counts(session, job.id) if job.failed else {}
        truth = TRUTH.for_job(session, app.store, job) if job.kind != JobKind.TRAIN else None
    assert page is not None
    expiry = app.settings.presign_expiry_seconds
    prefix = str(job.params.get("image_prefix", ""))
    link = lambda key: app.store.presigned_get_url(key, expiry)  # noqa: E731
    hierarchy = hierarchy_units(model.hierarchy if model is not None else None)
    cards = [item_card(item, prefix, link, hierarchy, truth) for item in page.rows]
    return {
        "job": job,
        "model": model,
        "cards": cards,
        "next_cursor": page.next_cursor,
        "state": item_state or "",
        "label": label or "",
        "limit": limit,
        "item_states": list(ItemState),
        "errors": errors,
        "metrics": mean_metrics(job.result_metrics),
        "truth_known": truth is not None,
        "cursor": cursor,
        **(model_view.training_panel(job) if job.kind == JobKind.TRAIN else {}),
    }


@router.get("/ui/models", response_model=None)
def models_page(request: Request, cursor: Cursor = None) -> Response:
    user = current_user(request)
    if user is None:
        return login_redirect(request)
    try:
        with session_scope(get_state(request).sessions) as session:
            page = repo.list_models(session, user.tenant_id, limit=50, cursor=cursor)
    except InvalidCursorError as exc:
        return bad_request(request, str(exc))
    return render(request, "models.html", {"models": page.rows, "next_cursor": page.next_cursor})


@router.get("/ui/models/{model_id}", response_model=None)
def model_page(request: Request, model_id: str) -> Response:
    user = current_user(request)
    if user is None:
        return login_redirect(request)
    with session_scope(get_state(request).sessions) as session:
        model = repo.get_model(session, user.tenant_id, model_id)
        training_job = repo.training_job_id(session, user.tenant_id, model_id) if model else None
        job = repo.get_job(session, user.tenant_id, training_job) if training_job else None
    if model is None:
        return not_found(request, f"You have no model {model_id}.")
    header, rows, other_metrics = model_view.metrics_table(model.metrics or {})
    history = model.history or {}
    curves = [
        model_view.curves_svg(f"{stage} loss per epoch", history.get(stage) or {})
        for stage in ("autoencoder", "regressor")
    ]
    context = {
        "model": model,
        "tree": model_view.hierarchy_tree(model.hierarchy),
        "metric_header": header,
        "metric_rows": rows,
        "other_metrics": other_metrics,
        "curves": [c for c in curves if c is not None],
        "training_job": training_job,
        **(model_view.training_panel(job) if job is not None else {}),
    }
    return render(request, "model.html", context)
