"""One database connection per request: a route that holds the request's session must not
open a second one (40 API threads x 2 connections deadlocked the default 5 + 10 pool when
clients polled partly failed jobs; bench/load.py case 3)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event

from tests.api_fixtures import ApiUser, create_dataset, make_ready_model
from xmlx import jobs
from xmlx.db import SessionFactory


class ConnectionsInUse:
    """The most pooled connections the app had checked out at once."""

    def __init__(self) -> None:
        self.now = self.peak = 0

    def checkout(self, *_: object) -> None:
        self.now += 1
        self.peak = max(self.peak, self.now)

    def checkin(self, *_: object) -> None:
        self.now -= 1


@pytest.fixture
def connections(client: TestClient) -> Iterator[ConnectionsInUse]:
    engine = client.app.state.xmlx.sessions.kw["bind"]  # type: ignore[attr-defined]
    counter = ConnectionsInUse()
    event.listen(engine, "checkout", counter.checkout)
    event.listen(engine, "checkin", counter.checkin)
    yield counter
    event.remove(engine, "checkout", counter.checkout)
    event.remove(engine, "checkin", counter.checkin)


def test_reading_a_partly_failed_job_and_a_model_takes_one_connection(
    client: TestClient,
    api_user: ApiUser,
    session_factory: SessionFactory,
    tmp_path: Path,
    connections: ConnectionsInUse,
) -> None:
    dataset = create_dataset(client, api_user, tmp_path)["id"]
    model = make_ready_model(client, api_user, session_factory, dataset)
    body = {"model_id": model, "images": ["dishes/images/img_00000.png", "x.png"]}
    job = client.post("/v1/predictions", json=body, headers=api_user.headers).json()
    jobs.record_item_failure(session_factory, job["id"], "x.png", code="image.missing", message="-")
    for path in (f"/v1/jobs/{job['id']}", "/v1/jobs", f"/v1/models/{model}"):
        connections.peak = connections.now
        answer = client.get(path, headers=api_user.headers)
        assert answer.status_code == 200, answer.text
        assert connections.peak <= 1, path
    shown = client.get(f"/v1/jobs/{job['id']}", headers=api_user.headers).json()
    assert shown["errors_by_code"] == {"image.missing": 1}  # the failure path was taken
