"""Every explanation method's parameters: one typed, bounded schema per method.

This is the only table of what a request may say about a method. ``xmlcore.methods``
builds explainers from it, and the HTTP API validates request bodies with the same
models and shows them (with their bounds) in its OpenAPI document, so a value the API
accepts is one the worker can run. Pure pydantic: importing this module loads no Keras.

The bounds are generous for real use and keep one request from exhausting a worker:
``num_samples x n_segments`` bounds LIME's mask and design matrices, and
``xmlcore.param_costs`` bounds what depends on the model's image size (forward batch
memory, occlusion windows) and estimates a job's forward passes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    ValidationError,
    model_validator,
)

from xmlcore.errors import ConfigError

MAX_SAMPLES = 20_000
MAX_BATCH_SIZE = 4096
MAX_SEGMENTS = 500
MAX_STEPS = 512
MAX_TOP_K = 100
MAX_SEED = 2**32 - 1  # numpy's RandomState takes seeds below 2**32
# LIME holds a (num_samples, segments) mask matrix and a float design matrix of that
# shape per image: 4M cells is 32 MB of float64 per image of a forward batch.
MAX_MASK_CELLS = 4_000_000

BatchSize = Annotated[int, Field(strict=True, ge=1, le=MAX_BATCH_SIZE)]
Seed = Annotated[int, Field(strict=True, ge=0, le=MAX_SEED)]
Channel = Annotated[int, Field(strict=True, ge=0, le=255)]
Fill = Literal["mean"] | Channel | tuple[Channel, Channel, Channel]
Level = Annotated[float, Field(strict=True, ge=0, le=255, allow_inf_nan=False)]
Evaluation = Literal["deletion", "insertion"]
EVALUATIONS: tuple[str, ...] = ("deletion", "insertion")
"""Faithfulness curves a request may ask for with each result (``xmlcore.faithfulness``)."""


class MethodParams(BaseModel):
    """Base of every method's parameters: unknown names are refused, values are typed
    strictly (``"500"`` is not a number, ``true`` is not an integer)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    batch_size: BatchSize = Field(default=256, description="images per forward (or gradient) batch")


class AdaptiveParams(BaseModel):
    """LIME's adaptive stopping (``xmlcore.explain.AdaptiveSampling``)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    batch: int = Field(default=100, ge=1, le=MAX_SAMPLES, description="masks per round")
    min_samples: int = Field(default=100, ge=2, le=MAX_SAMPLES, description="first round")
    max_samples: int | None = Field(
        default=None, ge=2, le=MAX_SAMPLES, description="cap (default: num_samples)"
    )
    top_k: int = Field(default=5, ge=1, le=MAX_TOP_K)
    patience: int = Field(default=2, ge=1, le=100)
    criterion: Literal["separation", "set", "ranking", "stability"] = "separation"
    z: float = Field(default=1.5, gt=0, le=100, allow_inf_nan=False)
    min_stability: float = Field(
        default=0.98,
        gt=0,
        le=1,
        allow_inf_nan=False,
        description='criterion "stability": stop at this bootstrap stability@top_k',
    )

    @model_validator(mode="after")
    def _ordered(self) -> AdaptiveParams:
        if self.max_samples is not None and self.max_samples < self.min_samples:
            raise ValueError("adaptive.max_samples must be >= adaptive.min_samples")
        return self


class LimeParams(MethodParams):
    num_samples: int = Field(
        strict=True, default=1000, ge=2, le=MAX_SAMPLES, description="samples per image"
    )
    kernel_width: float = Field(
        strict=True,
        default=0.25,
        ge=0.01,
        le=100,
        allow_inf_nan=False,
        description="on cosine distance",
    )
    fill: Fill = Field(default="mean", description='"mean", a grey level or [r, g, b]')
    top_k: int = Field(
        strict=True, default=5, ge=1, le=MAX_TOP_K, description="top superpixels reported"
    )
    seed: Seed | None = Field(default=0, description="null: a random seed (recorded)")
    engine: Literal["fast", "reference"] = "fast"
    sampler: Literal["lime", "antithetic", "stratified", "antithetic_stratified"] = Field(
        default="lime",
        description="how masks are drawn: lime (the lime package's draw, reproducible), "
        "antithetic (mask + complement pairs), stratified (stratified counts of hidden "
        "segments), antithetic_stratified (both); same forward passes for all",
    )
    segmenter: Literal["slic", "quickshift", "felzenszwalb"] = "slic"
    n_segments: int | None = Field(
        strict=True, default=None, ge=2, le=MAX_SEGMENTS, description="SLIC only (default 50)"
    )
    adaptive: StrictBool | AdaptiveParams = Field(default=False, description="true: the defaults")

    @model_validator(mode="after")
    def _consistent(self) -> LimeParams:
        if self.n_segments is not None and self.segmenter != "slic":
            raise ValueError("n_segments applies to segmenter slic only")
        if self.adaptive is not False and self.engine != "fast":
            raise ValueError("adaptive needs engine fast")
        if self.sampler != "lime" and self.engine != "fast":
            raise ValueError(f"sampler {self.sampler} needs engine fast")
        cells = self.num_samples * (self.n_segments or 50)
        if cells > MAX_MASK_CELLS:
            raise ValueError(
                f"num_samples x n_segments = {cells:,} is over {MAX_MASK_CELLS:,}; lower one"
            )
        return self


class KernelShapParams(MethodParams):
    """KernelSHAP over superpixels (``xmlcore.explain.KernelShapExplainer``); the
    segmentation and fill options are LIME's."""

    n_samples: int = Field(
        strict=True,
        default=1000,
        ge=2,
        le=MAX_SAMPLES,
        description="coalitions per image; forward passes: n_samples + 2",
    )
    fill: Fill = Field(default="mean", description='background: "mean", a grey level or [r, g, b]')
    top_k: int = Field(
        strict=True, default=5, ge=1, le=MAX_TOP_K, description="top superpixels reported"
    )
    seed: Seed | None = Field(default=0, description="null: a random seed (recorded)")
    segmenter: Literal["slic", "quickshift", "felzenszwalb"] = "slic"
    n_segments: int | None = Field(
        strict=True, default=None, ge=2, le=MAX_SEGMENTS, description="SLIC only (default 50)"
    )

    @model_validator(mode="after")
    def _consistent(self) -> KernelShapParams:
        if self.n_segments is not None and self.segmenter != "slic":
            raise ValueError("n_segments applies to segmenter slic only")
        cells = self.n_samples * (self.n_segments or 50)
        if cells > MAX_MASK_CELLS:
            raise ValueError(
                f"n_samples x n_segments = {cells:,} is over {MAX_MASK_CELLS:,}; lower one"
            )
        return self


