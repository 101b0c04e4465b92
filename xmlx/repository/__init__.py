"""Every query of the service, grouped by subject; import from here.

Functions take a `Session` and never commit: the caller owns the transaction (one
`xmlx.db.session_scope` per request or task step). The job lifecycle, whose steps must
each be one transaction, is `xmlx.jobs`, built on `work`.
"""

from xmlx.repository.accounts import (
    create_api_key,
    create_tenant,
    get_api_key,
    get_tenant,
    get_tenant_by_name,
    list_api_keys,
    revoke_api_key,
    verify_api_key,
)
from xmlx.repository.catalog import (
    create_dataset,
    create_model,
    dataset_ids_with_images_at,
    get_dataset,
    get_model,
    get_model_unscoped,
    list_datasets,
    list_models,
    transition_model,
)
from xmlx.repository.jobs import (
    chunk_ids,
    chunks_to_redeliver,
    count_queued_chunks,
    expired_chunks,
    get_chunk,
    get_item,
    get_job,
    get_job_by_idempotency_key,
    get_job_unscoped,
    has_live_lease,
    is_cancel_requested,
    item_key_at,
    list_chunks,
    list_items,
    list_jobs,
    pending_items,
    stalled_preparations,
    training_job_id,
)
from xmlx.repository.label_search import items_with_label
from xmlx.repository.pagination import InvalidCursorError, Page
from xmlx.repository.stats import error_counts, items_finished, jobs_by_state

__all__ = [
    "InvalidCursorError",
    "Page",
    "chunk_ids",
    "chunks_to_redeliver",
    "count_queued_chunks",
    "create_api_key",
    "create_dataset",
    "create_model",
    "create_tenant",
    "dataset_ids_with_images_at",
    "error_counts",
    "expired_chunks",
    "get_api_key",
    "get_chunk",
    "get_dataset",
    "get_item",
    "get_job",
    "get_job_by_idempotency_key",
    "get_job_unscoped",
    "get_model",
    "get_model_unscoped",
    "get_tenant",
    "get_tenant_by_name",
    "has_live_lease",
    "is_cancel_requested",
    "item_key_at",
    "items_finished",
    "items_with_label",
    "jobs_by_state",
    "list_api_keys",
    "list_chunks",
    "list_datasets",
    "list_items",
    "list_jobs",
    "list_models",
    "pending_items",
    "revoke_api_key",
    "stalled_preparations",
    "training_job_id",
    "transition_model",
    "verify_api_key",
]
