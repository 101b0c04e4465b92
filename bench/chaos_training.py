"""Chaos scenario 15 (issue 12): the training worker SIGKILLed during CNN epoch k of E.

Runs on the private stack of `bench/chaos.py` (its `Chaos` harness). A dataset of
generated dishes is uploaded, then:

1. the configuration is trained uninterrupted once per seed in `seeds` (the first seed
   is the reference; the spread between seeds is the noise the comparison allows);
2. the same configuration, reference seed, is trained again; the checkpoint pointer in
   the bucket is polled and, as soon as it names CNN epoch k - 1 (so epoch k is
   running), the worker holding the training's lease is SIGKILLed with its whole
   process group and restarted. The lease runs out, the reconciler resends the chunk,
   a worker resumes from the checkpoint.

What is counted: every worker logs one line per epoch it finished, with the chunk and
its own owner name (`workers.training._epoch_callback`), so the CNN epochs actually
trained by each attempt are read from the two workers' logs, not from the job's
progress curve (which a resumed run overwrites). The epoch that was running when the
worker died is counted too: epochs run = epochs finished in all attempts + kills (never
fewer than the checkpoints prove, in case a log line was lost with the killed process).

Pass: the job succeeds and the model is ready; the kill fell inside the CNN stage
(1 <= k < E); the resumed attempt started from CNN epoch k - 1 (`resumed_from`
in the model's metrics); epochs run <= E + 1, where E is the CNN epochs in the model's
stored history; and held-out P@1 and P@3 differ from the uninterrupted reference by at
most the tolerance: the larger of the seeds' spread (max - min over the uninterrupted
seeds) and two standard errors of a proportion over the held-out images
(2 sqrt(p (1 - p) / n_test)), since the spread of two or three seeds alone can be
small by chance.
"""

from __future__ import annotations

import json
import math
import re
import signal
import time
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

EPOCH_LINE = re.compile(r"training epoch ended: (\w+) (\d+) chunk (\S+) owner (\S+)")
METRICS = ("p@1", "p@3")


@dataclass(frozen=True)
class TrainingSizes:
    images: int = 2000
    image_size: int = 32
    epochs: int = 8
    kill_epoch: int = 4  # the CNN epoch (1-based) during which the worker is killed
    seeds: tuple[int, ...] = (0, 1, 2)

    @classmethod
    def quick(cls) -> TrainingSizes:
        return cls(images=300, epochs=4, kill_epoch=2, seeds=(0, 1))


def training_killed(chaos: Any, sizes: TrainingSizes) -> dict[str, Any]:
    """15. SIGKILL the training worker during CNN epoch k of E; it resumes and matches."""
    started = time.monotonic()
    dataset_id = _upload_dataset(chaos, sizes)
    config = {"epochs": sizes.epochs, "image_size": [sizes.image_size] * 2, "batch_size": 32}
    reference = {seed: _train(chaos, dataset_id, {**config, "seed": seed}) for seed in sizes.seeds}
    marks = {name: _log_size(chaos, name) for name in chaos.stack.processes if "worker" in name}
    created = chaos.client.train(dataset_id, "chaos-killed", **config, seed=sizes.seeds[0])
    job_id, model_id = str(created["job"]["id"]), str(created["model"]["id"])
    victim, pointer = _kill_during_cnn_epoch(chaos, job_id, model_id, sizes.kill_epoch)
    body = chaos.wait(job_id, 1200)
    killed = _model(chaos, model_id)
    time.sleep(2.0)  # the workers' last log lines reach their files
    per_owner = _epochs_by_owner(chaos, marks, _chunk_id(chaos, job_id))
    return _judge(sizes, reference, killed, {
        "final_state": body.get("state"), "victim": victim, "pointer_at_kill": pointer,
        "cnn_epochs_by_attempt": per_owner, "seconds": round(time.monotonic() - started, 1),
    })  # fmt: skip


