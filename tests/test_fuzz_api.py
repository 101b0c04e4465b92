"""Scenario 10 (RELIABILITY.md): Schemathesis against the OpenAPI document, in process.

The app runs on the suite's migrated database and the session's embedded Redis, with a
local store; `bench/fuzz_api.py` generates the cases (positive, negative, and with ids
that exist) and checks each answer: no 5xx, documented status, content type, headers
and body. CI runs `CI_CASES`; `python bench/fuzz_api.py --cases 1000` the full count.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from api.app import create_app
from tests.bench_scripts import load_bench_script
from xmlx.embedded_redis import EmbeddedRedis

pytestmark = pytest.mark.slow

CI_CASES = 200


def test_generated_requests_find_no_5xx_and_no_schema_violation(
    database_url: str, broker_redis: EmbeddedRedis, tmp_path: Path
) -> None:
    bench = load_bench_script("fuzz_api")
    settings = bench.fuzz_settings(database_url, broker_redis.url, tmp_path)
    app = create_app(settings)
    report = bench.fuzz(app, settings, CI_CASES, seed=0)
    print(report.summary())
    assert report.cases >= CI_CASES
    assert not report.failures, "\n\n".join(f["failure"] for f in report.failures[:3])
    assert report.operations == len({
        (path, method) for path, item in app.openapi()["paths"].items() for method in item
    })  # fmt: skip
    # The cases reach past validation: real resources answered 200, missing ones 404.
    assert {200, 404, 422} <= set(report.statuses)