class OcclusionParams(MethodParams):
    patch: int = Field(strict=True, default=8, ge=1, le=1024, description="window side in pixels")
    stride: int = Field(strict=True, default=4, ge=1, le=1024, description="window step in pixels")
    fill: Fill = Field(default="mean", description='"mean", a grey level or [r, g, b]')

    @model_validator(mode="after")
    def _covering(self) -> OcclusionParams:
        # A stride over the patch leaves pixels no window covers: their heatmap is 0/0
        # (found by tests/test_params_property.py).
        if self.stride > self.patch:
            raise ValueError(f"stride ({self.stride}) must be <= patch ({self.patch})")
        return self


class GradientParams(MethodParams):
    batch_size: BatchSize = Field(default=64, description="images per gradient batch")


class IntegratedGradientsParams(GradientParams):
    baseline: Literal["black", "white", "mean"] | Level | tuple[Level, Level, Level] = Field(
        default="black", description='"black", "white", "mean", a grey level or [r, g, b]'
    )
    steps: int = Field(
        strict=True, default=32, ge=1, le=MAX_STEPS, description="points on the path"
    )


class SmoothGradParams(GradientParams):
    noise_scale: float = Field(
        strict=True, default=0.15, ge=0, le=1, allow_inf_nan=False, description="noise sd / 255"
    )
    n: int = Field(
        strict=True, default=25, ge=1, le=MAX_STEPS, description="noisy copies per image"
    )
    aggregate: Literal["abs", "square", "raw"] = "abs"
    seed: Seed = 0


class InputXGradientParams(GradientParams):
    pass


class GradCAMParams(GradientParams):
    layer: str | None = Field(
        default=None,
        min_length=1,
        max_length=200,
        pattern=r"^[A-Za-z0-9_.\-/]+$",
        description="a layer of the model (default: its last convolution)",
    )


PARAMS_MODELS: dict[str, type[MethodParams]] = {
    "lime": LimeParams,
    "kernel_shap": KernelShapParams,
    "occlusion": OcclusionParams,
    "integrated_gradients": IntegratedGradientsParams,
    "smoothgrad": SmoothGradParams,
    "input_x_gradient": InputXGradientParams,
    "gradcam": GradCAMParams,
}
METHODS = tuple(PARAMS_MODELS)
GRADIENT_METHODS = frozenset(
    method for method, cls in PARAMS_MODELS.items() if issubclass(cls, GradientParams)
)
METHOD_PARAMS: dict[str, frozenset[str]] = {
    method: frozenset(cls.model_fields) for method, cls in PARAMS_MODELS.items()
}


