"""Fair dispatch, owner-checked recording and transient hand-backs, on a real database
(PostgreSQL when configured, else SQLite). `claim_next` looks at every tenant's jobs,
so each test gets a database of its own."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import text

from tests.kernel_fixtures import is_postgres
from xmlx import jobs, keys, migrate
from xmlx import repository as repo
from xmlx.db import SessionFactory, create_engine, make_session_factory, session_scope, utcnow
from xmlx.jobs import ClaimStatus, LeaseRef
from xmlx.jobs.dispatch import ALL_KINDS
from xmlx.models import ModelState

LEASE = 60


@pytest.fixture
def sessions(make_database_url: Any) -> Iterator[SessionFactory]:
    url = make_database_url()
    migrate.upgrade(url)
    engine = create_engine(url)
    yield make_session_factory(engine)
    engine.dispose()


def tenant(sessions: SessionFactory, name: str) -> str:
    with session_scope(sessions) as session:
        return repo.create_tenant(session, name).id


def submit(
    sessions: SessionFactory, tenant_id: str, n_chunks: int, priority: str = "normal"
) -> jobs.CreatedJob:
    item_keys = [f"img/{i:04d}.png" for i in range(2 * n_chunks)]
    return jobs.create_job(
        sessions,
        tenant_id=tenant_id,
        kind="explain",
        item_keys=item_keys,
        chunk_size=2,
        priority=priority,
    )


def take(sessions: SessionFactory, owner: str = "w1", **kw: Any) -> jobs.Claim:
    return jobs.claim_next(
        sessions,
        owner,
        lease_seconds=LEASE,
        max_attempts=kw.pop("max_attempts", 3),
        max_retries=kw.pop("max_retries", 5),
        **kw,
    )


def finish(sessions: SessionFactory, claim: jobs.Claim, owner: str = "w1") -> None:
    """Record every item of the claim as the lease holder, then complete the chunk."""
    assert claim.job is not None
    lease = LeaseRef(claim.chunk_id, owner)
    successes = [jobs.ItemSuccess(item.item_key, {}) for item in claim.items]
    jobs.record_items_success(sessions, claim.job.id, successes, lease=lease)
    jobs.complete_chunk(sessions, claim.chunk_id, owner)


def test_a_small_job_is_served_next_behind_a_big_one(sessions: SessionFactory) -> None:
    a, b = tenant(sessions, "a"), tenant(sessions, "b")
    big = submit(sessions, a, n_chunks=50)
    first = take(sessions, "w1")
    assert first.job is not None and first.job.id == big.job.id
    small = submit(sessions, b, n_chunks=1)  # behind 49 queued chunks of tenant a
    second = take(sessions, "w2")
    assert second.job is not None and second.job.id == small.job.id
    assert second.chunk_id == small.chunk_ids[0]


def test_tenants_take_turns_with_one_worker(sessions: SessionFactory) -> None:
    a, b = tenant(sessions, "a"), tenant(sessions, "b")
    job_a, job_b = submit(sessions, a, 5).job.id, submit(sessions, b, 5).job.id
    served = []
    for _ in range(6):
        claim = take(sessions)
        assert claim.job is not None
        served.append(claim.job.id)
        finish(sessions, claim)
    pairs = [set(served[i : i + 2]) for i in range(0, 6, 2)]
    assert pairs == [{job_a, job_b}] * 3, served


def test_priority_then_fifo_inside_a_tenant(sessions: SessionFactory) -> None:
    a = tenant(sessions, "a")
    low = submit(sessions, a, 1, "low").job.id
    normal_old = submit(sessions, a, 1).job.id
    normal_new = submit(sessions, a, 1).job.id
    high = submit(sessions, a, 2, "high").job.id
    order = []
    while (claim := take(sessions)).claimed:
        assert claim.job is not None
        order.append(claim.job.id)
        finish(sessions, claim)
    assert order == [high, high, normal_old, normal_new, low]


def test_priority_does_not_beat_fairness_across_tenants(sessions: SessionFactory) -> None:
    a, b = tenant(sessions, "a"), tenant(sessions, "b")
    submit(sessions, a, 3, "high")
    claim = take(sessions, "w1")
    normal_b = submit(sessions, b, 1, "low").job.id
    other = take(sessions, "w2")  # tenant a already runs a chunk: b goes next
    assert claim.claimed and other.job is not None and other.job.id == normal_b


def test_nothing_to_run_and_cancelled_jobs_are_skipped(sessions: SessionFactory) -> None:
    assert take(sessions).status is ClaimStatus.NOTHING
    a = tenant(sessions, "a")
    created = submit(sessions, a, 2)
    jobs.request_cancel(sessions, a, created.job.id)
    assert take(sessions).status is ClaimStatus.NOTHING
    job = jobs.get_job(sessions, a, created.job.id)
    assert (job.state, job.duplicates) == ("cancelled", 0)


def test_an_expired_lease_is_taken_first_and_a_spent_chunk_fails(
    sessions: SessionFactory,
) -> None:
    a = tenant(sessions, "a")
    created = submit(sessions, a, 3)
    dead = take(sessions, "dead")
    later = utcnow() + timedelta(seconds=LEASE + 1)
    again = take(sessions, "w2", now=later)
    assert again.chunk_id == dead.chunk_id and again.attempt == 2
    even_later = later + timedelta(seconds=LEASE + 1)
    spent = take(sessions, "w3", max_attempts=2, now=even_later)
    assert spent.chunk_id == created.chunk_ids[1]  # the spent chunk failed on the way
    job = jobs.get_job(sessions, a, created.job.id)
    assert job.failed == 2
    with session_scope(sessions) as session:
        codes = repo.error_counts(session, created.job.id)
    assert codes == {"chunk.max_attempts": 2}


def test_concurrent_workers_never_lease_the_same_chunk(sessions: SessionFactory) -> None:
    a, b = tenant(sessions, "a"), tenant(sessions, "b")
    submit(sessions, a, 12)
    submit(sessions, b, 12)
    taken: list[str] = []
    errors: list[BaseException] = []

    def worker(owner: str) -> None:
        try:
            while (claim := take(sessions, owner)).claimed:
                taken.append(claim.chunk_id)
                finish(sessions, claim, owner)
        except BaseException as exc:  # surfaced below, not swallowed
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    assert len(taken) == 24 and Counter(taken).most_common(1)[0][1] == 1


def test_a_transient_hand_back_spends_no_attempt_and_no_duplicate(
    sessions: SessionFactory,
) -> None:
    a = tenant(sessions, "a")
    created = submit(sessions, a, 1)
    for round_ in range(3):  # more hand-backs than max_attempts allows crashes
        claim = take(sessions, f"w{round_}", max_attempts=1)
        assert claim.claimed and claim.attempt == 1 and claim.retries == round_
        assert jobs.hand_back_chunk(sessions, claim.chunk_id, f"w{round_}")
    assert not jobs.hand_back_chunk(sessions, claim.chunk_id, "w0")  # not the holder
    claim = take(sessions, "w9", max_attempts=1)
    finish(sessions, claim, "w9")
    job = jobs.get_job(sessions, a, created.job.id)
    assert (job.state, job.done, job.duplicates) == ("succeeded", 2, 0)


def test_transient_hand_backs_are_bounded(sessions: SessionFactory) -> None:
    a = tenant(sessions, "a")
    created = submit(sessions, a, 1)
    for _ in range(2):
        claim = take(sessions, max_retries=2)
        jobs.hand_back_chunk(sessions, claim.chunk_id, "w1")
    assert take(sessions, max_retries=2).status is ClaimStatus.NOTHING
    job = jobs.get_job(sessions, a, created.job.id)
    assert (job.state, job.failed) == ("failed", 2)
    with session_scope(sessions) as session:
        assert repo.error_counts(session, created.job.id) == {"chunk.max_retries": 2}


def test_only_the_lease_holder_records(sessions: SessionFactory) -> None:
    a = tenant(sessions, "a")
    created = submit(sessions, a, 1)
    stale = take(sessions, "stale")
    later = utcnow() + timedelta(seconds=LEASE + 1)
    winner = take(sessions, "winner", now=later)
    assert winner.chunk_id == stale.chunk_id
    key = stale.items[0].item_key
    lost = jobs.record_item_success(
        sessions,
        created.job.id,
        key,
        result={"by": "stale"},
        lease=LeaseRef(stale.chunk_id, "stale"),
    )
    assert (lost.recorded, lost.lease_held) == (False, False)
    failed = jobs.record_item_failure(
        sessions,
        created.job.id,
        key,
        code="x",
        message="x",
        lease=LeaseRef(stale.chunk_id, "stale"),
    )
    assert not failed.lease_held
    assert jobs.complete_chunk(sessions, stale.chunk_id, "stale") == "running"
    finish(sessions, winner, "winner")
    job = jobs.get_job(sessions, a, created.job.id)
    assert (job.state, job.done, job.failed, job.duplicates) == ("succeeded", 2, 0, 0)
    with session_scope(sessions) as session:
        item = repo.get_item(session, a, created.job.id, key)
        assert item is not None and item.result == {}


def test_a_trained_model_is_made_ready_only_by_the_lease_holder(
    sessions: SessionFactory,
) -> None:
    a = tenant(sessions, "a")
    with session_scope(sessions) as session:
        dataset = repo.create_dataset(session, a, name="d")
        model_id = repo.create_model(session, a, dataset.id, name="m", params={}).id
    created = jobs.create_job(
        sessions, tenant_id=a, kind="train", item_keys=["model"], model_id=model_id, chunk_size=1
    )
    stale = take(sessions, "stale")
    winner = take(sessions, "winner", now=utcnow() + timedelta(seconds=LEASE + 1))

    def trained(owner: str, claim: jobs.Claim) -> jobs.ItemOutcome:
        key = keys.model_artifact_key(
            a, model_id, f"model.{keys.attempt_token(claim.attempt, owner)}.zip"
        )
        return jobs.record_model_trained(
            sessions, created.job.id, "model", lease=LeaseRef(claim.chunk_id, owner),
            model_id=model_id, artifact_key=key, result={},
            model_fields={"metrics": {"owner": owner}},
        )  # fmt: skip

    assert not trained("stale", stale).lease_held
    with session_scope(sessions) as session:
        assert repo.get_model(session, a, model_id).state == ModelState.TRAINING  # type: ignore[union-attr]
    assert trained("winner", winner).recorded
    with session_scope(sessions) as session:
        model = repo.get_model(session, a, model_id)
        assert model is not None and model.state == ModelState.READY
        assert (
            model.artifact_key is not None and keys.attempt_token(2, "winner") in model.artifact_key
        )
        assert model.metrics == {"owner": "winner"}


def test_attempt_tokens_make_artifact_keys_unique_per_lease() -> None:
    tokens = {keys.attempt_token(n, owner) for n in (1, 2) for owner in ("h:1", "h:2")}
    assert len(tokens) == 4
    paths = {keys.item_artifact_key("ten_abcd", "job_0123", "a.png", "mask.png", t) for t in tokens}
    legacy = keys.item_artifact_key("ten_abcd", "job_0123", "a.png", "mask.png")
    assert len(paths) == 4 and legacy not in paths
    assert all(path.rsplit("/", 2)[0] == legacy.rsplit("/", 1)[0] for path in paths)
    with pytest.raises(keys.KeyValidationError):
        keys.item_artifact_key("ten_abcd", "job_0123", "a.png", "mask.png", "../x")


@pytest.mark.skipif(not is_postgres(), reason="lock_timeout is PostgreSQL's")
def test_a_job_whose_row_is_held_is_passed_over_not_waited_on(
    sessions: SessionFactory,
) -> None:
    """A worker frozen inside a transaction keeps its job's row lock (chaos 14 saw the
    other worker wait on it until its task time limit). A claim waits at most
    `job_lock_wait_seconds` on that job, then serves the next one; with nothing else to
    run it answers NOTHING instead of hanging."""
    submit(sessions, tenant(sessions, "a"), 2)
    submit(sessions, tenant(sessions, "b"), 2)
    first, second = jobs.rank_jobs(sessions, ALL_KINDS, utcnow())
    holder = sessions()
    try:  # the frozen worker: the first job's row locked, the transaction left open
        holder.execute(text("UPDATE jobs SET updated_at = now() WHERE id = :id"), {"id": first})
        started = time.monotonic()
        claim = take(sessions, job_lock_wait_seconds=0.5)
        assert claim.claimed and claim.job is not None and claim.job.id == second
        finish(sessions, take(sessions, job_lock_wait_seconds=0.5))  # second's last chunk
        assert take(sessions, job_lock_wait_seconds=0.5).status == ClaimStatus.NOTHING
        assert time.monotonic() - started < 10
    finally:
        holder.rollback()
        holder.close()
    assert take(sessions).job.id == first  # type: ignore[union-attr]  # free again
