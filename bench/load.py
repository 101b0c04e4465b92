"""API load: a 10,000-item batch accepted, then many pollers (RELIABILITY.md, 11).

Starts the embedded stack without workers (uvicorn API process on a free port,
SQLite or `XMLX_DATABASE_URL`, Redis, SeaweedFS), creates a tenant and key with the
CLI, registers a small dataset and a model through the API, and marks the model
`ready` through the kernel (as a training worker's last step does: with no worker,
the 10,000 items stay queued and the pollers measure the API alone). Then:

1. POST /v1/explanations with 10,000 image keys: the request's wall time is
   `accept_10k_s` (target: under 2 s).
2. `--pollers` concurrent clients (asyncio + httpx) each GET /v1/jobs/{id} every
   `--interval` seconds (1 s is what `xmlx.client.Client.wait` does) for `--seconds`;
   latency percentiles over every request, and every non-200 or transport error
   counts as an error (target: p99 under 100 ms, no errors).
3. With `--failed N` (default 100) the first N items are then recorded failed through
   the kernel (`image.missing`, as a worker records a missing image), so every poll
   renders the job's failures by error code, and `--failed-pollers` clients (default
   40, the API's thread count) poll that job back to back, with no pause: with two
   database sessions per request, ~15 such polls in flight exhausted the default pool
   (5 + 10). `failed_*` in the JSON: requests, errors, p50/p99, the error counts seen.

The per-tenant rate limit is raised for the run (50 pollers at 1/s are 3,000
requests a minute, above the default 600). Usage:
`python bench/load.py [--pollers 50] [--seconds 60] [--interval 1.0] [--items 10000]
[--failed 100] [--failed-pollers 40] [--failed-seconds 10]`; the last line is JSON
`{accept_10k_s, pollers, requests, errors, p50_ms, p99_ms, failed_p99_ms, ...}`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from xmlx import jobs
from xmlx import repository as repo
from xmlx.client import Client
from xmlx.db import create_engine, make_session_factory, session_scope
from xmlx.demo_service import create_api_key
from xmlx.models import ModelState
from xmlx.stack import Stack, start_stack

MANIFEST = b"image,labels\na.png,salt|rice\nb.png,salt\nc.png,oil|rice\nd.png,oil\n"
LOAD_ENV = {"XMLX_RATE_LIMIT_PER_MINUTE": "1000000", "XMLX_MAX_BATCH_ITEMS": "100000"}


@dataclass
class PollStats:
    latencies_ms: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def prepare_model(stack: Stack, api_key: str) -> str:
    """A dataset registered through the API and a model that is ready to use."""
    with Client(stack.api_url, api_key) as client:
        client.upload({"load/manifest.csv": MANIFEST}, content_type="text/csv")
        dataset = client.create_dataset("load", "load/images/", "load/manifest.csv")
        created = client.train(dataset["id"], "load", layer_sizes=[2], epochs=1)
    model_id = str(created["model"]["id"])
    engine = create_engine(stack.env["XMLX_DATABASE_URL"])
    try:
        with session_scope(make_session_factory(engine)) as session:
            model = repo.get_model_unscoped(session, model_id)
            assert model is not None
            moved = repo.transition_model(
                session, model_id, [ModelState.PENDING, ModelState.TRAINING], ModelState.READY,
                artifact_key=f"tenants/{model.tenant_id}/models/{model_id}/model.zip",
                hierarchy={"layers": []}, metrics={},
            )  # fmt: skip
    finally:
        engine.dispose()
    if not moved:
        raise RuntimeError(f"model {model_id} could not be marked ready")
    return model_id


def accept_batch(stack: Stack, api_key: str, model_id: str, items: int) -> tuple[str, float]:
    """Submit `items` keys in one request; returns the job id and the request's seconds."""
    body = {"model_id": model_id, "images": [f"load/images/img_{i:06d}.png" for i in range(items)],
            "params": {"num_samples": 64}}  # fmt: skip
    headers = {"Authorization": f"Bearer {api_key}"}
    with httpx.Client(base_url=stack.api_url, headers=headers, timeout=120) as http:
        start = time.perf_counter()
        answer = http.post("/v1/explanations", json=body)
        seconds = time.perf_counter() - start
    if answer.status_code != 202:
        raise RuntimeError(f"the batch was refused: {answer.status_code} {answer.text[:500]}")
    job = answer.json()
    if job["progress"]["total"] != items:
        raise RuntimeError(f"the job holds {job['progress']['total']} items, not {items}")
    return str(job["id"]), seconds


