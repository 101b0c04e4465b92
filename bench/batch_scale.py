"""Big batches: time to 202, time until `queued`, API memory and rows, at 10k..1M images.

Set-up (not timed): the embedded stack (`xmlx.stack`: SeaweedFS as S3, Redis, the API
under uvicorn) on a private PostgreSQL from the machine's binaries when there are any
(`xmlx.embedded_postgres`), else SQLite, and ONE Celery worker on the `default` queue
only: the preparation worker. No GPU worker runs, so nothing competes with the
preparation and the chunk messages stay in Redis (emptied after each size). A tenant,
a dataset row and a `ready` model row are written straight to the database: the bench
measures acceptance and preparation, not training.

For each size N, the batch's source is made (not timed), then:

- ``--source manifest`` (default): one key-list object of N lines (``img/0000001.png``
  ...) is uploaded through a presigned URL; the batch names it with ``manifest_key``.
  The objects themselves are not created: preparation never opens images (a missing
  one fails its item when a GPU worker reaches it). This is the key-list path.
A 100-key batch first warms the preparer up (its first task connects to the database
and checks the migration), untimed. Each size waits until its chunk messages are all
in Redis (``sent_s``) before the next starts.

- ``--source prefix``: N zero-byte objects are PUT to SeaweedFS under one prefix
  (64 threads; about 600 objects/s on this machine, so 1M takes ~30 min and is left
  to ``--sizes``); the batch names the prefix, and preparation lists S3 page by page.

Measured: ``accept_s`` (POST -> 202, state `preparing`), ``ready_s`` (POST -> the job
reads `queued`, polled every 50 ms), the API's peak RSS (VmHWM of the uvicorn process,
read from /proc) and the preparation worker's, the rows inserted (items, chunks), the
latency of a results page at the start and in the middle of the job (keyset cursor),
and the cancel. Goals: 202 in < 1 s at every size, time per item flat within 1.5x
from the smallest to the largest size, API RSS growth < 200 MiB at the largest.

Usage: ``python bench/batch_scale.py [--sizes 10000,100000,1000000] [--source manifest]``;
the last line is JSON with ``accept_s``, ``ready_s``, ``api_rss_mib`` per size.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx
import redis
from sqlalchemy import func, select, text

from xmlx import repository as repo
from xmlx.db import create_engine, make_session_factory, session_scope
from xmlx.embedded_postgres import EmbeddedPostgres, postgres_bin_dir
from xmlx.models import Chunk, Item, ModelState
from xmlx.repository.pagination import encode_cursor
from xmlx.settings import DEV_API_KEY_PEPPER
from xmlx.stack import Stack, start_stack

MIB = 1024 * 1024


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--source", choices=("manifest", "prefix"), default="manifest")
    parser.add_argument("--sqlite", action="store_true", help="SQLite even if PostgreSQL runs")
    parser.add_argument("--timeout", type=float, default=900.0, help="per size, seconds")
    parser.add_argument("--root", type=Path, help="stack directory (default: a temp dir)")
    return parser.parse_args(argv)


def peak_rss_mib(pid: int) -> float:
    """VmHWM (peak resident set) of `pid` and its children, the largest, in MiB."""
    best = 0.0
    for proc in [pid, *_children(pid)]:
        try:
            status = Path(f"/proc/{proc}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmHWM:"):
                best = max(best, int(line.split()[1]) / 1024)
    return best


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        for child in task.read_text().split():
            found += [int(child), *_children(int(child))]
    return found


@contextmanager
def bench_stack(args: argparse.Namespace, root: Path) -> Iterator[tuple[Stack, str]]:
    with ExitStack() as cleanup:
        database_url = None
        if not args.sqlite and postgres_bin_dir() is not None:
            pg_dir = Path(tempfile.mkdtemp(prefix="xmlx-batch-pg-"))
            pg_dir.chmod(0o755)  # as root, the server runs as `postgres` and must enter it
            cleanup.callback(shutil.rmtree, pg_dir, ignore_errors=True)
            postgres = EmbeddedPostgres(pg_dir).start()
            cleanup.callback(postgres.kill)
            database_url = postgres.create_database("xmlx")
        stack = start_stack(root, workers=0, beat=False, database_url=database_url, echo=print)
        cleanup.callback(stack.stop)
        stack.start_worker("preparer", queues="default")
        yield stack, stack.env["XMLX_DATABASE_URL"]


def make_tenant(database_url: str) -> tuple[str, str, str]:
    """(tenant id, API key, ready model id), written straight to the database."""
    engine = create_engine(database_url)
    with session_scope(make_session_factory(engine)) as session:
        tenant = repo.create_tenant(session, f"bench-{time.time_ns()}")
        _row, key = repo.create_api_key(session, tenant.id, DEV_API_KEY_PEPPER, "bench")
        dataset = repo.create_dataset(session, tenant.id, name="d", n_images=1, n_labels=1,
                                      label_counts={"salt": 1})  # fmt: skip
        model = repo.create_model(session, tenant.id, dataset.id, params={"layer_sizes": [4]})
        artifact = f"tenants/{tenant.id}/models/{model.id}/model.zip"
        repo.transition_model(
            session, model.id, [ModelState.PENDING], ModelState.READY, artifact_key=artifact
        )
        ids = (tenant.id, key, model.id)
    engine.dispose()
    return ids


def make_source(
    stack: Stack, http: httpx.Client, tenant_id: str, n: int, source: str
) -> dict[str, str]:
    """The request's source field for a batch of `n` keys (made, not timed)."""
    if source == "manifest":
        key = f"lists/batch-{n}.txt"
        grant = http.post("/v1/uploads", json={"keys": [key], "content_type": "text/plain"})
        target = grant.json()["uploads"][0]
        body = "".join(f"img/{i:07d}.png\n" for i in range(n)).encode()
        httpx.put(
            target["url"], content=body, headers=target["headers"], timeout=300
        ).raise_for_status()
        return {"manifest_key": key}
    assert stack.s3 is not None
    import boto3

    s3 = boto3.client(
        "s3", endpoint_url=stack.s3.endpoint_url, region_name="us-east-1",
        aws_access_key_id=stack.s3.access_key, aws_secret_access_key=stack.s3.secret_key,
    )  # fmt: skip
    folder = f"tenants/{tenant_id}/uploads/p{n}/"
    with ThreadPoolExecutor(64) as pool:
        list(
            pool.map(
                lambda i: s3.put_object(Bucket="xmlx", Key=f"{folder}{i:07d}.png", Body=b""),
                range(n),
            )
        )
    return {"prefix": f"p{n}/"}


