"""Presigned upload URLs: the client PUTs its images and manifests straight to storage.

The bytes never pass through the API (on S3); keys land under the tenant's uploads
area, so one tenant cannot write into another's.
"""

from __future__ import annotations

from fastapi import APIRouter

from api import inputs
from api.deps import IdempotencyKey, State, Submitter
from api.problems import ProblemError, problem_responses
from api.schemas import UploadRequest
from api.views import UploadsOut, UploadTarget
from xmlx import deletion, quotas
from xmlx.db import session_scope

router = APIRouter(prefix="/v1/uploads", tags=["uploads"])


@router.post(
    "",
    response_model=UploadsOut,
    summary="Presigned PUT URLs for keys under your uploads",
    description="Each URL accepts one PUT with exactly the given Content-Type. Presigning "
    "stores nothing, so a retry (with or without Idempotency-Key) is harmless.",
    responses=problem_responses(401, 403, 409, 422, 429),
)
def create_uploads(
    body: UploadRequest, caller: Submitter, state: State, _idempotency_key: IdempotencyKey
) -> UploadsOut:
    inputs.check_user_keys(body.keys, inputs.uploads_folder(caller.tenant_id, ""))
    with session_scope(state.sessions) as session:
        quotas.check_storage(session, caller.tenant_id)
        deleted = deletion.deleted_upload_prefixes(session, caller.tenant_id)
    _refuse_purging(deleted, caller.tenant_id, body.keys)
    expiry = state.settings.presign_expiry_seconds
    targets = [
        UploadTarget(
            key=key,
            url=state.store.presigned_put_url(
                inputs.upload_key(caller.tenant_id, key), expiry, body.content_type
            ),
            headers={"Content-Type": body.content_type},
        )
        for key in body.keys
    ]
    return UploadsOut(uploads=targets, expires_in=expiry)


def _refuse_purging(
    deleted: list[deletion.DeletedUploads], tenant_id: str, user_keys: list[str]
) -> None:
    """409 `uploads.purging` for a key under uploads being deleted: the running purge
    could remove the new object right after the client PUT it."""
    for key in user_keys:
        covering = deletion.deleted_upload_covering(deleted, inputs.upload_key(tenant_id, key))
        if covering is not None:
            raise ProblemError(
                409, "uploads.purging",
                f"{key!r} is under uploads being deleted; retry once GET /v1/purges/"
                f"{covering.purge_id} says done",
            )  # fmt: skip
