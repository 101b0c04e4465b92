"""The service demo: the whole product end to end on one machine.

Starts the embedded stack (SQLite, Redis, SeaweedFS S3, API, one worker, beat),
creates an API key, uploads a generated dataset to S3 through presigned URLs, trains
through the API, submits an explanation batch, shows progress, and prints P@k, a few
predictions with their hierarchy paths, and where to look at the heatmaps. The
end-to-end test runs the same function with a smaller configuration.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from xmlx.client import Client, ItemResult, JobStatus
from xmlx.stack import Stack, start_stack


@dataclass(frozen=True)
class DemoConfig:
    preset: str = "small"
    seed: int = 0
    epochs: int = 20
    n_explained: int = 60
    num_samples: int = 300
    image_size: int = 64
    keep_running: bool = False
    wait_timeout: float = 1800.0


@dataclass
class DemoOutcome:
    train_job: JobStatus
    explain_job: JobStatus
    model: dict[str, Any]
    results: list[ItemResult]
    artifacts: list[Path]
    api_url: str


def run_service_demo(
    out: Path, *, console: Console | None = None, config: DemoConfig | None = None
) -> DemoOutcome:
    config = config or DemoConfig()
    console = console or Console()
    out = out.resolve()
    console.rule("starting the embedded stack")
    stack = start_stack(out / "stack", echo=console.print)
    try:
        outcome = drive_demo(stack, out, config, console)
        if config.keep_running:
            console.print(
                f"the stack keeps running: browse {stack.api_url}/ui/jobs/{outcome.explain_job.id} "
                f"(sign in with the key in {out / 'api-key.txt'}); Ctrl-C stops it"
            )
            _wait_forever()
        else:
            console.print(
                "the stack has stopped; `xmlx demo --keep` keeps it running to browse /ui"
            )
        return outcome
    finally:
        stack.stop()


def drive_demo(stack: Stack, out: Path, config: DemoConfig, console: Console) -> DemoOutcome:
    """Everything after the stack is up: the part the end-to-end test shares."""
    api_key = create_api_key(stack, "demo")
    with Client(stack.api_url, api_key, timeout=120.0) as client:
        test_keys = _upload_dataset(client, config, console)
        dataset = client.create_dataset("dishes", "dishes/images/", "dishes/manifest.csv")
        console.print(
            f"dataset {dataset['id']}: {dataset['n_images']} images, {dataset['n_labels']} labels"
        )
        console.rule("training (autoencoder, then CNN) on a worker")
        created = client.train(
            dataset["id"], "dishes-demo", epochs=config.epochs, seed=config.seed,
            image_size=[config.image_size, config.image_size],
        )  # fmt: skip
        train_job = client.wait(created["job"]["id"], progress=True, timeout=config.wait_timeout)
        model = client.model(created["model"]["id"])
        if train_job.state != "succeeded":
            raise RuntimeError(f"training ended {train_job.state}: {train_job.raw}")
        _print_metrics(model, console)
        console.rule(f"explaining {len(test_keys)} images (LIME, top label)")
        job = client.explain(
            model["id"], test_keys[: config.n_explained], dataset_id=dataset["id"],
            target={"kind": "top_k", "k": 1}, params={"num_samples": config.num_samples},
        )  # fmt: skip
        explain_job = client.wait(job.id, progress=True, timeout=config.wait_timeout)
        results = list(client.iter_results(job.id))
        _print_predictions(results[:5], console)
        artifacts = client.download_artifacts(job.id, out / "heatmaps")
    write_report(stack, job.id, out / "report.html")
    (out / "api-key.txt").write_text(api_key + "\n")
    console.rule("where to look")
    console.print(f"gallery (one HTML file): {out / 'report.html'}")
    console.print(f"heatmaps and masks:      {out / 'heatmaps'} ({len(artifacts)} files)")
    console.print(f"API, its docs, web UI:   {stack.api_url}/docs, {stack.api_url}/ui")
    return DemoOutcome(train_job, explain_job, model, results, artifacts, stack.api_url)


def write_report(stack: Stack, job_id: str, path: Path) -> None:
    """``xmlx report`` against the stack: a self-contained HTML gallery of the job."""
    subprocess.run(
        [sys.executable, "-m", "xmlx.cli", "report", job_id, "-o", str(path)],
        env=stack.env, check=True, capture_output=True, text=True,
    )  # fmt: skip


def create_api_key(stack: Stack, tenant: str) -> str:
    """``xmlx keys create`` against the stack's database; returns the plaintext key."""
    output = subprocess.run(
        [sys.executable, "-m", "xmlx.cli", "keys", "create", "--tenant", tenant],
        env=stack.env, check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    return output.strip().splitlines()[-1]


def _upload_dataset(client: Client, config: DemoConfig, console: Console) -> list[str]:
    """Generate dishes, upload images + manifest; return the held-out image keys."""
    from xmlcore.datasets import generate_dishes
    from xmlcore.images import encode_png
    from xmlcore.labels import manifest_to_csv

    data = generate_dishes(config.preset, seed=config.seed, image_size=config.image_size)
    space = data.label_space
    rng = np.random.default_rng(config.seed)
    held_out = set(rng.choice(space.n_images, size=config.n_explained, replace=False).tolist())
    train_rows = [i for i in range(space.n_images) if i not in held_out]
    files = {
        f"dishes/images/{key}": encode_png(data.images[i]) for i, key in enumerate(space.image_keys)
    }
    console.print(f"uploading {len(files)} generated images to S3 through presigned URLs")
    client.upload(files)
    keys = [space.image_keys[i] for i in train_rows]
    manifest = manifest_to_csv(keys, [space.labels_of(i) for i in train_rows])
    client.upload({"dishes/manifest.csv": manifest}, content_type="text/csv")
    return [space.image_keys[i] for i in sorted(held_out)]


def _print_metrics(model: dict[str, Any], console: Console) -> None:
    metrics = model.get("metrics") or {}
    table = Table(title=f"model {model['id']} on held-out images")
    for key in ("p@1", "p@3", "p@5", "ndcg@5", "psp@5", "coverage@5"):
        table.add_column(key)
    table.add_row(
        *(
            f"{metrics.get(k, float('nan')):.3f}"
            for k in ("p@1", "p@3", "p@5", "ndcg@5", "psp@5", "coverage@5")
        )
    )
    console.print(table)


def _print_predictions(results: list[ItemResult], console: Console) -> None:
    for item in results:
        if item.state != "succeeded" or item.result is None:
            console.print(f"{item.key}: {item.state} {item.error_code or ''}")
            continue
        labels = ", ".join(f"{label} {score:.2f}" for label, score in item.top_labels)
        console.print(f"[bold]{item.key}[/bold]: {labels}")
        console.print(f"  {item.result['top_latent']['text']}")


def _wait_forever() -> None:
    import time

    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        return
