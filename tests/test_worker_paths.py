"""The worker's paths in-process, fast: workers/runner.py, workers/training.py and
workers/tasks.py on the real database and a real store, with a tiny model.

Everything is checked through what a user or operator sees (job and model states,
error codes, recorded items), not through the runner's internals, so the tests hold
whatever the leasing underneath looks like. Events "mid-chunk" (a cancel, a second
worker taking an expired lease) are injected at a fixed point by `ReadHookStore`: the
real store, which runs a callback when one given image is read, so the timing is
deterministic instead of a race with a thread.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest

from tests.kernel_fixtures import TEST_PEPPER, make_local_store
from workers.context import WorkerContext
from workers.runner import run_chunk
from workers.train_state import cached_images
from workers.training import run_training
from xmlcore.datasets import generate_dishes
from xmlcore.images import encode_png
from xmlcore.labels import manifest_to_csv
from xmlx import jobs, quotas
from xmlx import repository as repo
from xmlx.db import SessionFactory, session_scope, utcnow
from xmlx.embedded_redis import free_port
from xmlx.models import Model, ModelState, Purge
from xmlx.settings import Settings
from xmlx.storage import LocalObjectStore, ObjectStore, S3ObjectStore, StorageError

LEASE = 30
TRAINING = {
    "layer_sizes": [8, 4], "epochs": 1, "batch_size": 16, "image_size": [32, 32],
    "ae_params": {"epochs": 5}, "regressor_params": {"head_units": [8]}, "seed": 0,
}  # fmt: skip
IMAGES = "uploads/imgs/"


class ReadHookStore:
    """A real store that calls `hook` once, right after `key` is read."""

    def __init__(self, store: ObjectStore, key: str, hook: Callable[[], None]) -> None:
        self.store, self.key, self.hook = store, key, hook
        self.fired = False

    def get_bytes(self, key: str, max_bytes: int | None = None) -> bytes:
        data = self.store.get_bytes(key, max_bytes)
        if key == self.key and not self.fired:
            self.fired = True
            self.hook()
        return data

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)


@dataclass
class Setup:
    settings: Settings
    sessions: SessionFactory
    store: LocalObjectStore
    tenant_id: str
    image_keys: list[str]

    def context(self, store: Any = None, owner: str | None = None) -> WorkerContext:
        return WorkerContext(
            self.settings, self.sessions, store or self.store, owner or f"w-{uuid.uuid4().hex}"
        )

    def train_job(self, n_images: int, **training: Any) -> jobs.CreatedJob:
        keys = self.image_keys[:n_images]
        manifest_key = f"manifests/{uuid.uuid4().hex}.csv"
        data = generate_dishes("tiny", seed=0, image_size=32)
        labels = [data.label_space.labels_of(i) for i in range(n_images)]
        self.store.put_bytes(manifest_key, manifest_to_csv(keys, labels))
        model_id = self.new_model()
        params = {
            "dataset": {"manifest_key": manifest_key, "image_prefix": IMAGES},
            "training": {**TRAINING, **training},
        }
        return jobs.create_job(
            self.sessions, tenant_id=self.tenant_id, kind="train", item_keys=["model"],
            params=params, model_id=model_id, chunk_size=1,
        )  # fmt: skip

    def new_model(self) -> str:
        with session_scope(self.sessions) as session:
            dataset = repo.create_dataset(session, self.tenant_id, name="d")
            return repo.create_model(session, self.tenant_id, dataset.id, name="m").id

    def predict_job(self, model_id: str, n_items: int) -> jobs.CreatedJob:
        return jobs.create_job(
            self.sessions, tenant_id=self.tenant_id, kind="predict",
            item_keys=self.image_keys[:n_items], params={"image_prefix": IMAGES, "k": 3},
            model_id=model_id, chunk_size=n_items,
        )  # fmt: skip

    def job(self, job_id: str) -> Any:
        return jobs.get_job(self.sessions, self.tenant_id, job_id)

    def model(self, model_id: str) -> Model:
        with session_scope(self.sessions) as session:
            row = session.get(Model, model_id)
            assert row is not None
            session.expunge(row)
            return row

    def items(self, job_id: str) -> dict[str, tuple[str, str | None]]:
        with session_scope(self.sessions) as session:
            page = repo.list_items(session, self.tenant_id, job_id, limit=1000)
            assert page is not None
            return {row.item_key: (row.state, row.error_code) for row in page.rows}


@pytest.fixture(scope="module")
def setup(
    session_factory: SessionFactory, database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Setup:
    root = tmp_path_factory.mktemp("worker-paths")
    settings = Settings(
        env="test", data_dir=root / "data", database_url=database_url,
        storage_backend="local", local_storage_root=root / "store", api_key_pepper=TEST_PEPPER,
        lease_seconds=LEASE, images_per_batch=2,
        task_soft_time_limit_seconds=6, task_hard_time_limit_seconds=12, wakeup_budget_seconds=3,
    )  # fmt: skip
    store = make_local_store(root / "store")
    data = generate_dishes("tiny", seed=0, image_size=32)
    keys = [f"img_{i:03d}.png" for i in range(20)]
    for key, image in zip(keys, data.images, strict=False):
        store.put_bytes(IMAGES + key, encode_png(image))
    with session_scope(session_factory) as session:
        tenant_id = repo.create_tenant(session, f"workers-{uuid.uuid4().hex}").id
    return Setup(settings, session_factory, store, tenant_id, keys)


@pytest.fixture(scope="module")
def trained(setup: Setup) -> tuple[str, str]:
    """(model id, training job id) of a model trained on 20 images by `run_training`."""
    created = setup.train_job(20)
    status = run_training(setup.context(), created.chunk_ids[0])
    assert status == "done"
    return str(created.job.model_id), created.job.id


# --- training ---------------------------------------------------------------------


def test_training_stores_the_model_and_held_out_figures(
    setup: Setup, trained: tuple[str, str]
) -> None:
    model_id, job_id = trained
    model = setup.model(model_id)
    assert model.state == ModelState.READY and model.artifact_key
    assert setup.store.exists(model.artifact_key)
    with session_scope(setup.sessions) as session:  # the archive counts for its tenant
        assert quotas.stored_bytes(session, setup.tenant_id) >= (
            setup.store.head(model.artifact_key) or 1
        )
    metrics = model.metrics or {}
    assert (metrics["n_train"], metrics["n_test"]) == (18, 2)
    assert 0.0 <= metrics["p@1"] <= 1.0 and "held_out" not in metrics
    assert setup.job(job_id).state == "succeeded"


def test_training_on_fewer_than_ten_images_stores_no_held_out_figure(setup: Setup) -> None:
    created = setup.train_job(8)
    assert run_training(setup.context(), created.chunk_ids[0]) == "done"
    metrics = setup.model(str(created.job.model_id)).metrics or {}
    assert (metrics["n_train"], metrics["n_test"]) == (8, 0)
    assert not any(key.startswith(("p@", "psp@", "ndcg@")) for key in metrics), metrics
    assert "no held-out set" in metrics["held_out"]


def test_training_failure_leaves_the_model_failed_with_a_code(setup: Setup) -> None:
    created = setup.train_job(3)
    missing = {**created.job.params["dataset"], "image_prefix": "uploads/nothing-here/"}
    with session_scope(setup.sessions) as session:
        row = repo.get_job(session, setup.tenant_id, created.job.id)
        assert row is not None
        row.params = {**row.params, "dataset": missing}
    assert run_training(setup.context(), created.chunk_ids[0]) == "failed"
    model = setup.model(str(created.job.model_id))
    assert (model.state, model.error_code) == (ModelState.FAILED, "dataset.no_images")
    job = setup.job(created.job.id)
    assert (job.state, job.failed) == ("failed", 1)
    assert setup.items(created.job.id)["model"] == ("failed", "dataset.no_images")


def _when_training(setup: Setup, model_id: str, action: Callable[[], None]) -> threading.Thread:
    """Run `action` once the model is `training` (the epoch callbacks then see it)."""

    def watch() -> None:
        deadline = time.monotonic() + 60
        while setup.model(model_id).state != ModelState.TRAINING:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        action()

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def test_training_cancelled_mid_way_fails_the_model_as_cancelled(setup: Setup) -> None:
    created = setup.train_job(12, ae_params={"epochs": 400}, epochs=3)
    job_id, model_id = created.job.id, str(created.job.model_id)
    watcher = _when_training(
        setup, model_id, lambda: jobs.request_cancel(setup.sessions, setup.tenant_id, job_id)
    )
    assert run_training(setup.context(), created.chunk_ids[0]) == "cancelled"
    watcher.join()
    model = setup.model(model_id)
    assert (model.state, model.error_code, model.artifact_key) == (
        ModelState.FAILED, "job.cancelled", None
    )  # fmt: skip
    assert setup.job(job_id).state == "cancelled"


def test_training_that_lost_its_lease_leaves_the_job_to_the_new_owner(setup: Setup) -> None:
    created = setup.train_job(12, ae_params={"epochs": 400}, epochs=3)
    chunk_id, model_id = created.chunk_ids[0], str(created.job.model_id)
    later = utcnow() + timedelta(seconds=LEASE + 5)  # as if the first lease had expired

    def second_worker_takes_over() -> None:
        claim = jobs.claim_chunk(
            setup.sessions, chunk_id, "second", lease_seconds=LEASE, max_attempts=5, now=later
        )
        assert claim.claimed

    watcher = _when_training(setup, model_id, second_worker_takes_over)
    assert run_training(setup.context(), chunk_id) == "lease_lost"
    watcher.join()
    model = setup.model(model_id)
    assert model.state == ModelState.TRAINING and model.error_code is None  # not a cancel
    job = setup.job(created.job.id)
    assert job.state == "running" and (job.done, job.failed) == (0, 0)


# --- explanation / prediction chunks ------------------------------------------------


def test_a_chunk_records_every_item(setup: Setup, trained: tuple[str, str]) -> None:
    created = setup.predict_job(trained[0], 5)
    outcome = run_chunk(setup.context(), created.chunk_ids[0])
    assert (outcome.status, outcome.recorded) == ("done", 5)
    assert set(setup.items(created.job.id).values()) == {("succeeded", None)}
    assert setup.job(created.job.id).state == "succeeded"


def test_an_explanation_chunk_with_a_new_sampler_records_stability(
    setup: Setup, trained: tuple[str, str]
) -> None:
    params = {"num_samples": 60, "sampler": "antithetic", "adaptive": {"criterion": "stability",
              "min_samples": 20, "batch": 20}}  # fmt: skip
    created = jobs.create_job(
        setup.sessions, tenant_id=setup.tenant_id, kind="explain",
        item_keys=setup.image_keys[:2], model_id=trained[0], chunk_size=2,
        params={"image_prefix": IMAGES, "method": "lime", "params": params},
    )  # fmt: skip
    with session_scope(setup.sessions) as session:
        stored_before = quotas.stored_bytes(session, setup.tenant_id)
    assert run_chunk(setup.context(), created.chunk_ids[0]).recorded == 2
    job = setup.job(created.job.id)
    assert job.state == "succeeded" and 0 <= job.result_metrics["stability@5"]["sum"] <= 2
    with session_scope(setup.sessions) as session:
        page = repo.list_items(session, setup.tenant_id, created.job.id, limit=10)
        assert page is not None
        summaries = [row.result["explanations"][0] for row in page.rows]
        written = quotas.stored_bytes(session, setup.tenant_id) - stored_before
    # The tenant's storage account grew by exactly the files the rows name.
    named = [key for row in page.rows for key in (row.artifacts or {}).values()]
    assert named and written == sum(setup.store.head(key) or 0 for key in named)
    assert {s["provenance"]["sampler"] for s in summaries} == {"antithetic"}
    assert all(0 <= s["metrics"]["stability@5"] <= 1 for s in summaries)


class PendingUploadsPurge:
    """A pending uploads purge of `prefix` (a storage prefix), for the test's duration:
    what `DELETE /v1/uploads` leaves until the purge runs. Marked done afterwards, so
    the module's other tests read those images again."""

    def __init__(self, setup: Setup, prefix: str) -> None:
        self.setup, self.prefix = setup, prefix

    def __enter__(self) -> str:
        now = utcnow()
        with session_scope(self.setup.sessions) as session:
            row = Purge(
                id=f"prg_{uuid.uuid4().hex[:12]}", tenant_id=self.setup.tenant_id,
                kind="uploads", target=self.prefix, state="pending", stage="start",
                objects_deleted=0, bytes_freed=0, rows_deleted=0, created_at=now,
                updated_at=now,
            )  # fmt: skip
            session.add(row)
            self.purge_id = row.id
        return self.purge_id

    def __exit__(self, *exc: object) -> None:
        with session_scope(self.setup.sessions) as session:
            row = session.get(Purge, self.purge_id)
            assert row is not None
            row.state = "done"


