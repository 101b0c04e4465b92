"""Keys and tenants over the API: scopes, admin routes, and revocation seen by every
API process within a second (two real uvicorn processes on one database and Redis)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from api.broker import make_redis
from api.deps import scope_for_method
from api.keyauth import RevocationEpoch
from tests.api_fixtures import API_TEST_PEPPER, ApiUser, assert_problem
from xmlx import repository as repo
from xmlx.db import SessionFactory, session_scope, utcnow
from xmlx.embedded_redis import EmbeddedRedis, free_port


def _user(sessions: SessionFactory, scopes: tuple[str, ...]) -> ApiUser:
    with session_scope(sessions) as session:
        tenant = repo.create_tenant(session, f"keys-{uuid.uuid4().hex}")
        _row, plaintext = repo.create_api_key(session, tenant.id, API_TEST_PEPPER, "t", scopes)
        return ApiUser(tenant.id, plaintext)


@pytest.fixture
def make_user(session_factory: SessionFactory) -> Callable[..., ApiUser]:
    return lambda *scopes: _user(session_factory, scopes or ("read", "submit"))


def test_every_route_declares_the_scope_its_method_needs(client: TestClient) -> None:
    """As OpenAPI shows it: GET reads, POST/DELETE submit, /v1/admin/* is admin (a route
    on `Caller` shows no scope and gets its method's). The exceptions are listed: reads
    whose answer holds a secret need a submit key."""
    secret_reads = {("get", "/v1/webhook-settings")}
    checked = 0
    for path, operations in client.app.openapi()["paths"].items():  # type: ignore[attr-defined]
        if not path.startswith("/v1/") or path.startswith("/v1/files/"):
            continue  # presigned file URLs carry their own signature
        for method, operation in operations.items():
            [requirement] = operation["security"]
            expected = "admin" if path.startswith("/v1/admin/") else scope_for_method(method)
            if (method, path) in secret_reads:
                expected = "submit"
            assert (requirement["HTTPBearer"] or [scope_for_method(method)]) == [expected], (
                f"{method} {path}"
            )
            checked += 1
    assert checked >= 20


def test_scopes_are_enforced(client: TestClient, make_user: Callable[..., ApiUser]) -> None:
    reader, submitter = make_user("read"), make_user("submit")
    assert client.get("/v1/jobs", headers=reader.headers).status_code == 200
    body = {"keys": ["a.png"], "content_type": "image/png"}
    problem = assert_problem(
        client.post("/v1/uploads", json=body, headers=reader.headers),
        403,
        "auth.insufficient_scope",
    )
    assert "submit" in str(problem["detail"])
    assert client.post("/v1/uploads", json=body, headers=submitter.headers).status_code == 200
    reading = client.get("/v1/jobs", headers=submitter.headers)
    assert_problem(reading, 403, "auth.insufficient_scope")
    for user in (reader, submitter, make_user()):
        answer = client.post("/v1/admin/tenants", json={"name": "x"}, headers=user.headers)
        assert_problem(answer, 403, "auth.insufficient_scope")


def test_an_admin_manages_tenants_and_keys(
    client: TestClient, make_user: Callable[..., ApiUser]
) -> None:
    admin = make_user("admin")
    name = f"team-{uuid.uuid4().hex[:8]}"
    created = client.post("/v1/admin/tenants", json={"name": name}, headers=admin.headers)
    assert created.status_code == 201, created.text
    tenant_id = created.json()["id"]
    again = client.post("/v1/admin/tenants", json={"name": name}, headers=admin.headers)
    assert_problem(again, 409, "tenant.exists")

    keys_url = f"/v1/admin/tenants/{tenant_id}/keys"
    made = client.post(keys_url, json={"name": "ci", "scopes": ["read"]}, headers=admin.headers)
    assert made.status_code == 201, made.text
    secret, key = made.json()["secret"], made.json()["key"]
    assert key["scopes"] == ["read"] and secret.split("_")[1] == key["prefix"]
    user = {"Authorization": f"Bearer {secret}"}
    assert client.get("/v1/jobs", headers=user).status_code == 200
    assert client.post("/v1/uploads", json={"keys": ["a"]}, headers=user).status_code == 403

    listing = client.get(keys_url, headers=admin.headers)
    assert listing.status_code == 200
    [shown] = listing.json()["items"]
    assert shown["prefix"] == key["prefix"] and shown["last_used_at"] is not None
    assert secret not in listing.text and "hash" not in listing.text

    assert client.delete(f"{keys_url}/{key['id']}", headers=admin.headers).status_code == 204
    assert_problem(client.get("/v1/jobs", headers=user), 401, "auth.invalid")
    assert client.delete(f"{keys_url}/{key['id']}", headers=admin.headers).status_code == 204
    unknown = client.delete(f"{keys_url}/key_nope", headers=admin.headers)
    assert_problem(unknown, 404, "key.not_found")
    missing = client.post("/v1/admin/tenants/ten_nope/keys", json={}, headers=admin.headers)
    assert_problem(missing, 404, "tenant.not_found")
    bad = client.post(keys_url, json={"scopes": ["root"]}, headers=admin.headers)
    assert_problem(bad, 422, "request.invalid")


def test_last_use_is_written_at_most_once_a_minute(session_factory: SessionFactory) -> None:
    user = _user(session_factory, ("read",))
    start = utcnow()
    with session_scope(session_factory) as session:
        first = repo.verify_api_key(session, user.key, API_TEST_PEPPER, now=start)
        assert first is not None and first.last_used_at == start
    for later, expected in ((timedelta(seconds=59), start), (timedelta(seconds=61), None)):
        with session_scope(session_factory) as session:
            row = repo.verify_api_key(session, user.key, API_TEST_PEPPER, now=start + later)
            assert row is not None
            assert row.last_used_at == (expected or start + later)


def test_without_redis_keys_are_checked_in_the_database(
    client: TestClient, session_factory: SessionFactory, make_user: Callable[..., ApiUser]
) -> None:
    """Redis down: no cache, every request verifies in the DB, so revocation is immediate."""
    user = make_user()
    assert client.get("/v1/jobs", headers=user.headers).status_code == 200  # cached now
    state = client.app.state.xmlx  # type: ignore[attr-defined]
    working = state.revocations
    state.revocations = RevocationEpoch(make_redis(f"redis://127.0.0.1:{free_port()}/0"))
    try:
        assert state.revocations.current() is None
        assert client.get("/v1/jobs", headers=user.headers).status_code == 200
        with session_scope(session_factory) as session:
            [key] = repo.list_api_keys(session, user.tenant_id)
            assert repo.revoke_api_key(session, user.tenant_id, key.id)
        assert_problem(client.get("/v1/jobs", headers=user.headers), 401, "auth.invalid")
    finally:
        state.revocations = working


def _api_process(port: int, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    args = [sys.executable, "-m", "uvicorn", "api.app:app", "--host", "127.0.0.1",
            "--port", str(port), "--no-access-log"]  # fmt: skip
    with log.open("wb") as out:
        return subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT)


def _wait_ready(base: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        assert process.poll() is None, log.read_text()
        try:
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"API on {base} did not start: {log.read_text()}")


@pytest.fixture
def two_api_processes(
    database_url: str, broker_redis: EmbeddedRedis, tmp_path: Path
) -> Iterator[list[str]]:
    env = {
        **os.environ,
        "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
        "XMLX_ENV": "test",
        "XMLX_DATABASE_URL": database_url,
        "XMLX_REDIS_URL": broker_redis.url,
        "XMLX_STORAGE_BACKEND": "local",
        "XMLX_LOCAL_STORAGE_ROOT": str(tmp_path / "storage"),
        "XMLX_DATA_DIR": str(tmp_path / "data"),
        "XMLX_API_KEY_PEPPER": API_TEST_PEPPER,
        "XMLX_RATE_LIMIT_PER_MINUTE": "100000",
    }
    with ExitStack() as stack:
        bases, started = [], []
        for i in range(2):
            port = free_port()
            log = tmp_path / f"api{i}.log"
            process = _api_process(port, env, log)
            stack.callback(process.wait, 20)
            stack.callback(process.terminate)
            started.append((f"http://127.0.0.1:{port}", process, log))
        for base, process, log in started:
            _wait_ready(base, process, log)
            bases.append(base)
        yield bases


def test_a_revoked_key_is_refused_by_every_api_process_within_a_second(
    two_api_processes: list[str], make_user: Callable[..., ApiUser]
) -> None:
    first, second = two_api_processes
    admin, user = make_user("admin"), make_user("read", "submit")
    with httpx.Client(timeout=5) as http:
        for base in (first, second):  # both processes now hold the key as verified
            assert http.get(f"{base}/v1/jobs", headers=user.headers).status_code == 200
        login = http.post(
            f"{second}/ui/login", data={"api_key": user.key, "next": "/ui/jobs"},
            headers={"Origin": second}, follow_redirects=False,
        )  # fmt: skip
        assert login.status_code == 303
        cookie = {"xmlx_session": login.cookies["xmlx_session"]}
        assert http.get(f"{second}/ui/jobs", cookies=cookie).status_code == 200

        listing = http.get(f"{first}/v1/admin/tenants/{user.tenant_id}/keys", headers=admin.headers)
        [key] = listing.json()["items"]
        revoked = http.delete(
            f"{first}/v1/admin/tenants/{user.tenant_id}/keys/{key['id']}", headers=admin.headers
        )
        assert revoked.status_code == 204
        started = time.monotonic()
        refused_after = {}
        while len(refused_after) < 2 and time.monotonic() - started < 5:
            for base in (first, second):
                if base not in refused_after:
                    answer = http.get(f"{base}/v1/jobs", headers=user.headers)
                    if answer.status_code == 401:
                        refused_after[base] = time.monotonic() - started
        page = http.get(f"{second}/ui/jobs", cookies=cookie, follow_redirects=False)
    print(f"revoked key refused after {refused_after}")
    assert set(refused_after) == {first, second}
    assert max(refused_after.values()) < 1.0
    assert page.status_code == 303 and page.headers["location"].startswith("/ui/login")
