"""Webhooks: one signed POST per job final state, from a transactional outbox.

- `outbox`: the row written in the transaction that makes a job final.
- `delivery`: the beat task's loop: claim, POST, record, retry with backoff.
- `signing`: the `Xmlx-Signature` header (Stripe's `t=...,v1=...` scheme).
- `urls`: which URLs may be called (http(s), public addresses or the allow-list).
"""

from xmlx.webhooks.delivery import deliver_due, retry_delay
from xmlx.webhooks.outbox import record_final_state
from xmlx.webhooks.signing import (
    EVENT_HEADER,
    ID_HEADER,
    SIGNATURE_HEADER,
    new_secret,
    signature,
    verify,
)
from xmlx.webhooks.urls import NOT_ALLOWED, WebhookUrlError, check_callback_url

__all__ = [
    "EVENT_HEADER",
    "ID_HEADER",
    "NOT_ALLOWED",
    "SIGNATURE_HEADER",
    "WebhookUrlError",
    "check_callback_url",
    "deliver_due",
    "new_secret",
    "record_final_state",
    "retry_delay",
    "signature",
    "verify",
]
