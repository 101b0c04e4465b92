"""Request bodies: what a client may send, checked before anything is stored.

Each explanation method's `params` are validated with the method's own model from
`xmlcore.params` (the same models the workers build explainers from: one table, no
copy), chosen by `method`, so OpenAPI shows every method's parameters with their
bounds and a value the API accepts is one a worker can run. `xmlcore.params` is pure
pydantic: the API still never imports TensorFlow. Response shapes are in `api.views`.
"""

from __future__ import annotations

from itertools import pairwise
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, model_validator

from xmlcore.params import (
    EVALUATIONS,
    PARAMS_MODELS,
    Evaluation,
    GradCAMParams,
    InputXGradientParams,
    IntegratedGradientsParams,
    KernelShapParams,
    LimeParams,
    MethodParams,
    OcclusionParams,
    SmoothGradParams,
)
from xmlx.models import MAX_URL_LENGTH

MAX_TOP_K_TARGET = 50
MAX_UPLOAD_KEYS = 1000

Side = Annotated[int, Field(ge=16, le=1024)]
Name = Annotated[str, Field(max_length=200)]
Id = Annotated[str, Field(min_length=1, max_length=40)]
CallbackUrl = Annotated[
    str | None,
    Field(
        default=None,
        min_length=1,
        max_length=MAX_URL_LENGTH,
        description="an http(s) URL POSTed once with the job's summary when it reaches a "
        "final state, signed with your tenant's secret (`Xmlx-Signature`, see "
        "/v1/webhook-settings); default: your tenant's webhook URL, if set. Private, "
        "loopback and reserved addresses are refused (422 `webhook.url_not_allowed`)",
    ),
]
ContentType = Annotated[
    str, Field(max_length=200, pattern=r"^[A-Za-z0-9][\w.+-]*/[A-Za-z0-9][\w.+-]*$")
]


class Strict(BaseModel):
    """Unknown fields are refused: a typo must not be silently ignored."""

    model_config = ConfigDict(extra="forbid")


class LatentTarget(Strict):
    kind: Literal["latent"]
    index: int = Field(ge=0, description="latent unit of the top layer")


class LabelTarget(Strict):
    kind: Literal["label"]
    name: str = Field(min_length=1, max_length=1000)


class TopKTarget(Strict):
    kind: Literal["top_k"]
    k: int = Field(default=1, ge=1, le=MAX_TOP_K_TARGET)


Target = Annotated[LatentTarget | LabelTarget | TopKTarget, Field(discriminator="kind")]


class UploadRequest(Strict):
    keys: list[str] = Field(min_length=1, max_length=MAX_UPLOAD_KEYS)
    content_type: ContentType = "application/octet-stream"


class DatasetRequest(Strict):
    name: Name = ""
    images_prefix: str = Field(
        max_length=1024, description="folder under your uploads holding the images"
    )
    manifest_key: str = Field(min_length=1, max_length=1024, description="a key under uploads")


class TrainingParams(Strict):
    # None: chosen on the training labels (xmlcore.code_size, in train_two_step): the
    # narrowest code whose decoder ceiling is within tolerance of the best candidate's.
    layer_sizes: list[Annotated[int, Field(ge=1, le=4096)]] | None = Field(
        default=None, min_length=1, max_length=6
    )
    ae_loss: Literal["mse", "propensity_mse", "bce"] = "mse"
    base: Literal["small", "vgg16", "mobilenet_v2", "efficientnet_b0"] = "small"
    # Never a path: a request must not make the server open a file of its choosing.
    weights: Literal["none", "imagenet"] = "none"
    image_size: tuple[Side, Side] = (64, 64)
    epochs: int = Field(default=30, ge=1, le=1000)
    batch_size: int = Field(default=32, ge=1, le=4096)
    learning_rate: float = Field(default=1e-3, gt=0, le=1)
    fine_tune_layers: int = Field(default=2, ge=0, le=1000)
    seed: int = Field(default=0, ge=0, le=2**32 - 1)

    @model_validator(mode="after")
    def _shrinking_layers(self) -> TrainingParams:
        sizes = self.layer_sizes or []
        if any(a <= b for a, b in pairwise(sizes)):
            raise ValueError("layer_sizes must decrease, e.g. [64, 16]")
        return self


class ModelRequest(Strict):
    dataset_id: Id
    name: Name = ""
    training: TrainingParams = Field(default_factory=TrainingParams)
    callback_url: CallbackUrl = None


class RetrainRequest(Strict):
    callback_url: CallbackUrl = Field(
        default=None,
        description="where the new training job reports its end; left out: the failed "
        "training's own callback URL (then the tenant's default)",
    )


