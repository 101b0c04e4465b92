"""Fixtures for the HTTP API tests: a real app on the test database, a local store in a
temporary folder, and a private Redis as broker, rate-limit and idempotency store.

Loaded with `-p tests.api_fixtures` (or `pytest_plugins` in tests/conftest.py); it
loads `tests.kernel_fixtures` itself. The Redis is always an embedded one (a private
redis-server on a free port), even when XMLX_TEST_REDIS_URL names a shared server:
the tests read the `gpu` queue with LLEN/LRANGE and flush the database between tests,
which must never touch a Redis somebody else uses.
"""

from __future__ import annotations

import base64
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import uvicorn
from fastapi.testclient import TestClient

from api.app import create_app
from xmlx import jobs
from xmlx import repository as repo
from xmlx.db import SessionFactory, session_scope
from xmlx.embedded_redis import EmbeddedRedis, free_port
from xmlx.jobs import Preparation
from xmlx.models import ModelState
from xmlx.settings import Settings

pytest_plugins = ["tests.kernel_fixtures"]

TASK_RUN_CHUNK = "xmlx.run_chunk"
API_TEST_PEPPER = "api-test-pepper-" + "p" * 32


@dataclass(frozen=True)
class ApiUser:
    tenant_id: str
    key: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}


@pytest.fixture(scope="session")
def broker_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    server = EmbeddedRedis(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def make_api_settings(
    database_url: str, broker_redis: EmbeddedRedis, tmp_path_factory: pytest.TempPathFactory
) -> Callable[..., Settings]:
    """Test settings; keyword arguments override fields (each call gets its own store)."""

    def make(**overrides: Any) -> Settings:
        root = tmp_path_factory.mktemp("api")
        values: dict[str, Any] = {
            "env": "test",
            "data_dir": root / "data",
            "database_url": database_url,
            "redis_url": broker_redis.url,
            "storage_backend": "local",
            "local_storage_root": root / "storage",
            "api_key_pepper": API_TEST_PEPPER,
            "public_base_url": "http://testserver",
            "rate_limit_per_minute": 100_000,
            "max_batch_items": 20_000,
            "chunk_size": 32,
        }
        values.update(overrides)
        return Settings(**values)

    return make


@pytest.fixture(scope="session")
def api_settings(make_api_settings: Callable[..., Settings]) -> Settings:
    return make_api_settings()


@pytest.fixture(scope="session")
def session_client(api_settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(api_settings)) as client:
        yield client


@contextmanager
def serve_app(make_settings: Callable[..., Settings]) -> Iterator[tuple[str, Settings]]:
    """The app served by uvicorn over real HTTP on a free loopback port (for a browser
    or the CLI); presigned file URLs point at it. Yields (base URL, settings)."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    settings = make_settings(public_base_url=base)
    config = uvicorn.Config(create_app(settings), host="127.0.0.1", port=port,
                            log_level="warning", lifespan="on")  # fmt: skip
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield base, settings
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture
def broker(broker_redis: EmbeddedRedis) -> Iterator[redis.Redis]:
    """The test broker, emptied before the test."""
    client = redis.Redis.from_url(broker_redis.url)
    client.flushdb()
    yield client
    client.close()


@pytest.fixture
def client(session_client: TestClient, broker: redis.Redis) -> TestClient:
    """The shared app (one start-up per session) with an empty broker."""
    return session_client


@pytest.fixture
def make_api_user(session_factory: SessionFactory) -> Callable[[], ApiUser]:
    """A factory of fresh tenants, each with one API key."""

    def make() -> ApiUser:
        with session_scope(session_factory) as session:
            tenant = repo.create_tenant(session, f"api-{uuid.uuid4().hex}")
            _row, plaintext = repo.create_api_key(session, tenant.id, API_TEST_PEPPER, "test")
            return ApiUser(tenant.id, plaintext)

    return make


@pytest.fixture
def api_user(make_api_user: Callable[[], ApiUser]) -> ApiUser:
    return make_api_user()


def queued_messages(broker: redis.Redis, queue: str = "gpu") -> list[tuple[str, list[Any]]]:
    """(task name, args) of each message waiting in a Celery queue on Redis."""
    messages = []
    for raw in broker.lrange(queue, 0, -1):
        envelope = json.loads(raw)
        args, _kwargs, _embed = json.loads(base64.b64decode(envelope["body"]))
        messages.append((envelope["headers"]["task"], args))
    return messages


def run_preparation(client: TestClient, job_id: str, **options: Any) -> Preparation:
    """What the `prepare_batch` task does for a preparing job, on the app's own database
    and store (the task itself reads the process settings; its kernel call is this)."""
    state = client.app.state.xmlx  # type: ignore[attr-defined]
    return jobs.prepare_batch(
        state.sessions, state.store, job_id,
        chunk_size=state.settings.chunk_size, max_items=state.settings.max_batch_items,
        cost_limit=state.settings.max_job_forward_passes, **options,
    )  # fmt: skip


def upload_files(client: TestClient, user: ApiUser, files: dict[str, bytes], ctype: str) -> None:
    """PUT each file through a presigned URL of the API (the path a client takes)."""
    answer = client.post(
        "/v1/uploads", json={"keys": list(files), "content_type": ctype}, headers=user.headers
    )
    assert answer.status_code == 200, answer.text
    for target in answer.json()["uploads"]:
        put = client.put(target["url"], content=files[target["key"]], headers=target["headers"])
        assert put.status_code == 200, put.text


def upload_dishes(client: TestClient, user: ApiUser, tmp_path: Path, folder: str = "dishes") -> str:
    """The generated "tiny" dishes dataset uploaded under `folder/`; returns the manifest key."""
    from xmlcore.datasets import generate_dishes, write_dataset

    manifest = write_dataset(generate_dishes("tiny"), tmp_path / "dishes")
    images = {
        f"{folder}/images/{path.name}": path.read_bytes()
        for path in sorted((manifest.parent / "images").iterdir())
    }
    upload_files(client, user, images, "image/png")
    upload_files(client, user, {f"{folder}/manifest.csv": manifest.read_bytes()}, "text/csv")
    return f"{folder}/manifest.csv"


def create_dataset(client: TestClient, user: ApiUser, tmp_path: Path) -> dict[str, Any]:
    manifest_key = upload_dishes(client, user, tmp_path)
    body = {"name": "dishes", "images_prefix": "dishes/images", "manifest_key": manifest_key}
    answer = client.post("/v1/datasets", json=body, headers=user.headers)
    assert answer.status_code == 201, answer.text
    return dict(answer.json())


def make_ready_model(
    client: TestClient, user: ApiUser, sessions: SessionFactory, dataset_id: str
) -> str:
    """A model trained as far as the database can tell: created through the API, then
    moved to `ready` with a hierarchy, as the training worker's last step does."""
    body = {"dataset_id": dataset_id, "name": "m", "training": {"layer_sizes": [8, 4]}}
    answer = client.post("/v1/models", json=body, headers=user.headers)
    assert answer.status_code == 202, answer.text
    model_id = str(answer.json()["model"]["id"])
    hierarchy = {"layers": [{"layer": 1, "units": [{"index": 0, "members": [["salt", 1.0]]}]}]}
    with session_scope(sessions) as session:
        moved = repo.transition_model(
            session, model_id, [ModelState.PENDING, ModelState.TRAINING], ModelState.READY,
            artifact_key=f"tenants/{user.tenant_id}/models/{model_id}/model.zip",
            hierarchy=hierarchy, metrics={"p@1": 0.5},
        )  # fmt: skip
    assert moved
    return model_id


def assert_problem(answer: object, status: int, code: str) -> dict[str, object]:
    assert isinstance(answer, httpx.Response)
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"].startswith("application/problem+json")
    body = answer.json()
    assert body["code"] == code and body["status"] == status
    assert body["type"].endswith(code) and body["title"] and body["detail"]
    return dict(body)
