"""A job's cost estimate, checked against its tenant's limit before the job exists.

The cost of an explanation is its forward passes (ARCHITECTURE.md, "Performance
principles"): items x passes per item, where a pass per item comes from
`xmlcore.param_costs` (LIME's samples, occlusion's windows, a gradient method's steps
or noisy copies per target). The limit is the tenant's `max_job_forward_passes`, or
`Settings.max_job_forward_passes` when the tenant has none.

Call `check_job_cost` wherever a job's item count becomes known: the API does at
submit; batch preparation that lists a prefix later calls it again with the count.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from xmlcore.param_costs import PREDICT, forward_passes_per_item
from xmlcore.params import parse_params
from xmlx.errors import XmlxError
from xmlx.models import Tenant

DEFAULT_IMAGE_SIZE = (64, 64)  # TrainingParams' default, for models that recorded none


def check_job_cost(
    tenant: Tenant,
    method: str,
    params: Mapping[str, Any],
    n_items: int,
    *,
    default_limit: int,
    targets: int = 1,
    image_size: tuple[int, int] = DEFAULT_IMAGE_SIZE,
    evaluate: Sequence[str] = (),
) -> int:
    """The job's estimated forward passes; `XmlxError("quota.job_cost")` when over the
    tenant's limit. `method` is an explanation method or "predict" (then `params` is
    ignored); `targets` is how many targets each image is explained for; `evaluate` the
    faithfulness curves asked for (each adds its forward passes per target)."""
    typed = None if method == PREDICT else parse_params(method, params)
    per_item = forward_passes_per_item(
        method, typed, targets=targets, image_size=image_size, evaluate=evaluate
    )
    estimate = per_item * max(n_items, 0)
    override = tenant.max_job_forward_passes
    limit = default_limit if override is None else override
    if estimate > limit:
        raise XmlxError(
            "quota.job_cost",
            f"this job would cost about {estimate:,} forward passes ({n_items:,} images x "
            f"{per_item:,}); the limit for your tenant is {limit:,}: fewer images or "
            "samples per image, or ask for a higher limit",
        )
    return estimate
