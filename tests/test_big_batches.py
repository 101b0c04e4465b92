"""Big batches: accepted as `preparing`, prepared in slices (resumable), then `queued`;
listing errors, cancel and result pages while preparing; streamed exports.

The preparation is the `prepare_batch` task's kernel call on the app's own database
and store (`run_preparation`); `max_slices` stops a run part-way, which is what a
task lost mid-preparation leaves behind.
"""

from __future__ import annotations

import csv
import io
import json
from datetime import timedelta
from typing import Any

import pyarrow.parquet as pq
import pytest
import redis
from fastapi.testclient import TestClient
from sqlalchemy import select

from tests.api_fixtures import (
    ApiUser,
    make_ready_model,
    queued_messages,
    run_preparation,
    upload_files,
)
from tests.test_api_batches import small_dataset
from tests.test_api_jobs import finish, submit
from xmlx import jobs
from xmlx.db import SessionFactory, session_scope, utcnow
from xmlx.models import Chunk, Item, Tenant

SLICE = {"slice_rows": 32}  # one chunk (32 items) per slice: several slices per test


def _post(client: TestClient, user: ApiUser, body: dict[str, Any]) -> dict[str, Any]:
    answer = client.post("/v1/explanations", json=body, headers=user.headers)
    assert answer.status_code == 202, answer.text
    return dict(answer.json())


def _job(client: TestClient, user: ApiUser, job_id: str) -> dict[str, Any]:
    return dict(client.get(f"/v1/jobs/{job_id}", headers=user.headers).json())


def _rows(sessions: SessionFactory, job_id: str) -> tuple[list[Any], list[Any]]:
    with session_scope(sessions) as session:
        items = session.execute(
            select(Item.seq, Item.item_key, Item.chunk_id, Item.state)
            .where(Item.job_id == job_id)
            .order_by(Item.id)
        ).all()
        chunks = session.execute(
            select(Chunk.id, Chunk.seq, Chunk.item_start, Chunk.item_stop)
            .where(Chunk.job_id == job_id)
            .order_by(Chunk.seq)
        ).all()
    return list(items), list(chunks)


@pytest.fixture
def model(
    client: TestClient, api_user: ApiUser, session_factory: SessionFactory, broker: redis.Redis
) -> str:
    """A ready model, and an empty broker (no training message left)."""
    dataset = small_dataset(client, api_user)
    model_id = make_ready_model(client, api_user, session_factory, dataset["id"])
    broker.flushdb()
    return model_id


def test_prefix_batch_prepares_in_slices_and_resumes_after_a_lost_task(
    client: TestClient,
    api_user: ApiUser,
    model: str,
    session_factory: SessionFactory,
    broker: redis.Redis,
) -> None:
    keys = [f"big/{i:04d}.png" for i in range(100)]
    upload_files(client, api_user, {key: b"" for key in keys} | {"bigger/x.png": b""}, "image/png")
    job = _post(client, api_user, {"model_id": model, "prefix": "big/"})
    assert (job["state"], job["progress"]["total"]) == ("preparing", 0)
    assert queued_messages(broker, "default") == [("xmlx.prepare_batch", [job["id"]])]
    assert queued_messages(broker, "gpu") == []

    first = run_preparation(client, job["id"], max_slices=1, **SLICE)
    assert (first.state, first.paused, first.chunk_ids) == ("preparing", True, [])
    # The task is lost here. While preparing: progress and result pages show what is in.
    status = _job(client, api_user, job["id"])
    assert (status["state"], status["progress"]["total"]) == ("preparing", 32)
    page = client.get(
        f"/v1/jobs/{job['id']}/results", params={"limit": 20}, headers=api_user.headers
    ).json()
    assert [item["key"] for item in page["items"]] == keys[:20] and page["next_cursor"]
    assert {item["state"] for item in page["items"]} == {"pending"}

    later = utcnow() + timedelta(seconds=61)
    stalled = jobs.stalled_preparations(session_factory, grace_seconds=60, now=later)
    assert (job["id"], "explain") in stalled
    resumed = run_preparation(client, job["id"], **SLICE)
    assert resumed.state == "queued" and len(resumed.chunk_ids) == 4
    items, chunks = _rows(session_factory, job["id"])
    assert [(seq, key) for seq, key, _, _ in items] == list(enumerate(keys))
    assert [(seq, start, stop) for _, seq, start, stop in chunks] == [
        (0, 0, 32), (1, 32, 64), (2, 64, 96), (3, 96, 100)
    ]  # fmt: skip
    assert [c[0] for c in chunks] == resumed.chunk_ids
    assert _job(client, api_user, job["id"])["progress"]["total"] == 100
    # A copy of the task that arrives late finds nothing to do.
    assert run_preparation(client, job["id"], **SLICE).chunk_ids == []


def test_manifest_batch_keeps_the_list_order(
    client: TestClient, api_user: ApiUser, model: str, session_factory: SessionFactory
) -> None:
    keys = [f"cat/{i:03d}.png" for i in range(70, 0, -1)]
    manifest = ("\r\n".join(keys[:40]) + "\n\n  " + "\n".join(keys[40:]) + "\n").encode()
    upload_files(client, api_user, {"lists/cat.txt": manifest}, "text/plain")
    job = _post(client, api_user, {"model_id": model, "manifest_key": "lists/cat.txt"})
    assert job["state"] == "preparing"
    assert run_preparation(client, job["id"], **SLICE).state == "queued"
    items, _ = _rows(session_factory, job["id"])
    assert [key for _, key, _, _ in items] == keys


