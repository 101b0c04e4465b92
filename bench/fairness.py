"""Fair sharing of the worker pool: a small job of one tenant behind a huge one of another.

Two real worker processes on a private stack (PostgreSQL when the machine has the
binaries, else SQLite; Redis; SeaweedFS; the API), as in bench/chaos.py. Two tenants,
each with a tiny model trained through the API. The work is cheap on purpose (LIME with
`--num-samples` samples on 32x32 images) so a 20,000-item job is quick to set up.

1. idle pool: tenant B's `--b-items` job alone, `--repeats` + 1 times (the first warms
   both workers up with B's model and is not counted): `b_idle_s`, the mean.
2. busy pool: tenant A submits `--a-items` items; once both workers run A's chunks,
   B submits the same job, `--repeats` times in a row: `b_behind_a_s`, the mean.
   Then A is cancelled.

Workers ask the database for the next chunk chosen fairly across tenants
(`xmlx.jobs.dispatch`): B waits at most for the chunk a worker is in, not for A's
whole backlog. `fifo_wait_estimate_s` says what a first-in-first-out queue would have
made B wait (A's items still to do when B was submitted / A's measured rate); it is an
estimate from the run, not a measurement.

Usage: ``python bench/fairness.py [--a-items 20000] [--b-items 20]``; the last line is
JSON: ``{"b_idle_s": .., "b_behind_a_s": .., "ratio": .., ...}``; goal: ratio <= 3.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
for path in (ROOT, ROOT / "bench"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from chaos import SERVICE_ENV, _private_postgres  # noqa: E402

from xmlx.client import Client  # noqa: E402
from xmlx.embedded_redis import EmbeddedRedis  # noqa: E402
from xmlx.stack import BUCKET, Stack, start_stack  # noqa: E402

ENV = {**SERVICE_ENV, "XMLX_MAX_BATCH_ITEMS": "100000", "XMLX_IMAGES_PER_BATCH": "10"}
FINAL = {"succeeded", "partially_succeeded", "failed", "cancelled"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--a-items", type=int, default=20_000)
    parser.add_argument("--b-items", type=int, default=20)
    parser.add_argument("--num-samples", type=int, default=16, help="LIME samples per item")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--root", type=Path, help="working directory (default: a temp one)")
    return parser.parse_args(argv)


@contextmanager
def fair_stack(root: Path, echo: Callable[[str], None]) -> Iterator[tuple[Stack, str]]:
    with ExitStack() as cleanup:
        postgres = _private_postgres(cleanup)
        database_url = postgres.create_database("xmlx") if postgres else None
        redis = EmbeddedRedis(root / "redis").start()
        cleanup.callback(redis.stop)
        stack = start_stack(root / "stack", workers=2, database_url=database_url,
                            redis_url=redis.url, extra_env=ENV, echo=echo)  # fmt: skip
        cleanup.callback(stack.stop)
        yield stack, "postgresql" if postgres else "sqlite"


def tenant(stack: Stack, name: str, n_images: int, echo: Callable[[str], None]) -> Tenant:
    from xmlx.demo_service import create_api_key

    client = Client(stack.api_url, create_api_key(stack, name), timeout=120)
    model_id, pngs = _train(client)
    keys = [f"pool/img_{i:05d}.png" for i in range(n_images)]
    _upload(stack, model_id, {key: pngs[i % len(pngs)] for i, key in enumerate(keys)})
    echo(f"tenant {name}: model {model_id}, {n_images} images")
    return Tenant(client, model_id, keys)


INLINE_KEYS = 10_000  # the API's default `max_inline_batch_keys`


class Tenant:
    def __init__(self, client: Client, model_id: str, keys: list[str]) -> None:
        self.client, self.model_id, self.keys = client, model_id, keys

    def submit(self, n_items: int, num_samples: int) -> str:
        body: dict[str, Any] = {
            "model_id": self.model_id,
            "method": "lime",
            "target": {"kind": "top_k", "k": 1},
            "params": {"num_samples": num_samples, "n_segments": 8},
        }
        if n_items > INLINE_KEYS:  # a big job goes as a manifest (prepared, then queued)
            manifest = f"lists/pool-{n_items}.txt"
            lines = "\n".join(self.keys[:n_items]).encode()
            self.client.upload({manifest: lines}, content_type="text/plain")
            body["manifest_key"] = manifest
        else:
            body["images"] = self.keys[:n_items]
        return str(self.client.request("POST", "/v1/explanations", json=body)["id"])

    def job(self, job_id: str) -> dict[str, Any]:
        return dict(self.client.request("GET", f"/v1/jobs/{job_id}"))

    def run(self, n_items: int, num_samples: int) -> float:
        """Seconds from submit to the client seeing the job final (it must succeed)."""
        started = time.monotonic()
        job_id = self.submit(n_items, num_samples)
        while (body := self.job(job_id))["state"] not in FINAL:
            time.sleep(0.1)
        if body["state"] != "succeeded":
            raise RuntimeError(f"job {job_id} ended {body['state']}: {body}")
        return time.monotonic() - started


def _train(client: Client) -> tuple[str, list[bytes]]:
    from xmlcore.datasets import generate_dishes
    from xmlcore.images import encode_png
    from xmlcore.labels import manifest_to_csv

    data = generate_dishes("tiny", seed=0, image_size=32)
    space = data.label_space
    pngs = [encode_png(image) for image in data.images]
    client.upload({f"train/images/{k}": png for k, png in zip(space.image_keys, pngs, strict=True)})
    client.upload({"train/manifest.csv": manifest_to_csv(space.image_keys, data.label_sets())},
                  content_type="text/csv")  # fmt: skip
    dataset = client.create_dataset("fair", "train/images/", "train/manifest.csv")
    created = client.train(dataset["id"], "fair", epochs=1, seed=0, image_size=[32, 32])
    trained = client.wait(created["job"]["id"], timeout=900)
    if trained.state != "succeeded":
        raise RuntimeError(f"training ended {trained.state}: {trained.raw}")
    return str(created["model"]["id"]), pngs


def _upload(stack: Stack, model_id: str, files: dict[str, bytes]) -> None:
    """Straight into the model's tenant's upload area in the bucket (20,000 presigned
    PUTs through the API would only slow the set-up down)."""
    import sqlalchemy as sa

    assert stack.s3 is not None
    engine = sa.create_engine(stack.env["XMLX_DATABASE_URL"])
    with engine.connect() as connection:
        tenant_id = connection.execute(
            sa.text("SELECT tenant_id FROM models WHERE id = :m"), {"m": model_id}
        ).scalar_one()
    engine.dispose()
    s3 = stack.s3.client()
    prefix = f"tenants/{tenant_id}/uploads/"
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda item: s3.put_object(Bucket=BUCKET, Key=prefix + item[0],
                                                 Body=item[1], ContentType="image/png"),
                      files.items()))  # fmt: skip


def measure(a: Tenant, b: Tenant, args: argparse.Namespace) -> dict[str, Any]:
    idle = [b.run(args.b_items, args.num_samples) for _ in range(args.repeats + 1)][1:]
    a_job = a.submit(args.a_items, args.num_samples)
    while a.job(a_job)["progress"]["done"] < 40:  # both workers deep in A's chunks
        time.sleep(0.2)
    rate = _rate(a, a_job, seconds=5.0)  # A alone on the pool
    before = a.job(a_job)
    behind = [b.run(args.b_items, args.num_samples) for _ in range(args.repeats)]
    a.client.cancel(a_job)
    remaining = args.a_items - before["progress"]["done"]
    b_idle, b_behind = statistics.mean(idle), statistics.mean(behind)
    return {"b_idle_s": round(b_idle, 2), "b_behind_a_s": round(b_behind, 2),
            "ratio": round(b_behind / b_idle, 2), "b_idle_runs_s": [round(x, 2) for x in idle],
            "b_behind_a_runs_s": [round(x, 2) for x in behind], "a_items": args.a_items,
            "b_items": args.b_items, "num_samples": args.num_samples,
            "a_items_per_s": round(rate, 1), "a_done_before_b": before["progress"]["done"],
            "fifo_wait_estimate_s": round(remaining / rate, 0) if rate else None}  # fmt: skip


def _rate(a: Tenant, job_id: str, seconds: float) -> float:
    """A's items per second over `seconds` of the pool working on A alone."""
    first = a.job(job_id)["progress"]["done"]
    started = time.monotonic()
    time.sleep(seconds)
    done = a.job(job_id)["progress"]["done"] - first
    return done / (time.monotonic() - started)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def echo(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    with (
        tempfile.TemporaryDirectory(prefix="xmlx-fair-") as tmp,
        fair_stack(args.root or Path(tmp), echo) as (stack, database),
    ):
        a = tenant(stack, "tenant-a", args.a_items, echo)
        b = tenant(stack, "tenant-b", args.b_items, echo)
        result = {"database": database, "workers": 2, **measure(a, b, args)}
    print(json.dumps(result), flush=True)
    return 0 if result["ratio"] <= 3 else 1


if __name__ == "__main__":
    sys.exit(main())