def measure(stack: Stack, http: httpx.Client, ids: tuple[str, str, str], n: int,
            args: argparse.Namespace) -> dict[str, Any]:  # fmt: skip
    tenant_id, _key, model_id = ids
    made = time.perf_counter()
    source = make_source(stack, http, tenant_id, n, args.source)
    print(f"{n}: source made in {time.perf_counter() - made:.1f} s", flush=True)
    api_pid = stack.processes["api"].pid
    worker_pid = stack.processes["preparer"].pid
    started = time.perf_counter()
    answer = http.post("/v1/explanations", json={"model_id": model_id, **source})
    accept_s = time.perf_counter() - started
    answer.raise_for_status()
    job = answer.json()
    assert job["state"] == "preparing", job
    while job["state"] == "preparing":
        if time.perf_counter() - started > args.timeout:
            raise TimeoutError(f"{n}: still preparing after {args.timeout} s")
        time.sleep(0.05)
        job = http.get(f"/v1/jobs/{job['id']}").json()
    ready_s = time.perf_counter() - started
    if job["state"] != "queued":
        raise RuntimeError(f"{n}: preparation ended {job['state']}: {job['error']}")
    row = {"size": n, "accept_s": round(accept_s, 3), "ready_s": round(ready_s, 2),
           "per_item_us": round(1e6 * ready_s / n, 1), "total": job["progress"]["total"],
           "api_rss_mib": round(peak_rss_mib(api_pid), 1),
           "worker_rss_mib": round(peak_rss_mib(worker_pid), 1)}  # fmt: skip
    row.update(db_rows(stack.env["XMLX_DATABASE_URL"], job["id"]))
    row["sent_s"] = round(wait_sent(stack, row["db_chunks"], started, args.timeout), 2)
    row.update(page_latency(http, job["id"], row.pop("mid_id")))
    started = time.perf_counter()
    cancelled = http.post(f"/v1/jobs/{job['id']}/cancel").json()
    row["cancel_s"] = round(time.perf_counter() - started, 2)
    assert cancelled["state"] == "cancelled", cancelled
    redis.Redis.from_url(stack.env["XMLX_REDIS_URL"]).delete("gpu")  # no GPU worker here
    return row


