"""Webhooks over the API: callback_url checked at submit, tenant settings and secret
rotation, a job's delivery log (tenant-scoped). Delivery itself: tests/test_webhooks.py
(kernel) and tests/test_e2e_webhooks.py (real API and worker processes)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from functools import partial

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from api.app import create_app
from tests.api_fixtures import (
    API_TEST_PEPPER,
    ApiUser,
    assert_problem,
    make_ready_model,
    serve_app,
)
from tests.test_api_batches import small_dataset
from xmlx import repository as repo
from xmlx.db import SessionFactory, session_scope
from xmlx.settings import Settings

HOOK = "http://127.0.0.1:9/hook"


@pytest.fixture(scope="module")
def hook_client(make_api_settings: Callable[..., Settings]) -> Iterator[TestClient]:
    """The API with loopback allowed, as the tests' receivers need."""
    with TestClient(create_app(make_api_settings(webhook_allowed_hosts="127.0.0.1"))) as client:
        yield client


@pytest.fixture
def model_id(hook_client: TestClient, api_user: ApiUser, session_factory: SessionFactory) -> str:
    dataset = small_dataset(hook_client, api_user)
    return make_ready_model(hook_client, api_user, session_factory, dataset["id"])


@pytest.mark.parametrize(
    "url", ["http://10.0.0.7/hook", "http://169.254.169.254/latest/meta-data", "ftp://x.org/"]
)
def test_a_private_or_odd_callback_is_refused_at_submit(
    hook_client: TestClient, api_user: ApiUser, model_id: str, url: str
) -> None:
    body = {"model_id": model_id, "images": ["a.png"], "callback_url": url}
    for route in ("/v1/predictions", "/v1/explanations"):
        answer = hook_client.post(route, json=body, headers=api_user.headers)
        assert_problem(answer, 422, "webhook.url_not_allowed")
    jobs = hook_client.get("/v1/jobs", headers=api_user.headers).json()["items"]
    assert [job for job in jobs if job["kind"] != "train"] == []


def test_loopback_is_refused_unless_allowed(client: TestClient, api_user: ApiUser) -> None:
    dataset = small_dataset(client, api_user)
    body = {"dataset_id": dataset["id"], "callback_url": HOOK}
    answer = client.post("/v1/models", json=body, headers=api_user.headers)
    assert_problem(answer, 422, "webhook.url_not_allowed")


def test_a_job_lists_its_deliveries(
    hook_client: TestClient,
    api_user: ApiUser,
    make_api_user: Callable[[], ApiUser],
    model_id: str,
) -> None:
    body = {"model_id": model_id, "images": ["a.png", "b.png"], "callback_url": HOOK}
    job = hook_client.post("/v1/predictions", json=body, headers=api_user.headers).json()
    url = f"/v1/jobs/{job['id']}/webhooks"
    assert hook_client.get(url, headers=api_user.headers).json()["items"] == []
    cancelled = hook_client.post(f"/v1/jobs/{job['id']}/cancel", headers=api_user.headers)
    assert cancelled.json()["state"] == "cancelled"
    (delivery,) = hook_client.get(url, headers=api_user.headers).json()["items"]
    assert delivery["event"] == "job.cancelled" and delivery["url"] == HOOK
    assert (delivery["state"], delivery["attempts"], delivery["delivered_at"]) == (
        "pending", 0, None
    )  # fmt: skip
    assert delivery["id"].startswith("whd_") and delivery["next_attempt_at"]
    other = make_api_user()
    assert_problem(hook_client.get(url, headers=other.headers), 404, "job.not_found")
    # The first callback_url gave the tenant a secret it can read.
    settings = hook_client.get("/v1/webhook-settings", headers=api_user.headers).json()
    assert settings["secret"].startswith("whsec_") and settings["url"] is None


def test_tenant_settings_default_url_and_rotation(
    hook_client: TestClient, api_user: ApiUser, make_api_user: Callable[[], ApiUser]
) -> None:
    own = "/v1/webhook-settings"
    empty = hook_client.get(own, headers=api_user.headers).json()
    assert (empty["url"], empty["secret"]) == (None, None)
    first = hook_client.put(own, json={"url": HOOK}, headers=api_user.headers).json()
    assert first["url"] == HOOK and first["secret"].startswith("whsec_")
    same = hook_client.put(own, json={"url": HOOK}, headers=api_user.headers).json()
    assert same["secret"] == first["secret"]
    rotated = hook_client.put(own, json={"url": HOOK, "rotate_secret": True},
                              headers=api_user.headers).json()  # fmt: skip
    assert rotated["secret"] != first["secret"]
    bad = hook_client.put(own, json={"url": "http://10.0.0.1/"}, headers=api_user.headers)
    assert_problem(bad, 422, "webhook.url_not_allowed")
    typo = hook_client.put(own, json={"uri": HOOK}, headers=api_user.headers)
    assert_problem(typo, 422, "request.invalid")
    admin_url = f"/v1/admin/tenants/{api_user.tenant_id}/webhook-settings"
    answer = hook_client.get(admin_url, headers=make_api_user().headers)
    assert_problem(answer, 403, "auth.insufficient_scope")


