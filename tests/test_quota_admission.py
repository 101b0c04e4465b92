"""The items-in-flight quota under concurrent submissions of one tenant: the check and
the job's insert are one transaction, serialised per tenant (`xmlx.quotas.admit`).

Requests go through the real HTTP API (the shared TestClient runs sync routes on a
thread pool, so they truly overlap), on the test database: PostgreSQL where the machine
has it, else SQLite. To make a lost race certain rather than lucky, the count of items
in flight is slowed down: every submission then counts while the others are counting
too, and only a lock held from the count to the commit keeps them from all passing.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import redis
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from tests.api_fixtures import ApiUser, assert_problem, make_ready_model
from tests.test_api_batches import small_dataset
from xmlx import quotas
from xmlx.db import session_scope
from xmlx.models import Job

COUNT_DELAY_SECONDS = 0.2
TRAINING_ITEMS = 1  # the ready model's training job stays queued: one item in flight


def _slow_count(monkeypatch: pytest.MonkeyPatch) -> Callable[[Session, str], int]:
    real = quotas.items_in_flight

    def slow(session: Session, tenant_id: str) -> int:
        usage = real(session, tenant_id)
        time.sleep(COUNT_DELAY_SECONDS)
        return usage

    monkeypatch.setattr(quotas, "items_in_flight", slow)
    return real


def _post_together(
    client: TestClient, bodies: list[dict[str, Any]], headers: list[dict[str, str]]
) -> list[httpx.Response]:
    """POST /v1/predictions once per body, all released at the same moment."""
    barrier = threading.Barrier(len(bodies))
    answers: list[httpx.Response | None] = [None] * len(bodies)

    def post(index: int) -> None:
        barrier.wait()
        answers[index] = client.post("/v1/predictions", json=bodies[index], headers=headers[index])

    threads = [threading.Thread(target=post, args=(i,)) for i in range(len(bodies))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert all(answer is not None for answer in answers), "a request did not finish"
    return [answer for answer in answers if answer is not None]


def _limited_tenant(client: TestClient, user: ApiUser, limit: int) -> dict[str, Any]:
    state = client.app.state.xmlx  # type: ignore[attr-defined]
    dataset = small_dataset(client, user)
    model_id = make_ready_model(client, user, state.sessions, dataset["id"])
    with session_scope(state.sessions) as session:
        quotas.set_limits(session, user.tenant_id, retention_days=None,
                          max_stored_bytes=None, max_items_in_flight=limit)  # fmt: skip
    return {"model_id": model_id, "dataset_id": dataset["id"], "k": 3}


def test_concurrent_submissions_never_admit_more_items_than_the_limit(
    client: TestClient, api_user: ApiUser, broker: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    limit, requests, items_each = 11, 8, 4  # room for 10 items: two batches of 4 fit
    base = _limited_tenant(client, api_user, limit)
    real_count = _slow_count(monkeypatch)
    bodies = [
        {**base, "images": [f"r{request}/i{n}.png" for n in range(items_each)]}
        for request in range(requests)
    ]
    answers = _post_together(client, bodies, [api_user.headers] * requests)

    admitted = [answer for answer in answers if answer.status_code == 202]
    refused = [answer for answer in answers if answer.status_code != 202]
    assert len(admitted) == (limit - TRAINING_ITEMS) // items_each, [a.text for a in answers]
    for answer in refused:
        problem = assert_problem(answer, 429, "quota.items_in_flight")
        assert problem["limit"] == limit
        assert isinstance(problem["usage"], int) and problem["usage"] + items_each > limit
    state = client.app.state.xmlx  # type: ignore[attr-defined]
    with session_scope(state.sessions) as session:
        in_flight = real_count(session, api_user.tenant_id)
    assert in_flight == TRAINING_ITEMS + len(admitted) * items_each <= limit


def test_concurrent_replays_at_the_limit_all_get_the_one_job(
    client: TestClient, api_user: ApiUser, broker: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Twins with one Idempotency-Key, where the job fits once: the losers wait for the
    winner's lock, count its items, and must replay it rather than answer 429."""
    items_each, requests = 4, 4
    base = _limited_tenant(client, api_user, TRAINING_ITEMS + items_each)
    _slow_count(monkeypatch)
    body = {**base, "images": [f"i{n}.png" for n in range(items_each)]}
    headers = {**api_user.headers, "Idempotency-Key": "one-batch"}
    answers = _post_together(client, [body] * requests, [headers] * requests)

    assert [answer.status_code for answer in answers] == [202] * requests, answers[0].text
    assert len({answer.json()["id"] for answer in answers}) == 1
    replayed = [answer.headers.get("Idempotent-Replayed") for answer in answers]
    assert replayed.count("true") == requests - 1
    state = client.app.state.xmlx  # type: ignore[attr-defined]
    with session_scope(state.sessions) as session:
        jobs = select(func.count()).where(Job.tenant_id == api_user.tenant_id)
        assert session.scalar(jobs.where(Job.kind == "predict")) == 1