def wait_sent(stack: Stack, chunks: int, started: float, timeout: float) -> float:
    """Seconds from the POST until every chunk message is in Redis: the preparer is free
    again only then (the next size must not queue behind it)."""
    broker = redis.Redis.from_url(stack.env["XMLX_REDIS_URL"])
    while int(broker.llen("gpu")) < chunks:  # type: ignore[arg-type]
        if time.perf_counter() - started > timeout:
            raise TimeoutError(f"{chunks} chunk messages not sent after {timeout} s")
        time.sleep(0.05)
    return time.perf_counter() - started


def db_rows(database_url: str, job_id: str) -> dict[str, Any]:
    engine = create_engine(database_url)
    with engine.connect() as connection:
        items = connection.scalar(
            select(func.count()).select_from(Item).where(Item.job_id == job_id)
        )
        chunks = connection.scalar(
            select(func.count()).select_from(Chunk).where(Chunk.job_id == job_id)
        )
        mid = connection.scalar(
            select(Item.id).where(Item.job_id == job_id, Item.seq == int(items or 0) // 2)
        )
        if engine.dialect.name == "postgresql":
            connection.execute(text("ANALYZE items"))
    engine.dispose()
    return {"db_items": items, "db_chunks": chunks, "mid_id": mid}


def page_latency(
    http: httpx.Client, job_id: str, mid_id: int, repeats: int = 5
) -> dict[str, float]:
    """Median ms of a 100-item results page: the first, and one from the middle."""
    out = {}
    for name, params in (("page_first_ms", {}), ("page_mid_ms", {"cursor": encode_cursor(mid_id)})):
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            http.get(
                f"/v1/jobs/{job_id}/results", params={"limit": 100, **params}
            ).raise_for_status()
            times.append(1000 * (time.perf_counter() - started))
        out[name] = round(statistics.median(times), 1)
    return out


def summarise(
    rows: list[dict[str, Any]], baseline_mib: float, source: str, database: str
) -> dict[str, Any]:
    per_item = [row["per_item_us"] for row in rows]
    flatness = max(per_item) / min(per_item)
    growth = max(row["api_rss_mib"] for row in rows) - baseline_mib
    return {
        "source": source, "database": database,
        "sizes": [row["size"] for row in rows],
        "accept_s": [row["accept_s"] for row in rows],
        "ready_s": [row["ready_s"] for row in rows],
        "per_item_us": per_item,
        "api_rss_mib": [row["api_rss_mib"] for row in rows],
        "api_rss_baseline_mib": round(baseline_mib, 1),
        "api_rss_growth_mib": round(growth, 1),
        "worker_rss_mib": [row["worker_rss_mib"] for row in rows],
        "db_items": [row["db_items"] for row in rows],
        "page_mid_ms": [row["page_mid_ms"] for row in rows],
        "flatness": round(flatness, 2),
        "goals_met": {"accept_under_1s": max(row["accept_s"] for row in rows) < 1.0,
                      "flat_within_1_5x": flatness <= 1.5, "api_growth_under_200mib": growth < 200},
    }  # fmt: skip


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    sizes = [int(size) for size in args.sizes.split(",")]
    root = args.root or Path(tempfile.mkdtemp(prefix="xmlx-batch-scale-"))
    with bench_stack(args, root) as (stack, database_url):
        ids = make_tenant(database_url)
        headers = {"Authorization": f"Bearer {ids[1]}"}
        with httpx.Client(base_url=stack.api_url, headers=headers, timeout=120) as http:
            http.get("/v1/jobs").raise_for_status()  # the API has served a request
            measure(stack, http, ids, 100, args)  # warm-up: the preparer builds its context
            baseline = peak_rss_mib(stack.processes["api"].pid)
            rows = []
            for n in sizes:
                rows.append(measure(stack, http, ids, n, args))
                print(json.dumps(rows[-1]), flush=True)
    database = "postgresql" if database_url.startswith("postgresql") else "sqlite"
    summary = summarise(rows, baseline, args.source, database)
    print(json.dumps(summary), flush=True)
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])