@pytest.mark.parametrize(
    ("manifest", "code"),
    [
        (None, "batch.listing_failed"),  # the object is gone when the task reads it
        (b"".join(b"k%03d.png\n" % i for i in range(40)) + b"k001.png\n", "batch.duplicate_keys"),
        (b"ok.png\n../../etc/passwd\n", "key.invalid"),
        (b"ok.png\n\xff\xfe.png\n", "manifest.invalid"),
        (b"\n\n", "batch.empty"),
    ],
)
def test_bad_sources_fail_the_job_with_a_code(
    client: TestClient, api_user: ApiUser, model: str, manifest: bytes | None, code: str
) -> None:
    upload_files(client, api_user, {"lists/bad.txt": manifest or b"a.png\n"}, "text/plain")
    job = _post(client, api_user, {"model_id": model, "manifest_key": "lists/bad.txt"})
    if manifest is None:
        store = client.app.state.xmlx.store  # type: ignore[attr-defined]
        store.delete(f"tenants/{api_user.tenant_id}/uploads/lists/bad.txt")
    assert run_preparation(client, job["id"], **SLICE).state == "failed"
    status = _job(client, api_user, job["id"])
    assert status["error"]["code"] == code
    assert status["progress"]["pending"] == 0  # items of earlier slices failed with it


def test_empty_prefix_fails_with_a_code(client: TestClient, api_user: ApiUser, model: str) -> None:
    job = _post(client, api_user, {"model_id": model, "prefix": "nothing-here/"})
    assert run_preparation(client, job["id"]).state == "failed"
    assert _job(client, api_user, job["id"])["error"]["code"] == "batch.empty"


def test_cancel_while_preparing_stops_the_preparation(
    client: TestClient, api_user: ApiUser, model: str, session_factory: SessionFactory
) -> None:
    upload_files(client, api_user, {f"c/{i:03d}.png": b"" for i in range(80)}, "image/png")
    job = _post(client, api_user, {"model_id": model, "prefix": "c/"})
    run_preparation(client, job["id"], max_slices=1, **SLICE)
    answer = client.post(f"/v1/jobs/{job['id']}/cancel", headers=api_user.headers)
    assert answer.status_code == 200 and answer.json()["state"] == "cancelled"
    assert run_preparation(client, job["id"], **SLICE).state == "cancelled"
    items, chunks = _rows(session_factory, job["id"])
    assert len(items) == 32 and {state for *_, state in items} == {"cancelled"}
    assert len(chunks) == 1


def test_exports_stream_every_item_in_three_formats(
    client: TestClient, api_user: ApiUser, model: str, session_factory: SessionFactory
) -> None:
    job = submit(client, api_user, model, 1203, kind="explanations")
    finish(client, session_factory, api_user, {**job, "progress": {"total": 7}}, fail_every=3)
    url = f"/v1/jobs/{job['id']}/results"
    pages, cursor = [], None
    while True:
        params = {"limit": 1000} | ({"cursor": cursor} if cursor else {})
        page = client.get(url, params=params, headers=api_user.headers).json()
        pages += page["items"]
        if (cursor := page["next_cursor"]) is None:
            break
    expected = [(i["key"], i["state"], (i["error"] or {}).get("code"), i["result"]) for i in pages]

    def fetch(fmt: str) -> bytes:
        answer = client.get(url, params={"format": fmt}, headers=api_user.headers)
        assert answer.status_code == 200, answer.text
        return answer.content

    lines = [json.loads(line) for line in fetch("jsonl").decode().splitlines()]
    assert [(r["key"], r["state"], (r["error"] or {}).get("code"), r["result"]) for r in lines] == (
        expected
    )
    rows = list(csv.DictReader(io.StringIO(fetch("csv").decode())))
    assert [
        (r["key"], r["state"], r["error_code"] or None, json.loads(r["result"] or "null"))
        for r in rows
    ] == expected
    parquet = pq.ParquetFile(io.BytesIO(fetch("parquet")))
    assert parquet.num_row_groups == 2  # one per page of 1,000
    table = parquet.read().to_pylist()
    assert [
        (r["key"], r["state"], r["error_code"], json.loads(r["result"] or "null")) for r in table
    ] == expected
    assert table[0]["finished_at"] is not None and table[-1]["finished_at"] is None
    assert json.loads(table[0]["artifacts"])["heatmap.png"].startswith("http")


def test_a_listing_over_the_tenants_cost_limit_fails_with_quota_job_cost(
    client: TestClient, api_user: ApiUser, model: str, session_factory: SessionFactory
) -> None:
    """At submit a prefix counts as one image; the listed count is checked at the end."""
    upload_files(client, api_user, {f"costly/{i}.png": b"" for i in range(40)}, "image/png")
    with session_scope(session_factory) as session:
        session.get(Tenant, api_user.tenant_id).max_job_forward_passes = 30 * 1000
    body = {"model_id": model, "prefix": "costly/", "params": {"num_samples": 1000}}
    job = _post(client, api_user, body)  # one image: 1,000 passes, within 30,000
    assert run_preparation(client, job["id"], **SLICE).state == "failed"
    error = _job(client, api_user, job["id"])["error"]
    assert error["code"] == "quota.job_cost" and "40 images" in error["message"]