def parse_params(method: str, params: Mapping[str, Any]) -> MethodParams:
    """``params`` checked against ``method``'s schema; ``ConfigError`` otherwise
    (``config.unknown_method``, or ``config.bad_parameter`` naming the parameter and
    its limits)."""
    if method not in PARAMS_MODELS:
        raise ConfigError("config.unknown_method", f"unknown method {method!r}; one of {METHODS}")
    try:
        return PARAMS_MODELS[method].model_validate(dict(params))
    except ValidationError as exc:
        raise ConfigError("config.bad_parameter", describe_errors(method, exc.errors())) from exc


def describe_errors(method: str, errors: Sequence[Mapping[str, Any]]) -> str:
    """Pydantic errors of a method's params (``loc`` relative to the params object) as
    sentences that name each parameter and its limits, one per parameter."""
    by_name: dict[str, list[tuple[list[str], str]]] = {}
    for error in errors:
        loc = [str(p) for p in error.get("loc", ()) if not _is_union_tag(p)]
        name = loc[0] if loc else ""
        if error.get("type") == "extra_forbidden" and len(loc) == 1:
            by_name[name] = [([], "extra")]
            continue
        message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
        by_name.setdefault(name, []).append((loc[1:], message))
    return "; ".join(_sentence(method, name, found) for name, found in by_name.items())


def _sentence(method: str, name: str, found: list[tuple[list[str], str]]) -> str:
    model = PARAMS_MODELS[method]
    if not name:  # a rule across parameters; its message names them
        return f"{method} parameters: {found[0][1]}"
    if found == [([], "extra")]:
        return f"{method} does not take {name!r}; it takes {sorted(model.model_fields)}"
    deeper = [(loc, msg) for loc, msg in found if loc]
    if deeper:  # inside an object (adaptive): the inner field is what was wrong
        loc, message = deeper[0]
        where = ".".join([name, *loc])
    else:
        where = name
        message = found[0][1] if len(found) == 1 else "matches none of the allowed forms"
    limits = _limits(model.model_json_schema(), name)
    return f"{method} parameter {where}: {message} (allowed: {limits})"


def _is_union_tag(part: object) -> bool:
    """Pydantic puts the union member tried ("constrained-int", "tuple[...]",
    "AdaptiveParams") and list indices into ``loc``; a reader wants field names."""
    text = str(part)
    return (
        isinstance(part, int)
        or "[" in text
        or "-" in text
        or text[:1].isupper()
        or text in ("int", "float", "bool", "str", "none")
    )


def _limits(schema: dict[str, Any], name: str) -> str:
    prop = schema.get("properties", {}).get(name, {})
    return _describe_schema(prop, schema.get("$defs", {}))


def _describe_schema(prop: dict[str, Any], defs: dict[str, Any]) -> str:
    if "$ref" in prop:
        return "an object: " + ", ".join(defs[prop["$ref"].rsplit("/", 1)[-1]]["properties"])
    if "anyOf" in prop:
        return " or ".join(_describe_schema(p, defs) for p in prop["anyOf"])
    if "const" in prop or "enum" in prop:
        values = prop.get("enum", [prop.get("const")])
        return " | ".join(repr(v) for v in values)
    kind = prop.get("type", "value")
    if kind == "array":
        items = [_describe_schema(p, defs) for p in prop.get("prefixItems", [])]
        return f"[{', '.join(items)}]"
    low = prop.get("minimum", prop.get("exclusiveMinimum"))
    high = prop.get("maximum", prop.get("exclusiveMaximum"))
    if low is not None or high is not None:
        low_text = "" if low is None else f"{'>' if 'exclusiveMinimum' in prop else ''}{low}"
        return f"{kind} {low_text}..{'' if high is None else high}"
    if kind == "string" and "maxLength" in prop:
        return f"string of 1..{prop['maxLength']} characters"
    return str(kind)


def params_json_schemas() -> dict[str, dict[str, Any]]:
    """Each method's parameter schema as JSON Schema (types, bounds, defaults), for
    ``GET /v1/capabilities`` and documentation."""
    return {method: cls.model_json_schema() for method, cls in PARAMS_MODELS.items()}
