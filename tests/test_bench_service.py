"""bench/service_overhead.py and bench/scale.py run end to end at a tiny size.

One embedded stack (its workers on one compute thread, small chunks, as scale.py sets
it up) and one model trained through it serve both scripts; the figures are not
checked against the goals (a shared machine makes them noise at this size), only that each script
measures what it says, prints the keys its docs promise, and that the figures obey what
any correct measurement obeys (the server-side span inside the client's wall time, a
scaling efficiency two workers can reach) under loose ceilings.
"""

from __future__ import annotations

from collections.abc import Iterator
from types import ModuleType

import pytest

from tests.bench_scripts import load_bench_script
from tests.service_fixtures import running_stack
from xmlx.stack import Stack

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

TINY = ["--preset", "tiny", "--image-size", "32", "--items", "4", "--num-samples", "16",
        "--epochs", "1", "--poll", "0.1"]  # fmt: skip
RATIO_CEILING = 20.0
# Two workers four times as fast as one (efficiency 2) is a measuring error; at this
# size the timing noise alone reached 1.22 once (two chunks of 0.1 s each).
EFFICIENCY_CEILING = 2.0


@pytest.fixture(scope="module")
def scale() -> ModuleType:
    return load_bench_script("scale")


@pytest.fixture(scope="module")
def overhead() -> ModuleType:
    return load_bench_script("service_overhead")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, scale: ModuleType) -> Iterator[Stack]:
    env = scale.service_env(scale.parse_args([*TINY, "--chunk-size", "2"]))
    yield from running_stack(tmp_path_factory.mktemp("bench"), extra_env=env)


@pytest.fixture(scope="module")
def prepared(stack: Stack, scale: ModuleType) -> Iterator[object]:
    prepared = scale.prepare(stack, preset="tiny", image_size=32, n_items=4, epochs=1)
    with prepared.client:
        yield prepared


def test_service_overhead_compares_both_sides(
    stack: Stack, prepared: object, overhead: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    result = overhead.measure(stack, overhead.parse_args([*TINY, "--repeats", "1"]), prepared)
    assert {"inprocess_s", "service_s", "ratio", "items"} <= set(result)
    assert result["items"] == 4 and result["inprocess_s"] > 0 and result["service_s"] > 0
    # The JSON rounds each figure, so the ratio of the rounded times is only close.
    assert result["ratio"] == pytest.approx(result["service_s"] / result["inprocess_s"], rel=0.05)
    assert set(result["service_cpu_s"]) >= {"client", "api", "worker1", "s3"}
    assert "in-process s" in capsys.readouterr().out
    print(result)
    # What a mis-measuring bench would break: the server-side span and queue wait lie
    # inside the client's wall time, both sides spent CPU on the work, and the ratio
    # stays under a generous ceiling (fixed costs dominate 4 tiny items; a quiet machine
    # gives about 2-4, the goal at full size is 1.10).
    assert 0 <= result["service_queue_s"] < result["service_s"]
    assert result["service_span_s"] <= result["service_s"] + 0.01
    assert result["inprocess_cpu_s"] > 0 and result["service_cpu_s"]["worker1"] > 0
    assert result["ratio"] < RATIO_CEILING


def test_the_in_process_side_uses_the_workers_batches(overhead: ModuleType) -> None:
    settings = type("S", (), {"chunk_size": 5, "images_per_batch": 2})()
    keys = [str(i) for i in range(7)]
    assert overhead.batches(keys, settings) == [["0", "1"], ["2", "3"], ["4"], ["5", "6"]]


def test_scale_runs_one_then_two_workers(
    stack: Stack, prepared: object, scale: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    args = scale.parse_args([*TINY, "--chunk-size", "2", "--repeats", "1"])
    result = scale.measure(stack, args, prepared)
    assert result["workers"] == [1, 2] and len(result["items_per_s"]) == 2
    assert all(v > 0 for v in result["items_per_s"]) and "efficiency_2" in result
    # The worker logs account for every chunk: 4 items in chunks of 2 are two chunks.
    assert [sum(s) for s in result["chunks_per_worker"]] == [2, 2]
    assert [len(s) for s in result["chunks_per_worker"]] == [1, 2]
    assert "efficiency" in capsys.readouterr().out
    print(result)
    # A wrong clock or a chunk counted twice shows as an efficiency no two workers reach.
    assert 0 < result["efficiency_2"] <= EFFICIENCY_CEILING
