"""`kernel_shap` and `evaluate` through the service: the HTTP API accepts them (and
refuses bad values with stable codes), the worker's chunk runner explains and scores the
items with a real tiny model, and the API shows per-item AUCs and the job's means."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from tests.api_fixtures import (
    ApiUser,
    assert_problem,
    create_dataset,
    make_ready_model,
    queued_messages,
)
from workers.context import WorkerContext
from workers.runner import run_chunk
from xmlcore.datasets import generate_dishes
from xmlcore.model import train_two_step
from xmlcore.param_costs import EVALUATION_STEPS
from xmlx import repository as repo
from xmlx.db import SessionFactory, session_scope
from xmlx.report import write_report


@pytest.fixture(scope="module")
def tiny_model_zip() -> bytes:
    """A real two-step model, tiny and barely trained, as a worker loads it."""
    data = generate_dishes("tiny", seed=0, image_size=32)
    model = train_two_step(
        data.images[:16], data.label_space.subset(np.arange(16)), layer_sizes=(8, 4), epochs=1,
        ae_params={"epochs": 5}, regressor_params={"head_units": [8]}, seed=0,
    )  # fmt: skip
    return model.to_bytes()


@pytest.fixture
def ready(
    client: TestClient,
    api_user: ApiUser,
    session_factory: SessionFactory,
    tmp_path: Path,
    tiny_model_zip: bytes,
) -> tuple[str, str, list[str]]:
    """A ready model whose `model.zip` is `tiny_model_zip`, its dataset id, and the keys
    of the dataset's images."""
    dataset = create_dataset(client, api_user, tmp_path)
    model_id = make_ready_model(client, api_user, session_factory, dataset["id"])
    with session_scope(session_factory) as session:
        row = repo.get_model(session, api_user.tenant_id, model_id)
        assert row is not None and row.artifact_key
        artifact_key = row.artifact_key
    state = client.app.state.xmlx  # type: ignore[attr-defined]
    state.store.put_bytes(artifact_key, tiny_model_zip, "application/zip")
    keys = sorted(p.name for p in (tmp_path / "dishes" / "images").iterdir())
    return model_id, str(dataset["id"]), keys


def test_a_kernel_shap_job_with_evaluate_reports_aucs_per_item_and_job(
    client: TestClient,
    api_user: ApiUser,
    ready: tuple[str, str, list[str]],
    broker: Any,
    tmp_path: Path,
) -> None:
    model_id, dataset_id, keys = ready
    body = {
        "model_id": model_id, "dataset_id": dataset_id, "images": keys[:3],
        "method": "kernel_shap", "params": {"n_samples": 40, "n_segments": 12},
        "evaluate": ["deletion", "insertion"],
    }  # fmt: skip
    answer = client.post("/v1/explanations", json=body, headers=api_user.headers)
    assert answer.status_code == 202, answer.text
    job_id = answer.json()["id"]
    state = client.app.state.xmlx  # type: ignore[attr-defined]
    context = WorkerContext(state.settings, state.sessions, state.store, f"w-{uuid.uuid4().hex}")
    for _, args in queued_messages(broker):
        run_chunk(context, args[0])

    job = client.get(f"/v1/jobs/{job_id}", headers=api_user.headers).json()
    assert job["state"] == "succeeded", job
    assert job["params"]["evaluate"] == ["deletion", "insertion"]
    items = client.get(f"/v1/jobs/{job_id}/results", headers=api_user.headers).json()["items"]
    assert len(items) == 3
    deletions, insertions = [], []
    for item in items:
        result = item["result"]
        assert set(item["artifacts"]) == {"heatmap.png", "mask.png", "weights.npy"}
        explanation = result["explanations"][0]
        assert explanation["method"] == "kernel_shap"
        weights = np.array(explanation["segment_weights"])
        # efficiency: the Shapley values add up to f(x) - f(background)
        assert weights.sum() == pytest.approx(
            explanation["prediction"] - explanation["intercept"], abs=1e-4
        )
        score = explanation["faithfulness"]
        assert score["by"] == "segments" and score["steps"] == EVALUATION_STEPS
        assert score["forward_passes"] == 2 * (EVALUATION_STEPS + 2)
        assert result["faithfulness"]["forward_passes"] == score["forward_passes"]
        for name, into in (("deletion_auc", deletions), ("insertion_auc", insertions)):
            value = result["faithfulness"][name]
            if value is not None:
                assert -2 < value < 3
                into.append(value)
    # the job's means: over the items whose curve is defined
    for name, values in (("deletion_auc", deletions), ("insertion_auc", insertions)):
        if values:
            assert job["metrics"][name] == pytest.approx(float(np.mean(values)), abs=1e-5)
        else:
            assert name not in job["metrics"]
    assert insertions, "the tiny model's output should move between image and fill"
    _gallery_and_report_show_the_scores(client, api_user, job_id, tmp_path, len(insertions))


