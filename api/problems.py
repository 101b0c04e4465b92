"""Errors as `application/problem+json` (RFC 9457) with a stable dotted `code`.

Every failure a client can see is one shape: `{type, title, status, detail, code,
errors?}`. `code` is the contract (clients branch on it; never rename one); `detail`
is for people. Routes raise `ProblemError`; kernel errors (`XmlxError`) and xmlcore
errors are translated here by code, so no route needs its own try/except for them.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from xmlcore.errors import XmlcoreError
from xmlcore.params import PARAMS_MODELS, describe_errors
from xmlx.errors import XmlxError
from xmlx.quotas import QuotaError

PROBLEM_MEDIA_TYPE = "application/problem+json"
TYPE_PREFIX = "urn:xmlx:problem:"

log = logging.getLogger("xmlx.api")

# Kernel codes whose HTTP status is not the default 422 (bad input).
_STATUS_BY_CODE: dict[str, int] = {
    "auth.invalid": 401,
    "job.not_found": 404,
    "model.not_found": 404,
    "dataset.not_found": 404,
    "storage.not_found": 404,
    "model.not_ready": 409,
    "idempotency.in_progress": 409,
    "batch.too_large": 413,
    "storage.too_large": 413,
    "storage.url_expired": 403,
    "storage.bad_signature": 403,
    "storage.denied": 502,
    "storage.no_bucket": 503,
    "storage.error": 502,
    "rate.limited": 429,
    "model.in_use": 409,
    "dataset.in_use": 409,
    "uploads.not_found": 404,
    "quota.storage_exceeded": 403,
    "quota.items_in_flight": 429,
}
_TITLES: dict[int, str] = {
    400: "Bad request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    409: "Conflict",
    413: "Content too large",
    422: "Unprocessable content",
    429: "Too many requests",
    500: "Internal server error",
    502: "Bad gateway",
    503: "Service unavailable",
}
# The kernel calls an idempotency clash `job.idempotency_conflict`; the API promises
# one code for it whatever was being created.
_RENAMED = {"job.idempotency_conflict": "idempotency.conflict"}
# Any 503 tells the client when to come back (`api.outages`).
RETRY_AFTER_SECONDS = 5


class Problem(BaseModel):
    """The body of every error answer (OpenAPI documents it on every route)."""

    type: str
    title: str
    status: int
    detail: str
    code: str
    errors: list[dict[str, Any]] | None = None
    # Quota problems: the tenant's current usage and its limit (bytes or items).
    usage: int | None = None
    limit: int | None = None


class ProblemError(Exception):
    """Raise from a route to answer with a problem; `headers` go on the response."""

    def __init__(
        self,
        status: int,
        code: str,
        detail: str,
        *,
        errors: Sequence[Mapping[str, Any]] | None = None,
        headers: Mapping[str, str] | None = None,
        usage: tuple[int, int] | None = None,
    ) -> None:
        super().__init__(f"{code}: {detail}")
        self.status = status
        self.code = code
        self.detail = detail
        self.errors = [dict(e) for e in errors] if errors is not None else None
        self.headers = dict(headers or {})
        self.usage = usage  # (usage, limit) of a quota


def status_for(code: str) -> int:
    return _STATUS_BY_CODE.get(code, 422)


def from_error(exc: XmlxError | XmlcoreError, status: int | None = None) -> ProblemError:
    """The problem for a kernel or xmlcore error; its code decides the status."""
    if isinstance(exc, XmlxError) and exc.code == "storage.unavailable":
        # An outage (api.outages): its message can name the endpoint; this one cannot.
        return ProblemError(
            503, "service.unavailable",
            "the storage is unreachable for the moment; retry after the Retry-After seconds",
            errors=[{"dependency": "storage"}],
        )  # fmt: skip
    errors = None
    if isinstance(exc, XmlcoreError) and exc.line is not None:
        errors = [{"code": exc.code, "line": exc.line, "message": exc.message}]
    code = _RENAMED.get(exc.code, exc.code)
    usage = (exc.usage, exc.limit) if isinstance(exc, QuotaError) else None
    return ProblemError(
        status or status_for(exc.code), code, exc.message, errors=errors, usage=usage
    )


def problem_response(problem: ProblemError) -> JSONResponse:
    body = Problem(
        type=TYPE_PREFIX + problem.code,
        title=_TITLES.get(problem.status, "Error"),
        status=problem.status,
        detail=problem.detail,
        code=problem.code,
        errors=problem.errors,
        usage=problem.usage[0] if problem.usage else None,
        limit=problem.usage[1] if problem.usage else None,
    )
    headers = dict(problem.headers)
    if problem.status == 503:
        headers.setdefault("Retry-After", str(RETRY_AFTER_SECONDS))
    return JSONResponse(
        jsonable_encoder(body, exclude_none=True),
        status_code=problem.status,
        headers=headers,
        media_type=PROBLEM_MEDIA_TYPE,
    )


def _validation_errors(exc: RequestValidationError) -> list[dict[str, Any]]:
    # Only location, message and type: echoing the input back could reflect secrets.
    return [
        {"loc": [str(part) for part in error.get("loc", ())], "msg": error.get("msg", ""),
         "type": error.get("type", "")}
        for error in exc.errors()
    ]  # fmt: skip


async def _on_problem(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ProblemError)
    return problem_response(exc)


async def _on_kernel_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, XmlxError | XmlcoreError)
    if isinstance(exc, XmlxError) and exc.transient:
        log.warning("transient kernel error: %s", exc)
    return problem_response(from_error(exc))


async def _on_validation(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = _validation_errors(exc)
    detail = _parameter_detail(exc.errors())
    if detail is not None:
        return problem_response(ProblemError(422, "config.bad_parameter", detail, errors=errors))
    problem = ProblemError(
        422, "request.invalid", "the request does not match the schema", errors=errors
    )
    return problem_response(problem)


def _parameter_detail(errors: Sequence[Any]) -> str | None:
    """For errors in a method's `params` (loc `body, <method>, params, ...`): sentences
    naming each parameter and its limits, from the schema itself; else None."""
    by_method: dict[str, list[dict[str, Any]]] = {}
    for error in errors:
        loc = tuple(error.get("loc", ()))
        if len(loc) >= 3 and loc[0] == "body" and loc[2] == "params" and loc[1] in PARAMS_MODELS:
            by_method.setdefault(str(loc[1]), []).append({**error, "loc": loc[3:]})
    if not by_method:
        return None
    return "; ".join(describe_errors(method, found) for method, found in by_method.items())


async def _on_http(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    codes = {404: "http.not_found", 405: "http.method_not_allowed"}
    code = codes.get(exc.status_code, f"http.{exc.status_code}")
    headers = dict(exc.headers or {})
    return problem_response(ProblemError(exc.status_code, code, str(exc.detail), headers=headers))


async def _on_unexpected(_request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error", exc_info=exc)
    return problem_response(ProblemError(500, "internal.error", "an unexpected error occurred"))


def install_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ProblemError, _on_problem)
    app.add_exception_handler(XmlxError, _on_kernel_error)
    app.add_exception_handler(XmlcoreError, _on_kernel_error)
    app.add_exception_handler(RequestValidationError, _on_validation)
    app.add_exception_handler(StarletteHTTPException, _on_http)
    app.add_exception_handler(Exception, _on_unexpected)
    _document_problems(app)


def _document_problems(app: FastAPI) -> None:
    """Make the OpenAPI document say what the handlers above answer.

    FastAPI documents every 422 as its own `HTTPValidationError` in `application/json`,
    but `_on_validation` answers a Problem in `application/problem+json`; and a body
    that is not even text (FastAPI: 400 "error parsing the body") was undocumented.
    Both were found by Schemathesis (bench/fuzz_api.py).
    """
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = generate()
        for path_item in schema.get("paths", {}).values():
            for operation in path_item.values():
                responses = operation.setdefault("responses", {})
                if "422" in responses:
                    responses["422"] = _problem_doc(422)
                if "requestBody" in operation:
                    responses.setdefault("400", _problem_doc(400))
        components = schema.get("components", {}).get("schemas", {})
        if "#/components/schemas/HTTPValidationError" not in json.dumps(schema):
            components.pop("HTTPValidationError", None)
            components.pop("ValidationError", None)
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def _problem_doc(status: int) -> dict[str, Any]:
    ref = {"$ref": "#/components/schemas/Problem"}
    return {"description": _TITLES.get(status, "Error"),
            "content": {PROBLEM_MEDIA_TYPE: {"schema": ref}}}  # fmt: skip


# OpenAPI: the problem shape under each error status a route can return.
def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {
        status: {
            "model": Problem,
            "description": _TITLES.get(status, "Error"),
            "content": {PROBLEM_MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}},
        }
        for status in statuses
    }
