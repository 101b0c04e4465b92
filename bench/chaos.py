"""Chaos bench: the service under faults, with real processes (scenarios 1-5, 7, 14, 15, 17).

One private stack serves every scenario: PostgreSQL (`xmlx.embedded_postgres`, SQLite
when the machine has no PostgreSQL binaries; scenario 5 then skips), Redis
(`EmbeddedRedis`), SeaweedFS, the API, two Celery workers and beat, all on private
ports and directories, so the faults below never touch a server someone else runs. A
tiny model is trained once through the API; every scenario then submits its own batch,
injects its fault, waits for the job to end and checks the database and the bucket:

1. worker killed: SIGKILL a worker (its whole process group; the two in turn) N times and
   restart it; every item has one result and one artifact set, the job succeeds within
   the fault-free run time + one lease + 60 s.
2. broker loss: Redis killed and restarted EMPTY mid-batch; the reconciler resends.
3. duplicate delivery: while chunks run, their unacked messages are put back in the
   queue (kombu's own visibility-timeout restore, with a 1 s timeout) and every chunk
   is sent once more; one result per item, the duplicates counted in the job JSON.
4. storage outage: SeaweedFS stopped for N s mid-batch (same data, same S3 port); no
   item fails, the job succeeds.
5. database restart: PostgreSQL crashed (immediate shutdown) and restarted mid-batch;
   API and workers recover, no recorded progress is lost.
7. cancel: a large explanation job cancelled mid-way is `cancelled` within 30 s + one
   chunk, nothing starts after the cancel, finished results are kept.
14. stopped worker: a worker is SIGSTOPped mid-batch and kept stopped past its lease;
    the other worker takes the chunk over and the job succeeds; then the first is
    SIGCONTed and finishes its stale batch. Its writes must count for nothing: every
    item has one result, the artifacts the rows name are byte for byte those stored
    when the job finished, no item recorded while it was stopped names its files, and
    no file of its own is left in the bucket.
15. training worker killed: SIGKILL the worker training a model during CNN epoch k of
    E; the job resumes from the checkpoint on a worker and succeeds, at most E + 1 CNN
    epochs are trained in all (per-attempt epoch lines in the workers' logs), and the
    held-out P@1/P@3 are within seed noise of uninterrupted runs
    (`bench/chaos_training.py`).
17. outages under load: the database, Redis and S3 each stopped while pollers run;
    every answer is counted: 503 with Retry-After while down, zero 500s, 200s again
    once back (`bench/chaos_outages.py`, which also runs alone without training).

Usage: ``python bench/chaos.py [--scenario N ...] [--quick] [--root DIR] [--allow-skips]``.
One JSON line per scenario (`scenario`, `items`, `results`, `duplicates`, `lost`,
`final_state`, `seconds`, `passed`, `outcome`, ...). A scenario that cannot run here
(5 without PostgreSQL binaries) reports `"outcome": "skipped"` with the reason and
`"passed": false`: a skip is not a pass. The exit code is 1 if any pass criterion fails
or any scenario skipped, unless `--allow-skips` accepts the skips.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import sqlalchemy as sa  # noqa: E402

from xmlx import orphans  # noqa: E402
from xmlx.client import ApiError, Client  # noqa: E402
from xmlx.db import UTCDateTime, make_session_factory  # noqa: E402
from xmlx.embedded_postgres import EmbeddedPostgres, postgres_bin_dir, session_members  # noqa: E402
from xmlx.embedded_redis import EmbeddedRedis  # noqa: E402
from xmlx.embedded_s3 import start_seaweedfs  # noqa: E402
from xmlx.stack import BUCKET, Stack, start_stack  # noqa: E402
from xmlx.storage import S3ObjectStore  # noqa: E402

if str(ROOT / "bench") not in sys.path:
    sys.path.insert(0, str(ROOT / "bench"))
from chaos_outages import OutageSizes, outages_under_load  # noqa: E402
from chaos_training import TrainingSizes, training_killed  # noqa: E402

WORKERS = ("worker1", "worker2")
LEASE_SECONDS = 10
SERVICE_ENV = {
    "XMLX_LEASE_SECONDS": str(LEASE_SECONDS),
    "XMLX_RECONCILE_INTERVAL_SECONDS": "2",
    "XMLX_RECONCILE_GRACE_SECONDS": "5",
    "XMLX_CHUNK_SIZE": "10",
    "XMLX_IMAGES_PER_BATCH": "5",
    "XMLX_TASK_SOFT_TIME_LIMIT_SECONDS": "240",
    "XMLX_TASK_HARD_TIME_LIMIT_SECONDS": "300",
    "XMLX_VISIBILITY_TIMEOUT_SECONDS": "600",
    "XMLX_MAX_BATCH_ITEMS": "5000",
    "XMLX_RATE_LIMIT_PER_MINUTE": "100000",
    # Scenario 14 stops a worker that may be inside a transaction holding the job's row
    # lock: the server ends such a session after this (the default is 120 s).
    "XMLX_DATABASE_IDLE_TRANSACTION_TIMEOUT_SECONDS": "15",
}
EXPLAIN = {"method": "lime", "target": {"kind": "top_k", "k": 1}}
ARTIFACTS_PER_ITEM = 3
Predicate = Callable[[dict[str, Any]], bool]  # heatmap.png, mask.png, weights.npy


@dataclass(frozen=True)
class Sizes:
    kill_items: int = 200
    kills: int = 5
    broker_items: int = 200
    duplicate_items: int = 100
    storage_items: int = 200
    outage_seconds: float = 30.0
    database_items: int = 200
    database_down_seconds: float = 5.0
    cancel_items: int = 2000
    num_samples: int = 256  # LIME samples per item: sets how long a batch runs
    cancel_num_samples: int = 32
    stopped_items: int = 100
    training: TrainingSizes = field(default_factory=TrainingSizes)
    outages: OutageSizes = field(default_factory=OutageSizes)

    @classmethod
    def quick(cls) -> Sizes:
        return cls(60, 2, 60, 40, 60, 10.0, 40, 3.0, 400, stopped_items=40,
                   training=TrainingSizes.quick(), outages=OutageSizes.quick())  # fmt: skip


@dataclass
class Chaos:
    """The running stack and everything a scenario needs to hurt it and to check it."""

    stack: Stack
    redis: EmbeddedRedis
    postgres: EmbeddedPostgres | None
    client: Client
    engine: sa.Engine
    model_id: str
    image_keys: list[str]
    sizes: Sizes
    baseline_seconds: dict[int, float] = field(default_factory=dict)

    def explain(self, n_items: int, num_samples: int | None = None) -> str:
        params = {"num_samples": num_samples or self.sizes.num_samples, "n_segments": 16}
        body = {"model_id": self.model_id, "images": self.image_keys[:n_items], **EXPLAIN}
        body["params"] = params
        return str(self.client.request("POST", "/v1/explanations", json=body)["id"])

    def job(self, job_id: str) -> dict[str, Any]:
        return dict(self.client.request("GET", f"/v1/jobs/{job_id}"))

    def wait(self, job_id: str, timeout: float, until: Predicate | None = None) -> dict[str, Any]:
        """Poll the API until the job is final (or `until` holds); API errors (a database
        restart) are retried, not fatal."""
        deadline = time.monotonic() + timeout
        body: dict[str, Any] = {}
        while time.monotonic() < deadline:
            try:
                body = self.job(job_id)
            except (ApiError, OSError, ValueError):
                time.sleep(0.5)
                continue
            if (until or _is_final)(body):
                return body
            time.sleep(0.5)
        return body

    def kill_worker(self, name: str) -> None:
        """SIGKILL the worker's whole process group (main process and pool child)."""
        process = self.stack.processes[name]
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)

    def worker_owners(self, name: str) -> set[str]:
        """Lease owner names (`host:pid`) the worker's processes use."""
        host = os.uname().nodename
        return {f"{host}:{pid}" for pid in session_members(self.stack.processes[name].pid)}

    def signal_worker(self, name: str, signum: int) -> None:
        os.killpg(self.stack.processes[name].pid, signum)

    def holds_lease(self, name: str) -> bool:
        owners = self.worker_owners(name)
        with self.engine.connect() as connection:
            rows = connection.execute(
                sa.text("SELECT lease_owner FROM chunks WHERE state = 'leased'")
            ).scalars()
            return any(owner in owners for owner in rows)


