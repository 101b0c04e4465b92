"""Scenarios 8, 9 and 12 (RELIABILITY.md) through the real HTTP API of a running stack.

8. Idempotency-Key: a replay returns the same job (also when the replays race); another
   body under the same key is 422 `idempotency.conflict`.
9. Tenant isolation: another tenant's job, results, export, cancel, model, hierarchy
   and dataset answer 404; no key, a malformed or an unknown key answer 401; presigned
   URLs are bound to their key and signature, and SeaweedFS refuses them once their
   `X-Amz-Expires` has passed (a second API process signs with a 1 s expiry).
12. Per-tenant rate limit: a second API process with `XMLX_RATE_LIMIT_PER_MINUTE`
   small; one tenant over it gets 429 with `Retry-After`, another is not slowed.
"""

from __future__ import annotations

import statistics
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest

from tests.bad_inputs import TrainedStack, shared_trained_stack
from xmlx.demo_service import create_api_key
from xmlx.embedded_redis import free_port
from xmlx.stack import Stack

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

RATE_LIMIT = 20
EXPLAIN_PARAMS = {"num_samples": 16, "n_segments": 8}


@pytest.fixture(scope="session")
def trained_stack(request: pytest.FixtureRequest) -> TrainedStack:
    return shared_trained_stack(request)


@pytest.fixture(scope="module")
def finished_job(trained_stack: TrainedStack) -> dict[str, Any]:
    """A finished explanation job of tenant A, with artifacts."""
    ts = trained_stack
    with ts.client() as client:
        job = client.explain(
            ts.model_id, ts.image_keys[:2], dataset_id=ts.dataset_id, params=EXPLAIN_PARAMS
        )
        final = client.wait(job.id, timeout=180, poll=0.5)
    assert final.state == "succeeded", final.raw
    return final.raw


@pytest.fixture(scope="module")
def other_tenant(trained_stack: TrainedStack) -> str:
    return create_api_key(trained_stack.stack, "tenant-b")


