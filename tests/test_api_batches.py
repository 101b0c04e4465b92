"""Explanation and prediction batches, and training requests: what is stored and sent,
what is refused (leaving nothing behind), idempotent replays, and the 10,000-item case."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from api.app import create_app
from tests.api_fixtures import (
    ApiUser,
    assert_problem,
    make_ready_model,
    queued_messages,
    run_preparation,
    upload_files,
)
from xmlx.db import SessionFactory, session_scope
from xmlx.models import Chunk, Dataset, Item, Job, Model
from xmlx.settings import Settings

# Twelve labels: enough for the 8-unit first layer of `make_ready_model`.
MANIFEST = b"image,labels\na.png,salt|garlic|l1|l2|l3\nb.png,salt|l4|l5|l6\nc.png,onion|l7|l8|l9\n"


def small_dataset(client: TestClient, user: ApiUser) -> dict[str, Any]:
    """A dataset from a three-row manifest (the API never opens the images)."""
    upload_files(client, user, {"set/manifest.csv": MANIFEST}, "text/csv")
    body = {"name": "small", "images_prefix": "set/images/", "manifest_key": "set/manifest.csv"}
    answer = client.post("/v1/datasets", json=body, headers=user.headers)
    assert answer.status_code == 201, answer.text
    return dict(answer.json())


@pytest.fixture
def ready(
    client: TestClient, api_user: ApiUser, session_factory: SessionFactory, broker: redis.Redis
) -> tuple[ApiUser, dict[str, Any], str]:
    """A tenant with a dataset and a ready model, and an empty queue."""
    dataset = small_dataset(client, api_user)
    model_id = make_ready_model(client, api_user, session_factory, dataset["id"])
    broker.flushdb()
    return api_user, dataset, model_id


def footprint(sessions: SessionFactory, broker: redis.Redis, tenant_id: str) -> dict[str, int]:
    """Everything a request could have left behind: rows of the tenant, queued messages."""
    with session_scope(sessions) as session:

        def count(entity: Any, *joins: Any) -> int:
            stmt = select(func.count()).select_from(entity)
            for join in joins:
                stmt = stmt.join(join)
            owner = Job.tenant_id if joins else entity.tenant_id
            return int(session.scalar(stmt.where(owner == tenant_id)) or 0)

        counts = {
            "jobs": count(Job),
            "items": count(Item, Job),
            "chunks": count(Chunk, Job),
            "models": count(Model),
            "datasets": count(Dataset),
        }
    queues = ("gpu", "train", "default")
    return {**counts, **{queue: int(broker.llen(queue)) for queue in queues}}


def test_explanations_store_items_and_enqueue_each_chunk(
    client: TestClient, ready: tuple[ApiUser, dict[str, Any], str], broker: redis.Redis
) -> None:
    user, dataset, model_id = ready
    keys = [f"img_{i:03d}.png" for i in range(70)]
    body = {
        "model_id": model_id,
        "images": keys,
        "dataset_id": dataset["id"],
        "method": "occlusion",
        "target": {"kind": "latent", "index": 2},
        "params": {"patch": 8},
        "k": 3,
    }
    answer = client.post("/v1/explanations", json=body, headers=user.headers)
    assert answer.status_code == 202, answer.text
    job = answer.json()
    assert (job["kind"], job["state"], job["progress"]["total"]) == ("explain", "queued", 70)
    assert job["params"] == {
        "method": "occlusion",
        "target": {"kind": "latent", "index": 2},
        "params": {"patch": 8},
        "k": 3,
        "image_prefix": f"tenants/{user.tenant_id}/uploads/set/images/",
    }
    messages = queued_messages(broker)
    assert len(messages) == math.ceil(70 / 32)
    assert {(task, args[1]) for task, args in messages} == {("xmlx.run_chunk", "explain")}
    page = client.get(f"/v1/jobs/{job['id']}/results", headers=user.headers).json()
    assert [item["key"] for item in page["items"]] == keys
    assert {item["state"] for item in page["items"]} == {"pending"}


def test_prefix_batches_list_the_store(
    client: TestClient, ready: tuple[ApiUser, dict[str, Any], str]
) -> None:
    user, _dataset, model_id = ready
    files = {f"batch/{i}.png": b"x" for i in range(5)} | {"other/z.png": b"x"}
    upload_files(client, user, files, "image/png")
    body = {"model_id": model_id, "prefix": "batch/"}
    job = client.post("/v1/predictions", json=body, headers=user.headers).json()
    assert job["kind"] == "predict" and job["state"] == "preparing"
    assert job["params"] == {"k": 5, "image_prefix": f"tenants/{user.tenant_id}/uploads/"}
    prepared = run_preparation(client, job["id"])
    assert prepared.state == "queued" and len(prepared.chunk_ids) == 1
    job = client.get(f"/v1/jobs/{job['id']}", headers=user.headers).json()
    assert job["progress"]["total"] == 5 and job["prepared_at"] is not None
    results = client.get(f"/v1/jobs/{job['id']}/results", headers=user.headers).json()
    assert [item["key"] for item in results["items"]] == sorted(files)[:5]


def test_a_lime_sampler_is_accepted_and_recorded(
    client: TestClient, ready: tuple[ApiUser, dict[str, Any], str]
) -> None:
    user, dataset, model_id = ready
    params = {"sampler": "antithetic_stratified", "adaptive": {"criterion": "stability"}}
    body = {"model_id": model_id, "images": ["a.png"], "dataset_id": dataset["id"]}
    answer = client.post("/v1/explanations", json={**body, "params": params}, headers=user.headers)
    assert answer.status_code == 202, answer.text
    job = answer.json()
    assert job["params"]["params"] == params and job["metrics"] == {}


def _bad_requests(model_id: str, other_model: str, pending_model: str) -> list[Any]:
    base = {"model_id": model_id, "images": ["a.png"]}
    return [
        ({**base, "model_id": "mdl_0000000000000000000000000x"}, 404, "model.not_found"),
        ({**base, "model_id": other_model}, 404, "model.not_found"),
        ({**base, "model_id": pending_model}, 409, "model.not_ready"),
        ({**base, "images": []}, 422, "batch.empty"),
        ({"model_id": model_id, "manifest_key": "no-such-list.txt"}, 422, "manifest.not_found"),
        ({**base, "manifest_key": "list.txt"}, 422, "request.invalid"),
        ({"model_id": model_id, "manifest_key": "../list.txt"}, 422, "key.invalid"),
        ({**base, "prefix": "x/"}, 422, "request.invalid"),
        ({"model_id": model_id}, 422, "request.invalid"),
        ({**base, "images": ["a.png", "../etc/passwd"]}, 422, "key.invalid"),
        ({**base, "images": ["a\x00b.png"]}, 422, "key.invalid"),
        ({**base, "images": ["k" * 1025]}, 422, "key.invalid"),
        ({"model_id": model_id, "prefix": "/abs"}, 422, "key.invalid"),
        ({**base, "images": ["a.png", "a.png"]}, 422, "batch.duplicate_keys"),
        ({**base, "images": "a.png"}, 422, "request.invalid"),
        ({**base, "images": [1, 2]}, 422, "request.invalid"),
        ({**base, "k": "five"}, 422, "request.invalid"),
        ({**base, "method": "magic"}, 422, "request.invalid"),
        ({**base, "target": {"kind": "latent", "index": -1}}, 422, "request.invalid"),
        ({**base, "target": {"kind": "top_k", "k": 51}}, 422, "request.invalid"),
        ({**base, "target": {"kind": "everything"}}, 422, "request.invalid"),
        ({**base, "unexpected": 1}, 422, "request.invalid"),
        ({**base, "params": {"bogus": 1}}, 422, "config.bad_parameter"),
        ({**base, "params": {"sampler": "sobol"}}, 422, "config.bad_parameter"),
        ({**base, "params": {"sampler": 1}}, 422, "config.bad_parameter"),
        (
            {**base, "params": {"sampler": "antithetic", "engine": "reference"}},
            422,
            "config.bad_parameter",
        ),
        ({**base, "method": "gradcam", "params": {"num_samples": 9}}, 422, "config.bad_parameter"),
        ({**base, "target": {"kind": "label", "name": "chocolate"}}, 422, "labels.unknown"),
        ({**base, "target": {"kind": "latent", "index": 4}}, 422, "target.out_of_range"),
        ({**base, "dataset_id": "ds_0000000000000000000000000x"}, 404, "dataset.not_found"),
    ]


def test_bad_requests_change_nothing(
    client: TestClient,
    ready: tuple[ApiUser, dict[str, Any], str],
    make_api_user: Callable[[], ApiUser],
    session_factory: SessionFactory,
    broker: redis.Redis,
) -> None:
    user, dataset, model_id = ready
    stranger = make_api_user()
    other_model = make_ready_model(
        client, stranger, session_factory, small_dataset(client, stranger)["id"]
    )
    pending = client.post(
        "/v1/models", json={"dataset_id": dataset["id"], "name": "p"}, headers=user.headers
    ).json()["model"]["id"]
    broker.flushdb()
    before = footprint(session_factory, broker, user.tenant_id)
    for body, status, code in _bad_requests(model_id, other_model, pending):
        answer = client.post("/v1/explanations", json=body, headers=user.headers)
        assert_problem(answer, status, code)
        assert footprint(session_factory, broker, user.tenant_id) == before, body


@pytest.fixture
def small_client(make_api_settings: Callable[..., Settings]) -> Iterator[TestClient]:
    with TestClient(create_app(make_api_settings(max_batch_items=5))) as client:
        yield client


def test_batches_over_the_limit_are_refused(
    small_client: TestClient,
    api_user: ApiUser,
    session_factory: SessionFactory,
    broker: redis.Redis,
) -> None:
    dataset = small_dataset(small_client, api_user)
    model_id = make_ready_model(small_client, api_user, session_factory, dataset["id"])
    upload_files(small_client, api_user, {f"many/{i}.png": b"x" for i in range(6)}, "image/png")
    before = footprint(session_factory, broker, api_user.tenant_id)
    six = {"model_id": model_id, "images": [f"{i}.png" for i in range(6)]}
    answer = small_client.post("/v1/predictions", json=six, headers=api_user.headers)
    assert_problem(answer, 413, "batch.too_large")
    assert footprint(session_factory, broker, api_user.tenant_id) == before
    five = {"model_id": model_id, "images": [f"{i}.png" for i in range(5)]}
    assert small_client.post("/v1/predictions", json=five, headers=api_user.headers).is_success
    # A prefix is listed after the 202: the job fails with the code once it passes the limit.
    body = {"model_id": model_id, "prefix": "many/"}
    job = small_client.post("/v1/predictions", json=body, headers=api_user.headers).json()
    assert run_preparation(small_client, job["id"]).state == "failed"
    job = small_client.get(f"/v1/jobs/{job['id']}", headers=api_user.headers).json()
    assert job["error"]["code"] == "batch.too_large"


def test_idempotent_replay_and_conflict(
    client: TestClient,
    ready: tuple[ApiUser, dict[str, Any], str],
    session_factory: SessionFactory,
    broker: redis.Redis,
) -> None:
    user, _dataset, model_id = ready
    headers = {**user.headers, "Idempotency-Key": "batch-7"}
    body = {"model_id": model_id, "images": ["a.png", "b.png"], "params": {"num_samples": 50}}
    first = client.post("/v1/explanations", json=body, headers=headers)
    messages = len(queued_messages(broker))
    again = client.post("/v1/explanations", json=dict(reversed(body.items())), headers=headers)
    assert first.status_code == again.status_code == 202
    assert again.json()["id"] == first.json()["id"]
    assert again.headers["idempotent-replayed"] == "true"
    assert len(queued_messages(broker)) == messages == 1  # the replay sent nothing
    before = footprint(session_factory, broker, user.tenant_id)
    changed = {**body, "params": {"num_samples": 60}}
    assert_problem(
        client.post("/v1/explanations", json=changed, headers=headers), 422, "idempotency.conflict"
    )
    predict = {"model_id": model_id, "images": ["a.png", "b.png"]}
    assert_problem(
        client.post("/v1/predictions", json=predict, headers=headers), 422, "idempotency.conflict"
    )
    bad_key = {**user.headers, "Idempotency-Key": "x" * 201}
    assert_problem(
        client.post("/v1/predictions", json=predict, headers=bad_key),
        422,
        "idempotency.invalid_key",
    )
    assert footprint(session_factory, broker, user.tenant_id) == before


def test_training_requests_are_idempotent(
    client: TestClient,
    api_user: ApiUser,
    session_factory: SessionFactory,
    broker: redis.Redis,
) -> None:
    dataset = small_dataset(client, api_user)
    headers = {**api_user.headers, "Idempotency-Key": "train-1"}
    body = {"dataset_id": dataset["id"], "name": "m", "training": {"epochs": 3}}
    first = client.post("/v1/models", json=body, headers=headers).json()
    again = client.post("/v1/models", json=body, headers=headers)
    assert again.status_code == 202 and again.headers["idempotent-replayed"] == "true"
    assert again.json()["model"]["id"] == first["model"]["id"]
    assert again.json()["job"]["id"] == first["job"]["id"] == first["model"]["training_job_id"]
    counts = footprint(session_factory, broker, api_user.tenant_id)
    assert (counts["models"], counts["jobs"], counts["train"], counts["gpu"]) == (1, 1, 1, 0)
    other = {**body, "training": {"epochs": 4}}
    assert_problem(
        client.post("/v1/models", json=other, headers=headers), 422, "idempotency.conflict"
    )


def test_layer_sizes_must_fit_the_vocabulary(client: TestClient, api_user: ApiUser) -> None:
    dataset = small_dataset(client, api_user)
    body = {"dataset_id": dataset["id"], "training": {"layer_sizes": [12, 4]}}
    answer = client.post("/v1/models", json=body, headers=api_user.headers)
    assert_problem(answer, 422, "training.bad_layer_sizes")
    fitted = client.post("/v1/models", json={**body, "training": {}}, headers=api_user.headers)
    assert fitted.status_code == 202 and fitted.json()["model"]["params"]["layer_sizes"] is None


@pytest.mark.parametrize(
    "training",
    [
        {"weights": "/etc/passwd"},
        {"weights": "imagenet.h5"},
        {"layer_sizes": [4, 8]},
        {"epochs": 0},
        {"image_size": [8, 8]},
        {"base": "resnet"},
        {"unknown": True},
    ],
)
def test_training_parameters_are_checked(
    client: TestClient, api_user: ApiUser, training: dict[str, Any]
) -> None:
    body = {"dataset_id": "ds_x", "name": "m", "training": training}
    assert_problem(
        client.post("/v1/models", json=body, headers=api_user.headers), 422, "request.invalid"
    )


def test_ten_thousand_items_are_accepted_quickly(
    client: TestClient, ready: tuple[ApiUser, dict[str, Any], str], broker: redis.Redis
) -> None:
    user, _dataset, model_id = ready
    keys = [f"photos/{i:06d}.jpg" for i in range(10_000)]
    started = time.perf_counter()
    answer = client.post(
        "/v1/explanations", json={"model_id": model_id, "images": keys}, headers=user.headers
    )
    seconds = time.perf_counter() - started
    print(f"\nPOST /v1/explanations with 10,000 items: {seconds:.3f} s")
    assert answer.status_code == 202, answer.text
    assert answer.json()["progress"]["total"] == 10_000
    assert broker.llen("gpu") == math.ceil(10_000 / 32)
    assert seconds < 10
