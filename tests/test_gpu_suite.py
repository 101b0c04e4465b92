"""The GPU suite's CPU smoke mode runs every measurement end to end (so the script works
the day a GPU is lent) and its figures hold together: LIME's device path gives the host
path's coefficients, and every step reports instead of failing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_smoke_mode_measures_every_step() -> None:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    done = subprocess.run(
        [sys.executable, "bench/gpu_suite.py", "--smoke"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    rows = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert done.returncode == 0, done.stderr[-3000:]
    summary = rows[-1]
    assert summary["measure"] == "summary" and summary["failed"] == summary["skipped"] == []
    assert len(summary["done"]) == 9
    measures = {row["measure"] for row in rows}
    assert {"matmul_peak", "forward", "lime", "lime_overlap", "lime_package"} <= measures
    assert {"explainer", "train"} <= measures
    lime = [row for row in rows if row["measure"] == "lime"]
    assert len(lime) == 2
    for row in lime:
        assert row["coef_max_abs_diff_host_vs_device"] < 1e-6
        assert row["device_path_s"] > 0 and row["bare_forward_s"] > 0
    overlap = [row for row in rows if row["measure"] == "lime_overlap"]
    assert [row["base"] for row in overlap] == [row["base"] for row in lime]
    for row in overlap:  # the overlapped pipeline is the sequential one reordered
        assert row["coef_max_abs_diff_vs_sequential_sync"] < 1e-6
        assert row["n_images"] > row["chunk"]  # several chunks, so there is overlap
        for name in ("sequential_sync", "sequential_async", "overlapped"):
            assert row[f"{name}_s"] > 0 and row[f"{name}_overhead"] > 0
    forward = [row for row in rows if row["measure"] == "forward"]
    assert all(row["images_per_s"] > 0 and row["gflops_per_image"] > 0 for row in forward)
    methods = {row["method"] for row in rows if row["measure"] == "explainer"}
    assert methods == {"occlusion", "integrated_gradients", "grad_cam"}