def test_an_image_under_deleted_uploads_reads_as_missing_before_the_purge(
    setup: Setup, trained: tuple[str, str]
) -> None:
    keys = setup.image_keys[10:15]  # 3 batches: the prefetch path and the first read
    created = jobs.create_job(
        setup.sessions, tenant_id=setup.tenant_id, kind="predict", item_keys=keys,
        params={"image_prefix": IMAGES, "k": 3}, model_id=trained[0], chunk_size=5,
    )  # fmt: skip
    with PendingUploadsPurge(setup, IMAGES + "img_01") as purge_id:
        gone = {key for key in keys if key.startswith("img_01")}
        assert run_chunk(setup.context(), created.chunk_ids[0]).status == "done"
    items = setup.items(created.job.id)
    assert {key for key, (state, _) in items.items() if state == "succeeded"} == set(keys) - gone
    assert {items[key] for key in gone} == {("failed", "image.missing")}
    with session_scope(setup.sessions) as session:
        page = repo.list_items(session, setup.tenant_id, created.job.id, limit=10)
        assert page is not None
        assert all(purge_id in (row.error_message or "") for row in page.rows if row.error_code)
    assert all(setup.store.exists(IMAGES + key) for key in gone)  # only the purge deletes


def test_training_leaves_out_images_under_deleted_uploads(setup: Setup) -> None:
    keys = tuple(setup.image_keys[8:14])  # img_008 .. img_013
    with PendingUploadsPurge(setup, IMAGES + "img_00"):
        _records, kept = cached_images(
            setup.context(), setup.tenant_id, f"m-{uuid.uuid4().hex}", IMAGES, keys, (32, 32)
        )
    assert kept.tolist() == [2, 3, 4, 5]  # img_008 and img_009 are deleted
    _records, kept = cached_images(
        setup.context(), setup.tenant_id, f"m-{uuid.uuid4().hex}", IMAGES, keys, (32, 32)
    )
    assert kept.tolist() == [0, 1, 2, 3, 4, 5]