def _is_final(body: dict[str, Any]) -> bool:
    return body.get("state") in {
        "succeeded", "partially_succeeded", "failed", "cancelled"
    }  # fmt: skip


def audit(chaos: Chaos, job_id: str, body: dict[str, Any]) -> dict[str, Any]:
    """What the database and the bucket hold for the job, next to what the API says."""
    with chaos.engine.connect() as connection:
        rows = connection.execute(
            sa.text("SELECT item_key, state, artifacts FROM items WHERE job_id = :j"),
            {"j": job_id},
        ).all()
        tenant = connection.execute(
            sa.text("SELECT tenant_id FROM jobs WHERE id = :j"), {"j": job_id}
        ).scalar_one()
    states = [row.state for row in rows]
    referenced = {key for row in rows for key in _as_dict(row.artifacts).values()}
    stored = set(_list_keys(chaos, f"tenants/{tenant}/jobs/{job_id}/items/"))
    succeeded = states.count("succeeded")
    return {
        "items": len(rows),
        "distinct_items": len({row.item_key for row in rows}),
        "results": succeeded,
        "failed": states.count("failed"),
        "pending": states.count("pending"),
        "cancelled": states.count("cancelled"),
        "duplicates": body.get("duplicates"),
        "lost": len(rows) - succeeded,
        "final_state": body.get("state"),
        "api_done": body.get("progress", {}).get("done"),
        "artifacts": len(stored),
        "artifacts_ok": referenced == stored and len(stored) == succeeded * ARTIFACTS_PER_ITEM,
        # every file a result names is there (the results are whole), whatever else is
        "named_artifacts_ok": referenced <= stored
        and len(referenced) == succeeded * ARTIFACTS_PER_ITEM,
        "orphan_artifacts": len(stored - referenced),
    }


