"""bench/batch_scale.py end to end at a small size: the stack, the key-list path, the
figures it promises, and the goals with a wide margin (202 well under a second, a
preparation far from the old 45 us per item in the request, API memory flat), so a
badly broken goal fails here rather than only in a benchmark run."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.bench_scripts import load_bench_script

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_batch_scale_smoke(tmp_path: Path) -> None:
    bench = load_bench_script("batch_scale")
    summary = bench.main(["--sizes", "1000,20000", "--sqlite", "--timeout", "120",
                          "--root", str(tmp_path / "stack")])  # fmt: skip
    assert summary["sizes"] == summary["db_items"] == [1000, 20000]
    assert {"accept_s", "ready_s", "api_rss_mib", "per_item_us"} <= set(summary)
    assert max(summary["accept_s"]) < 1.0
    assert summary["per_item_us"][-1] < 1000  # 20,000 items ready in under 20 s
    assert summary["api_rss_growth_mib"] < 200
    assert max(summary["page_mid_ms"]) < 1000