def test_cancel_mid_chunk_stops_before_the_next_batch(
    setup: Setup, trained: tuple[str, str]
) -> None:
    created = setup.predict_job(trained[0], 6)
    job_id = created.job.id
    store = ReadHookStore(
        setup.store, IMAGES + setup.image_keys[0],
        lambda: jobs.request_cancel(setup.sessions, setup.tenant_id, job_id),
    )  # fmt: skip
    outcome = run_chunk(setup.context(store), created.chunk_ids[0])
    assert store.fired and outcome.status == "cancelled"
    items = setup.items(job_id)
    later = [items[key][0] for key in setup.image_keys[2:6]]  # batches 2 and 3
    assert "succeeded" not in later and ("failed", None) not in items.values()
    assert setup.job(job_id).state == "cancelled"


def test_lease_lost_mid_chunk_stops_and_the_new_owner_finishes(
    setup: Setup, trained: tuple[str, str]
) -> None:
    created = setup.predict_job(trained[0], 6)
    chunk_id, job_id = created.chunk_ids[0], created.job.id
    later = utcnow() + timedelta(seconds=LEASE + 5)

    def second_worker_takes_over() -> None:
        claim = jobs.claim_chunk(
            setup.sessions, chunk_id, "second", lease_seconds=LEASE, max_attempts=5, now=later
        )
        assert claim.claimed

    store = ReadHookStore(setup.store, IMAGES + setup.image_keys[0], second_worker_takes_over)
    outcome = run_chunk(setup.context(store), chunk_id)
    assert store.fired and outcome.status == "lease_lost"
    items = setup.items(job_id)
    assert all(items[key][0] == "pending" for key in setup.image_keys[2:6])
    assert setup.job(job_id).state == "running"
    finished = run_chunk(setup.context(owner="second"), chunk_id)
    assert finished.status == "done"
    assert set(setup.items(job_id).values()) == {("succeeded", None)}
    job = setup.job(job_id)
    assert (job.state, job.done, job.failed) == ("succeeded", 6, 0)


