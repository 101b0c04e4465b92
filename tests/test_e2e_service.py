"""End to end: a real API process, a real worker process, SeaweedFS, Redis, the database.

Train through the API, explain 20 images, poll to ``succeeded``, read the results and
fetch one heatmap PNG through its presigned URL. Then observe a job: the worker's
metrics endpoint (multiprocess mode) scraped while it runs, and its request id in the
worker's JSON log lines.
"""

from __future__ import annotations

import io
import json
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console

from tests.service_fixtures import running_stack
from xmlx.demo_service import DemoConfig, DemoOutcome, drive_demo
from xmlx.embedded_redis import free_port
from xmlx.stack import Stack

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


METRICS_PORT = free_port()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("e2e")
    observed = {
        "PROMETHEUS_MULTIPROC_DIR": str(root / "metrics"),
        "XMLX_WORKER_METRICS_PORT": str(METRICS_PORT),
        "XMLX_LOG_FORMAT": "json",
    }
    (root / "metrics").mkdir()
    yield from running_stack(root, extra_env=observed)


@pytest.fixture(scope="module")
def demo(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> tuple[DemoOutcome, Path]:
    config = DemoConfig(
        preset="tiny", epochs=2, n_explained=20, num_samples=64, image_size=32, wait_timeout=300
    )
    out = tmp_path_factory.mktemp("demo")
    return drive_demo(stack, out, config, Console(file=io.StringIO())), out


def test_train_explain_and_fetch_a_heatmap(demo: tuple[DemoOutcome, Path]) -> None:
    outcome, tmp_path = demo
    assert outcome.train_job.state == "succeeded"
    assert outcome.model["state"] == "ready"
    assert set(outcome.model["metrics"]) >= {"p@1", "p@5", "psp@5"}
    # no layer_sizes given: the worker's model records how its code size was chosen
    metrics = outcome.model["metrics"]
    assert metrics["code_size_chosen"] == 1.0 and 0 < metrics["decoder_ceiling"] <= 1
    assert metrics["decoder_ceiling_best"] - metrics["decoder_ceiling"] <= 0.01
    assert outcome.explain_job.state == "succeeded", outcome.explain_job.raw
    assert outcome.explain_job.done == 20 and outcome.explain_job.failed == 0
    assert len(outcome.results) == 20
    first = outcome.results[0]
    assert first.state == "succeeded" and len(first.top_labels) == 5
    assert first.result is not None and first.result["explanations"]
    assert set(first.artifacts) == {"heatmap.png", "mask.png", "weights.npy"}
    response = httpx.get(first.artifacts["heatmap.png"], timeout=30)
    assert response.status_code == 200
    picture = Image.open(io.BytesIO(response.content))
    assert picture.format == "PNG" and picture.size[0] >= 32
    assert len(outcome.artifacts) == 40  # heatmap + mask for each of the 20 images
    report = (tmp_path / "report.html").read_text()
    assert report.count("data:image/png;base64,") >= 40 and "http://" not in report


def _scrape() -> dict[str, float]:
    """Sum of each worker sample (by name and its kind/state labels) on the exporter."""
    text = httpx.get(f"http://127.0.0.1:{METRICS_PORT}/metrics", timeout=5).text
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = [sample.labels[k] for k in ("kind", "state") if k in sample.labels]
            name = ":".join([sample.name, *labels])
            found[name] = found.get(name, 0.0) + sample.value
    return found


def test_a_job_moves_the_worker_metrics_and_its_request_id_reaches_the_worker_logs(
    stack: Stack, demo: tuple[DemoOutcome, Path]
) -> None:
    outcome, out = demo
    headers = {"Authorization": f"Bearer {(out / 'api-key.txt').read_text().strip()}"}
    request_id = f"e2e-{uuid.uuid4().hex[:12]}"
    api = httpx.Client(base_url=stack.api_url, headers=headers, timeout=30)
    dataset_id = api.get("/v1/datasets").json()["items"][0]["id"]
    before = _scrape()
    scrapes: list[dict[str, float]] = []
    stop = threading.Event()

    def keep_scraping() -> None:
        while not stop.wait(0.2):
            scrapes.append(_scrape())

    scraper = threading.Thread(target=keep_scraping, daemon=True)
    scraper.start()
    body = {
        "model_id": outcome.model["id"], "dataset_id": dataset_id,
        "images": [result.key for result in outcome.results[:8]],
        "params": {"num_samples": 32},
    }  # fmt: skip
    answer = api.post("/v1/explanations", json=body, headers={"X-Request-ID": request_id})
    assert answer.status_code == 202, answer.text
    assert answer.headers["X-Request-ID"] == request_id
    job_id = answer.json()["id"]
    deadline = time.monotonic() + 120
    while api.get(f"/v1/jobs/{job_id}").json()["state"] != "succeeded":
        assert time.monotonic() < deadline, "the job did not finish"
        time.sleep(0.2)
    time.sleep(0.5)
    stop.set()
    scraper.join()
    after = _scrape()

    done = "xmlx_worker_items_total:explain:succeeded"
    assert before[done] == 20 and after[done] == 28, (before, after)
    assert [s.get(done, 0) for s in scrapes] == sorted(s.get(done, 0) for s in scrapes)
    passes = "xmlx_worker_forward_passes_total:explain"
    assert after[passes] - before[passes] == 8 * 33  # 32 samples + the prediction, per image
    for counted in (
        "xmlx_worker_batch_seconds_count:explain",
        "xmlx_worker_queue_wait_seconds_count",
    ):
        assert after[counted] > before[counted], counted

    lines = stack.log_path("worker1").read_text().splitlines()
    records = [json.loads(line) for line in lines if line.startswith("{")]
    ours = [r for r in records if r.get("request_id") == request_id]
    assert {"chunk claimed", "chunk finished"} <= {r["message"] for r in ours}, ours
    assert all(r.get("job_id", job_id) == job_id for r in ours)
