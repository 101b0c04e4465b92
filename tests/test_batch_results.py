"""Recording a worker's batch of item results in one transaction (xmlx.jobs)."""

from __future__ import annotations

from xmlx import jobs
from xmlx.db import SessionFactory


def _job(sessions: SessionFactory, tenant_id: str, n_items: int) -> jobs.CreatedJob:
    """A job of ``n_items`` in one chunk, claimed by a worker (so the job is running)."""
    keys = [f"images/{i:03d}.png" for i in range(n_items)]
    created = jobs.create_job(
        sessions, tenant_id=tenant_id, kind="explain", item_keys=keys, chunk_size=n_items
    )
    claim = jobs.claim_chunk(sessions, created.chunk_ids[0], "w1", lease_seconds=60, max_attempts=3)
    assert claim.claimed
    return created


def _success(key: str) -> jobs.ItemSuccess:
    return jobs.ItemSuccess(key, {"top_labels": []}, {"mask.png": f"k/{key}"}, {"seconds": 1.0})


def test_a_batch_is_recorded_at_once_and_finalises_the_job_once(
    session_factory: SessionFactory, tenant_id: str
) -> None:
    job = _job(session_factory, tenant_id, 5).job
    first = jobs.record_items_success(
        session_factory, job.id, [_success(f"images/{i:03d}.png") for i in range(3)]
    )
    assert [o.recorded for o in first] == [True] * 3
    assert not any(o.finalised for o in first) and first[0].job_state == "running"
    # The rest, with one item of the first batch delivered again: it is a duplicate.
    rest = ["images/002.png", "images/003.png", "images/004.png"]
    second = jobs.record_items_success(session_factory, job.id, [_success(k) for k in rest])
    assert [o.recorded for o in second] == [False, True, True]
    assert [o.finalised for o in second] == [False, False, True]
    final = jobs.get_job(session_factory, tenant_id, job.id)
    assert (final.state, final.done, final.failed, final.duplicates) == ("succeeded", 5, 0, 1)


def test_a_batch_after_a_failure_counts_both(
    session_factory: SessionFactory, tenant_id: str
) -> None:
    job = _job(session_factory, tenant_id, 3).job
    jobs.record_item_failure(
        session_factory, job.id, "images/000.png", code="image.bad", message="x"
    )
    outcomes = jobs.record_items_success(
        session_factory, job.id, [_success("images/001.png"), _success("images/002.png")]
    )
    assert outcomes[-1].finalised and outcomes[-1].job_state == "partially_succeeded"
    final = jobs.get_job(session_factory, tenant_id, job.id)
    assert (final.done, final.failed) == (2, 1)


def test_an_empty_batch_changes_nothing(session_factory: SessionFactory, tenant_id: str) -> None:
    job = _job(session_factory, tenant_id, 2).job
    assert jobs.record_items_success(session_factory, job.id, []) == []
    after = jobs.get_job(session_factory, tenant_id, job.id)
    assert (after.state, after.done, after.failed) == ("running", 0, 0)


def test_a_jobs_metrics_are_the_means_over_its_recorded_items(
    session_factory: SessionFactory, tenant_id: str
) -> None:
    from api.views import job_out
    from xmlx.db import utcnow

    job = _job(session_factory, tenant_id, 3).job

    def explained(key: str, *stabilities: float) -> jobs.ItemSuccess:
        summaries = [{"metrics": {"stability@5": s}} for s in stabilities]
        return jobs.ItemSuccess(key, {"explanations": summaries})

    jobs.record_items_success(
        session_factory, job.id, [explained("images/000.png", 0.5, 0.7), _success("images/001.png")]
    )
    # a duplicate delivery of the first item counts once
    again = [explained("images/000.png", 0.0), explained("images/002.png", 1.0)]
    jobs.record_items_success(session_factory, job.id, again)
    final = jobs.get_job(session_factory, tenant_id, job.id)
    assert final.result_metrics == {"stability@5": {"sum": 1.6, "count": 2}}
    assert job_out(final, {}, utcnow()).metrics == {"stability@5": 0.8}
