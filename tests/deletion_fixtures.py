"""Finished jobs with results and artifact files, made the way workers record them
(`xmlx.jobs.record_items_success`) without running a model: for deletion tests."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from xmlx import jobs
from xmlx.db import SessionFactory
from xmlx.keys import item_artifact_key
from xmlx.storage import ObjectStore

FILES = ("heatmap.png", "mask.png")
TOKEN = "a1-0123abcd"
RECORD_BATCH = 500


def finished_job(
    sessions: SessionFactory,
    store: ObjectStore,
    tenant_id: str,
    n_items: int,
    *,
    model_id: str | None = None,
    kind: str = "explain",
) -> str:
    """A succeeded job of `n_items`, each with two small files in the store."""
    keys = [f"img_{i:06d}.png" for i in range(n_items)]
    created = jobs.create_job(
        sessions, tenant_id=tenant_id, kind=kind, item_keys=keys, model_id=model_id,
        chunk_size=100, max_items=max(n_items, 1),
    )  # fmt: skip
    job_id = created.job.id
    artifacts = {
        key: {name: item_artifact_key(tenant_id, job_id, key, name, TOKEN) for name in FILES}
        for key in keys
    }
    puts = [path for names in artifacts.values() for path in names.values()]
    with ThreadPoolExecutor(32) as pool:
        list(pool.map(lambda path: store.put_bytes(path, b"\x89PNG" + path.encode()), puts))
    for start in range(0, n_items, RECORD_BATCH):
        batch = [
            jobs.ItemSuccess(key, {"labels": []}, artifacts[key])
            for key in keys[start : start + RECORD_BATCH]
        ]
        jobs.record_items_success(sessions, job_id, batch)
    return job_id