async def _poller(
    http: httpx.AsyncClient, path: str, until: float, interval: float, stats: PollStats
) -> None:
    while time.perf_counter() < until:
        start = time.perf_counter()
        try:
            answer = await http.get(path)
            if answer.status_code != 200:
                stats.errors.append(f"{answer.status_code} {answer.text[:200]}")
        except httpx.HTTPError as exc:
            stats.errors.append(f"{type(exc).__name__}: {exc}")
        elapsed = time.perf_counter() - start
        stats.latencies_ms.append(elapsed * 1000)
        await asyncio.sleep(max(0.0, interval - elapsed))


async def poll(
    api_url: str, api_key: str, job_id: str, pollers: int, seconds: float, interval: float
) -> PollStats:
    """`pollers` concurrent clients on one connection pool, staggered over one interval."""
    stats = PollStats()
    limits = httpx.Limits(max_connections=pollers, max_keepalive_connections=pollers)
    headers = {"Authorization": f"Bearer {api_key}"}
    async with httpx.AsyncClient(base_url=api_url, headers=headers, limits=limits,
                                 timeout=30) as http:  # fmt: skip
        until = time.perf_counter() + seconds

        async def staggered(index: int) -> None:
            await asyncio.sleep(interval * index / pollers)
            await _poller(http, f"/v1/jobs/{job_id}", until, interval, stats)

        await asyncio.gather(*(staggered(i) for i in range(pollers)))
    return stats


def fail_items(stack: Stack, job_id: str, n_failed: int) -> None:
    """Record the job's first `n_failed` items failed, as a worker does for missing images."""
    engine = create_engine(stack.env["XMLX_DATABASE_URL"])
    try:
        sessions = make_session_factory(engine)
        for i in range(n_failed):
            jobs.record_item_failure(
                sessions, job_id, f"load/images/img_{i:06d}.png",
                code="image.missing", message="no such image (bench/load.py)",
            )  # fmt: skip
    finally:
        engine.dispose()


def summary(stats: PollStats, prefix: str = "") -> dict[str, Any]:
    latencies = np.asarray(stats.latencies_ms) if stats.latencies_ms else np.zeros(1)
    figures = {
        "requests": len(stats.latencies_ms),
        "errors": len(stats.errors),
        "p50_ms": round(float(np.percentile(latencies, 50)), 1),
        "p99_ms": round(float(np.percentile(latencies, 99)), 1),
        "max_ms": round(float(latencies.max()), 1),
        "first_errors": stats.errors[:3],
    }
    return {prefix + key: value for key, value in figures.items()}


def run_load(
    stack: Stack, *, items: int, pollers: int, seconds: float, interval: float,
    failed: int = 0, failed_pollers: int = 40, failed_seconds: float = 10.0,
) -> dict[str, Any]:  # fmt: skip
    api_key = create_api_key(stack, "load")
    model_id = prepare_model(stack, api_key)
    job_id, accept_seconds = accept_batch(stack, api_key, model_id, items)
    stats = asyncio.run(poll(stack.api_url, api_key, job_id, pollers, seconds, interval))
    result = {
        "accept_10k_s": round(accept_seconds, 3), "items": items, "pollers": pollers,
        "seconds": seconds, "interval_s": interval, **summary(stats),
    }  # fmt: skip
    if failed:
        result.update(
            poll_failed_job(stack, api_key, job_id, failed, failed_pollers, failed_seconds)
        )
    return result


def poll_failed_job(
    stack: Stack, api_key: str, job_id: str, failed: int, pollers: int, seconds: float
) -> dict[str, Any]:
    """Case 3: the job with `failed` failures, polled back to back by `pollers` clients."""
    fail_items(stack, job_id, failed)
    with Client(stack.api_url, api_key) as client:
        seen = client.job(job_id).raw
    stats = asyncio.run(poll(stack.api_url, api_key, job_id, pollers, seconds, 0.0))
    return {
        "failed_items": failed, "failed_pollers": pollers, "failed_seconds": seconds,
        "failed_errors_by_code": seen.get("errors_by_code", {}), **summary(stats, "failed_"),
    }  # fmt: skip


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--pollers", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between polls")
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--failed", type=int, default=100, help="items failed for case 3")
    parser.add_argument("--failed-pollers", type=int, default=40)
    parser.add_argument("--failed-seconds", type=float, default=10.0)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        stack = start_stack(Path(tmp) / "stack", workers=0, beat=False, extra_env=LOAD_ENV,
                            echo=lambda _: None)  # fmt: skip
        with stack:
            result = run_load(stack, items=args.items, pollers=args.pollers,
                              seconds=args.seconds, interval=args.interval, failed=args.failed,
                              failed_pollers=args.failed_pollers,
                              failed_seconds=args.failed_seconds)  # fmt: skip
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
