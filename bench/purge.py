"""Purge time per item at 1k, 10k and 100k items: rows and objects, a deleted job each.

Set-up (not timed): a private PostgreSQL from the machine's binaries when there are any
(`xmlx.embedded_postgres`), else SQLite, migrated; a private SeaweedFS as S3. For each
size N, a finished job of N items is written the way the API and workers write it
(`xmlx.jobs.create_job`: items and chunks in bulk; then the items marked succeeded
with their result and artifact keys in one statement), and N / `--items-per-object`
small files are PUT under the job's folder (64 threads): a real job has 2-3 files per
item, but 300,000 PUTs to a loaded 2-core machine would take the bench's whole hour,
so objects are fewer and reported beside the rows.

Timed: `xmlx.deletion.delete_job` (the DELETE's transaction) and then
`xmlx.purge.run_purge` to `done` (exactly what the worker's `xmlx.purge` task runs:
listing pages, DeleteObjects of up to 1,000 keys, items in batches of 5,000, chunks,
the job row). The per-item time is (delete + purge) / N. Goal: flat -- the ratio of
the per-item time at the largest size to the smallest <= 1.5.

Usage: ``python bench/purge.py [--sizes 1000,10000,100000] [--items-per-object 10]
[--sqlite]``; the last line is JSON with the figures per size and the ratio.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import func, select, update

from xmlx import deletion, jobs, purge
from xmlx import repository as repo
from xmlx.db import SessionFactory, create_engine, make_session_factory, session_scope, utcnow
from xmlx.embedded_postgres import EmbeddedPostgres, postgres_bin_dir
from xmlx.embedded_s3 import start_seaweedfs
from xmlx.keys import item_artifact_key
from xmlx.migrate import upgrade
from xmlx.models import Item, ItemState, Job, JobState
from xmlx.storage import ObjectStore, S3ObjectStore

TOKEN = "a1-0123abcd"


@contextmanager
def services(use_sqlite: bool, root: Path) -> Iterator[tuple[SessionFactory, ObjectStore, str]]:
    with ExitStack() as cleanup:
        database_url = f"sqlite:///{root / 'purge.sqlite'}"
        if not use_sqlite and postgres_bin_dir() is not None:
            pg_dir = Path(tempfile.mkdtemp(prefix="xmlx-purge-pg-"))
            pg_dir.chmod(0o755)  # as root, the server runs as `postgres` and must enter it
            cleanup.callback(shutil.rmtree, pg_dir, ignore_errors=True)
            postgres = EmbeddedPostgres(pg_dir).start()
            cleanup.callback(postgres.kill)
            database_url = postgres.create_database("xmlx")
        upgrade(database_url)
        engine = create_engine(database_url)
        cleanup.callback(engine.dispose)
        s3 = start_seaweedfs(root / "s3", bucket="xmlx")
        cleanup.callback(s3.stop)
        store = S3ObjectStore(
            "xmlx", endpoint_url=s3.endpoint_url, region=s3.region,
            access_key=s3.access_key, secret_key=s3.secret_key,
        )  # fmt: skip
        store.ensure_bucket()
        kind = "postgresql" if database_url.startswith("postgresql") else "sqlite"
        yield make_session_factory(engine), store, kind


def seed(
    sessions: SessionFactory, store: ObjectStore, tenant_id: str, n: int, per_object: int
) -> tuple[str, int]:
    """A succeeded job of `n` items and n / per_object files; (job id, files)."""
    keys = [f"img/{i:07d}.png" for i in range(n)]
    job_id = jobs.create_job(
        sessions, tenant_id=tenant_id, kind="predict", item_keys=keys, chunk_size=100,
        max_items=n,
    ).job.id  # fmt: skip
    paths = [item_artifact_key(tenant_id, job_id, key, "heatmap.png", TOKEN) for key in keys]
    files = paths[::per_object]
    with ThreadPoolExecutor(64) as pool:
        list(pool.map(lambda path: store.put_bytes(path, b"\x89PNG-bench"), files))
    now = utcnow()
    with session_scope(sessions) as session:
        session.execute(
            update(Item)
            .where(Item.job_id == job_id)
            .values(state=ItemState.SUCCEEDED, result={"labels": []}, finished_at=now),
            execution_options={"synchronize_session": False},
        )
        session.execute(
            update(Job)
            .where(Job.id == job_id)
            .values(state=JobState.SUCCEEDED, done=n, finished_at=now),
            execution_options={"synchronize_session": False},
        )
    return job_id, len(files)


def measure(
    sessions: SessionFactory, store: ObjectStore, n: int, per_object: int
) -> dict[str, Any]:
    with session_scope(sessions) as session:
        tenant_id = repo.create_tenant(session, f"bench-{uuid.uuid4().hex[:8]}").id
    job_id, files = seed(sessions, store, tenant_id, n, per_object)
    started = time.perf_counter()
    record = deletion.delete_job(sessions, tenant_id, job_id)
    deleted_s = time.perf_counter() - started
    outcome = purge.run_purge(sessions, store, record.id, budget_seconds=3600)
    total_s = time.perf_counter() - started
    with session_scope(sessions) as session:
        left_rows = int(session.scalar(select(func.count()).where(Item.job_id == job_id)) or 0)
        left_rows += int(session.get(Job, job_id) is not None)
    left_files = len(store.list_keys(f"tenants/{tenant_id}/"))
    assert outcome == purge.DONE and left_rows == 0 and left_files == 0, (outcome, left_rows)
    return {
        "items": n, "objects": files, "delete_s": round(deleted_s, 4),
        "purge_s": round(total_s, 3), "per_item_us": round(total_s / n * 1e6, 1),
    }  # fmt: skip


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--items-per-object", type=int, default=10)
    parser.add_argument("--sqlite", action="store_true", help="SQLite even with PostgreSQL")
    args = parser.parse_args(argv)
    sizes = [int(size) for size in args.sizes.split(",")]
    root = Path(tempfile.mkdtemp(prefix="xmlx-purge-"))
    try:
        with services(args.sqlite, root) as (sessions, store, database):
            rows = []
            for n in sizes:
                row = measure(sessions, store, n, args.items_per_object)
                print(json.dumps(row), flush=True)
                rows.append(row)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    ratio = rows[-1]["per_item_us"] / rows[0]["per_item_us"]
    summary = {
        "database": database, "sizes": rows, "items_per_object": args.items_per_object,
        "per_item_ratio": round(ratio, 3), "goal": "per_item_ratio <= 1.5",
        "goal_met": ratio <= 1.5,
    }  # fmt: skip
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