def test_a_read_only_key_does_not_see_the_signing_secret(
    hook_client: TestClient, session_factory: SessionFactory
) -> None:
    with session_scope(session_factory) as session:
        tenant = repo.create_tenant(session, f"hooks-{uuid.uuid4().hex}")
        _row, key = repo.create_api_key(session, tenant.id, API_TEST_PEPPER, "ro", ("read",))
    answer = hook_client.get("/v1/webhook-settings", headers={"Authorization": f"Bearer {key}"})
    assert_problem(answer, 403, "auth.insufficient_scope")


def test_cli_submit_passes_the_callback_url(
    make_api_settings: Callable[..., Settings],
    hook_client: TestClient,
    api_user: ApiUser,
    model_id: str,
    session_factory: SessionFactory,
) -> None:
    """`xmlx submit --callback-url` over real HTTP (Python client -> API)."""
    from xmlx.cli import app as cli

    allowed = partial(make_api_settings, webhook_allowed_hosts="127.0.0.1")
    with serve_app(allowed) as (base, _settings):
        common = ["submit", model_id, "a.png", "--no-wait", "--api-url", base,
                  "--api-key", api_user.key]  # fmt: skip
        refused = CliRunner().invoke(cli, [*common, "--callback-url", "http://10.0.0.9/h"])
        assert refused.exit_code == 1 and "webhook.url_not_allowed" in refused.output
        done = CliRunner().invoke(cli, [*common, "--callback-url", HOOK])
        assert done.exit_code == 0, done.output
    job_id = done.output.split()[1].rstrip(":")
    with session_scope(session_factory) as session:
        job = repo.get_job(session, api_user.tenant_id, job_id)
        assert job is not None and job.callback_url == HOOK


def test_a_retrain_keeps_the_failed_trainings_callback_unless_given_one(
    hook_client: TestClient, api_user: ApiUser
) -> None:
    headers = api_user.headers
    dataset = small_dataset(hook_client, api_user)
    body = {"dataset_id": dataset["id"], "callback_url": HOOK}
    created = hook_client.post("/v1/models", json=body, headers=headers).json()
    model_id = created["model"]["id"]

    def fail_training(job_id: str) -> None:  # a cancelled training fails its model
        hook_client.post(f"/v1/jobs/{job_id}/cancel", headers=headers)
        assert hook_client.get(f"/v1/models/{model_id}", headers=headers).json()["state"] == (
            "failed"
        )

    def callback_of(answer: object) -> str | None:
        job_id = answer.json()["job"]["id"]  # type: ignore[attr-defined]
        return hook_client.get(f"/v1/jobs/{job_id}", headers=headers).json()["callback_url"]

    fail_training(created["job"]["id"])
    retrain = f"/v1/models/{model_id}/retrain"
    kept = hook_client.post(retrain, headers=headers)
    assert kept.status_code == 202, kept.text
    assert callback_of(kept) == HOOK
    fail_training(kept.json()["job"]["id"])
    refused = hook_client.post(retrain, json={"callback_url": "http://10.0.0.7/x"}, headers=headers)
    assert_problem(refused, 422, "webhook.url_not_allowed")
    other = "http://127.0.0.1:9/other"
    given = hook_client.post(retrain, json={"callback_url": other}, headers=headers)
    assert given.status_code == 202, given.text
    assert callback_of(given) == other


def test_cli_retrain_restarts_a_failed_model(
    make_api_settings: Callable[..., Settings], api_user: ApiUser, hook_client: TestClient
) -> None:
    """`xmlx retrain` over real HTTP: 409 for a model that has not failed, a new job
    for a failed one, with the callback URL it is given."""
    from xmlx.cli import app as cli

    headers = api_user.headers
    dataset = small_dataset(hook_client, api_user)
    created = hook_client.post("/v1/models", json={"dataset_id": dataset["id"]},
                               headers=headers).json()  # fmt: skip
    model_id = created["model"]["id"]
    allowed = partial(make_api_settings, webhook_allowed_hosts="127.0.0.1")
    with serve_app(allowed) as (base, _settings):
        common = ["retrain", model_id, "--no-wait", "--api-url", base, "--api-key", api_user.key]
        pending = CliRunner().invoke(cli, common)
        assert pending.exit_code == 1 and "model.not_failed" in pending.output
        hook_client.post(f"/v1/jobs/{created['job']['id']}/cancel", headers=headers)
        done = CliRunner().invoke(cli, [*common, "--callback-url", HOOK])
        assert done.exit_code == 0, done.output
    job_id = done.output.split()[1].rstrip(":")
    job = hook_client.get(f"/v1/jobs/{job_id}", headers=headers).json()
    assert job["kind"] == "train" and job["model_id"] == model_id
    assert job["callback_url"] == HOOK and job_id != created["job"]["id"]
