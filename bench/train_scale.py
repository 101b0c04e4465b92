"""Worker memory while training on 2,000 vs 20,000 images (issue 12, "streamed input").

The same configuration (small base, 64 px, 2 CNN epochs) trains on 2,000 and on
20,000 generated images, each in a fresh worker process (`workers.wakeup.
run_training_wakeup`, the code a `train` queue task runs) on a SQLite database and a
local-directory store. The worker decodes the images once into a record file on its
disk and reads them a batch at a time, so its peak resident size should hardly move
with the dataset. Prints each run's peak RSS (ru_maxrss of the worker process) and,
last, one JSON line: {"rss_2k_mib": .., "rss_20k_mib": .., "ratio": ..}; goal <= 1.3.

    python bench/train_scale.py [--small 2000 --large 20000]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TRAINING = {"base": "small", "image_size": [64, 64], "epochs": 2, "batch_size": 32,
            "layer_sizes": [16, 8], "ae_params": {"epochs": 20}}  # fmt: skip


def settings_env(root: Path) -> dict[str, str]:
    return {
        **os.environ, "PYTHONPATH": str(ROOT), "XMLX_ENV": "development",
        "XMLX_DATA_DIR": str(root / "data"), "XMLX_DATABASE_URL": f"sqlite:///{root / 'db.sqlite'}",
        "XMLX_STORAGE_BACKEND": "local", "XMLX_LOCAL_STORAGE_ROOT": str(root / "storage"),
        "XMLX_TRAIN_SLICE_SECONDS": "36000", "XMLX_TRAIN_SOFT_TIME_LIMIT_SECONDS": "36001",
        "XMLX_TRAIN_HARD_TIME_LIMIT_SECONDS": "36002",
    }  # fmt: skip


def prepare(root: Path, n_images: int) -> None:
    """Database, dataset in the store, and a queued training job (this process)."""
    os.environ.update(settings_env(root))
    from workers.context import build_context
    from xmlcore.datasets import generate_dishes
    from xmlcore.images import encode_png
    from xmlcore.labels import manifest_to_csv
    from xmlx import jobs, migrate
    from xmlx import repository as repo
    from xmlx.db import session_scope
    from xmlx.settings import Settings

    settings = Settings()
    migrate.upgrade(settings.database_url)
    ctx = build_context(settings)
    data = generate_dishes("small", seed=0, n_images=n_images, image_size=64)
    space = data.label_space
    prefix = "bench/images/"
    for key, image in zip(space.image_keys, data.images, strict=True):
        ctx.store.put_bytes(prefix + key, encode_png(image), "image/png")
    label_sets = [space.labels_of(i) for i in range(space.n_images)]
    ctx.store.put_bytes("bench/manifest.csv", manifest_to_csv(space.image_keys, label_sets))
    with session_scope(ctx.sessions) as session:
        tenant = repo.create_tenant(session, "bench").id
        dataset = repo.create_dataset(session, tenant, name="d")
        model_id = repo.create_model(session, tenant, dataset.id, name="m", params=TRAINING).id
    params = {"dataset": {"manifest_key": "bench/manifest.csv", "image_prefix": prefix},
              "training": TRAINING}  # fmt: skip
    jobs.create_job(
        ctx.sessions, tenant_id=tenant, kind="train", item_keys=["model"], model_id=model_id,
        chunk_size=1, params=params,
    )  # fmt: skip


def worker(root: Path) -> None:
    """The worker process: run the training wake-up, print status and peak RSS."""
    from workers.context import build_context
    from workers.wakeup import run_training_wakeup
    from xmlx.settings import Settings

    status = run_training_wakeup(build_context(Settings()))
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"status": status, "peak_rss_mib": round(peak_kib / 1024, 1)}))


def run(n_images: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        started = time.monotonic()
        subprocess.run([sys.executable, __file__, "--prepare", str(root), "--n", str(n_images)],
                       check=True, env=settings_env(root))  # fmt: skip
        prepared = time.monotonic()
        out = subprocess.run([sys.executable, __file__, "--worker", str(root)], check=True,
                             env=settings_env(root), capture_output=True, text=True)  # fmt: skip
        result = json.loads(out.stdout.strip().splitlines()[-1])
        if result["status"] != "done":
            sys.exit(
                f"training on {n_images} images ended {result['status']}: {out.stderr[-2000:]}"
            )
        print(
            f"{n_images:>6} images: worker peak RSS {result['peak_rss_mib']:.1f} MiB "
            f"(data prepared in {prepared - started:.0f} s, trained in "
            f"{time.monotonic() - prepared:.0f} s)",
            flush=True,
        )
        return float(result["peak_rss_mib"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--small", type=int, default=2000)
    parser.add_argument("--large", type=int, default=20000)
    parser.add_argument("--prepare", type=Path)
    parser.add_argument("--worker", type=Path)
    parser.add_argument("--n", type=int, default=0)
    args = parser.parse_args()
    if args.prepare is not None:
        return prepare(args.prepare, args.n)
    if args.worker is not None:
        return worker(args.worker)
    small, large = run(args.small), run(args.large)
    print(json.dumps({"rss_2k_mib": small, "rss_20k_mib": large, "ratio": round(large / small, 3)}))


if __name__ == "__main__":
    main()