def _judge(
    sizes: TrainingSizes, reference: dict[int, dict[str, Any]], killed: dict[str, Any],
    report: dict[str, Any],
) -> dict[str, Any]:  # fmt: skip
    metrics = killed["metrics"] or {}
    trained = len((killed["history"] or {}).get("regressor", {}).get("loss", []))
    pointer = report["pointer_at_kill"] or {}
    kill_epoch = int(pointer.get("epoch", -1)) + 1 if pointer.get("stage") == "regressor" else 0
    # Log lines can arrive late or die in a killed process' buffer, so never count
    # fewer than the checkpoints prove: k - 1 by the killed attempt, E - resumed by the
    # resumed one. Either source above E + 1 fails the check.
    resumed = str(metrics.get("resumed_from") or ":0").split(":")[-1]
    proven = max(kill_epoch - 1, 0) + trained - int(resumed or 0)
    finished = max(sum(report["cnn_epochs_by_attempt"].values()), proven)
    epochs_run = finished + 1  # the epoch the kill interrupted ran too
    tolerance, spread = _tolerance(reference, int(metrics.get("n_test", 0)))
    base = reference[sizes.seeds[0]]["metrics"]
    gaps = {name: round(abs(metrics.get(name, -1.0) - base[name]), 4) for name in METRICS}
    checks = {
        "succeeded": report["final_state"] == "succeeded" and killed["state"] == "ready",
        "killed_in_cnn": 1 <= kill_epoch < trained,
        "resumed_from_checkpoint": metrics.get("resumed_from") == f"regressor:{kill_epoch - 1}",
        "epochs_within_e_plus_1": 0 < epochs_run <= trained + 1,
        "metrics_within_noise": all(gaps[name] <= tolerance[name] for name in METRICS),
    }
    return {"scenario": 15, **report, "cnn_epochs_E": trained, "killed_in_cnn_epoch": kill_epoch,
            "resumed_from": metrics.get("resumed_from"), "cnn_epochs_run": epochs_run,
            "metrics_killed": {name: metrics.get(name) for name in METRICS},
            "metrics_uninterrupted": {s: {n: r["metrics"][n] for n in METRICS}
                                      for s, r in reference.items()},
            "n_test": metrics.get("n_test"), "seed_spread": spread, "gap": gaps,
            "tolerance": tolerance, "checks": checks, "passed": all(checks.values())}  # fmt: skip


def _tolerance(
    reference: dict[int, dict[str, Any]], n_test: int
) -> tuple[dict[str, float], dict[str, float]]:
    """(tolerance, seed spread) per metric: the larger of the spread and 2 SE."""
    tolerance, spread = {}, {}
    for name in METRICS:
        values = [run["metrics"][name] for run in reference.values()]
        spread[name] = round(max(values) - min(values), 4)
        p = sum(values) / len(values)
        standard_error = math.sqrt(p * (1 - p) / max(n_test, 1))
        tolerance[name] = round(max(spread[name], 2 * standard_error), 4)
    return tolerance, spread


def _upload_dataset(chaos: Any, sizes: TrainingSizes) -> str:
    from xmlcore.datasets import generate_dishes
    from xmlcore.images import encode_png
    from xmlcore.labels import manifest_to_csv

    data = generate_dishes("tiny", seed=1, image_size=sizes.image_size, n_images=sizes.images)
    keys = data.label_space.image_keys
    folder = f"train15-{sizes.images}"
    pngs = {f"{folder}/images/{k}": encode_png(im) for k, im in zip(keys, data.images, strict=True)}
    chaos.client.upload(pngs)
    manifest = manifest_to_csv(keys, data.label_sets())
    chaos.client.upload({f"{folder}/manifest.csv": manifest}, content_type="text/csv")
    dataset = chaos.client.create_dataset(folder, f"{folder}/images/", f"{folder}/manifest.csv")
    return str(dataset["id"])


