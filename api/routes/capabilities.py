"""What this deployment can do: bases (and which have imported ImageNet weights),
explanation methods and their parameters, and the request limits.

Read by clients before they submit, so a training request for ``weights: "imagenet"``
on a base without imported weights is not a surprise (it is refused at submit with
``config.weights_unavailable``). The API never imports Keras: the bases come from the
request schema, the weights from the records in the object store.
"""

from __future__ import annotations

from typing import Any, get_args

from fastapi import APIRouter
from pydantic import BaseModel

from api.deps import Reader, State
from api.problems import problem_responses
from api.schemas import TrainingParams
from xmlcore.param_costs import EVALUATION_STEPS
from xmlcore.params import EVALUATIONS, METHOD_PARAMS, params_json_schemas
from xmlx.weights import PRETRAINED_BASES, weights_record

router = APIRouter(prefix="/v1/capabilities", tags=["capabilities"])


class BaseOut(BaseModel):
    name: str
    pretrained: bool  # has published ImageNet weights at all
    imagenet_weights: dict[str, Any] | None  # the imported file, or None


class MethodOut(BaseModel):
    name: str
    params: list[str]
    # JSON Schema of the method's params: types, bounds, defaults (xmlcore.params).
    params_schema: dict[str, Any]


class EvaluationsOut(BaseModel):
    """What an explanation request's `evaluate` may ask for (`xmlcore.faithfulness`)."""

    kinds: list[str]
    steps: int  # points of each curve after the start; a curve costs steps + 2 passes


class CapabilitiesOut(BaseModel):
    bases: list[BaseOut]
    methods: list[MethodOut]
    evaluations: EvaluationsOut
    limits: dict[str, Any]


def base_names() -> list[str]:
    return list(get_args(TrainingParams.model_fields["base"].annotation))


@router.get(
    "",
    response_model=CapabilitiesOut,
    summary="Bases, imported weights, methods and limits of this deployment",
    responses=problem_responses(401, 429),
)
def get_capabilities(caller: Reader, state: State) -> CapabilitiesOut:
    bases = []
    for name in base_names():
        record = weights_record(state.store, name) if name in PRETRAINED_BASES else None
        shown = None
        if record is not None:
            shown = {"sha256": record.sha256, "size": record.size, "source": record.source,
                     "imported_at": record.imported_at}  # fmt: skip
        bases.append(
            BaseOut(name=name, pretrained=name in PRETRAINED_BASES, imagenet_weights=shown)
        )
    schemas = params_json_schemas()
    methods = [
        MethodOut(name=m, params=sorted(p), params_schema=schemas[m])
        for m, p in METHOD_PARAMS.items()
    ]
    settings = state.settings
    limits = {"max_batch_items": settings.max_batch_items,
              "max_image_bytes": settings.max_image_bytes,
              "max_image_pixels": settings.max_image_pixels,
              "max_job_forward_passes": settings.max_job_forward_passes}  # fmt: skip
    evaluations = EvaluationsOut(kinds=list(EVALUATIONS), steps=EVALUATION_STEPS)
    return CapabilitiesOut(bases=bases, methods=methods, evaluations=evaluations, limits=limits)