def _headers(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _problem(answer: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = answer.json()
    assert body["code"] == code, body
    return body


def _batch(ts: TrainedStack, keys: list[str]) -> dict[str, Any]:
    return {"model_id": ts.model_id, "dataset_id": ts.dataset_id, "images": keys,
            "params": EXPLAIN_PARAMS}  # fmt: skip


# ------------------------------------------------------------- 8: idempotency


def test_idempotency_key_replays_the_same_job(trained_stack: TrainedStack) -> None:
    ts = trained_stack
    key = f"retry-{uuid.uuid4().hex}"
    body = _batch(ts, ts.image_keys[10:12])
    with ts.client() as client:
        before = {
            j["id"] for j in client.request("GET", "/v1/jobs", params={"limit": 1000})["items"]
        }
        first = client.http.post("/v1/explanations", json=body, headers={"Idempotency-Key": key})
        assert first.status_code == 202, first.text
        reordered = dict(reversed(list(body.items())))  # same body, other field order
        again = client.http.post(
            "/v1/explanations", json=reordered, headers={"Idempotency-Key": key}
        )
        assert again.status_code in (200, 202), again.text
        assert again.json()["id"] == first.json()["id"]
        assert again.headers.get("Idempotent-Replayed") == "true"

        other = _batch(ts, ts.image_keys[12:14])
        clash = client.http.post("/v1/explanations", json=other, headers={"Idempotency-Key": key})
        _problem(clash, 422, "idempotency.conflict")
        after = {
            j["id"] for j in client.request("GET", "/v1/jobs", params={"limit": 1000})["items"]
        }
    assert after - before == {first.json()["id"]}


def test_racing_replays_create_one_job(trained_stack: TrainedStack) -> None:
    ts = trained_stack
    key = f"race-{uuid.uuid4().hex}"
    body = _batch(ts, ts.image_keys[14:16])
    headers = {**_headers(ts.api_key), "Idempotency-Key": key}

    def post(_: int) -> httpx.Response:
        return httpx.post(f"{ts.stack.api_url}/v1/explanations", json=body, headers=headers,
                          timeout=60)  # fmt: skip

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(post, range(8)))
    assert all(a.status_code in (200, 202) for a in answers), [a.text for a in answers]
    assert len({a.json()["id"] for a in answers}) == 1


def test_dataset_idempotency_key(trained_stack: TrainedStack) -> None:
    ts = trained_stack
    key = f"ds-{uuid.uuid4().hex}"
    body = {
        "name": "again",
        "images_prefix": "dishes/images/",
        "manifest_key": "dishes/manifest.csv",
    }
    with ts.client() as client:
        first = client.http.post("/v1/datasets", json=body, headers={"Idempotency-Key": key})
        again = client.http.post("/v1/datasets", json=body, headers={"Idempotency-Key": key})
        assert first.status_code == 201 and again.status_code in (200, 201), again.text
        assert again.json()["id"] == first.json()["id"]
        renamed = {**body, "name": "other"}
        clash = client.http.post("/v1/datasets", json=renamed, headers={"Idempotency-Key": key})
    _problem(clash, 422, "idempotency.conflict")


# --------------------------------------------------------- 9: tenant isolation


def test_another_tenants_job_model_and_dataset_are_404(
    trained_stack: TrainedStack, finished_job: dict[str, Any], other_tenant: str
) -> None:
    ts = trained_stack
    job_id = finished_job["id"]
    url = ts.stack.api_url
    with httpx.Client(base_url=url, headers=_headers(other_tenant), timeout=30) as tenant_b:
        for path, code in [
            (f"/v1/jobs/{job_id}", "job.not_found"),
            (f"/v1/jobs/{job_id}/results", "job.not_found"),
            (f"/v1/jobs/{job_id}/results.jsonl", "job.not_found"),
            (f"/v1/models/{ts.model_id}", "model.not_found"),
            (f"/v1/models/{ts.model_id}/hierarchy", "model.not_found"),
            (f"/v1/datasets/{ts.dataset_id}", "dataset.not_found"),
        ]:
            _problem(tenant_b.get(path), 404, code)
        _problem(tenant_b.post(f"/v1/jobs/{job_id}/cancel"), 404, "job.not_found")
        _problem(tenant_b.post("/v1/explanations", json=_batch(ts, ["x.png"])), 404,
                 "model.not_found")  # fmt: skip
        assert tenant_b.get("/v1/jobs").json()["items"] == []
    with ts.client() as client:  # tenant A still sees its job, untouched
        assert client.job(job_id).state == "succeeded"


def test_missing_malformed_or_unknown_keys_are_401(trained_stack: TrainedStack) -> None:
    url = f"{trained_stack.stack.api_url}/v1/jobs"
    forged = "xmlx_" + "a" * 12 + "_" + "b" * 43  # well formed, never issued
    for headers in (
        {},
        {"Authorization": "Bearer"},
        {"Authorization": "Bearer not-a-key"},
        {"Authorization": f"Bearer {forged}"},
        {"Authorization": f"Bearer {trained_stack.api_key}x"},
        {"Authorization": f"Basic {trained_stack.api_key}"},
    ):
        answer = httpx.get(url, headers=headers, timeout=30)
        _problem(answer, 401, "auth.invalid")
        assert answer.headers["WWW-Authenticate"].startswith("Bearer")


def _with_path(url: str, path: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=path))


def test_presigned_urls_are_bound_to_their_key(
    trained_stack: TrainedStack, finished_job: dict[str, Any], other_tenant: str
) -> None:
    ts = trained_stack
    with ts.client() as client:
        item = next(client.iter_results(finished_job["id"]))
    heatmap = item.artifacts["heatmap.png"]
    assert httpx.get(heatmap, timeout=30).status_code == 200
    mask_path = urlsplit(item.artifacts["mask.png"]).path
    swapped = _with_path(heatmap, mask_path)  # the heatmap's signature on another key
    assert httpx.get(swapped, timeout=30).status_code == 403
    assert httpx.get(heatmap.split("?")[0], timeout=30).status_code == 403  # unsigned
    # Tenant B's upload URL pointed at tenant A's folder is refused by the store.
    with httpx.Client(base_url=ts.stack.api_url, headers=_headers(other_tenant)) as tenant_b:
        grant = tenant_b.post("/v1/uploads", json={"keys": ["x.png"], "content_type": "image/png"})
    put_url = grant.json()["uploads"][0]["url"]
    a_prefix = urlsplit(heatmap).path.split("/jobs/")[0]
    hijack = _with_path(put_url, f"{a_prefix}/uploads/dishes/images/{ts.image_keys[0]}")
    answer = httpx.put(hijack, content=b"overwrite", headers={"Content-Type": "image/png"})
    assert answer.status_code == 403, answer.text


