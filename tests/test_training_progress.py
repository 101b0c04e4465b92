"""Live training progress: the stored curve (appended across a resume), the lease
holder's writes only, the worker's once-a-second throttle, the API field, the CLI."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from tests.api_fixtures import ApiUser, serve_app
from tests.test_api_batches import small_dataset
from tests.test_web import register_dishes, sign_in
from workers.context import WorkerContext
from workers.progress import TrainingProgress, stage_epochs
from workers.training import run_training
from xmlcore.datasets import generate_dishes
from xmlx import jobs
from xmlx import repository as repo
from xmlx.cli import app as cli_app
from xmlx.db import SessionFactory, session_scope, utcnow
from xmlx.jobs.progress import EpochRecord, ProgressUpdate, merge_progress
from xmlx.settings import Settings
from xmlx.storage import make_object_store

LEASE_SECONDS = 60


def epochs(stage: str, first: int, last: int, loss0: float = 1.0) -> tuple[EpochRecord, ...]:
    return tuple(
        EpochRecord(stage, e, loss0 / e, loss0 / e + 0.1, 0.5) for e in range(first, last + 1)
    )


def test_history_is_keyed_by_stage_and_epoch() -> None:
    now = utcnow()
    first = merge_progress(
        None, ProgressUpdate("autoencoder", 50, 3.0, epochs("autoencoder", 1, 3)), now
    )
    assert first["epoch"] == 3 and first["epochs"] == 50 and first["loss"] == pytest.approx(1 / 3)
    cnn = merge_progress(first, ProgressUpdate("cnn", 30, None, epochs("cnn", 1, 4)), now)
    assert cnn["history"]["autoencoder"]["epoch"] == [1, 2, 3]
    assert cnn["history"]["cnn"]["epoch"] == [1, 2, 3, 4]
    # A run resumed from its checkpoint after epoch 2 (the lost worker had reached 4):
    # it continues the curve from 3, and the epochs after the checkpoint leave it.
    resumed = merge_progress(cnn, ProgressUpdate("loading"), now)
    assert resumed["history"] == cnn["history"] and resumed["epoch"] is None
    resumed = merge_progress(resumed, ProgressUpdate("cnn", 30, 9.0, epochs("cnn", 3, 3, 2.0)), now)
    assert resumed["history"]["cnn"]["epoch"] == [1, 2, 3]
    assert resumed["history"]["cnn"]["loss"] == [1.0, 0.5, pytest.approx(2 / 3)]
    # A training started over: a new autoencoder epoch 1 drops everything after it.
    again = merge_progress(
        resumed, ProgressUpdate("autoencoder", 50, None, epochs("autoencoder", 1, 1)), now
    )
    assert again["history"] == {
        "autoencoder": {"epoch": [1], "loss": [1.0], "val_loss": [1.1], "seconds": [0.5]}
    }
    with pytest.raises(ValueError):
        ProgressUpdate("sleeping")


def train_job(sessions: SessionFactory, tenant_id: str) -> tuple[str, str]:
    created = jobs.create_job(sessions, tenant_id=tenant_id, kind="train", item_keys=["model"],
                              params={"training": {"epochs": 4}}, chunk_size=1)  # fmt: skip
    return created.job.id, created.chunk_ids[0]


def claim(sessions: SessionFactory, chunk_id: str, owner: str, **kw: Any) -> jobs.LeaseRef:
    claimed = jobs.claim_chunk(sessions, chunk_id, owner, lease_seconds=LEASE_SECONDS,
                               max_attempts=5, **kw)  # fmt: skip
    assert claimed.claimed
    return jobs.LeaseRef(chunk_id, owner)


def stored(sessions: SessionFactory, job_id: str) -> dict[str, Any]:
    with session_scope(sessions) as session:
        job = repo.get_job_unscoped(session, job_id)
        assert job is not None
        return dict(job.training_progress or {})


def test_only_the_lease_holder_writes_and_a_new_holder_appends(
    session_factory: SessionFactory, tenant_id: str
) -> None:
    job_id, chunk_id = train_job(session_factory, tenant_id)
    first = claim(session_factory, chunk_id, "w1")
    update = ProgressUpdate("cnn", 4, 2.0, epochs("cnn", 1, 2))
    assert jobs.record_training_progress(session_factory, job_id, update, lease=first)
    # w1 stalls past its lease; w2 takes the chunk over and resumes after epoch 2.
    later = utcnow() + timedelta(seconds=LEASE_SECONDS + 1)
    second = claim(session_factory, chunk_id, "w2", now=later)
    stale = ProgressUpdate("cnn", 4, 0.0, epochs("cnn", 3, 4, loss0=99.0))
    assert not jobs.record_training_progress(session_factory, job_id, stale, lease=first)
    assert stored(session_factory, job_id)["history"]["cnn"]["epoch"] == [1, 2]
    fresh = ProgressUpdate("cnn", 4, 0.0, epochs("cnn", 3, 3))
    assert jobs.record_training_progress(session_factory, job_id, fresh, lease=second)
    progress = stored(session_factory, job_id)
    assert progress["history"]["cnn"]["epoch"] == [1, 2, 3] and progress["epoch"] == 3
    assert max(progress["history"]["cnn"]["loss"]) == 1.0  # none of w1's late epochs


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_worker_writes_at_most_once_a_second_and_at_each_stage_change(
    session_factory: SessionFactory, tenant_id: str
) -> None:
    job_id, chunk_id = train_job(session_factory, tenant_id)
    lease = claim(session_factory, chunk_id, "w1")
    clock = Clock()
    totals = stage_epochs({"epochs": 20, "ae_params": {"epochs": 8}})
    assert totals == {"autoencoder": 8, "cnn": 20}
    progress = TrainingProgress(session_factory, job_id, lease, epochs=totals, clock=clock)
    progress.stage("loading")
    assert stored(session_factory, job_id)["stage"] == "loading"
    progress.stage("autoencoder")
    for epoch in range(7):  # 0.3 s epochs: written every 4th (1.2 s after the last write)
        clock.now += 0.3
        progress.epoch("autoencoder", epoch, {"loss": 1.0 / (epoch + 1), "val_loss": 0.5})
        history = stored(session_factory, job_id)["history"]
        assert len(history.get("autoencoder", {}).get("epoch", [])) == [0, 0, 0, 4, 4, 4, 4][epoch]
    clock.now += 2.0  # the CNN is built and its first epoch (slow: compiling) runs
    progress.stage("regressor")
    value = stored(session_factory, job_id)
    assert value["stage"] == "cnn" and value["epochs"] == 20 and value["epoch"] is None
    assert value["history"]["autoencoder"]["epoch"] == list(range(1, 8))  # stopped early: flushed
    for epoch, seconds in enumerate([5.0, 2.0, 2.0]):
        clock.now += seconds
        progress.epoch("regressor", epoch, {"loss": 0.2, "val_loss": float("nan")})
    value = stored(session_factory, job_id)
    assert value["epoch"] == 3 and value["val_loss"] is None  # NaN is not JSON
    assert value["history"]["cnn"]["seconds"] == [5.0, 2.0, 2.0]
    assert value["eta_seconds"] == pytest.approx(17 * 2.0)  # the compiling epoch left out


def test_the_job_json_carries_the_progress(
    client: TestClient, api_user: ApiUser, session_factory: SessionFactory
) -> None:
    job_id = _submitted_training(client, api_user)
    with session_scope(session_factory) as session:
        chunk_id = repo.chunk_ids(session, job_id)[0]
    lease = claim(session_factory, chunk_id, "w1")
    answer = client.get(f"/v1/jobs/{job_id}", headers=api_user.headers).json()
    assert answer["training"] is None
    update = ProgressUpdate("cnn", 3, 4.0, epochs("autoencoder", 1, 2) + epochs("cnn", 1, 1))
    jobs.record_training_progress(session_factory, job_id, update, lease=lease)
    training = client.get(f"/v1/jobs/{job_id}", headers=api_user.headers).json()["training"]
    assert training["stage"] == "cnn" and training["epoch"] == 1 and training["epochs"] == 3
    assert (
        training["loss"] == 1.0 and training["val_loss"] == 1.1 and training["eta_seconds"] == 4.0
    )
    assert training["history"]["autoencoder"]["loss"] == [1.0, 0.5]
    schema = client.get("/openapi.json").json()["components"]["schemas"]
    assert {"stage", "epoch", "epochs", "eta_seconds", "history"} <= set(
        schema["TrainingProgress"]["properties"]
    )


def _submitted_training(client: TestClient, user: ApiUser) -> str:
    dataset_id = small_dataset(client, user)["id"]
    body = {"dataset_id": dataset_id, "training": {"epochs": 3, "layer_sizes": [2]}}
    answer = client.post("/v1/models", json=body, headers=user.headers)
    assert answer.status_code == 202, answer.text
    return str(answer.json()["job"]["id"])


def test_cli_status_watch_follows_the_epochs(
    client: TestClient,
    api_user: ApiUser,
    session_factory: SessionFactory,
    make_api_settings: Callable[..., Any],
) -> None:
    job_id = _submitted_training(client, api_user)
    with session_scope(session_factory) as session:
        chunk_id = repo.chunk_ids(session, job_id)[0]
    lease = claim(session_factory, chunk_id, "w1")

    def train() -> None:  # what the worker records, an epoch every 1.5 s, then the model
        for epoch in (1, 2, 3):
            update = ProgressUpdate("cnn", 3, 1.5 * (3 - epoch), epochs("cnn", epoch, epoch))
            jobs.record_training_progress(session_factory, job_id, update, lease=lease)
            time.sleep(1.5)
        jobs.record_item_success(session_factory, job_id, "model", result={}, lease=lease)

    worker = threading.Thread(target=train)
    with serve_app(make_api_settings) as (base, _settings):
        worker.start()
        args = ["status", job_id, "--watch", "--api-url", base, "--api-key", api_user.key]
        watched = CliRunner().invoke(cli_app, args)
        worker.join()
        final = CliRunner().invoke(cli_app, args[:2] + args[3:])
    assert watched.exit_code == 0, watched.output
    lines = watched.output.splitlines()
    for epoch in (1, 2, 3):  # each epoch seen as it came, with its loss
        assert any(f"cnn epoch {epoch}/3 loss {1 / epoch:.4g}" in line for line in lines), lines
    assert "ETA 3 s" in watched.output
    assert any(f"job {job_id} (train): succeeded" in line for line in lines), lines
    assert "training: cnn epoch 3/3 loss 0.3333 val 0.4333" in final.output


def test_a_real_training_leaves_its_curves_and_the_panel_shows_them(
    client: TestClient,
    api_user: ApiUser,
    api_settings: Settings,
    session_factory: SessionFactory,
    make_api_user: Callable[[], ApiUser],
    tmp_path: Path,
) -> None:
    dataset_id = register_dishes(client, api_user, generate_dishes("tiny"), tmp_path)
    body = {"dataset_id": dataset_id,
            "training": {"epochs": 3, "image_size": [32, 32], "layer_sizes": [8, 4]}}  # fmt: skip
    created = client.post("/v1/models", json=body, headers=api_user.headers).json()
    job_id, model_id = created["job"]["id"], created["model"]["id"]
    with session_scope(session_factory) as session:
        chunk_id = repo.chunk_ids(session, job_id)[0]
    worker = WorkerContext(api_settings, session_factory, make_object_store(api_settings), "w1")
    assert run_training(worker, chunk_id) == "done"

    training = client.get(f"/v1/jobs/{job_id}", headers=api_user.headers).json()["training"]
    model = client.get(f"/v1/models/{model_id}", headers=api_user.headers).json()
    assert training["stage"] == "evaluating" and training["eta_seconds"] is None
    for stage, keras_stage in (("autoencoder", "autoencoder"), ("cnn", "regressor")):
        kept = model["history"][keras_stage]  # what Keras recorded, stored with the model
        shown = training["history"][stage]
        assert shown["epoch"] == list(range(1, len(kept["loss"]) + 1))
        assert shown["loss"] == pytest.approx(kept["loss"])
        assert shown["val_loss"] == pytest.approx(kept["val_loss"])
    assert training["history"]["cnn"]["epoch"] == [1, 2, 3]

    try:
        sign_in(client, api_user.key)
        panel = client.get(f"/ui/jobs/{job_id}/training")
        assert panel.status_code == 200 and 'data-final="succeeded"' in panel.text
        assert panel.text.count("<polyline") == 4  # loss and val loss of both stages
        assert 'data-stage="cnn"' in panel.text
        assert '· cnn: <span class="epochs-done">3</span> epochs' in panel.text
        job_page = client.get(f"/ui/jobs/{job_id}").text
        assert '<section class="training" data-final="succeeded">' in job_page
        assert "<h2>Training</h2>" not in client.get(f"/ui/models/{model_id}").text  # ready
        sign_in(client, make_api_user().key)  # another tenant
        assert client.get(f"/ui/jobs/{job_id}/training").status_code == 404
    finally:
        client.cookies.clear()
    assert client.get(f"/ui/jobs/{job_id}/training").status_code == 401
