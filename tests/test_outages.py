"""Outages answer 503 `service.unavailable` with Retry-After, never 500 (api.outages),
and /readyz names the dependency that is down without its exception text. Each
dependency is made unreachable for real: the app's engine, store or Redis client is
pointed at a loopback port nobody listens on."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import botocore.exceptions
import pytest
import redis
from fastapi.testclient import TestClient
from redis.backoff import NoBackoff
from redis.retry import Retry

from api.app import create_app
from api.deps import ApiState
from tests.api_fixtures import ApiUser, assert_problem, create_dataset
from xmlx.db import create_engine, make_session_factory
from xmlx.embedded_redis import free_port
from xmlx.settings import Settings
from xmlx.storage import make_object_store


@pytest.fixture(scope="module")
def outage_client(make_api_settings: Callable[..., Settings]) -> Iterator[TestClient]:
    app = create_app(make_api_settings())

    # Routes that fail the way a deeper call would, for the mappings no route here
    # can reach without its dependency really down (each raises what its client raises).
    @app.get("/test/redis-down")
    def redis_down() -> None:
        no_retry = Retry(NoBackoff(), 0)
        redis.Redis(port=free_port(), socket_connect_timeout=0.5, retry=no_retry).ping()

    @app.get("/test/boto-down")
    def boto_down() -> None:
        raise botocore.exceptions.EndpointConnectionError(endpoint_url="http://10.9.8.7:1")

    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


def _state(client: TestClient) -> ApiState:
    return client.app.state.xmlx  # type: ignore[attr-defined]


def assert_unavailable(answer: object, dependency: str, secrets: tuple[str, ...] = ()) -> None:
    body = assert_problem(answer, 503, "service.unavailable")
    assert answer.headers["Retry-After"].isdigit()  # type: ignore[attr-defined]
    assert body["errors"] == [{"dependency": dependency}]
    text = answer.text  # type: ignore[attr-defined]
    assert not any(secret in text for secret in secrets), text


def test_database_down(
    outage_client: TestClient, make_api_user: Callable[[], ApiUser], api_user: ApiUser
) -> None:
    state = _state(outage_client)
    assert outage_client.get("/v1/jobs", headers=api_user.headers).status_code == 200  # cached
    port = str(free_port())
    dead = create_engine(f"postgresql+psycopg://xmlxuser@127.0.0.1:{port}/secretdb")
    engine, sessions = state.engine, state.sessions
    state.engine, state.sessions = dead, make_session_factory(dead)
    try:
        hidden = (port, "xmlxuser", "secretdb", "psycopg")
        # A known key still needs the database for its jobs; a new key for its check.
        assert_unavailable(outage_client.get("/v1/jobs", headers=api_user.headers), "database",
                           hidden)  # fmt: skip
        new_key = make_api_user()
        answer = outage_client.get("/v1/jobs", headers=new_key.headers)
        assert_unavailable(answer, "database", hidden)
        ready = outage_client.get("/readyz")
        assert ready.status_code == 503 and ready.headers["Retry-After"]
        assert ready.json()["down"] == ["database"]
        assert ready.json()["checks"]["database"]["detail"] == "unreachable"
        assert not any(secret in ready.text for secret in hidden)
    finally:
        state.engine, state.sessions = engine, sessions
        dead.dispose()
    assert outage_client.get("/v1/jobs", headers=api_user.headers).status_code == 200


def test_storage_down(
    outage_client: TestClient,
    api_user: ApiUser,
    make_api_settings: Callable[..., Settings],
    tmp_path: Path,
) -> None:
    state = _state(outage_client)
    port = str(free_port())
    dead = make_object_store(make_api_settings(
        storage_backend="s3", s3_endpoint_url=f"http://127.0.0.1:{port}", s3_max_attempts=1,
        s3_connect_timeout_seconds=0.5, s3_read_timeout_seconds=0.5, s3_access_key="k" * 20,
        s3_secret_key="s" * 40,
    ))  # fmt: skip
    store, state.store = state.store, dead
    try:
        body = {"name": "d", "images_prefix": "dishes/images", "manifest_key": "m.csv"}
        answer = outage_client.post("/v1/datasets", json=body, headers=api_user.headers)
        assert_unavailable(answer, "storage", (port, "127.0.0.1"))
        ready = outage_client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["down"] == ["storage"]
        assert port not in ready.text
    finally:
        state.store = store
    assert create_dataset(outage_client, api_user, tmp_path)["id"]


def test_redis_and_boto_connection_errors_are_503(outage_client: TestClient) -> None:
    assert_unavailable(outage_client.get("/test/redis-down"), "redis")
    assert_unavailable(outage_client.get("/test/boto-down"), "storage", ("10.9.8.7",))


def test_broker_down_is_named_by_readyz(make_api_settings: Callable[..., Settings]) -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"
    with TestClient(create_app(make_api_settings(redis_url=dead))) as client:
        ready = client.get("/readyz")
    assert ready.status_code == 503 and ready.json()["down"] == ["broker"]
    assert ready.json()["checks"]["broker"]["detail"] == "unreachable"
    assert dead.rsplit(":", 1)[1].split("/")[0] not in ready.text