@pytest.fixture(scope="module")
def second_api(trained_stack: TrainedStack, request: pytest.FixtureRequest) -> Iterator[Any]:
    """A factory of extra API processes on the same stack with other settings."""
    started: list[Stack] = []

    def start(**env: str) -> str:
        port = free_port()
        extra = Stack(trained_stack.stack.root, {**trained_stack.stack.env, **env},
                      f"http://127.0.0.1:{port}")  # fmt: skip
        started.append(extra)
        extra.start_api(port)
        return extra.api_url

    yield start
    for extra in started:
        extra.stop()


def test_an_expired_presigned_url_is_refused(
    trained_stack: TrainedStack, finished_job: dict[str, Any], second_api: Any
) -> None:
    ts = trained_stack
    api_url = second_api(XMLX_PRESIGN_EXPIRY_SECONDS="1")
    with httpx.Client(base_url=api_url, headers=_headers(ts.api_key), timeout=30) as client:
        page = client.get(f"/v1/jobs/{finished_job['id']}/results").json()
        grant = client.post("/v1/uploads", json={"keys": ["late.png"], "content_type": "image/png"})
    url = page["items"][0]["artifacts"]["heatmap.png"]
    assert "X-Amz-Expires=1&" in url
    put_url = grant.json()["uploads"][0]["url"]
    time.sleep(2.5)
    expired = httpx.get(url, timeout=30)
    assert expired.status_code == 403 and "expired" in expired.text.lower(), expired.text
    late_put = httpx.put(put_url, content=b"x", headers={"Content-Type": "image/png"})
    assert late_put.status_code == 403 and "expired" in late_put.text.lower(), late_put.text


# ---------------------------------------------------------------- 12: rate limit


def _wait_for_fresh_window(margin: float = 8.0) -> None:
    """The limiter counts per wall-clock minute: start well inside one."""
    left = 60 - time.time() % 60
    if left < margin:
        time.sleep(left + 0.2)


def test_rate_limit_is_per_tenant(trained_stack: TrainedStack, second_api: Any) -> None:
    api_url = second_api(XMLX_RATE_LIMIT_PER_MINUTE=str(RATE_LIMIT))
    noisy = create_api_key(trained_stack.stack, f"noisy-{uuid.uuid4().hex[:8]}")
    quiet = create_api_key(trained_stack.stack, f"quiet-{uuid.uuid4().hex[:8]}")
    with (
        httpx.Client(base_url=api_url, headers=_headers(noisy), timeout=30) as noisy_client,
        httpx.Client(base_url=api_url, headers=_headers(quiet), timeout=30) as quiet_client,
    ):
        _wait_for_fresh_window()
        baseline = _timed(quiet_client, 5)
        statuses = [noisy_client.get("/v1/jobs").status_code for _ in range(RATE_LIMIT)]
        assert statuses == [200] * RATE_LIMIT
        limited = noisy_client.get("/v1/jobs")
        _problem(limited, 429, "rate.limited")
        assert 1 <= int(limited.headers["Retry-After"]) <= 60
        assert limited.headers["X-RateLimit-Limit"] == str(RATE_LIMIT)

        stop = threading.Event()
        flood: list[int] = []

        def hammer() -> None:
            with httpx.Client(base_url=api_url, headers=_headers(noisy), timeout=30) as own:
                while not stop.is_set():
                    flood.append(own.get("/v1/jobs").status_code)

        threads = [threading.Thread(target=hammer) for _ in range(2)]
        for thread in threads:
            thread.start()
        try:
            deadline = time.monotonic() + 10
            while len(flood) < 10 and time.monotonic() < deadline:
                time.sleep(0.01)
            during = _timed(quiet_client, RATE_LIMIT - 6)
        finally:
            stop.set()
            for thread in threads:
                thread.join()
    assert len(flood) >= 10 and set(flood) == {429}, flood
    print(f"quiet tenant p50 {statistics.median(baseline):.1f} ms before, "
          f"{statistics.median(during):.1f} ms while the noisy one was refused "
          f"({len(flood)} refusals)")  # fmt: skip
    assert statistics.median(during) < max(5 * statistics.median(baseline), 250.0)


def _timed(client: httpx.Client, n: int) -> list[float]:
    """Latencies (ms) of `n` requests that must all succeed."""
    latencies = []
    for _ in range(n):
        start = time.perf_counter()
        answer = client.get("/v1/jobs")
        latencies.append((time.perf_counter() - start) * 1000)
        assert answer.status_code == 200, answer.text
    return latencies
