"""Scaling with workers: explanation throughput with 1, then 2 worker processes.

Set-up (not timed): the embedded stack starts with one worker; every service process
gets one compute thread (``TF_NUM_INTRAOP_THREADS=1``, ``TF_NUM_INTEROP_THREADS=1``,
``OMP_NUM_THREADS=1`` and the BLAS equivalents), so N workers use N cores. A generated
dishes data set is uploaded and a model trained through the service.

Then, ``--repeats`` times, for each worker count in turn (so a drift in the machine's
other load hits every count alike): start the extra workers, warm every worker up
(explanation chunks until each worker's log shows one finished, so each has loaded and
traced the model), submit the same batch of ``--items`` images, cut into chunks of
``--chunk-size`` so every worker gets work, time it, and stop the extra workers. Timed
two ways: server side from the first chunk claimed to the last item recorded (``span``:
start-up amortised, the throughput figure) and wall time from submit to the client
seeing the final state. The best run of each worker count is the headline (the least
disturbed on a shared machine); every run is in the table and the JSON.

Efficiency of N workers = items_per_s[N] / (N * items_per_s[1]). Goal for 2 workers on
a 2-core machine: >= 0.8 (the API, Redis, S3 and the client share those cores).

Usage: ``python bench/scale.py [--items 96] [--chunk-size 8]``; the last line is JSON:
``{"workers": [1, 2], "items_per_s": [..], "efficiency_2": ..., ...}``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from service_bench import JobRun, Prepared, one_thread_env, prepare, run_job

from xmlx.stack import Stack, start_stack

# One line per chunk a worker ran (workers/wakeup.py): a Celery message is a wake-up
# that may run several chunks, so its "succeeded in" line no longer counts chunks.
FINISHED_CHUNK = "chunk finished"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--items", type=int, default=96, help="images explained per run")
    parser.add_argument("--num-samples", type=int, default=300, help="LIME samples")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--chunk-size", type=int, default=8)
    parser.add_argument("--images-per-batch", type=int, default=8)
    parser.add_argument("--max-workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2, help="rounds of 1, 2, ... workers")
    parser.add_argument("--poll", type=float, default=0.2, help="client poll interval (s)")
    parser.add_argument("--root", type=Path, help="stack directory (default: a temp dir)")
    return parser.parse_args(argv)


def finished_chunks(stack: Stack, worker: str) -> int:
    """Chunks (training or explanation) ``worker`` has finished, from its log."""
    path = stack.log_path(worker)
    if not path.exists():
        return 0
    return sum(FINISHED_CHUNK in line for line in path.read_text(errors="replace").splitlines())


def wait_ready(stack: Stack, worker: str, timeout: float = 300.0) -> None:
    """Until Celery logs that ``worker`` consumes its queues."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        path = stack.log_path(worker)
        if path.exists() and " ready." in path.read_text(errors="replace"):
            return
        if stack.processes[worker].poll() is not None:
            raise RuntimeError(f"{worker} exited; see {path}")
        time.sleep(0.5)
    raise RuntimeError(f"{worker} not ready after {timeout:.0f} s")


def warm_up(stack: Stack, prepared: Prepared, workers: list[str], args: argparse.Namespace) -> int:
    """Run explanation jobs of one chunk per worker until every worker has finished one
    since now (or 5 jobs passed); returns how many jobs that took.

    Messages are wake-ups and a woken worker goes on to the next chunk, so with chunks
    shorter than a message's delivery one worker can drain a small job alone: a worker
    still cold after 5 jobs is reported, not fatal (the timed job then shows it)."""
    before = {w: finished_chunks(stack, w) for w in workers}
    keys = prepared.keys[: args.chunk_size * len(workers)]
    params = {"num_samples": args.num_samples}
    for attempt in range(1, 6):
        run_job(prepared, keys, params, poll=args.poll)
        if all(finished_chunks(stack, w) > before[w] for w in workers):
            return attempt
    cold = [w for w in workers if finished_chunks(stack, w) == before[w]]
    print(f"still cold after 5 warm-up jobs (chunks too short?): {cold}", flush=True)
    return 5


@dataclass(frozen=True)
class Phase:
    workers: int
    repeat: int
    run: JobRun
    chunks: list[int]  # chunks of the timed job each worker finished

    @property
    def items_per_s(self) -> float:
        return self.run.status.total / self.run.span_s


