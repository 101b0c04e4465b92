"""End to end: a real API process, a real worker process, SeaweedFS, Redis, the database.

Train through the API, explain 20 images, poll to ``succeeded``, read the results and
fetch one heatmap PNG through its presigned URL.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image
from rich.console import Console

from tests.service_fixtures import running_stack
from xmlx.demo_service import DemoConfig, drive_demo
from xmlx.stack import Stack

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    yield from running_stack(tmp_path_factory.mktemp("e2e"))


def test_train_explain_and_fetch_a_heatmap(stack: Stack, tmp_path: Path) -> None:
    config = DemoConfig(
        preset="tiny", epochs=2, n_explained=20, num_samples=64, image_size=32, wait_timeout=300
    )
    outcome = drive_demo(stack, tmp_path, config, Console(file=io.StringIO()))

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
