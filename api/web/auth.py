"""Signing in to the web UI: an API key in, a signed session cookie out.

The cookie does NOT hold the API key. It holds `<key id>.<expiry>.<HMAC>` signed with a
secret derived from the API pepper, so a stolen cookie cannot be replayed against the
JSON API, it stops working at its expiry (`SESSION_SECONDS`), and every request still
checks that the key behind it exists and is not revoked (one primary-key lookup): a
revoked key logs its browser sessions out at once (no cache, so no revocation epoch is
needed here). Browsing needs the key's `read` scope. The cookie is HttpOnly (scripts
never see it), SameSite=Strict (no other site can make the browser send it, which is
what protects the UI's few POSTs from cross-site forgery) and Secure over HTTPS.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Form, Request
from fastapi.responses import RedirectResponse, Response

from api.deps import Principal, State, get_state
from api.web.render import render
from xmlx import repository as repo
from xmlx.db import session_scope
from xmlx.models import ApiKey
from xmlx.security import parse_scopes
from xmlx.settings import Settings

COOKIE_NAME = "xmlx_session"
SESSION_SECONDS = 12 * 3600
LOGIN_PATH = "/ui/login"

router = APIRouter()


def _secret(settings: Settings) -> bytes:
    pepper = settings.api_key_pepper.get_secret_value().encode()
    return hmac.new(pepper, b"xmlx web sessions", hashlib.sha256).digest()


def _signature(secret: bytes, key_id: str, expires: int) -> str:
    return hmac.new(secret, f"{key_id}.{expires}".encode(), hashlib.sha256).hexdigest()


def make_session_token(settings: Settings, key_id: str, now: float | None = None) -> str:
    expires = int((time.time() if now is None else now) + SESSION_SECONDS)
    return f"{key_id}.{expires}.{_signature(_secret(settings), key_id, expires)}"


def read_session_token(settings: Settings, token: str, now: float | None = None) -> str | None:
    """The key id of a valid, unexpired token, else None."""
    parts = token.split(".")
    if len(parts) != 3 or not parts[1].isdigit():
        return None
    key_id, expires, signature = parts[0], int(parts[1]), parts[2]
    if not hmac.compare_digest(_signature(_secret(settings), key_id, expires), signature):
        return None
    return key_id if (time.time() if now is None else now) <= expires else None


def current_user(request: Request) -> Principal | None:
    """The signed-in caller, or None (no cookie, bad or expired token, revoked key)."""
    token = request.cookies.get(COOKIE_NAME)
    if not token:
        return None
    state = get_state(request)
    key_id = read_session_token(state.settings, token)
    if key_id is None:
        return None
    with session_scope(state.sessions) as session:
        row = session.get(ApiKey, key_id)
        if row is None or row.revoked_at is not None:
            return None
        scopes = parse_scopes(row.scopes)
        return Principal(row.tenant_id, row.id, scopes) if "read" in scopes else None


def login_redirect(request: Request) -> RedirectResponse:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"{LOGIN_PATH}?next={quote(target, safe='')}", status_code=303)


def _safe_next(target: str) -> str:
    # Only our own pages: never an absolute or protocol-relative URL (open redirect).
    if target.startswith("/ui/") and not target.startswith("//") and "\\" not in target:
        return target
    return "/ui/jobs"


def _same_origin(request: Request) -> bool:
    origin = request.headers.get("origin")
    return origin is None or origin == f"{request.url.scheme}://{request.url.netloc}"


@router.get(LOGIN_PATH, response_model=None)
def login_form(request: Request, next: str = "/ui/jobs") -> Response:
    return render(request, "login.html", {"next": _safe_next(next), "error": None})


@router.post(LOGIN_PATH, response_model=None)
def login(
    request: Request,
    state: State,
    api_key: Annotated[str, Form(max_length=200)],
    next: Annotated[str, Form(max_length=2000)] = "/ui/jobs",
) -> Response:
    target = _safe_next(next)
    if not _same_origin(request):
        return render(
            request, "login.html", {"next": target, "error": "cross-site sign-in refused"}, 403
        )
    pepper = state.settings.api_key_pepper.get_secret_value()
    with session_scope(state.sessions) as session:
        row = repo.verify_api_key(session, api_key.strip(), pepper)
        key_id = row.id if row is not None and "read" in parse_scopes(row.scopes) else None
    if key_id is None:
        context = {
            "next": target,
            "error": "That API key is not valid (unknown, revoked, mistyped or not for reading).",
        }
        return render(request, "login.html", context, 401)
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(
        COOKIE_NAME,
        make_session_token(state.settings, key_id),
        max_age=SESSION_SECONDS,
        path="/ui",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return response


@router.post("/ui/logout", response_model=None)
def logout() -> Response:
    response = RedirectResponse(LOGIN_PATH, status_code=303)
    response.delete_cookie(COOKIE_NAME, path="/ui", httponly=True, samesite="strict")
    return response