def _as_dict(value: Any) -> dict[str, str]:
    return json.loads(value) if isinstance(value, str) else dict(value or {})


def _list_keys(chaos: Chaos, prefix: str) -> list[str]:
    assert chaos.stack.s3 is not None
    pages = chaos.stack.s3.client().get_paginator("list_objects_v2")
    return [
        entry["Key"]
        for page in pages.paginate(Bucket=BUCKET, Prefix=prefix)
        for entry in page.get("Contents", [])
    ]


def _exactly_once(report: dict[str, Any]) -> bool:
    return bool(
        report["final_state"] == "succeeded"
        and report["results"] == report["items"] == report["distinct_items"]
        and report["api_done"] == report["items"]
        and report["artifacts_ok"]
    )


def _until_done(fraction: float, total: int) -> Predicate:
    return lambda body: _is_final(body) or _done(body) >= fraction * total


def _done(body: dict[str, Any]) -> int:
    return int(body.get("progress", {}).get("done", 0))


def _run_batch(chaos: Chaos, n_items: int) -> tuple[str, float, dict[str, Any]]:
    started = time.monotonic()
    job_id = chaos.explain(n_items)
    body = chaos.wait(job_id, 900)
    return job_id, time.monotonic() - started, body


def worker_killed(chaos: Chaos) -> dict[str, Any]:
    """1. SIGKILL a worker N times during a batch, restarting it each time."""
    n, kills = chaos.sizes.kill_items, 0
    _, baseline, _ = _run_batch(chaos, n)
    started = time.monotonic()
    job_id = chaos.explain(n)
    while kills < chaos.sizes.kills and not _is_final(chaos.job(job_id)):
        # Alternate (the worker just restarted is still warming up) but take the other
        # one when it is the one working: a fast batch can end while the preferred
        # victim holds nothing, and the scenario would then stop short of its kills.
        order = WORKERS[kills % len(WORKERS) :] + WORKERS[: kills % len(WORKERS)]
        victim = next((name for name in order if chaos.holds_lease(name)), None)
        if victim is None:
            time.sleep(0.2)
            continue
        time.sleep(0.5)  # mid-chunk, not at its first item
        chaos.kill_worker(victim)
        kills += 1
        chaos.stack.start_worker(victim)
    limit = baseline + LEASE_SECONDS + 60
    body = chaos.wait(job_id, limit + 300)
    seconds = time.monotonic() - started
    report = audit(chaos, job_id, body)
    passed = _exactly_once(report) and kills == chaos.sizes.kills and seconds <= limit
    return {"scenario": 1, **report, "seconds": round(seconds, 1), "kills": kills,
            "baseline_seconds": round(baseline, 1), "limit_seconds": round(limit, 1),
            "passed": passed}  # fmt: skip