def _train(chaos: Any, dataset_id: str, config: dict[str, Any]) -> dict[str, Any]:
    created = chaos.client.train(dataset_id, f"chaos-seed{config['seed']}", **config)
    body = chaos.wait(str(created["job"]["id"]), 1200)
    model = _model(chaos, str(created["model"]["id"]))
    if body.get("state") != "succeeded" or model["state"] != "ready":
        raise RuntimeError(f"uninterrupted training ended {body.get('state')}: {model}")
    return model


def _kill_during_cnn_epoch(
    chaos: Any, job_id: str, model_id: str, kill_epoch: int
) -> tuple[str | None, dict[str, Any] | None]:
    """Poll the checkpoint pointer; once it names CNN epoch `kill_epoch - 1` (epoch
    `kill_epoch` is running), SIGKILL the lease holder and restart it. (victim, the
    pointer read right after the kill)."""
    tenant = _scalar(chaos, "SELECT tenant_id FROM jobs WHERE id = :j", job_id)
    key = f"tenants/{tenant}/models/{model_id}/checkpoint.current.json"
    deadline = time.monotonic() + 1200
    while time.monotonic() < deadline:
        pointer = _pointer(chaos, key)
        epoch = pointer.get("epoch", -1) if pointer else -1
        done = pointer is not None and pointer.get("stage") == "regressor"
        if done and epoch >= kill_epoch - 1:
            victim = _lease_holder(chaos, job_id)
            if victim is None:
                time.sleep(0.05)
                continue
            chaos.signal_worker(victim, signal.SIGKILL)
            chaos.stack.processes[victim].wait(timeout=30)
            at_kill = _pointer(chaos, key)
            chaos.stack.start_worker(victim)
            return victim, at_kill
        time.sleep(0.05)
    return None, None


def _pointer(chaos: Any, key: str) -> dict[str, Any] | None:
    from xmlx.stack import BUCKET

    client = chaos.stack.s3.client()
    try:
        data = client.get_object(Bucket=BUCKET, Key=key)["Body"].read()
    except client.exceptions.NoSuchKey:
        return None
    return dict(json.loads(data))


def _lease_holder(chaos: Any, job_id: str) -> str | None:
    owner = _scalar(chaos, "SELECT lease_owner FROM chunks WHERE job_id = :j AND state = 'leased'",
                    job_id)  # fmt: skip
    for name in [n for n in chaos.stack.processes if "worker" in n]:
        if owner in chaos.worker_owners(name):
            return str(name)
    return None


def _chunk_id(chaos: Any, job_id: str) -> str:
    return str(_scalar(chaos, "SELECT id FROM chunks WHERE job_id = :j", job_id))


def _scalar(chaos: Any, sql: str, job_id: str) -> Any:
    with chaos.engine.connect() as connection:
        return connection.execute(sa.text(sql), {"j": job_id}).scalar()


def _model(chaos: Any, model_id: str) -> dict[str, Any]:
    with chaos.engine.connect() as connection:
        row = connection.execute(
            sa.text("SELECT state, metrics, history FROM models WHERE id = :m"), {"m": model_id}
        ).one()
    return {"id": model_id, "state": row.state, "metrics": _json(row.metrics),
            "history": _json(row.history)}  # fmt: skip


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


def _log_size(chaos: Any, name: str) -> int:
    path = chaos.stack.log_path(name)
    return path.stat().st_size if path.exists() else 0


def _epochs_by_owner(chaos: Any, marks: dict[str, int], chunk_id: str) -> dict[str, int]:
    """CNN epochs each attempt (owner) finished on `chunk_id`, from the workers' logs
    written since `marks`."""
    counts: dict[str, int] = {}
    for name, offset in marks.items():
        with chaos.stack.log_path(name).open("rb") as handle:
            handle.seek(offset)
            text = handle.read().decode("utf-8", errors="replace")
        for stage, _, chunk, owner in EPOCH_LINE.findall(text):
            if stage == "regressor" and chunk == chunk_id:
                counts[owner] = counts.get(owner, 0) + 1
    return counts
