"""Tenant isolation, table-driven: every route that takes an id, called by a stranger
with the owner's id (in the path or in the body), answers 404 with the resource's code,
as if the id did not exist. `test_every_id_route_is_in_the_table` fails when a route
with an id is added without a row here. Also: one Idempotency-Key used by two tenants
names two different things, and the UI's model list shows a stranger nothing.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.api_fixtures import (
    ApiUser,
    assert_problem,
    create_dataset,
    make_ready_model,
    upload_files,
)
from xmlx.db import SessionFactory

# Routes with an id that are not a tenant's resource: a file is reached through a
# signed URL bound to its key (tests/test_security.py), a static asset is public, the
# admin routes name the tenant they manage (their scope: tests/test_api_keys.py).
NOT_TENANT_RESOURCES = ("/v1/files/", "/ui/static/", "/v1/admin/")


@dataclass(frozen=True)
class Case:
    method: str
    path: str  # a route template; {dataset}, {model}, {job} are the owner's ids
    body: dict[str, Any] | None
    code: str | None  # the problem code (None: an HTML page, 404 only)


IMAGES = ["dishes/images/img_00000.png"]
CASES = [
    Case("GET", "/v1/datasets/{dataset}", None, "dataset.not_found"),
    Case("POST", "/v1/models", {"dataset_id": "{dataset}", "name": "x"}, "dataset.not_found"),
    Case("GET", "/v1/models/{model}", None, "model.not_found"),
    Case("GET", "/v1/models/{model}/hierarchy", None, "model.not_found"),
    Case("POST", "/v1/models/{model}/retrain", None, "model.not_found"),
    Case("DELETE", "/v1/models/{model}", None, "model.not_found"),
    Case("DELETE", "/v1/datasets/{dataset}", None, "dataset.not_found"),
    Case("DELETE", "/v1/jobs/{job}", None, "job.not_found"),
    Case("GET", "/v1/purges/{purge}", None, "purge.not_found"),
    Case("POST", "/v1/explanations", {"model_id": "{model}", "images": IMAGES}, "model.not_found"),
    Case("POST", "/v1/predictions", {"model_id": "{model}", "images": IMAGES}, "model.not_found"),
    # the stranger's own model, with the owner's dataset as the images' source
    Case("POST", "/v1/explanations",
         {"model_id": "{own_model}", "dataset_id": "{dataset}", "images": IMAGES},
         "dataset.not_found"),
    Case("POST", "/v1/predictions",
         {"model_id": "{own_model}", "dataset_id": "{dataset}", "images": IMAGES},
         "dataset.not_found"),
    Case("GET", "/v1/jobs/{job}", None, "job.not_found"),
    Case("GET", "/v1/jobs/{job}/results", None, "job.not_found"),
    Case("GET", "/v1/jobs/{job}/results.jsonl", None, "job.not_found"),
    Case("POST", "/v1/jobs/{job}/cancel", None, "job.not_found"),
    Case("GET", "/v1/jobs/{job}/webhooks", None, "job.not_found"),
    Case("GET", "/ui/jobs/{job}", None, None),
    Case("GET", "/ui/jobs/{job}/progress", None, None),
    Case("GET", "/ui/models/{model}", None, None),
]  # fmt: skip
ROUTE_OF_PLACEHOLDER = {
    "dataset": "{dataset_id}", "model": "{model_id}", "job": "{job_id}", "purge": "{purge_id}",
}  # fmt: skip


@dataclass(frozen=True)
class World:
    owner: ApiUser
    stranger: ApiUser
    ids: dict[str, str]  # placeholder name -> id


@pytest.fixture
def world(
    client: TestClient,
    api_user: ApiUser,
    make_api_user: Callable[[], ApiUser],
    session_factory: SessionFactory,
    tmp_path: Path,
) -> World:
    dataset = create_dataset(client, api_user, tmp_path / "owner")["id"]
    model = make_ready_model(client, api_user, session_factory, dataset)
    body = {"model_id": model, "dataset_id": dataset, "images": IMAGES}
    job = client.post("/v1/predictions", json=body, headers=api_user.headers)
    assert job.status_code == 202, job.text
    stranger = make_api_user()
    own_dataset = create_dataset(client, stranger, tmp_path / "stranger")["id"]
    own_model = make_ready_model(client, stranger, session_factory, own_dataset)
    upload_files(client, api_user, {"trash/x.png": b"x"}, "image/png")
    purge = client.delete("/v1/uploads", params={"prefix": "trash/"}, headers=api_user.headers)
    ids = {"dataset": dataset, "model": model, "job": job.json()["id"], "own_model": own_model,
           "purge": purge.json()["id"]}  # fmt: skip
    return World(api_user, stranger, ids)


def _fill(template: Any, ids: dict[str, str]) -> Any:
    if isinstance(template, str):
        return re.sub(r"\{(\w+)\}", lambda m: ids[m.group(1)], template)
    if isinstance(template, list):
        return [_fill(value, ids) for value in template]
    if isinstance(template, dict):
        return {key: _fill(value, ids) for key, value in template.items()}
    return template


def _sign_in(client: TestClient, user: ApiUser) -> None:
    client.cookies.clear()
    answer = client.post("/ui/login", data={"api_key": user.key, "next": "/ui/jobs"},
                         follow_redirects=False)  # fmt: skip
    assert answer.status_code == 303, answer.text


@pytest.fixture
def signed_in_stranger(client: TestClient, world: World) -> Any:
    _sign_in(client, world.stranger)
    yield world
    client.cookies.clear()


def test_the_owner_reaches_every_case(client: TestClient, world: World) -> None:
    """The table's ids are real: with the owner's key, nothing answers 404."""
    _sign_in(client, world.owner)
    try:
        for case in CASES:
            if "{own_model}" in str(case.body) or case.method in ("POST", "DELETE"):
                continue  # creating, cancelling, deleting are not reads; own_model is theirs
            answer = client.request(case.method, _fill(case.path, world.ids),
                                    headers=world.owner.headers)  # fmt: skip
            assert answer.status_code != 404, (case, answer.text)
    finally:
        client.cookies.clear()


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c.method} {c.path} {c.code}")
def test_a_stranger_gets_404_for_the_owners_id(
    client: TestClient, signed_in_stranger: World, case: Case
) -> None:
    world = signed_in_stranger
    answer = client.request(
        case.method, _fill(case.path, world.ids), json=_fill(case.body, world.ids),
        headers=world.stranger.headers,
    )  # fmt: skip
    if case.code is None:
        assert answer.status_code == 404, answer.text
        # nothing of the owner's job or model: its images, its dataset
        assert IMAGES[0] not in answer.text and world.ids["dataset"] not in answer.text
    else:
        assert_problem(answer, 404, case.code)


def test_every_id_route_is_in_the_table(client: TestClient) -> None:
    """Every (method, path) with an id in OpenAPI has a row (the UI's pages are not in
    OpenAPI: their rows are kept by hand)."""
    covered = {(case.method, _fill(case.path, ROUTE_OF_PLACEHOLDER)) for case in CASES}
    paths = client.app.openapi()["paths"]  # type: ignore[attr-defined]
    with_ids = {
        (method.upper(), path)
        for path, operations in paths.items()
        if "{" in path and not path.startswith(NOT_TENANT_RESOURCES)
        for method in operations
    }
    assert len(with_ids) >= 12 and with_ids <= covered, with_ids - covered
    bodies_with_ids = {case.path for case in CASES if case.body}
    assert bodies_with_ids == {"/v1/models", "/v1/explanations", "/v1/predictions"}


def test_one_idempotency_key_used_by_two_tenants_names_two_jobs(
    client: TestClient, world: World
) -> None:
    key = {"Idempotency-Key": "shared-key-1"}
    mine = {"model_id": world.ids["model"], "images": IMAGES}
    theirs = {"model_id": world.ids["own_model"], "images": IMAGES}
    first = client.post("/v1/predictions", json=mine, headers={**world.owner.headers, **key})
    second = client.post("/v1/predictions", json=theirs, headers={**world.stranger.headers, **key})
    assert first.status_code == second.status_code == 202, second.text
    assert first.json()["id"] != second.json()["id"]
    assert "idempotent-replayed" not in second.headers
    # and the stranger's replay is their own job, never the owner's
    again = client.post("/v1/predictions", json=theirs, headers={**world.stranger.headers, **key})
    assert again.json()["id"] == second.json()["id"]


def test_one_idempotency_key_used_by_two_tenants_names_two_datasets(
    client: TestClient, world: World, tmp_path: Path
) -> None:
    from tests.api_fixtures import upload_dishes

    ids = []
    for user in (world.owner, world.stranger):
        manifest = upload_dishes(client, user, tmp_path / user.tenant_id, folder="again")
        body = {"name": "d", "images_prefix": "again/images", "manifest_key": manifest}
        answer = client.post("/v1/datasets", json=body,
                             headers={**user.headers, "Idempotency-Key": "shared-ds"})  # fmt: skip
        assert answer.status_code == 201, answer.text
        assert "idempotent-replayed" not in answer.headers
        ids.append(answer.json()["id"])
    assert ids[0] != ids[1]


def test_the_ui_model_and_job_lists_show_a_stranger_nothing_of_the_owners(
    client: TestClient, signed_in_stranger: World
) -> None:
    world = signed_in_stranger
    for page in ("/ui/models", "/ui/jobs"):
        answer = client.get(page)
        assert answer.status_code == 200, answer.text
        assert world.ids["model"] not in answer.text and world.ids["job"] not in answer.text
    assert world.ids["own_model"] in client.get("/ui/models").text  # the list works