class BatchRequest(Strict):
    """Images to run a model on: a list of keys, one prefix, or a manifest (exactly one).

    Keys are relative to the dataset's image folder when `dataset_id` is given, else to
    your uploads. `images` holds at most `max_inline_batch_keys` keys (10,000 by
    default) and the job is `queued` at once. A `prefix` or a `manifest_key` (an object
    under your uploads: UTF-8 text, one key a line) may name up to `max_batch_items`
    images (1,000,000): the job starts `preparing` while a background task lists them,
    and becomes `queued` once every item is in.
    """

    model_id: Id
    images: list[str] | None = None
    prefix: str | None = Field(default=None, max_length=1024)
    manifest_key: str | None = Field(default=None, min_length=1, max_length=1024)
    dataset_id: Id | None = None
    k: int = Field(default=5, ge=1, le=100, description="top labels reported per image")
    priority: Literal["low", "normal", "high"] = Field(
        default="normal",
        description="order among YOUR jobs (high first, then oldest first); the pool is "
        "shared fairly across tenants whatever the priority",
    )
    callback_url: CallbackUrl = None

    @model_validator(mode="after")
    def _one_source(self) -> BatchRequest:
        given = [self.images is not None, self.prefix is not None, self.manifest_key is not None]
        if sum(given) != 1:
            raise ValueError("give exactly one of `images`, `prefix` and `manifest_key`")
        return self


class PredictionRequest(BatchRequest):
    """Top labels of each image (no explanation)."""


class ExplanationRequestBase(BatchRequest):
    target: Target = Field(default_factory=lambda: TopKTarget(kind="top_k", k=1))
    evaluate: list[Evaluation] = Field(
        default_factory=list,
        max_length=len(EVALUATIONS),
        description="faithfulness scored with every result: deletion and/or insertion AUC "
        "per explanation, their means per item and per job; each costs "
        "(steps + 2) forward passes per target, counted in the job's cost",
    )

    method: str
    params: MethodParams

    @model_validator(mode="after")
    def _distinct_evaluations(self) -> ExplanationRequestBase:
        if len(set(self.evaluate)) != len(self.evaluate):
            raise ValueError("evaluate lists a curve twice")
        return self


class LimeExplanation(ExplanationRequestBase):
    method: Literal["lime"] = "lime"
    params: LimeParams = Field(default_factory=LimeParams)


class KernelShapExplanation(ExplanationRequestBase):
    method: Literal["kernel_shap"]
    params: KernelShapParams = Field(default_factory=KernelShapParams)


class OcclusionExplanation(ExplanationRequestBase):
    method: Literal["occlusion"]
    params: OcclusionParams = Field(default_factory=OcclusionParams)


class IntegratedGradientsExplanation(ExplanationRequestBase):
    method: Literal["integrated_gradients"]
    params: IntegratedGradientsParams = Field(default_factory=IntegratedGradientsParams)


class SmoothGradExplanation(ExplanationRequestBase):
    method: Literal["smoothgrad"]
    params: SmoothGradParams = Field(default_factory=SmoothGradParams)


class InputXGradientExplanation(ExplanationRequestBase):
    method: Literal["input_x_gradient"]
    params: InputXGradientParams = Field(default_factory=InputXGradientParams)


class GradCAMExplanation(ExplanationRequestBase):
    method: Literal["gradcam"]
    params: GradCAMParams = Field(default_factory=GradCAMParams)


def _method_of(body: Any) -> str | None:
    """The union member to validate against: `method`, "lime" when absent (the
    request shape predates the union)."""
    method = body.get("method", "lime") if isinstance(body, dict) else getattr(body, "method", None)
    return method if isinstance(method, str) and method in PARAMS_MODELS else None


ExplanationRequest = Annotated[
    Annotated[LimeExplanation, Tag("lime")]
    | Annotated[KernelShapExplanation, Tag("kernel_shap")]
    | Annotated[OcclusionExplanation, Tag("occlusion")]
    | Annotated[IntegratedGradientsExplanation, Tag("integrated_gradients")]
    | Annotated[SmoothGradExplanation, Tag("smoothgrad")]
    | Annotated[InputXGradientExplanation, Tag("input_x_gradient")]
    | Annotated[GradCAMExplanation, Tag("gradcam")],
    Discriminator(
        _method_of,
        custom_error_type="method_unknown",
        custom_error_message=f"method must be one of {list(PARAMS_MODELS)}",
    ),
]
"""An explanation request: `{"method": ..., "params": {...}}` validated against the
method's own parameter model (default method: lime)."""
