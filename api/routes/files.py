"""Signed file URLs of the local storage backend, served by the API.

With S3, presigned URLs point at S3 and this route is not used (404 `storage.not_local`).
With a local directory, `LocalObjectStore` signs URLs to `/v1/files/{key}`; here the
signature and expiry are checked (403 `storage.bad_signature` / `storage.url_expired`)
before a GET is served or a PUT is written. The signature, not an API key, is the
authorisation: it names one key, one method, one content type and an expiry.
"""

from __future__ import annotations

import mimetypes
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse

from api.deps import State
from api.inputs import MAX_MANIFEST_BYTES
from api.problems import ProblemError, problem_responses
from xmlx.storage import FILES_ROUTE, LocalObjectStore, StorageError, verify_local_url

router = APIRouter(prefix=FILES_ROUTE.rstrip("/"), tags=["files"])

Expires = Annotated[int, Query(description="unix time the URL stops working")]
Signature = Annotated[str, Query(max_length=128, pattern="^[0-9a-f]+$")]


def _local_store(state: State) -> LocalObjectStore:
    if not isinstance(state.store, LocalObjectStore):
        raise ProblemError(404, "storage.not_local", "file URLs are served by the storage service")
    return state.store


@router.get(
    "/{key:path}",
    summary="Download through a signed URL (local storage backend)",
    response_class=FileResponse,
    responses=problem_responses(403, 404),
)
def get_file(key: str, expires: Expires, signature: Signature, state: State) -> FileResponse:
    store = _local_store(state)
    verify_local_url(store.secret, "GET", key, expires, signature)
    path = store.path_for(key)
    if not path.is_file():
        raise StorageError("storage.not_found", f"no object {key}")
    media_type = mimetypes.guess_type(key)[0] or "application/octet-stream"
    return FileResponse(path, media_type=media_type)


@router.put(
    "/{key:path}",
    summary="Upload through a signed URL (local storage backend)",
    status_code=200,
    response_class=Response,
    responses=problem_responses(403, 404, 413),
)
async def put_file(
    key: str, expires: Expires, signature: Signature, request: Request, state: State
) -> Response:
    store = _local_store(state)
    content_type = request.headers.get("content-type", "")
    verify_local_url(store.secret, "PUT", key, expires, signature, content_type=content_type)
    limit = max(state.settings.max_image_bytes, MAX_MANIFEST_BYTES)
    body = bytearray()
    async for part in request.stream():
        body.extend(part)
        if len(body) > limit:
            raise ProblemError(413, "storage.too_large", f"uploads are limited to {limit} bytes")
    await run_in_threadpool(store.put_bytes, key, bytes(body), content_type)
    return Response(status_code=200)