class FirstReadFailsStore:
    """A real store whose first read of each of `keys` fails transiently."""

    def __init__(self, store: ObjectStore, keys: set[str]) -> None:
        self.store, self.keys = store, set(keys)
        self.reads: dict[str, int] = {}

    def get_bytes(self, key: str, max_bytes: int | None = None) -> bytes:
        self.reads[key] = self.reads.get(key, 0) + 1
        if key in self.keys and self.reads[key] == 1:
            raise StorageError("storage.unavailable", "flaky", transient=True)
        return self.store.get_bytes(key, max_bytes)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)


def _explain_results(
    setup: Setup, model_id: str, store: FirstReadFailsStore, seen: list[str] | None = None
) -> dict[str, Any]:
    """Each item's result after an explanation chunk of 6 images (3 batches). ``seen``
    gets the first image's state when the third image (batch 2) is first read."""
    params = {"num_samples": 30, "batch_size": 16, "seed": 5}
    created = jobs.create_job(
        setup.sessions, tenant_id=setup.tenant_id, kind="explain",
        item_keys=setup.image_keys[:6], model_id=model_id, chunk_size=6,
        params={"image_prefix": IMAGES, "method": "lime", "params": params},
    )  # fmt: skip
    job_id, first = created.job.id, setup.image_keys[0]
    hooked: Any = store
    if seen is not None:
        state = lambda: seen.append(setup.items(job_id)[first][0])  # noqa: E731
        hooked = ReadHookStore(store, IMAGES + setup.image_keys[2], state)
    assert run_chunk(setup.context(hooked), created.chunk_ids[0]).status == "done"
    with session_scope(setup.sessions) as session:
        page = repo.list_items(session, setup.tenant_id, created.job.id, limit=10)
        assert page is not None
        assert {row.state for row in page.rows} == {"succeeded"}
        return {row.item_key: (row.result or {})["explanations"] for row in page.rows}