def broker_lost(chaos: Chaos) -> dict[str, Any]:
    """2. Kill Redis mid-batch and start it again empty: the reconciler resends."""
    import redis

    n = chaos.sizes.broker_items
    started = time.monotonic()
    job_id = chaos.explain(n)
    chaos.wait(job_id, 600, _until_done(0.25, n))
    queued = redis.Redis.from_url(chaos.redis.url).llen("gpu")
    chaos.redis.kill()
    chaos.redis.start()
    empty_after_restart = redis.Redis.from_url(chaos.redis.url).llen("gpu") == 0
    lost_at = time.monotonic()
    body = chaos.wait(job_id, 600)
    report = audit(chaos, job_id, body)
    passed = _exactly_once(report) and empty_after_restart
    return {"scenario": 2, **report, "seconds": round(time.monotonic() - started, 1),
            "messages_lost": queued, "recovery_seconds": round(time.monotonic() - lost_at, 1),
            "passed": passed}  # fmt: skip


def duplicate_delivery(chaos: Chaos) -> dict[str, Any]:
    """3. Running chunks' messages delivered again (visibility timeout 1 s) and every
    chunk sent twice: one result per item, the duplicates counted."""
    n = chaos.sizes.duplicate_items
    started = time.monotonic()
    job_id = chaos.explain(n)
    chaos.wait(job_id, 600, lambda body: _is_final(body) or body.get("state") == "running")
    resent = _send_chunks_again(chaos, job_id)
    restored = 0
    while not _is_final(chaos.job(job_id)):
        restored += _restore_unacked(chaos.redis.url)
        time.sleep(1.0)
    body = chaos.wait(job_id, 600)
    report = audit(chaos, job_id, body)
    # Messages are wake-ups: a copy takes the next fair chunk or finds nothing, so it
    # cannot run a chunk twice; `duplicates` (item writes ignored) stays near zero.
    passed = _exactly_once(report) and resent > 0
    return {"scenario": 3, **report, "seconds": round(time.monotonic() - started, 1),
            "messages_resent": resent, "messages_redelivered": restored,
            "passed": passed}  # fmt: skip


def _restore_unacked(redis_url: str) -> int:
    """What a worker with a 1 s visibility timeout does: put every message reserved for
    more than 1 s back in its queue (kombu's own restore), so another worker gets it."""
    import redis
    from kombu import Connection

    before = redis.Redis.from_url(redis_url).zcard("unacked_index")
    with Connection(redis_url, transport_options={"visibility_timeout": 1}) as connection:
        connection.default_channel.qos.restore_visible(num=1000, interval=1)
    return int(before - redis.Redis.from_url(redis_url).zcard("unacked_index"))


def _send_chunks_again(chaos: Chaos, job_id: str) -> int:
    from celery import Celery

    from xmlx.messaging import GPU_QUEUE, TASK_RUN_CHUNK

    with chaos.engine.connect() as connection:
        chunk_ids = (
            connection.execute(
                sa.text("SELECT id FROM chunks WHERE job_id = :j ORDER BY seq"), {"j": job_id}
            )
            .scalars()
            .all()
        )
    sender = Celery("chaos", broker=chaos.redis.url)
    for chunk_id in chunk_ids:
        sender.send_task(TASK_RUN_CHUNK, args=[chunk_id, "explain"], queue=GPU_QUEUE)
    return len(chunk_ids)


def storage_outage(chaos: Chaos) -> dict[str, Any]:
    """4. SeaweedFS down for N s mid-batch, then back with its data on the same port."""
    n, stack = chaos.sizes.storage_items, chaos.stack
    assert stack.s3 is not None
    started = time.monotonic()
    job_id = chaos.explain(n)
    chaos.wait(job_id, 600, _until_done(0.25, n))
    old = stack.s3
    old.stop()
    time.sleep(chaos.sizes.outage_seconds)
    stack.s3 = start_seaweedfs(old.data_dir, s3_port=old.ports["s3"], bucket=BUCKET)
    back_at = time.monotonic()
    body = chaos.wait(job_id, 900)
    report = audit(chaos, job_id, body)
    return {"scenario": 4, **report, "seconds": round(time.monotonic() - started, 1),
            "outage_seconds": chaos.sizes.outage_seconds,
            "after_return_seconds": round(time.monotonic() - back_at, 1),
            "passed": _exactly_once(report)}  # fmt: skip