def measure(stack: Stack, args: argparse.Namespace, prepared: Prepared) -> dict[str, Any]:
    """For each repeat, every worker count in turn (1, 2, ...): the extra workers start
    fresh, are warmed up, timed, and stopped again, so a drift in the machine's other
    load hits every worker count alike."""
    phases = []
    for repeat in range(1, args.repeats + 1):
        for n in range(1, args.max_workers + 1):
            extra = [f"worker{i}-r{repeat}" for i in range(2, n + 1)]
            for worker in extra:
                stack.start_worker(worker)
            try:
                phases.append(run_phase(stack, prepared, ["worker1", *extra], repeat, args))
            finally:
                for worker in extra:
                    stack.stop_process(worker)
    return summarise(args, phases, len(prepared.keys))


def run_phase(
    stack: Stack, prepared: Prepared, workers: list[str], repeat: int, args: argparse.Namespace
) -> Phase:
    for worker in workers:
        wait_ready(stack, worker)
    started = time.perf_counter()
    jobs = warm_up(stack, prepared, workers, args)
    print(f"{len(workers)} worker(s) warm after {jobs} job(s), "
          f"{time.perf_counter() - started:.1f} s", flush=True)  # fmt: skip
    before = [finished_chunks(stack, w) for w in workers]
    run = run_job(prepared, prepared.keys, {"num_samples": args.num_samples}, poll=args.poll)
    expected = -(-len(prepared.keys) // args.chunk_size)
    chunks = logged_chunks(stack, workers, before, expected)
    return Phase(len(workers), repeat, run, chunks)


def logged_chunks(
    stack: Stack, workers: list[str], before: list[int], expected: int, timeout: float = 15.0
) -> list[int]:
    """Chunks each worker finished since ``before``. Celery logs a task's success just
    after its last item is recorded, so the job can look final a moment before the
    logs account for every chunk: wait (briefly) for them."""
    deadline = time.monotonic() + timeout
    while True:
        chunks = [finished_chunks(stack, w) - b for w, b in zip(workers, before, strict=True)]
        if sum(chunks) >= expected or time.monotonic() > deadline:
            return chunks
        time.sleep(0.1)


def summarise(args: argparse.Namespace, phases: list[Phase], items: int) -> dict[str, Any]:
    """The best throughput of each worker count (the least disturbed run on a shared
    machine) gives the headline efficiency; every run is in the table."""
    counts = sorted({p.workers for p in phases})
    best = [max((p for p in phases if p.workers == n), key=lambda p: p.items_per_s) for n in counts]
    base = best[0].items_per_s
    print(f"{'workers':>7} | {'repeat':>6} | {'span s':>7} | {'wall s':>7} | {'items/s':>7} | "
          f"{'efficiency':>10} | chunks per worker")  # fmt: skip
    for p in phases:
        efficiency = p.items_per_s / (p.workers * base)
        print(f"{p.workers:>7} | {p.repeat:>6} | {p.run.span_s:>7.2f} | {p.run.wall_s:>7.2f} | "
              f"{p.items_per_s:>7.3f} | {efficiency:>10.3f} | {p.chunks}")  # fmt: skip
    result: dict[str, Any] = {
        "workers": counts,
        "items_per_s": [round(p.items_per_s, 4) for p in best],
        "wall_items_per_s": [round(items / p.run.wall_s, 4) for p in best],
        "runs_items_per_s": {
            str(n): [round(p.items_per_s, 4) for p in phases if p.workers == n] for n in counts
        },
        "chunks_per_worker": [p.chunks for p in best],
        "items": items,
        "repeats": args.repeats,
        "num_samples": args.num_samples,
        "chunk_size": args.chunk_size,
        "images_per_batch": args.images_per_batch,
        "threads_per_worker": 1,
    }
    for n, p in zip(counts[1:], best[1:], strict=True):
        result[f"efficiency_{n}"] = round(p.items_per_s / (n * base), 3)
    return result


def service_env(args: argparse.Namespace) -> dict[str, str]:
    return {
        **one_thread_env(),
        "XMLX_CHUNK_SIZE": str(args.chunk_size),
        "XMLX_IMAGES_PER_BATCH": str(args.images_per_batch),
    }


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="xmlx-scale-") as scratch:
        root = args.root or Path(scratch)
        env = service_env(args)
        with start_stack(root / "stack", workers=1, extra_env=env, echo=lambda _: None) as stack:
            prepared = prepare(stack, preset=args.preset, image_size=args.image_size,
                               n_items=args.items, epochs=args.epochs)  # fmt: skip
            print(f"trained through the service in {prepared.train_seconds:.1f} s", flush=True)
            with prepared.client:
                result = measure(stack, args, prepared)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
