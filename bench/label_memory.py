"""Peak memory of the autoencoder stage against the label matrix's rows (issue 12).

What ``train_two_step`` does with the labels before the CNN: the code-size choice
(``choose_layer_sizes``: candidates fitted on a row sample, the decoder ceiling on the
held-out rows), the final autoencoder fit, every layer's codes (the CNN's targets) and
the reconstruction error for the model's metrics. The label matrix is generated: n
rows, p labels, 5 labels a row drawn with power-law popularity, as scipy CSR.

Each (code, n) runs in a fresh process; the figure is its peak RSS (``ru_maxrss``)
minus its RSS just before the stage (TensorFlow and the CSR matrix already loaded), so
it is what the stage itself adds. ``new`` is this tree's ``xmlcore``; ``old`` is
``xmlcore`` at ``--old-ref`` (before the label matrix stayed sparse: it densified
``V`` in ``check_label_matrix``), exported with ``git archive``. A run is skipped
where a dense float32 copy of V exceeds ``--old-max-gb``, and killed (reported as
such) when its RSS passes ``--kill-gb``: the machine is shared.

Run: ``python bench/label_memory.py`` (defaults: p = 5,000, n = 10k, 100k, 1M; the old
code at 10k and 100k). Last line JSON: the stage's MiB per run and the growth from 10k
to 100k and 1M rows; goal: the new code's memory grows with nnz (x10, x100), not n x p.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
OLD_REF = "e4f113c"  # main before the sparse label path (issue 12)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--labels", type=int, default=5_000)
    parser.add_argument("--per-row", type=int, default=5)
    parser.add_argument("--layers", type=int, nargs=2, default=[32, 8])
    parser.add_argument("--epochs", type=int, default=2, help="final autoencoder fit")
    parser.add_argument("--choice-epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--old-ref", default=OLD_REF)
    parser.add_argument("--old-max-gb", type=float, default=2.1)
    parser.add_argument("--kill-gb", type=float, default=9.0)
    parser.add_argument("--child", choices=["new", "old"], default=None, help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.labels < 100 or args.per_row < 1 or min(args.rows) < 1000 or args.epochs < 1:
        parser.error("need --labels >= 100, --per-row >= 1, --rows >= 1000, --epochs >= 1")
    return args


def label_matrix(n: int, p: int, per_row: int, seed: int = 0) -> Any:
    """0/1 CSR (n, p), ``per_row`` distinct labels a row, popularity ~ 1 / rank."""
    import numpy as np
    import scipy.sparse as sp

    rng = np.random.default_rng(seed)
    popularity = 1.0 / np.arange(1, p + 1)
    cols = rng.choice(p, size=(n, per_row * 2), p=popularity / popularity.sum())
    indptr, indices = [0], []
    for row in cols:  # the first per_row distinct draws
        picked = list(dict.fromkeys(row.tolist()))[:per_row]
        indices.extend(sorted(picked))
        indptr.append(len(indices))
    data = np.ones(len(indices), dtype=np.float32)
    return sp.csr_matrix((data, np.asarray(indices), np.asarray(indptr)), shape=(n, p))


def rss_mib() -> float:
    with open("/proc/self/status") as status:
        line = next(x for x in status if x.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


def child(args: argparse.Namespace) -> dict[str, Any]:
    """The stage in this process; prints one JSON line."""
    import resource

    import numpy as np

    from xmlcore.autoencoder import DeepNonNegativeAutoencoder
    from xmlcore.code_size import choose_layer_sizes

    V = label_matrix(args.n, args.labels, args.per_row)
    first, last = args.layers
    candidates = [(first // 2, last // 2), (first, last)]
    base = rss_mib()
    start = time.perf_counter()
    choice = choose_layer_sizes(V, candidates=candidates, epochs=args.choice_epochs, seed=0)
    chose = time.perf_counter() - start
    ae = DeepNonNegativeAutoencoder(
        layer_sizes=(first, last), epochs=args.epochs, batch_size=args.batch_size, seed=0
    ).fit(V)
    codes = ae.codes(V)
    error = ae.reconstruction_error(V)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "n": args.n, "nnz": int(V.nnz), "base_mib": round(base, 1), "peak_mib": round(peak, 1),
        "stage_mib": round(peak - base, 1), "seconds": round(time.perf_counter() - start, 1),
        "choice_seconds": round(chose, 1), "chosen": list(choice.layer_sizes),
        "code_mib": round(sum(c.nbytes for c in codes) / 2**20, 1),
        "reconstruction_mse": float(np.float32(error)),
    }  # fmt: skip


def old_tree(ref: str, into: Path) -> Path:
    """``xmlcore`` at ``ref``, exported (no checkout, no worktree)."""
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", ref, "xmlcore"], check=True, capture_output=True
    ).stdout
    with tempfile.TemporaryFile() as tmp:
        tmp.write(archive)
        tmp.seek(0)
        with tarfile.open(fileobj=tmp) as tar:
            tar.extractall(into, filter="data")
    return into


def run_child(args: argparse.Namespace, code: str, n: int, tree: Path) -> dict[str, Any]:
    """One (code, n) run in a fresh process, killed past ``--kill-gb`` of RSS."""
    import psutil

    command = [sys.executable, __file__, "--child", code, "--n", str(n)]
    passed = ["--labels", str(args.labels), "--per-row", str(args.per_row), "--layers",
              *map(str, args.layers), "--epochs", str(args.epochs), "--choice-epochs",
              str(args.choice_epochs), "--batch-size", str(args.batch_size)]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(tree), "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.Popen([*command, *passed], env=env, stdout=subprocess.PIPE, text=True)
    watched, top = psutil.Process(proc.pid), 0.0
    while proc.poll() is None:
        try:
            top = max(top, watched.memory_info().rss / 2**30)
        except psutil.NoSuchProcess:
            break
        if top > args.kill_gb:
            proc.kill()
            proc.wait()
            return {"n": n, "killed_at_gib": round(top, 2)}
        time.sleep(0.2)
    out = proc.stdout.read() if proc.stdout else ""
    if proc.returncode != 0:
        return {"n": n, "failed": proc.returncode}
    return dict(json.loads(out.strip().splitlines()[-1]))


def growth(runs: dict[int, dict[str, Any]], rows: list[int]) -> dict[str, float]:
    first = runs.get(rows[0], {}).get("stage_mib")
    out = {}
    for n in rows[1:]:
        later = runs.get(n, {}).get("stage_mib")
        if first and later is not None:
            out[f"x{n // rows[0]}"] = round(later / first, 2)
    return out


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.child:
        print(json.dumps(child(args)))
        return {}
    rows = sorted(args.rows)
    results: dict[str, dict[int, dict[str, Any]]] = {"new": {}, "old": {}}
    with tempfile.TemporaryDirectory() as tmp:
        trees = {"new": ROOT, "old": old_tree(args.old_ref, Path(tmp))}
        for n in rows:
            dense_gb = n * args.labels * 4 / 1e9
            for code in ("new", "old"):
                if code == "old" and dense_gb > args.old_max_gb:
                    print(f"{code} n={n}: skipped (dense V {dense_gb:.1f} GB)", file=sys.stderr)
                    continue
                run = run_child(args, code, n, trees[code])
                results[code][n] = run
                print(f"{code} n={n}: {run}", file=sys.stderr, flush=True)
    summary = {
        "p": args.labels, "per_row": args.per_row, "layers": args.layers, "rows": rows,
        "new_stage_mib": {str(n): r.get("stage_mib") for n, r in results["new"].items()},
        "old_stage_mib": {str(n): r.get("stage_mib", r) for n, r in results["old"].items()},
        "new_peak_mib": {str(n): r.get("peak_mib") for n, r in results["new"].items()},
        "old_peak_mib": {str(n): r.get("peak_mib") for n, r in results["old"].items()},
        "new_growth": growth(results["new"], rows), "old_growth": growth(results["old"], rows),
        "nnz_growth": {f"x{n // rows[0]}": n / rows[0] for n in rows[1:]},
    }  # fmt: skip
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