def database_restart(chaos: Chaos) -> dict[str, Any]:
    """5. PostgreSQL crashed (immediate shutdown) mid-batch and started again."""
    n, pg = chaos.sizes.database_items, chaos.postgres
    if pg is None:
        return {"scenario": 5, "skipped": "no PostgreSQL binaries on this machine",
                "passed": False}  # fmt: skip
    started = time.monotonic()
    job_id = chaos.explain(n)
    chaos.wait(job_id, 600, _until_done(0.25, n))
    before = _succeeded_keys(chaos, job_id)
    pg.crash()
    time.sleep(chaos.sizes.database_down_seconds)
    pg.start()
    back_at = time.monotonic()
    chaos.wait(job_id, 120, lambda body: True)  # the API's first good answer
    api_seconds = time.monotonic() - back_at
    kept = before <= _succeeded_keys(chaos, job_id)
    body = chaos.wait(job_id, 900)
    report = audit(chaos, job_id, body)
    # Files a crashed write left unnamed (seen once in two CI runs: 12 files, 4 items'
    # worth; RELIABILITY.md) are what the orphan sweep removes once the job is final:
    # the beat's `xmlx.sweep_purges` does it after its grace, here it is called at once.
    swept = orphans.sweep_job(make_session_factory(chaos.engine), _store(chaos), job_id)
    after = audit(chaos, job_id, body)
    return {"scenario": 5, **report, "seconds": round(time.monotonic() - started, 1),
            "down_seconds": chaos.sizes.database_down_seconds, "done_at_crash": len(before),
            "api_back_after_seconds": round(api_seconds, 1),
            "progress_kept": kept, "orphans_swept": swept,
            "orphan_artifacts_after_sweep": after["orphan_artifacts"],
            "passed": _exactly_once(after) and kept}  # fmt: skip


def _store(chaos: Chaos) -> S3ObjectStore:
    s3 = chaos.stack.s3
    assert s3 is not None
    return S3ObjectStore(
        BUCKET, endpoint_url=s3.endpoint_url, region=s3.region,
        access_key=s3.access_key, secret_key=s3.secret_key,
    )  # fmt: skip


def _succeeded_keys(chaos: Chaos, job_id: str) -> set[str]:
    with chaos.engine.connect() as connection:
        return set(
            connection.execute(
                sa.text("SELECT item_key FROM items WHERE job_id = :j AND state = 'succeeded'"),
                {"j": job_id},
            ).scalars()
        )


def cancel_large_job(chaos: Chaos) -> dict[str, Any]:
    """7. Cancel a large job (cheap explanations) mid-way: `cancelled` within 30 s + one
    chunk."""
    from datetime import UTC, datetime

    n = chaos.sizes.cancel_items
    started = time.monotonic()
    job_id = chaos.explain(n, chaos.sizes.cancel_num_samples)
    chaos.wait(job_id, 600, _until_done(0.1, n))
    cancel_at = datetime.now(UTC)
    clicked = time.monotonic()
    chaos.client.cancel(job_id)
    # "Nothing starts after the cancel" counts from when the API accepted it: a worker
    # may start and finish whole batches between `cancel_at` and that commit.
    accepted_at = datetime.now(UTC)
    body = chaos.wait(job_id, 300)
    cancel_seconds = time.monotonic() - clicked
    report = audit(chaos, job_id, body)
    chunk_seconds = _chunk_seconds(chaos, job_id, cancel_at)
    after = _finished_after(chaos, job_id, accepted_at)
    in_flight = len(WORKERS) * int(SERVICE_ENV["XMLX_IMAGES_PER_BATCH"])
    listed = sum(1 for _ in chaos.client.iter_results(job_id, state="succeeded"))
    passed = (
        report["final_state"] == "cancelled"
        and cancel_seconds <= 30 + chunk_seconds
        and after <= in_flight
        and listed == report["results"] == report["api_done"]
        and report["pending"] == 0
    )
    return {"scenario": 7, **report, "lost": report["pending"],
            "seconds": round(time.monotonic() - started, 1),
            "cancel_seconds": round(cancel_seconds, 2), "chunk_seconds": round(chunk_seconds, 2),
            "finished_after_cancel": after, "allowed_after_cancel": in_flight,
            "cancelled_items": report["cancelled"], "passed": passed}  # fmt: skip


