"""The job lifecycle on a real database (PostgreSQL when configured, else SQLite)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest

from xmlx import jobs
from xmlx import repository as repo
from xmlx.db import SessionFactory, session_scope, utcnow
from xmlx.jobs import ClaimStatus, JobError

LEASE = 60


def make_job(
    sessions: SessionFactory, tenant_id: str, n_items: int = 10, chunk_size: int = 4, **kw: Any
) -> jobs.CreatedJob:
    return jobs.create_job(
        sessions,
        tenant_id=tenant_id,
        kind=kw.pop("kind", "explain"),
        item_keys=[f"images/{i:05d}.png" for i in range(n_items)],
        chunk_size=chunk_size,
        **kw,
    )


def claim(sessions: SessionFactory, chunk_id: str, owner: str = "w1", **kw: Any) -> jobs.Claim:
    return jobs.claim_chunk(
        sessions, chunk_id, owner, lease_seconds=LEASE, max_attempts=kw.pop("max_attempts", 3), **kw
    )


def job_row(sessions: SessionFactory, tenant_id: str, job_id: str) -> Any:
    return jobs.get_job(sessions, tenant_id, job_id)


def test_create_job_inserts_items_and_chunks(
    session_factory: SessionFactory, tenant_id: str
) -> None:
    created = make_job(session_factory, tenant_id, n_items=10, chunk_size=4)
    assert created.created and len(created.chunk_ids) == 3
    job = created.job
    assert (job.state, job.total, job.done, job.failed) == ("queued", 10, 0, 0)
    assert job.id.startswith("job_") and job.created_at.tzinfo is not None
    with session_scope(session_factory) as session:
        chunks = repo.list_chunks(session, job.id)
        assert [(c.item_start, c.item_stop) for c in chunks] == [(0, 4), (4, 8), (8, 10)]
        assert [c.id for c in chunks] == created.chunk_ids
        items = repo.pending_items(session, chunks[2].id)
        assert [i.item_key for i in items] == ["images/00008.png", "images/00009.png"]


@pytest.mark.parametrize(
    ("keys", "kind", "code"),
    [
        ([], "explain", "job.invalid_items"),
        (["a", "a"], "explain", "job.invalid_items"),
        (["a", ""], "explain", "job.invalid_items"),
        (["a"] * 1 + ["b", "c"], "dance", "job.invalid_kind"),
    ],
)
def test_create_job_refuses_bad_requests(
    session_factory: SessionFactory, tenant_id: str, keys: list[str], kind: str, code: str
) -> None:
    with pytest.raises(JobError) as info:
        jobs.create_job(session_factory, tenant_id=tenant_id, kind=kind, item_keys=keys)
    assert info.value.code == code


def test_create_job_refuses_more_than_max_items(
    session_factory: SessionFactory, tenant_id: str
) -> None:
    with pytest.raises(JobError, match="at most 5"):
        make_job(session_factory, tenant_id, n_items=6, max_items=5)


def test_idempotency_key_replays_same_body_and_refuses_another(
    session_factory: SessionFactory, tenant_id: str
) -> None:
    first = make_job(session_factory, tenant_id, idempotency_key="k1", request_hash="h1")
    again = make_job(session_factory, tenant_id, idempotency_key="k1", request_hash="h1")
    assert not again.created and again.job.id == first.job.id
    assert again.chunk_ids == first.chunk_ids
    with pytest.raises(JobError) as info:
        make_job(session_factory, tenant_id, idempotency_key="k1", request_hash="h2")
    assert info.value.code == "job.idempotency_conflict"


def test_claim_leases_chunk_and_starts_job(session_factory: SessionFactory, tenant_id: str) -> None:
    created = make_job(session_factory, tenant_id)
    first = claim(session_factory, created.chunk_ids[0], "w1")
    assert first.status is ClaimStatus.CLAIMED and first.attempt == 1
    assert len(first.items) == 4 and first.job is not None and first.job.state == "running"
    assert claim(session_factory, created.chunk_ids[0], "w2").status is ClaimStatus.LEASED_ELSEWHERE
    later = utcnow() + timedelta(seconds=LEASE + 1)
    retaken = claim(session_factory, created.chunk_ids[0], "w2", now=later)
    assert retaken.status is ClaimStatus.CLAIMED and retaken.attempt == 2
    assert not jobs.heartbeat(
        session_factory, created.chunk_ids[0], "w1", lease_seconds=LEASE
    ).alive


def test_unknown_chunk_is_not_found(session_factory: SessionFactory) -> None:
    assert claim(session_factory, "chk_doesnotexist").status is ClaimStatus.NOT_FOUND


def run_all(
    sessions: SessionFactory, created: jobs.CreatedJob, fail: Callable[[str], bool]
) -> list[jobs.ItemOutcome]:
    outcomes = []
    for chunk_id in created.chunk_ids:
        got = claim(sessions, chunk_id)
        for item in got.items:
            if fail(item.item_key):
                outcome = jobs.record_item_failure(
                    sessions, created.job.id, item.item_key, code="image.corrupt", message="bad"
                )
            else:
                outcome = jobs.record_item_success(
                    sessions, created.job.id, item.item_key, result={"top_k": [["a", 0.9]]}
                )
            outcomes.append(outcome)
        jobs.complete_chunk(sessions, chunk_id, "w1")
    return outcomes


@pytest.mark.parametrize(
    ("fail", "state", "done", "failed"),
    [
        (lambda key: False, "succeeded", 10, 0),
        (lambda key: key.endswith("3.png"), "partially_succeeded", 9, 1),
        (lambda key: True, "failed", 0, 10),
    ],
)
def test_last_item_finalises_exactly_once(
    session_factory: SessionFactory,
    tenant_id: str,
    fail: Callable[[str], bool],
    state: str,
    done: int,
    failed: int,
) -> None:
    created = make_job(session_factory, tenant_id)
    outcomes = run_all(session_factory, created, fail)
    assert [o.finalised for o in outcomes].count(True) == 1 and outcomes[-1].finalised
    job = job_row(session_factory, tenant_id, created.job.id)
    assert (job.state, job.done, job.failed) == (state, done, failed)
    assert job.finished_at is not None and job.finished_at >= job.started_at
    assert job.error_code == ("job.all_items_failed" if state == "failed" else None)


def test_duplicate_writes_are_noops_and_counted(
    session_factory: SessionFactory, tenant_id: str
) -> None:
    created = make_job(session_factory, tenant_id, n_items=2)
    key = "images/00000.png"
    first = jobs.record_item_success(session_factory, created.job.id, key, result={"v": 1})
    second = jobs.record_item_success(session_factory, created.job.id, key, result={"v": 2})
    third = jobs.record_item_failure(session_factory, created.job.id, key, code="x", message="y")
    assert first.recorded and not second.recorded and not third.recorded
    job = job_row(session_factory, tenant_id, created.job.id)
    assert (job.done, job.failed, job.duplicates) == (1, 0, 2)
    with session_scope(session_factory) as session:
        item = repo.get_item(session, tenant_id, created.job.id, key)
        assert item is not None and item.result == {"v": 1} and item.state == "succeeded"


def test_redelivered_chunk_only_lists_unfinished_items(
    session_factory: SessionFactory, tenant_id: str
) -> None:
    created = make_job(session_factory, tenant_id, n_items=4)
    got = claim(session_factory, created.chunk_ids[0])
    for item in got.items[:2]:
        jobs.record_item_success(session_factory, created.job.id, item.item_key, result={})
    later = utcnow() + timedelta(seconds=LEASE + 1)
    again = claim(session_factory, created.chunk_ids[0], "w2", now=later)
    assert [i.item_key for i in again.items] == [i.item_key for i in got.items[2:]]


def test_poison_chunk_fails_its_items_after_max_attempts(
    session_factory: SessionFactory, tenant_id: str
) -> None:
    created = make_job(session_factory, tenant_id, n_items=6, chunk_size=4)
    chunk_id = created.chunk_ids[0]
    now = utcnow()
    for attempt in range(1, 3):
        got = claim(session_factory, chunk_id, f"w{attempt}", now=now, max_attempts=2)
        assert got.status is ClaimStatus.CLAIMED and got.attempt == attempt
        now += timedelta(seconds=LEASE + 1)  # the worker died: its lease runs out
    final = claim(session_factory, chunk_id, "w9", now=now, max_attempts=2)
    assert final.status is ClaimStatus.EXHAUSTED
    job = job_row(session_factory, tenant_id, created.job.id)
    assert (job.state, job.failed, job.done) == ("running", 4, 0)
    with session_scope(session_factory) as session:
        page = repo.list_items(session, tenant_id, created.job.id, state="failed")
        assert page is not None
        assert {i.error_code for i in page.rows} == {"chunk.max_attempts"}
    assert claim(session_factory, chunk_id, "w9", now=now).status is ClaimStatus.FINISHED


def test_complete_chunk_fails_items_the_worker_skipped(
    session_factory: SessionFactory, tenant_id: str
) -> None:
    created = make_job(session_factory, tenant_id, n_items=3, chunk_size=3)
    got = claim(session_factory, created.chunk_ids[0])
    jobs.record_item_success(session_factory, created.job.id, got.items[0].item_key, result={})
    assert jobs.complete_chunk(session_factory, created.chunk_ids[0], "w1") == "partially_succeeded"
    job = job_row(session_factory, tenant_id, created.job.id)
    assert (job.done, job.failed) == (1, 2)


def test_cancel_of_a_queued_job_is_immediate(
    session_factory: SessionFactory, tenant_id: str
) -> None:
    created = make_job(session_factory, tenant_id)
    job = jobs.request_cancel(session_factory, tenant_id, created.job.id)
    assert job.state == "cancelled" and job.cancel_requested and job.finished_at is not None
    assert claim(session_factory, created.chunk_ids[0]).status is ClaimStatus.CANCELLED
    with session_scope(session_factory) as session:
        page = repo.list_items(session, tenant_id, created.job.id, state="cancelled")
        assert page is not None and len(page.rows) == 10
        assert {c.state for c in repo.list_chunks(session, created.job.id)} == {"cancelled"}


def test_cancel_of_a_running_job_waits_for_its_worker(
    session_factory: SessionFactory, tenant_id: str
) -> None:
    created = make_job(session_factory, tenant_id)
    got = claim(session_factory, created.chunk_ids[0])
    jobs.record_item_success(session_factory, created.job.id, got.items[0].item_key, result={})
    assert jobs.request_cancel(session_factory, tenant_id, created.job.id).state == "cancelling"
    beat = jobs.heartbeat(session_factory, created.chunk_ids[0], "w1", lease_seconds=LEASE)
    assert beat.alive and beat.cancel_requested
    assert claim(session_factory, created.chunk_ids[1], "w2").status is ClaimStatus.CANCELLED
    assert jobs.release_chunk(session_factory, created.chunk_ids[0], "w1") == "cancelled"
    job = job_row(session_factory, tenant_id, created.job.id)
    assert (job.done, job.failed, job.state) == (1, 0, "cancelled")


def test_reconcile_closes_a_cancel_whose_worker_died(
    session_factory: SessionFactory, tenant_id: str
) -> None:
    created = make_job(session_factory, tenant_id)
    claim(session_factory, created.chunk_ids[0])
    jobs.request_cancel(session_factory, tenant_id, created.job.id)
    later = utcnow() + timedelta(seconds=LEASE + 120)
    refs = jobs.reconcile(session_factory, grace_seconds=60, now=later)
    assert _mine(refs, created) == []  # a cancelled job's chunks are closed, not resent
    assert job_row(session_factory, tenant_id, created.job.id).state == "cancelled"


def test_reconcile_resends_stranded_and_expired_chunks_once_per_grace(
    session_factory: SessionFactory, tenant_id: str
) -> None:
    created = make_job(session_factory, tenant_id, n_items=8, chunk_size=4)
    jobs.mark_dispatched(session_factory, created.chunk_ids)
    claim(session_factory, created.chunk_ids[0])
    soon = utcnow() + timedelta(seconds=30)
    assert _mine(jobs.reconcile(session_factory, grace_seconds=60, now=soon), created) == []
    later = utcnow() + timedelta(seconds=LEASE + 61)
    refs = _mine(jobs.reconcile(session_factory, grace_seconds=60, now=later), created)
    assert sorted(r.chunk_id for r in refs) == sorted(created.chunk_ids)
    assert {r.kind for r in refs} == {"explain"}
    assert _mine(jobs.reconcile(session_factory, grace_seconds=60, now=later), created) == []


def _mine(refs: list[jobs.ChunkRef], created: jobs.CreatedJob) -> list[jobs.ChunkRef]:
    # The session database is shared by the tests: look only at this test's job.
    return [r for r in refs if r.job_id == created.job.id]


def test_fail_job_fails_pending_items(session_factory: SessionFactory, tenant_id: str) -> None:
    created = make_job(session_factory, tenant_id, kind="train", n_items=1)
    job = jobs.fail_job(session_factory, created.job.id, "model.load_failed", "no weights")
    assert job is not None and (job.state, job.failed, job.error_code) == (
        "failed",
        1,
        "model.load_failed",
    )
    assert claim(session_factory, created.chunk_ids[0]).status is ClaimStatus.FINISHED


def test_other_tenants_cannot_see_or_cancel(
    session_factory: SessionFactory, tenant_id: str
) -> None:
    created = make_job(session_factory, tenant_id)
    with session_scope(session_factory) as session:
        other = repo.create_tenant(session, f"other-{created.job.id}").id
    for call in (jobs.get_job, jobs.request_cancel):
        with pytest.raises(JobError) as info:
            call(session_factory, other, created.job.id)
        assert info.value.code == "job.not_found"


def test_ten_thousand_items_insert_quickly(session_factory: SessionFactory, tenant_id: str) -> None:
    start = time.perf_counter()
    created = make_job(session_factory, tenant_id, n_items=10_000, chunk_size=32)
    elapsed = time.perf_counter() - start
    assert len(created.chunk_ids) == 313 and created.job.total == 10_000
    assert elapsed < 15, f"creating a 10,000-item job took {elapsed:.1f}s"


def _race(n_threads: int, action: Callable[[int], Any]) -> list[Any]:
    barrier = threading.Barrier(n_threads)
    results: list[Any] = [None] * n_threads

    def run(index: int) -> None:
        barrier.wait()
        results[index] = action(index)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n_threads)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def test_concurrent_claims_of_one_chunk_have_one_winner(
    session_factory: SessionFactory, tenant_id: str
) -> None:
    created = make_job(session_factory, tenant_id, n_items=4)
    claims = _race(6, lambda i: claim(session_factory, created.chunk_ids[0], f"w{i}"))
    assert [c.status for c in claims].count(ClaimStatus.CLAIMED) == 1


def test_concurrent_writes_of_one_item_have_one_winner(
    session_factory: SessionFactory, tenant_id: str
) -> None:
    created = make_job(session_factory, tenant_id, n_items=2)
    outcomes = _race(
        6,
        lambda i: jobs.record_item_success(
            session_factory, created.job.id, "images/00000.png", result={"writer": i}
        ),
    )
    assert [o.recorded for o in outcomes].count(True) == 1
    job = job_row(session_factory, tenant_id, created.job.id)
    assert (job.done, job.duplicates) == (1, 5)


def test_concurrent_last_items_finalise_once(
    session_factory: SessionFactory, tenant_id: str
) -> None:
    created = make_job(session_factory, tenant_id, n_items=8, chunk_size=8)
    claim(session_factory, created.chunk_ids[0])
    outcomes = _race(
        8,
        lambda i: jobs.record_item_success(
            session_factory, created.job.id, f"images/{i:05d}.png", result={}
        ),
    )
    assert all(o.recorded for o in outcomes)
    assert [o.finalised for o in outcomes].count(True) == 1
    job = job_row(session_factory, tenant_id, created.job.id)
    assert (job.state, job.done, job.failed) == ("succeeded", 8, 0)


def test_concurrent_creates_with_one_idempotency_key_make_one_job(
    session_factory: SessionFactory, tenant_id: str
) -> None:
    results = _race(
        4,
        lambda i: make_job(session_factory, tenant_id, idempotency_key="race", request_hash="h"),
    )
    assert len({r.job.id for r in results}) == 1
    assert [r.created for r in results].count(True) == 1
