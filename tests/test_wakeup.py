"""The worker side of fair dispatch and of leases, in process on a real database and
store: an idle wake-up ends at once, a worker that lost its lease leaves no trace, the
attempt that finishes a chunk sweeps what a killed attempt left; and the API imports
the kernel's messaging, not the workers."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.kernel_fixtures import TEST_PEPPER
from workers.artifacts import Attempt, persist, sweep
from workers.context import WorkerContext, build_context
from workers.lease import ChunkStoppedError
from workers.wakeup import run_wakeup
from xmlcore.batch import ImageReport
from xmlx import jobs, keys, migrate
from xmlx import repository as repo
from xmlx.db import session_scope, utcnow
from xmlx.settings import Settings

LEASE = 30
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def ctx(make_database_url: Any, tmp_path: Path) -> Iterator[WorkerContext]:
    """A worker context on a database of its own (claim_next sees every tenant)."""
    url = make_database_url()
    migrate.upgrade(url)
    settings = Settings(
        env="test",
        data_dir=tmp_path / "data",
        database_url=url,
        storage_backend="local",
        local_storage_root=tmp_path / "storage",
        api_key_pepper=TEST_PEPPER,
        lease_seconds=LEASE,
    )
    context = build_context(settings)
    yield context
    context.sessions.kw["bind"].dispose()


def test_the_api_depends_on_the_kernel_alone() -> None:
    code = (
        "import sys, api.app, api.broker; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'workers'))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"


def test_an_idle_wakeup_returns_at_once(ctx: WorkerContext) -> None:
    started = time.monotonic()
    assert run_wakeup(ctx, budget_seconds=30) == []
    assert time.monotonic() - started < 5


def _attempt(ctx: WorkerContext, claim: jobs.Claim, owner: str) -> Attempt:
    assert claim.job is not None
    token = keys.attempt_token(claim.attempt, owner)
    return Attempt(claim.job, jobs.LeaseRef(claim.chunk_id, owner), token, sweep=True)


def _reports(tag: bytes, item_keys: list[str]) -> list[tuple[str, ImageReport]]:
    artifacts = {"heatmap.png": tag + b"-heatmap", "mask.png": tag + b"-mask"}
    return [(key, ImageReport({"by": tag.decode()}, artifacts)) for key in item_keys]


def test_a_worker_that_lost_its_lease_leaves_no_trace(ctx: WorkerContext) -> None:
    with session_scope(ctx.sessions) as session:
        tenant_id = repo.create_tenant(session, "t").id
    item_keys = ["a.png", "b.png"]
    created = jobs.create_job(
        ctx.sessions, tenant_id=tenant_id, kind="explain", item_keys=item_keys, chunk_size=2
    )
    claim = {"stale": None, "winner": None}
    later = utcnow() + timedelta(seconds=LEASE + 1)
    for owner, now in (("stale", None), ("winner", later)):
        claim[owner] = jobs.claim_next(
            ctx.sessions, owner, lease_seconds=LEASE, max_attempts=3, max_retries=3, now=now
        )
    stale, winner = _attempt(ctx, claim["stale"], "stale"), _attempt(ctx, claim["winner"], "winner")
    # A killed attempt left a file in the item's folder before the winner ran.
    leftover = keys.item_artifact_key(tenant_id, created.job.id, "a.png", "mask.png", "a9-00000000")
    ctx.store.put_bytes(leftover, b"killed", "image/png")
    persist(ctx, winner, _reports(b"winner", item_keys), {}, list(item_keys))
    with pytest.raises(ChunkStoppedError):  # the stale worker wakes up and writes late
        persist(ctx, stale, _reports(b"stale", item_keys), {}, list(item_keys))
    sweep(ctx, winner)
    jobs.complete_chunk(ctx.sessions, winner.lease.chunk_id, "winner")
    job = jobs.get_job(ctx.sessions, tenant_id, created.job.id)
    assert (job.state, job.done, job.duplicates) == ("succeeded", 2, 0)
    stored = set(ctx.store.list_keys(keys.job_prefix(tenant_id, created.job.id)))
    recorded: set[str] = set()
    with session_scope(ctx.sessions) as session:
        for key in item_keys:
            item = repo.get_item(session, tenant_id, created.job.id, key)
            assert item is not None and item.result == {"by": "winner"}
            recorded |= set(item.artifacts.values())
            for name, storage_key in item.artifacts.items():
                expected = b"winner-" + name.split(".")[0].encode()
                assert ctx.store.get_bytes(storage_key) == expected
    assert stored == recorded and len(stored) == 4