def _chunk_seconds(chaos: Chaos, job_id: str, until: Any) -> float:
    """Seconds one worker spends on one chunk, from the job's throughput before `until`."""
    with chaos.engine.connect() as connection:
        started_at, done = connection.execute(
            sa.text(
                "SELECT started_at, (SELECT count(*) FROM items WHERE job_id = :j "
                "AND state = 'succeeded' AND finished_at <= :t) FROM jobs WHERE id = :j"
            ).bindparams(sa.bindparam("t", type_=UTCDateTime())),
            {"j": job_id, "t": until},
        ).one()
    started_at = _aware(started_at)
    per_item = (until - started_at).total_seconds() / max(int(done), 1) * len(WORKERS)
    return per_item * int(SERVICE_ENV["XMLX_CHUNK_SIZE"])


def _finished_after(chaos: Chaos, job_id: str, moment: Any) -> int:
    with chaos.engine.connect() as connection:
        return int(
            connection.execute(
                sa.text(
                    "SELECT count(*) FROM items WHERE job_id = :j "
                    "AND state IN ('succeeded', 'failed') AND finished_at > :t"
                ).bindparams(sa.bindparam("t", type_=UTCDateTime())),
                {"j": job_id, "t": moment},
            ).scalar_one()
        )


def _aware(value: Any) -> Any:
    from datetime import UTC, datetime

    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def stopped_worker(chaos: Chaos) -> dict[str, Any]:
    """14. SIGSTOP a worker mid-batch past its lease, let the other finish, SIGCONT it."""
    from datetime import UTC, datetime

    n, victim = chaos.sizes.stopped_items, WORKERS[0]
    started = time.monotonic()
    job_id = chaos.explain(n)
    while not chaos.holds_lease(victim) and not _is_final(chaos.job(job_id)):
        time.sleep(0.1)
    time.sleep(0.5)  # mid-batch
    stale_tokens = {_owner_hash(owner) for owner in chaos.worker_owners(victim)}
    chaos.signal_worker(victim, signal.SIGSTOP)
    stopped_at = datetime.now(UTC)
    try:
        body = chaos.wait(job_id, 600)  # the other worker takes the chunk over
        finished = _recorded_bytes(chaos, job_id)
        log_mark = _log_size(chaos, victim)
    finally:  # never leave a stopped worker to the scenarios after this one
        chaos.signal_worker(victim, signal.SIGCONT)
    # Refused either by the lease check (stopped mid-batch) or, stopped inside a
    # transaction, by the server, which ended the session and rolled it back.
    refused = _wait_for_log(chaos, victim, log_mark, STALE_WRITE_REFUSED, timeout=120)
    # Its clean-up deletes run right after the refused record: on a loaded machine
    # that takes a while, so wait for them (bounded) rather than a fixed pause.
    # Files carrying the victim's token that no item names: before the stop it may have
    # finished other chunks of the job, whose files it recorded legitimately.
    prefix = f"tenants/{_tenant(chaos, job_id)}/jobs/{job_id}/items/"
    deadline = time.monotonic() + 60
    while True:
        named = set(_recorded_bytes(chaos, job_id))
        stored = _list_keys(chaos, prefix)
        stale_files = [
            key for key in stored if key not in named and any(f"-{t}/" in key for t in stale_tokens)
        ]
        if not stale_files or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    report = audit(chaos, job_id, body)
    after = _recorded_bytes(chaos, job_id)
    stale_names = _items_naming(chaos, job_id, stale_tokens, since=stopped_at)
    unchanged = finished == after and len(after) == n * ARTIFACTS_PER_ITEM
    passed = _exactly_once(report) and unchanged and refused and not stale_names
    passed = passed and not stale_files
    return {"scenario": 14, **report, "seconds": round(time.monotonic() - started, 1),
            "stale_write_refused": refused, "artifacts_unchanged": unchanged,
            "items_naming_stale_files": len(stale_names), "stale_files_left": len(stale_files),
            "passed": passed}  # fmt: skip


