"""Outages are not bugs: a dependency that cannot be reached answers 503.

When the database, Redis or the object store is down, a request fails with 503
`service.unavailable` and `Retry-After`, never 500 `internal.error`: the client's
request was fine and the same request will work once the dependency is back, which
is what 503 + Retry-After tells a client (and its retry library) to do. The answer
names the dependency (`errors: [{"dependency": "database"}]`) but never the exception
text, which can hold a host, a user or a connection string. The storage layer already
turns boto errors into the kernel's `storage.unavailable`; `api.problems` renames that
one to `service.unavailable` with the same header.

What is an outage: SQLAlchemy's connection-level errors (OperationalError,
InterfaceError, a pool timeout, an invalidated connection), redis-py's ConnectionError
and TimeoutError, and botocore's connection errors if one escapes the storage layer.
A constraint violation or a bad query is NOT an outage and stays a 500 (a bug).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import redis.exceptions
import sqlalchemy.exc
from botocore.exceptions import ConnectionError as BotoConnectionError
from botocore.exceptions import HTTPClientError
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from api.problems import RETRY_AFTER_SECONDS, ProblemError, problem_response

CODE = "service.unavailable"
log = logging.getLogger("xmlx.api")

DATABASE_OUTAGES: tuple[type[Exception], ...] = (
    sqlalchemy.exc.OperationalError,
    sqlalchemy.exc.InterfaceError,
    sqlalchemy.exc.DisconnectionError,
    sqlalchemy.exc.TimeoutError,
)
REDIS_OUTAGES: tuple[type[Exception], ...] = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
)
STORAGE_OUTAGES: tuple[type[Exception], ...] = (BotoConnectionError, HTTPClientError)


def unavailable(dependency: str) -> ProblemError:
    return ProblemError(
        503,
        CODE,
        f"the {dependency} is unreachable for the moment; retry after the Retry-After seconds",
        errors=[{"dependency": dependency}],
        headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
    )


def _handler(dependency: str) -> Callable[[Request, Exception], Awaitable[JSONResponse]]:
    async def handle(request: Request, exc: Exception) -> JSONResponse:
        log.warning(
            "%s unavailable (%s) on %s %s",
            dependency, type(exc).__name__, request.method, request.url.path,
        )  # fmt: skip
        return problem_response(unavailable(dependency))

    return handle


async def _on_dbapi_error(request: Request, exc: Exception) -> JSONResponse:
    """Any other DBAPI error: an outage only if it cost the connection."""
    assert isinstance(exc, sqlalchemy.exc.DBAPIError)
    if exc.connection_invalidated:
        return await _handler("database")(request, exc)
    log.exception("database error", exc_info=exc)
    return problem_response(ProblemError(500, "internal.error", "an unexpected error occurred"))


def install_outage_handlers(app: FastAPI) -> None:
    for dependency, outages in (
        ("database", DATABASE_OUTAGES),
        ("redis", REDIS_OUTAGES),
        ("storage", STORAGE_OUTAGES),
    ):
        for outage in outages:
            app.add_exception_handler(outage, _handler(dependency))
    app.add_exception_handler(sqlalchemy.exc.DBAPIError, _on_dbapi_error)
