"""Templates, the static files, and the small helpers every page shares.

Everything the pages need is served from here (no CDN, no build step). Static files
are a fixed list read at import, so a request can never name a file outside it.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response
from fastapi.templating import Jinja2Templates

from xmlx.client_display import format_duration
from xmlx.models import FINAL_JOB_STATES

HERE = Path(__file__).resolve().parent
templates = Jinja2Templates(directory=str(HERE / "templates"))
STATIC_TYPES = {".css": "text/css; charset=utf-8", ".js": "text/javascript; charset=utf-8"}
_STATIC = {
    path.name: (path.read_bytes(), STATIC_TYPES[path.suffix])
    for path in sorted((HERE / "static").iterdir())
    if path.suffix in STATIC_TYPES
}

# Scripts and styles only from here (no inline script); images also from the object
# store, whose presigned URLs may be on another host (S3).
CSP = (
    "default-src 'self'; img-src 'self' data: https: http:; style-src 'self' 'unsafe-inline'; "
    "script-src 'self'; frame-ancestors 'none'; form-action 'self'"
)

router = APIRouter()


def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S UTC") if value else "—"


def _percent(done: int, total: int) -> int:
    return round(100 * done / total) if total else 0


templates.env.filters["when"] = _when
templates.env.filters["duration"] = format_duration
templates.env.globals["percent"] = _percent
templates.env.globals["final_states"] = FINAL_JOB_STATES


def render(
    request: Request, name: str, context: dict[str, Any], status_code: int = 200
) -> HTMLResponse:
    response = templates.TemplateResponse(request, name, context, status_code=status_code)
    # Pages show one tenant's data: never cached by a shared proxy or framed elsewhere.
    response.headers["Cache-Control"] = "private, no-store"
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Referrer-Policy"] = "same-origin"
    response.headers["Content-Security-Policy"] = CSP
    return response


def not_found(request: Request, what: str) -> HTMLResponse:
    return render(request, "message.html", {"title": "Not found", "message": what}, 404)


def bad_request(request: Request, what: str) -> HTMLResponse:
    return render(request, "message.html", {"title": "Bad request", "message": what}, 400)


@router.get("/ui/static/{name}", include_in_schema=False)
def static_file(name: str) -> Response:
    if name not in _STATIC:
        return Response("not found", status_code=404, media_type="text/plain")
    body, media_type = _STATIC[name]
    return Response(body, media_type=media_type, headers={"Cache-Control": "public, max-age=300"})