STALE_WRITE_REFUSED = ("lease_lost", "idle-in-transaction timeout")


def _owner_hash(owner: str) -> str:
    import hashlib

    return hashlib.sha256(owner.encode("utf-8")).hexdigest()[:8]


def _tenant(chaos: Chaos, job_id: str) -> str:
    with chaos.engine.connect() as connection:
        return str(
            connection.execute(
                sa.text("SELECT tenant_id FROM jobs WHERE id = :j"), {"j": job_id}
            ).scalar_one()
        )


def _recorded_bytes(chaos: Chaos, job_id: str) -> dict[str, str]:
    """sha256 of every artifact the job's item rows name, read from the bucket."""
    import hashlib

    assert chaos.stack.s3 is not None
    client = chaos.stack.s3.client()
    with chaos.engine.connect() as connection:
        rows = connection.execute(
            sa.text("SELECT artifacts FROM items WHERE job_id = :j AND state = 'succeeded'"),
            {"j": job_id},
        ).scalars()
        keys = [key for row in rows for key in _as_dict(row).values()]
    return {
        key: hashlib.sha256(client.get_object(Bucket=BUCKET, Key=key)["Body"].read()).hexdigest()
        for key in keys
    }


def _items_naming(chaos: Chaos, job_id: str, tokens: set[str], since: Any) -> list[str]:
    """Items recorded after `since` whose artifact keys carry one of `tokens`."""
    with chaos.engine.connect() as connection:
        rows = connection.execute(
            sa.text(
                "SELECT item_key, artifacts FROM items WHERE job_id = :j AND finished_at > :t"
            ).bindparams(sa.bindparam("t", type_=UTCDateTime())),
            {"j": job_id, "t": since},
        ).all()
    return [
        row.item_key
        for row in rows
        if any(f"-{t}/" in key for key in _as_dict(row.artifacts).values() for t in tokens)
    ]


def _log_size(chaos: Chaos, name: str) -> int:
    path = chaos.stack.log_path(name)
    return path.stat().st_size if path.exists() else 0


def _wait_for_log(
    chaos: Chaos, name: str, offset: int, text: str | tuple[str, ...], timeout: float
) -> bool:
    """Whether the worker's log gets (one of) `text` after `offset` within `timeout`."""
    wanted = [t.encode() for t in ((text,) if isinstance(text, str) else text)]
    deadline = time.monotonic() + timeout
    path = chaos.stack.log_path(name)
    while time.monotonic() < deadline:
        with path.open("rb") as handle:
            handle.seek(offset)
            seen = handle.read()
            if any(t in seen for t in wanted):
                return True
        time.sleep(0.5)
    return False


SCENARIOS: dict[int, Callable[[Chaos], dict[str, Any]]] = {
    1: worker_killed,
    2: broker_lost,
    3: duplicate_delivery,
    4: storage_outage,
    5: database_restart,
    7: cancel_large_job,
    14: stopped_worker,
    15: lambda chaos: training_killed(chaos, chaos.sizes.training),
    17: lambda chaos: outages_under_load(chaos, chaos.sizes.outages),
}


@contextmanager
def chaos_stack(root: Path, sizes: Sizes, echo: Callable[[str], None] = print) -> Iterator[Chaos]:
    """Start the private servers and the stack, train the model, upload the images."""
    from xmlx.demo_service import create_api_key

    with ExitStack() as cleanup:
        postgres = _private_postgres(cleanup)
        database_url = postgres.create_database("xmlx") if postgres else None
        redis = EmbeddedRedis(root / "redis").start()
        cleanup.callback(redis.stop)
        stack = start_stack(root / "stack", workers=len(WORKERS), database_url=database_url,
                            redis_url=redis.url, extra_env=SERVICE_ENV, echo=echo)  # fmt: skip
        cleanup.callback(stack.stop)
        engine = sa.create_engine(stack.env["XMLX_DATABASE_URL"], pool_pre_ping=True)
        cleanup.callback(engine.dispose)
        api_key = create_api_key(stack, "chaos")
        client = cleanup.enter_context(Client(stack.api_url, api_key, timeout=60))
        model_id, keys = _prepare(client, max(_item_counts(sizes)), echo)
        yield Chaos(stack, redis, postgres, client, engine, model_id, keys, sizes)


