"""bench/xml_quality.py runs end to end and prints its figures as the last JSON line."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench" / "xml_quality.py"
MODELS = ("two_step", "two_step_tail", "binary_relevance", "nmf")


def _load_bench():
    spec = importlib.util.spec_from_file_location("xml_quality", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_prints_every_figure_as_json(capsys) -> None:
    bench = _load_bench()
    result = bench.main(["--preset", "tiny", "--epochs", "1", "--ae-epochs", "5"])
    last_line = capsys.readouterr().out.strip().splitlines()[-1]
    assert json.loads(last_line) == result
    for name in MODELS:
        assert {"p@1", "p@5", "psp@5", "coverage@5"} <= set(result[name])
    assert isinstance(result["hierarchy_nmi"], float)
    assert result["setup"]["preset"] == "tiny" and result["setup"]["n_labels"] == 24


def test_quick_flag_only_fills_unset_options() -> None:
    bench = _load_bench()
    quick = bench.parse_args(["--quick"])
    assert quick.preset == "small" and quick.epochs == bench.QUICK["epochs"]
    assert bench.parse_args(["--quick", "--epochs", "2"]).epochs == 2
    assert bench.default_layers(1000, 40) == (64, 16) and bench.default_layers(60, 9) == (18, 9)