def _gallery_and_report_show_the_scores(
    client: TestClient, user: ApiUser, job_id: str, tmp_path: Path, n_defined: int
) -> None:
    client.cookies.clear()
    login = {"api_key": user.key, "next": "/ui/jobs"}
    assert client.post("/ui/login", data=login, follow_redirects=False).status_code == 303
    page = client.get(f"/ui/jobs/{job_id}").text
    client.cookies.clear()
    # the job's mean in its head, and each card's own value
    assert page.count('data-metric="insertion_auc"') == 1 + n_defined, page
    assert "Mean insertion_auc" in page
    state = client.app.state.xmlx  # type: ignore[attr-defined]
    path = tmp_path / "report.html"
    write_report(state.sessions, state.store, user.tenant_id, job_id, path)
    report = path.read_text()
    assert "mean insertion_auc" in report
    assert report.count("insertion_auc ") == 1 + n_defined


def test_a_job_without_evaluate_has_no_scores(
    client: TestClient, api_user: ApiUser, ready: tuple[str, str, list[str]], broker: Any
) -> None:
    model_id, dataset_id, keys = ready
    body = {"model_id": model_id, "dataset_id": dataset_id, "images": keys[:1],
            "method": "occlusion", "params": {"patch": 16, "stride": 16}}  # fmt: skip
    job_id = client.post("/v1/explanations", json=body, headers=api_user.headers).json()["id"]
    state = client.app.state.xmlx  # type: ignore[attr-defined]
    context = WorkerContext(state.settings, state.sessions, state.store, f"w-{uuid.uuid4().hex}")
    for _, args in queued_messages(broker):
        run_chunk(context, args[0])
    job = client.get(f"/v1/jobs/{job_id}", headers=api_user.headers).json()
    assert job["state"] == "succeeded" and "deletion_auc" not in job["metrics"]
    item = client.get(f"/v1/jobs/{job_id}/results", headers=api_user.headers).json()["items"][0]
    assert "faithfulness" not in item["result"]


BAD_VALUES = [
    ({"evaluate": ["deletion", "bogus"]}, "request.invalid"),
    ({"evaluate": ["deletion", "deletion"]}, "request.invalid"),
    ({"evaluate": "deletion"}, "request.invalid"),
    ({"method": "kernel_shap", "params": {"n_samples": 1}}, "config.bad_parameter"),
    ({"method": "kernel_shap", "params": {"n_samples": 10**6}}, "config.bad_parameter"),
    ({"method": "kernel_shap", "params": {"num_samples": 100}}, "config.bad_parameter"),
    ({"method": "kernel_shap", "params": {"segmenter": "quickshift", "n_segments": 9}},
     "config.bad_parameter"),
    ({"method": "kernel_shap", "params": {"fill": [0, 0, 300]}}, "config.bad_parameter"),
    ({"method": "kernel_shap", "params": {"n_samples": 20_000, "n_segments": 500}},
     "config.bad_parameter"),
]  # fmt: skip


def test_bad_kernel_shap_and_evaluate_values_are_refused(
    client: TestClient, api_user: ApiUser, ready: tuple[str, str, list[str]]
) -> None:
    model_id, dataset_id, keys = ready
    for change, code in BAD_VALUES:
        body = {"model_id": model_id, "dataset_id": dataset_id, "images": keys[:2], **change}
        answer = client.post("/v1/explanations", json=body, headers=api_user.headers)
        assert_problem(answer, 422, code)


def test_evaluate_counts_in_the_job_cost(
    client: TestClient, api_user: ApiUser, ready: tuple[str, str, list[str]]
) -> None:
    model_id, dataset_id, keys = ready
    base = {"model_id": model_id, "dataset_id": dataset_id,
            "images": keys[:10], "method": "kernel_shap", "params": {"n_samples": 20}}  # fmt: skip
    with session_scope(client.app.state.xmlx.sessions) as session:  # type: ignore[attr-defined]
        tenant = repo.get_tenant(session, api_user.tenant_id)
        assert tenant is not None
        # 10 images x (20 + 2) passes fit; with both curves 10 x (22 + 44) do not
        tenant.max_job_forward_passes = 10 * 22 + 100
    cheap = client.post("/v1/explanations", json=base, headers=api_user.headers)
    assert cheap.status_code == 202, cheap.text
    dear = {**base, "evaluate": ["deletion", "insertion"]}
    assert_problem(client.post("/v1/explanations", json=dear, headers=api_user.headers),
                   422, "quota.job_cost")  # fmt: skip


def test_capabilities_list_kernel_shap_and_the_evaluations(
    client: TestClient, api_user: ApiUser
) -> None:
    body = client.get("/v1/capabilities", headers=api_user.headers).json()
    methods = {m["name"]: m for m in body["methods"]}
    assert "n_samples" in methods["kernel_shap"]["params"]
    assert methods["kernel_shap"]["params_schema"]["properties"]["n_samples"]["maximum"] == 20_000
    assert body["evaluations"] == {"kinds": ["deletion", "insertion"], "steps": EVALUATION_STEPS}
    schema = client.get("/openapi.json").json()
    components = schema["components"]["schemas"]
    assert "KernelShapExplanation" in components
    evaluate = components["KernelShapExplanation"]["properties"]["evaluate"]
    assert evaluate["items"]["enum"] == ["deletion", "insertion"] and evaluate["maxItems"] == 2