def _private_postgres(cleanup: ExitStack) -> EmbeddedPostgres | None:
    if postgres_bin_dir() is None:
        return None
    directory = Path(tempfile.mkdtemp(prefix="xmlx-chaos-pg-"))
    directory.chmod(0o755)  # as root, the server runs as `postgres` and must enter it
    cleanup.callback(shutil.rmtree, directory, ignore_errors=True)
    postgres = EmbeddedPostgres(directory).start()
    cleanup.callback(postgres.kill)
    return postgres


def _item_counts(sizes: Sizes) -> list[int]:
    return [sizes.kill_items, sizes.broker_items, sizes.duplicate_items,
            sizes.storage_items, sizes.database_items, sizes.cancel_items,
            sizes.stopped_items]  # fmt: skip


def _prepare(client: Client, n_images: int, echo: Callable[[str], None]) -> tuple[str, list[str]]:
    """Train a tiny model (1 epoch) through the API; upload `n_images` images to explain."""
    from xmlcore.datasets import generate_dishes
    from xmlcore.images import encode_png
    from xmlcore.labels import manifest_to_csv

    data = generate_dishes("tiny", seed=0, image_size=32)
    space = data.label_space
    pngs = [encode_png(image) for image in data.images]
    client.upload({f"train/images/{k}": png for k, png in zip(space.image_keys, pngs, strict=True)})
    manifest = manifest_to_csv(space.image_keys, data.label_sets())
    client.upload({"train/manifest.csv": manifest}, content_type="text/csv")
    dataset = client.create_dataset("chaos", "train/images/", "train/manifest.csv")
    created = client.train(dataset["id"], "chaos", epochs=1, seed=0, image_size=[32, 32])
    trained = client.wait(created["job"]["id"], timeout=900)
    if trained.state != "succeeded":
        raise RuntimeError(f"training ended {trained.state}: {trained.raw}")
    keys = [f"pool/img_{i:05d}.png" for i in range(n_images)]
    client.upload({key: pngs[i % len(pngs)] for i, key in enumerate(keys)})
    echo(f"model {created['model']['id']} trained, {n_images} images uploaded")
    return str(created["model"]["id"]), keys


def run(scenarios: list[int], sizes: Sizes, root: Path) -> list[dict[str, Any]]:
    reports = []
    with chaos_stack(root, sizes, echo=lambda line: print(line, file=sys.stderr)) as chaos:
        for number in scenarios:
            report = SCENARIOS[number](chaos)
            report["outcome"] = outcome(report)
            print(json.dumps(report), flush=True)
            reports.append(report)
    return reports


def outcome(report: dict[str, Any]) -> str:
    """passed, failed or skipped (a scenario that did not run passed nothing)."""
    if "skipped" in report:
        return "skipped"
    return "passed" if report["passed"] else "failed"


def exit_code(reports: list[dict[str, Any]], allow_skips: bool) -> int:
    """0 when every scenario passed (or skipped, with ``allow_skips``), else 1."""
    accepted = {"passed", "skipped"} if allow_skips else {"passed"}
    return 0 if all(outcome(report) in accepted for report in reports) else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenario", type=int, action="append", choices=sorted(SCENARIOS))
    parser.add_argument("--quick", action="store_true", help="CI-sized batches and faults")
    parser.add_argument("--root", type=Path, help="working directory (default: a temporary one)")
    parser.add_argument("--allow-skips", action="store_true",
                        help="exit 0 although a scenario could not run here")  # fmt: skip
    args = parser.parse_args(argv)
    sizes = Sizes.quick() if args.quick else Sizes()
    with tempfile.TemporaryDirectory(prefix="xmlx-chaos-") as tmp:
        reports = run(args.scenario or sorted(SCENARIOS), sizes, args.root or Path(tmp))
    return exit_code(reports, args.allow_skips)


if __name__ == "__main__":
    sys.exit(main())
