"""Webhooks: a tenant's default URL and signing secret, and a job's deliveries.

`GET/PUT /v1/webhook-settings` reads or sets the caller's own tenant, with a `submit`
key for both: the answer holds the signing secret, which a read-only key (a dashboard's,
say) must not see, while whoever may submit a `callback_url` needs it to check calls;
`/v1/admin/tenants/{id}/webhook-settings` does the same for any tenant with an `admin`
key (everything under /v1/admin/ is admin-only).
The signing secret is created with the first settings or the first job that names a
`callback_url`, and rotated with `{"rotate_secret": true}`: deliveries sign with the
secret current when they are sent. `GET /v1/jobs/{id}/webhooks` is the delivery log:
attempts, last status and error code, next attempt, delivered time
(`xmlx.webhooks` has the rules; docs/DEPLOY.md shows how a receiver checks a signature).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Path
from pydantic import BaseModel, Field

from api.deps import Admin, ApiState, DbSession, Reader, State, Submitter
from api.problems import ProblemError, problem_responses
from api.schemas import Strict
from api.submit import checked_callback
from api.views import Page
from xmlx import repository as repo
from xmlx import webhooks
from xmlx.db import session_scope
from xmlx.models import MAX_URL_LENGTH, WebhookDelivery, WebhookDeliveryState
from xmlx.repository import webhooks as webhook_repo

router = APIRouter(tags=["webhooks"])

TenantId = Annotated[str, Path(min_length=1, max_length=40)]


class WebhookSettingsIn(Strict):
    url: str | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_URL_LENGTH,
        description="the default callback URL of the tenant's jobs; null: none",
    )
    rotate_secret: bool = Field(default=False, description="replace the signing secret")


class WebhookSettingsOut(BaseModel):
    tenant_id: str
    url: str | None
    secret: str | None = Field(
        description="HMAC-SHA256 key of the `Xmlx-Signature` header; null until the "
        "tenant's first settings or first job with a callback_url"
    )
    updated_at: datetime | None


class DeliveryOut(BaseModel):
    id: str = Field(description="also the `Xmlx-Webhook-Id` header of every attempt")
    event: str
    url: str
    state: Literal["pending", "delivered", "failed"]
    attempts: int
    last_status: int | None
    last_error: str | None = Field(description="a stable code, e.g. webhook.http_status")
    next_attempt_at: datetime | None
    created_at: datetime
    delivered_at: datetime | None


def _settings_out(state: ApiState, tenant: str) -> WebhookSettingsOut:
    with session_scope(state.sessions) as session:
        if repo.get_tenant(session, tenant) is None:
            raise ProblemError(404, "tenant.not_found", f"no tenant {tenant}")
        row = webhook_repo.get_settings(session, tenant)
        if row is None:
            return WebhookSettingsOut(tenant_id=tenant, url=None, secret=None, updated_at=None)
        return WebhookSettingsOut(
            tenant_id=tenant, url=row.url, secret=row.secret, updated_at=row.updated_at
        )


def _put_settings(state: ApiState, tenant: str, body: WebhookSettingsIn) -> WebhookSettingsOut:
    with session_scope(state.sessions) as session:
        if repo.get_tenant(session, tenant) is None:
            raise ProblemError(404, "tenant.not_found", f"no tenant {tenant}")
    url = checked_callback(state, tenant, body.url)
    with session_scope(state.sessions) as session:
        current = webhook_repo.get_settings(session, tenant)
        fresh = webhooks.new_secret() if body.rotate_secret or current is None else None
        row = webhook_repo.put_settings(session, tenant, url=url, secret=fresh)
        return WebhookSettingsOut(
            tenant_id=tenant, url=row.url, secret=row.secret, updated_at=row.updated_at
        )


SETTINGS_DOC = "A tenant's webhook default URL and signing secret"
PUT_DOC = "Set a tenant's default callback URL; create or rotate its signing secret"


@router.get(
    "/v1/webhook-settings",
    response_model=WebhookSettingsOut,
    summary=SETTINGS_DOC + " (your tenant)",
    responses=problem_responses(401, 403, 429),
)
def get_own_settings(caller: Submitter, state: State) -> WebhookSettingsOut:
    return _settings_out(state, caller.tenant_id)


@router.put(
    "/v1/webhook-settings",
    response_model=WebhookSettingsOut,
    summary=PUT_DOC + " (your tenant)",
    responses=problem_responses(401, 403, 422, 429),
)
def put_own_settings(
    body: WebhookSettingsIn, caller: Submitter, state: State
) -> WebhookSettingsOut:
    return _put_settings(state, caller.tenant_id, body)


@router.get(
    "/v1/admin/tenants/{tenant_id}/webhook-settings",
    response_model=WebhookSettingsOut,
    summary=SETTINGS_DOC + " (any tenant)",
    responses=problem_responses(401, 403, 404, 429),
)
def get_tenant_settings(tenant_id: TenantId, caller: Admin, state: State) -> WebhookSettingsOut:
    return _settings_out(state, tenant_id)


@router.put(
    "/v1/admin/tenants/{tenant_id}/webhook-settings",
    response_model=WebhookSettingsOut,
    summary=PUT_DOC + " (any tenant)",
    responses=problem_responses(401, 403, 404, 422, 429),
)
def put_tenant_settings(
    tenant_id: TenantId, body: WebhookSettingsIn, caller: Admin, state: State
) -> WebhookSettingsOut:
    return _put_settings(state, tenant_id, body)


@router.get(
    "/v1/jobs/{job_id}/webhooks",
    response_model=Page[DeliveryOut],
    summary="The webhook deliveries of a job: attempts, last status, next attempt",
    responses=problem_responses(401, 404, 429),
)
def list_job_webhooks(
    job_id: Annotated[str, Path(min_length=1, max_length=40)],
    caller: Reader,
    session: DbSession,
) -> Page[DeliveryOut]:
    if repo.get_job(session, caller.tenant_id, job_id) is None:
        raise ProblemError(404, "job.not_found", f"no job {job_id}")
    rows = webhook_repo.list_deliveries(session, job_id)
    return Page[DeliveryOut](items=[_delivery_out(row) for row in rows], next_cursor=None)


def _delivery_out(row: WebhookDelivery) -> DeliveryOut:
    pending = row.state == WebhookDeliveryState.PENDING
    return DeliveryOut(
        id=row.id, event=row.event, url=row.url, state=row.state,  # type: ignore[arg-type]
        attempts=row.attempts, last_status=row.last_status, last_error=row.last_error,
        next_attempt_at=row.next_attempt_at if pending else None, created_at=row.created_at,
        delivered_at=row.delivered_at,
    )  # fmt: skip
