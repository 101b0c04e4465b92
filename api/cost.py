"""What a batch request will cost, checked before its job exists.

Two checks the request schema alone cannot make, because they depend on the model and
the tenant: the method's parameters must fit the model's image size in a worker's
memory (`xmlcore.param_costs.check_image_fit`, 422 `config.bad_parameter`), and the
job's estimated forward passes must be within the tenant's limit
(`xmlx.jobs.check_job_cost`, 422 `quota.job_cost`).
"""

from __future__ import annotations

from api.deps import ApiState
from api.problems import ProblemError
from api.schemas import BatchRequest, ExplanationRequestBase, TopKTarget
from xmlcore.param_costs import PREDICT, check_image_fit
from xmlx import jobs
from xmlx import repository as repo
from xmlx.db import session_scope
from xmlx.jobs.cost import DEFAULT_IMAGE_SIZE
from xmlx.models import Model


def check_cost(
    state: ApiState, tenant_id: str, body: BatchRequest, model: Model, n_items: int
) -> int:
    """The job's estimated forward passes, or a problem when it cannot or may not run."""
    size = model.params.get("image_size") or DEFAULT_IMAGE_SIZE
    image_size = (int(size[0]), int(size[1]))
    method, params, targets, evaluate = PREDICT, {}, 1, []
    if isinstance(body, ExplanationRequestBase):
        check_image_fit(body.method, body.params, image_size)
        method, params = body.method, body.params.model_dump()
        targets = body.target.k if isinstance(body.target, TopKTarget) else 1
        evaluate = list(body.evaluate)
    with session_scope(state.sessions) as session:
        tenant = repo.get_tenant(session, tenant_id)
    if tenant is None:
        raise ProblemError(401, "auth.invalid", "unknown tenant")
    return jobs.check_job_cost(
        tenant,
        method,
        params,
        n_items,
        default_limit=state.settings.max_job_forward_passes,
        targets=targets,
        image_size=image_size,
        evaluate=evaluate,
    )