def test_a_prefetch_that_hit_an_outage_is_read_again_with_the_same_results(
    setup: Setup, trained: tuple[str, str]
) -> None:
    """Batches 2 and 3 are first read ahead, while the batch before is explained. When
    those reads fail transiently, the batch is read again the normal way: the items
    succeed with the results the prefetched images give."""
    prefetched, seen = FirstReadFailsStore(setup.store, set()), list[str]()
    want = _explain_results(setup, trained[0], prefetched, seen)
    assert seen == ["pending"]  # batch 2 was read while batch 1 was being explained
    flaky_keys = {IMAGES + setup.image_keys[2], IMAGES + setup.image_keys[5]}
    flaky = FirstReadFailsStore(setup.store, flaky_keys)
    assert _explain_results(setup, trained[0], flaky) == want
    assert all(flaky.reads[key] == 2 for key in flaky_keys)
    assert set(prefetched.reads.values()) == {1}  # prefetched images are not read again


def _unreachable_s3() -> S3ObjectStore:
    """A real S3 client whose endpoint refuses connections: every call is transient."""
    return S3ObjectStore(
        "down", endpoint_url=f"http://127.0.0.1:{free_port()}", region="us-east-1",
        access_key="k", secret_key="s", max_attempts=1,
    )  # fmt: skip


