"""Probes and metrics: `/healthz` (the process answers), `/readyz` (it can do its job),
`/metrics` (Prometheus text). None of them needs an API key: they are for the platform,
and say nothing about any tenant.

`/readyz` names the dependency that is down (`down`, and each check's `detail`: a fixed
phrase such as "unreachable") but never the exception text, which can carry the
database host, its user or a connection string to anyone who can reach the probe; the
exception type goes to the log."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy import text

from api.deps import ApiState, State
from api.metrics import CONTENT_TYPE
from xmlx.migrate import MigrationError, ensure_migrated

router = APIRouter(tags=["health"])
log = logging.getLogger("xmlx.api")


class Check(BaseModel):
    ok: bool
    seconds: float
    detail: str | None = None


class Readiness(BaseModel):
    status: str
    down: list[str] = []
    checks: dict[str, Check]


@router.get("/healthz", summary="The process is alive")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


def _check(name: str, probe: Callable[[], None]) -> Check:
    started = time.perf_counter()
    try:
        probe()
    except MigrationError:
        detail = "not migrated to this code's revision (run `xmlx db upgrade`)"
        return Check(ok=False, seconds=round(time.perf_counter() - started, 4), detail=detail)
    except Exception as exc:
        log.warning("readyz: %s unreachable (%s)", name, type(exc).__name__)
        return Check(
            ok=False, seconds=round(time.perf_counter() - started, 4), detail="unreachable"
        )
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
        "database": _check("database", lambda: _database(state)),
        "broker": _check("broker", state.broker.ping),
        "storage": _check("storage", lambda: _storage(state)),
    }
    down = [name for name, check in checks.items() if not check.ok]
    body = Readiness(status="unavailable" if down else "ok", down=down, checks=checks)
    headers = {"Retry-After": "5"} if down else None
    return JSONResponse(
        body.model_dump(mode="json"), status_code=503 if down else 200, headers=headers
    )


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
def metrics(state: State) -> Response:
    return Response(state.metrics.render(), media_type=CONTENT_TYPE)
