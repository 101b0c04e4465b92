"""Sending the outbox: claim a due row, POST it signed, record the attempt.

Run by the `xmlx.deliver_webhooks` beat task every `webhook_interval_seconds`. Each row
is claimed alone (a short transaction), POSTed outside any transaction, and its outcome
written only by the claim holder. At-least-once: a worker killed after the receiver got
the body but before the outcome was written sends it again once its claim expires, with
the same `Xmlx-Webhook-Id`, so the receiver keeps one copy per id (docs/RELIABILITY.md).

Retries: `base * 2^(n-1)` seconds after the n-th failed attempt, at most `max` per
step, +-20 % jitter (so a receiver back from an outage is not hit by every row at the
same second), until `webhook_give_up_seconds` after the final state; then the row is
`failed` with its last status and error code. Redirects are not followed, the connect
and read timeouts are small, the response body is never read, and the host is resolved
and checked again at every attempt (`xmlx.webhooks.urls`).
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta

import httpx

from xmlx.db import SessionFactory, session_scope, utcnow
from xmlx.models import WebhookDeliveryState
from xmlx.repository import webhooks as repo
from xmlx.settings import Settings
from xmlx.webhooks.signing import EVENT_HEADER, ID_HEADER, SIGNATURE_HEADER, signature
from xmlx.webhooks.urls import Target, WebhookUrlError, resolve_public

USER_AGENT = "xmlx-webhooks/1"
log = logging.getLogger("xmlx.webhooks")


@dataclass(frozen=True)
class Request:
    delivery_id: str
    event: str
    url: str
    body: bytes
    secret: str
    created_at: datetime
    attempts: int  # before this one


@dataclass(frozen=True)
class Outcome:
    status: int | None  # the receiver's HTTP status, None when none came back
    error: str | None  # a stable code when the attempt failed, else None


def encode(payload: dict[str, object]) -> bytes:
    return json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()


def retry_delay(settings: Settings, attempts: int, rng: random.Random | None = None) -> float:
    """Seconds to wait after the `attempts`-th failed attempt (1 = the first)."""
    step = min(
        settings.webhook_retry_max_seconds,
        settings.webhook_retry_base_seconds * 2.0 ** (attempts - 1),
    )
    return step * (rng or random).uniform(0.8, 1.2)


def deliver_due(
    sessions: SessionFactory,
    settings: Settings,
    owner: str,
    *,
    budget_seconds: float | None = None,
) -> dict[str, int]:
    """Deliver due rows until none is left, `webhook_batch_size` were tried, or the
    budget (default: 4 intervals) is spent; counts by outcome.

    `webhook_concurrency` senders work side by side, each claiming its next row, so a
    receiver that answers slowly (up to the read timeout) holds one sender, not every
    other tenant's deliveries."""
    budget = budget_seconds if budget_seconds is not None else 4 * settings.webhook_interval_seconds
    stop_at = time.monotonic() + budget
    senders = min(settings.webhook_concurrency, settings.webhook_batch_size)
    share = -(-settings.webhook_batch_size // senders)

    def send_some(_: int) -> Counter[str]:
        counts: Counter[str] = Counter()
        for _ in range(share):
            if time.monotonic() > stop_at:
                break
            request = claim_next(sessions, settings, owner)
            if request is None:
                break
            counts[record(sessions, settings, owner, request, _attempt(settings, request))] += 1
        return counts

    with ThreadPoolExecutor(senders, thread_name_prefix="webhooks") as pool:
        total = sum(pool.map(send_some, range(senders)), Counter[str]())
    return {outcome: total[outcome] for outcome in ("delivered", "retry", "failed")}


def claim_next(sessions: SessionFactory, settings: Settings, owner: str) -> Request | None:
    now = utcnow()
    lease = timedelta(seconds=settings.webhook_lease_seconds)
    with session_scope(sessions) as session:
        for delivery_id in repo.due_delivery_ids(session, now, limit=5):
            if not repo.claim(session, delivery_id, owner, now, lease):
                continue
            row = repo.get_delivery(session, delivery_id)
            assert row is not None
            tenant = repo.get_settings(session, row.tenant_id)
            secret = tenant.secret if tenant is not None else ""
            return Request(
                row.id, row.event, row.url, encode(row.payload), secret, row.created_at,
                row.attempts,
            )  # fmt: skip
    return None


def record(
    sessions: SessionFactory, settings: Settings, owner: str, request: Request, outcome: Outcome
) -> str:
    now = utcnow()
    attempts = request.attempts + 1
    if outcome.error is None:
        values: dict[str, object] = {
            "state": WebhookDeliveryState.DELIVERED, "delivered_at": now, "last_error": None
        }  # fmt: skip
        result = "delivered"
    else:
        retry_at = now + timedelta(seconds=retry_delay(settings, attempts))
        give_up = request.created_at + timedelta(seconds=settings.webhook_give_up_seconds)
        if retry_at > give_up:
            values, result = {"state": WebhookDeliveryState.FAILED}, "failed"
        else:
            values, result = {"next_attempt_at": retry_at}, "retry"
        values["last_error"] = outcome.error
    with session_scope(sessions) as session:
        repo.record_attempt(
            session, request.delivery_id, owner, last_status=outcome.status, **values
        )
    return result


def _attempt(settings: Settings, request: Request) -> Outcome:
    """`post_signed`, and an unforeseen error recorded as a failed attempt: a row that
    raised would otherwise be retried at each lease expiry, for ever, uncounted."""
    try:
        return post_signed(settings, request)
    except Exception:
        log.exception("webhook %s: unexpected error", request.delivery_id)
        return Outcome(None, "webhook.error")


def post_signed(settings: Settings, request: Request) -> Outcome:
    """One POST of `request` to the address its host resolves to now."""
    if not request.secret:
        return Outcome(None, "webhook.no_secret")
    try:
        target = resolve_public(request.url, settings.webhook_allowed_host_set)
    except WebhookUrlError as exc:
        return Outcome(None, exc.code)
    headers = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        SIGNATURE_HEADER: signature(request.secret, request.body, int(time.time())),
        ID_HEADER: request.delivery_id,
        EVENT_HEADER: request.event,
    }
    timeout = httpx.Timeout(
        settings.webhook_read_timeout_seconds, connect=settings.webhook_connect_timeout_seconds
    )
    try:
        with httpx.Client(timeout=timeout, follow_redirects=False, trust_env=False) as client:
            pinned = client.build_request(
                "POST", _pinned_url(target), content=request.body, headers=headers,
                extensions=_tls_name(target),
            )  # fmt: skip
            pinned.headers["Host"] = httpx.URL(request.url).netloc.decode("ascii")
            response = client.send(pinned, stream=True)
            response.close()  # the body is never read: a receiver cannot make us buffer
    except httpx.TimeoutException as exc:
        code = (
            "webhook.connect_timeout"
            if isinstance(exc, httpx.ConnectTimeout)
            else "webhook.timeout"
        )
        return Outcome(None, code)
    except httpx.ConnectError:
        return Outcome(None, "webhook.connect_failed")
    except httpx.HTTPError:
        return Outcome(None, "webhook.transport_error")
    if 200 <= response.status_code < 300:
        return Outcome(response.status_code, None)
    if 300 <= response.status_code < 400:
        return Outcome(response.status_code, "webhook.redirect_not_followed")
    return Outcome(response.status_code, "webhook.http_status")


def _pinned_url(target: Target) -> httpx.URL:
    """The URL with its host replaced by the address just checked (DNS rebinding)."""
    return httpx.URL(target.url).copy_with(host=target.address, port=target.port)


def _tls_name(target: Target) -> dict[str, str]:
    # TLS must still present and verify the name the URL gave, not the address.
    return {"sni_hostname": target.host} if target.scheme == "https" else {}
