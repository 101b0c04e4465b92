"""Probes and metrics: `/healthz` (the process answers), `/readyz` (it can do its job),
`/metrics` (Prometheus text). None of them needs an API key: they are for the platform,
and say nothing about any tenant."""

from __future__ import annotations

import time
from collections.abc import Callable

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy import text

from api.deps import ApiState, State
from api.metrics import CONTENT_TYPE
from xmlx.migrate import ensure_migrated

router = APIRouter(tags=["health"])


class Check(BaseModel):
    ok: bool
    seconds: float
    detail: str | None = None


class Readiness(BaseModel):
    status: str
    checks: dict[str, Check]


@router.get("/healthz", summary="The process is alive")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


def _check(probe: Callable[[], None]) -> Check:
    started = time.perf_counter()
    try:
        probe()
    except Exception as exc:
        detail = f"{type(exc).__name__}: {exc}"[:500]
        return Check(ok=False, seconds=round(time.perf_counter() - started, 4), detail=detail)
    return Check(ok=True, seconds=round(time.perf_counter() - started, 4))


def _database(state: ApiState) -> None:
    with state.engine.connect() as connection:
        connection.execute(text("SELECT 1"))
    ensure_migrated(state.engine)


def _storage(state: ApiState) -> None:
    state.store.list_keys("readyz/", limit=1)


@router.get(
    "/readyz",
    summary="Database (reachable, migrated), broker and storage all answer",
    response_model=Readiness,
    responses={503: {"model": Readiness, "description": "a dependency is down"}},
)
def readyz(state: State) -> JSONResponse:
    checks = {
        "database": _check(lambda: _database(state)),
        "broker": _check(state.broker.ping),
        "storage": _check(lambda: _storage(state)),
    }
    ready = all(check.ok for check in checks.values())
    body = Readiness(status="ok" if ready else "unavailable", checks=checks)
    return JSONResponse(body.model_dump(mode="json"), status_code=200 if ready else 503)


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
def metrics(state: State) -> Response:
    return Response(state.metrics.render(), media_type=CONTENT_TYPE)
