"""Schemathesis against the API's own OpenAPI document, in process (RELIABILITY.md, 10).

The app is `api.app.create_app` on a migrated database (a fresh SQLite file, or
`--database-url`), an embedded Redis (broker, rate limit, idempotency) and a local
directory store. One tenant is seeded through the HTTP API with a dataset, a model and
jobs, so that besides fully generated requests (positive and negative) every
operation with `{job_id}`, `{model_id}` or `{dataset_id}` is also fuzzed with ids that
exist: the 200 answers get their schemas checked too, not only the 404s.

Each case is sent with a valid API key and checked: no 5xx, the status code, the
content type, the headers and the body conform to the document. Failures are
collected (not shrunk) with the operation, the check and a curl line to replay.
The model is set `ready` through the kernel (as a training worker's last step does):
no worker runs here, so the model has no artifact and jobs stay queued.

Usage: `python bench/fuzz_api.py --cases 1000 [--seed 0] [--database-url URL]`;
the last line is JSON `{cases, failures, seconds, operations, statuses}`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import schemathesis
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, Phase, Verbosity, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from pydantic import SecretStr
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from api.app import create_app
from xmlx import repository as repo
from xmlx.db import create_engine, make_session_factory, session_scope
from xmlx.embedded_redis import EmbeddedRedis
from xmlx.migrate import upgrade
from xmlx.models import ModelState
from xmlx.settings import Settings

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
PEPPER = "fuzz-pepper-" + "f" * 32
BATCH_OPERATIONS = ("POST /v1/explanations", "POST /v1/predictions")
MANIFEST = b"image,labels\na.png,salt|rice\nb.png,salt\nc.png,oil|rice\nd.png,oil\n"


@dataclass
class FuzzReport:
    cases: int = 0
    seconds: float = 0.0
    failures: list[dict[str, str]] = field(default_factory=list)
    operations: int = 0
    statuses: Counter[int] = field(default_factory=Counter)  # what the cases reached

    def summary(self) -> dict[str, Any]:
        return {"cases": self.cases, "failures": len(self.failures),
                "seconds": round(self.seconds, 1), "operations": self.operations,
                "statuses": dict(sorted(self.statuses.items()))}  # fmt: skip


@dataclass(frozen=True)
class Tenant:
    headers: dict[str, str]
    ids: dict[str, list[str]]  # path parameter name -> ids that exist


def fuzz_settings(database_url: str, redis_url: str, root: Path) -> Settings:
    return Settings(
        env="test", data_dir=root / "data", database_url=database_url, redis_url=redis_url,
        storage_backend="local", local_storage_root=root / "storage",
        api_key_pepper=SecretStr(PEPPER), public_base_url="http://testserver",
        rate_limit_per_minute=1_000_000,
    )  # fmt: skip


def seed_tenant(app: FastAPI, settings: Settings) -> Tenant:
    """A tenant with an API key, a dataset, a ready model and two jobs, made over HTTP."""
    engine = create_engine(settings.database_url)
    sessions = make_session_factory(engine)
    with session_scope(sessions) as session:
        tenant = repo.create_tenant(session, f"fuzz-{uuid.uuid4().hex[:8]}")
        _row, key = repo.create_api_key(session, tenant.id, PEPPER, "fuzz")
    headers = {"Authorization": f"Bearer {key}"}
    http = TestClient(app)  # no lifespan: the one Schemathesis started serves it
    grant = http.post("/v1/uploads", headers=headers,
                      json={"keys": ["m/manifest.csv"], "content_type": "text/csv"})  # fmt: skip
    target = grant.json()["uploads"][0]
    assert http.put(target["url"], content=MANIFEST, headers=target["headers"]).status_code == 200
    body: dict[str, Any] = {"images_prefix": "m", "manifest_key": "m/manifest.csv"}
    dataset = http.post("/v1/datasets", headers=headers, json=body).json()
    body = {"dataset_id": dataset["id"], "training": {"layer_sizes": [2], "epochs": 1}}
    created = http.post("/v1/models", headers=headers, json=body).json()
    model_id = created["model"]["id"]
    with session_scope(sessions) as session:
        moved = repo.transition_model(
            session, model_id, [ModelState.PENDING, ModelState.TRAINING], ModelState.READY,
            artifact_key=f"tenants/{tenant.id}/models/{model_id}/model.zip",
            hierarchy={"layers": [{"layer": 1, "units": [{"index": 0, "members": [["salt", 1]]}]}]},
            metrics={"p@1": 0.5},
        )  # fmt: skip
    engine.dispose()
    assert moved, "the seeded model did not become ready"
    batch = {"model_id": model_id, "dataset_id": dataset["id"], "images": ["a.png", "b.png"]}
    job = http.post("/v1/explanations", headers=headers, json=batch).json()
    ids = {"dataset_id": [dataset["id"]], "model_id": [model_id],
           "job_id": [job["id"], created["job"]["id"]]}  # fmt: skip
    return Tenant(headers, ids)


def _strategies(schema: Any, tenant: Tenant) -> list[tuple[str, st.SearchStrategy[Any]]]:
    """Per operation: positive, negative, and positive with existing ids in the path
    (or, for batches, in the body: otherwise every generated batch names no model)."""
    found = []
    for result in schema.get_all_operations():
        operation = result.ok()
        found.append((operation.label, operation.as_strategy(GenerationMode.POSITIVE)))
        found.append((operation.label, operation.as_strategy(GenerationMode.NEGATIVE)))
        names = [p.name for p in operation.path_parameters]
        if names and all(name in tenant.ids for name in names):
            fixed = st.fixed_dictionaries({n: st.sampled_from(tenant.ids[n]) for n in names})
            found.append((operation.label, _with(operation, "path_parameters", fixed)))
        if operation.label in BATCH_OPERATIONS:
            found.append((operation.label, _with(operation, "body", _batch_bodies(tenant))))
    return found


def _with(operation: Any, argument: str, values: st.SearchStrategy[Any]) -> Any:
    def cases(value: Any) -> Any:
        return operation.as_strategy(**{argument: value})

    return values.flatmap(cases)


def _batch_bodies(tenant: Tenant) -> st.SearchStrategy[dict[str, Any]]:
    plain = st.from_regex(r"[a-z0-9_-]{1,12}(/[a-z0-9_.-]{1,12}){0,2}", fullmatch=True)
    keys = st.lists(st.one_of(plain, st.text(max_size=30)), min_size=1, max_size=4)
    return st.fixed_dictionaries(
        {"model_id": st.sampled_from(tenant.ids["model_id"]), "images": keys},
        optional={"dataset_id": st.sampled_from(tenant.ids["dataset_id"]),
                  "k": st.integers(1, 100)},
    )  # fmt: skip


def _run_strategy(
    strategy: st.SearchStrategy[Any], n: int, seed: int, headers: dict[str, str], report: FuzzReport
) -> None:
    @settings(max_examples=n, database=None, deadline=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck), verbosity=Verbosity.quiet)  # fmt: skip
    @hypothesis_seed(seed)
    @given(case=strategy)
    def run(case: Any) -> None:
        report.cases += 1
        try:
            response = case.call(headers=headers)
        except Exception as exc:  # the app raised: a client would have seen a 500
            report.failures.append({"operation": case.operation.label, "status": "500",
                                    "failure": f"{type(exc).__name__}: {exc}"[:3000]})  # fmt: skip
            return
        report.statuses[response.status_code] += 1
        try:
            case.validate_response(response, checks=CHECKS, headers=headers)
        except FailureGroup as exc:
            status = str(response.status_code)
            report.failures.append({"operation": case.operation.label, "status": status,
                                    "failure": str(exc)[:3000]})  # fmt: skip

    with contextlib.suppress(Unsatisfiable):  # e.g. a negative case of an input-less operation
        run()


def fuzz(app: FastAPI, settings: Settings, cases: int, seed: int = 0) -> FuzzReport:
    """Run at least `cases` generated requests against `app`; failures are collected."""
    started = time.perf_counter()
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)  # starts the lifespan
    tenant = seed_tenant(app, settings)
    strategies = _strategies(schema, tenant)
    report = FuzzReport(operations=len({label for label, _ in strategies}))
    round_, before = 0, -1
    while before < report.cases < cases:
        before = report.cases
        # Small operations run out of distinct inputs early; later rounds re-seed.
        per_strategy = max(1, math.ceil((cases - report.cases) / len(strategies)))
        for index, (_label, strategy) in enumerate(strategies):
            _run_strategy(strategy, per_strategy, seed + 1000 * round_ + index,
                          tenant.headers, report)  # fmt: skip
        round_ += 1
    report.seconds = time.perf_counter() - started
    return report


@contextmanager
def fuzz_app(root: Path, database_url: str | None = None) -> Iterator[tuple[FastAPI, Settings]]:
    """The app on a migrated database and a private Redis, both gone afterwards."""
    database_url = database_url or f"sqlite:///{root / 'fuzz.sqlite'}"
    upgrade(database_url)
    redis = EmbeddedRedis(root / "redis").start()
    try:
        settings = fuzz_settings(database_url, redis.url, root)
        yield create_app(settings), settings
    finally:
        redis.stop()


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--cases", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--database-url", help="a migrated or empty database (default: SQLite)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp, fuzz_app(Path(tmp), args.database_url) as (app, s):
        report = fuzz(app, s, args.cases, args.seed)
    for failure in report.failures[:20]:
        print(f"--- {failure['operation']} -> {failure['status']}\n{failure['failure']}\n")
    summary = report.summary()
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    sys.exit(1 if main()["failures"] else 0)