def test_a_short_storage_outage_is_waited_out_inside_the_lease(
    setup: Setup, trained: tuple[str, str]
) -> None:
    created = setup.predict_job(trained[0], 4)
    ctx = setup.context()
    ctx.model(trained[0])  # loaded before the outage, as a warm worker has it
    ctx.store = _unreachable_s3()
    threading.Timer(1.0, lambda: setattr(ctx, "store", setup.store)).start()
    outcome = run_chunk(ctx, created.chunk_ids[0])
    assert (outcome.status, outcome.recorded) == ("done", 4)
    job = setup.job(created.job.id)
    assert (job.state, job.done, job.failed) == ("succeeded", 4, 0)


def test_a_long_storage_outage_raises_for_a_retry_and_fails_no_item(
    setup: Setup, trained: tuple[str, str]
) -> None:
    created = setup.predict_job(trained[0], 4)
    ctx = setup.context()
    ctx.model(trained[0])
    ctx.store = _unreachable_s3()
    with pytest.raises(StorageError) as raised:
        run_chunk(ctx, created.chunk_ids[0])
    assert raised.value.transient and raised.value.code == "storage.unavailable"
    assert {state for state, _ in setup.items(created.job.id).values()} == {"pending"}
    ctx.store = setup.store  # storage is back: the retry finishes the chunk
    assert run_chunk(ctx, created.chunk_ids[0]).status == "done"
    assert setup.job(created.job.id).state == "succeeded"


@pytest.mark.parametrize(
    ("artifact", "code"),
    [(None, "model.not_ready"), (b"not a model archive", None), ("missing", "storage.not_found")],
)
def test_a_model_that_cannot_load_fails_the_job_with_a_code(
    setup: Setup, artifact: bytes | str | None, code: str | None
) -> None:
    model_id = setup.new_model()
    key = None if artifact is None else f"models/{model_id}/model.zip"
    if isinstance(artifact, bytes):
        setup.store.put_bytes(str(key), artifact)
    with session_scope(setup.sessions) as session:
        repo.transition_model(
            session, model_id, [ModelState.PENDING], ModelState.READY, artifact_key=key
        )
    created = setup.predict_job(model_id, 2)
    assert run_chunk(setup.context(), created.chunk_ids[0]).status == "model_failed"
    job = setup.job(created.job.id)
    assert job.state == "failed" and job.error_code
    if code is not None:
        assert job.error_code == code


# --- the task layer -----------------------------------------------------------------


def _task(fn: Callable[[], Any]) -> Any:
    from workers.tasks import xmlx_task

    return xmlx_task(f"tests.worker_paths.{uuid.uuid4().hex}", "default", max_retries=2)(fn)


def test_the_task_wrapper_retries_transient_errors_only() -> None:
    from workers.tasks import TransientError

    calls = {"outage": 0, "bad_input": 0}

    def outage() -> None:
        calls["outage"] += 1
        raise StorageError("storage.unavailable", "down", transient=True)

    def bad_input() -> None:
        calls["bad_input"] += 1
        raise StorageError("storage.not_found", "gone")

    transient = _task(outage).apply()
    assert isinstance(transient.result, TransientError) and calls["outage"] == 3  # 1 + 2 retries
    assert "storage.unavailable" in str(transient.result)
    permanent = _task(bad_input).apply()
    assert permanent.failed() and calls["bad_input"] == 1  # a bad input is not retried
    trace = permanent.traceback
    assert "storage.not_found" in trace and "TransientError" not in trace

    def works() -> str:
        return "ok"

    assert _task(works).apply().result == "ok"


def test_the_run_chunk_task_trains_and_explains_through_the_worker_context(
    setup: Setup, trained: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from workers import tasks

    # the test's context (its database and store) instead of one built from the env
    monkeypatch.setattr(tasks, "worker_context", lambda: setup.context())
    created = setup.predict_job(trained[0], 2)
    # A message is a wake-up: the worker also runs whatever else is queued in this
    # shared test database (other tests' leftovers), so look for this job's outcome.
    statuses = tasks.run_chunk.apply((created.chunk_ids[0], "predict")).result.split(",")
    assert "done" in statuses
    assert setup.job(created.job.id).state == "succeeded"
    # the chunk again (a duplicate delivery): nothing to do, nothing recorded twice
    again = tasks.run_chunk.apply((created.chunk_ids[0], "predict")).result.split(",")
    assert "done" not in again and setup.job(created.job.id).done == 2
