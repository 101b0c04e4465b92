"""The API's request schemas: explanation params are xmlcore's own models (one table),
and the API process never loads TensorFlow or Keras."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from pydantic import TypeAdapter, ValidationError

from api.schemas import ExplanationRequest, TrainingParams
from xmlcore.params import PARAMS_MODELS, LimeParams

EXPLANATION = TypeAdapter(ExplanationRequest)


def test_explanation_params_are_xmlcore_models() -> None:
    for method, model in PARAMS_MODELS.items():
        body = EXPLANATION.validate_python({"model_id": "m", "images": [], "method": method})
        assert type(body.params) is model


def test_importing_the_app_loads_no_tensorflow_or_keras() -> None:
    code = textwrap.dedent(
        """
        import sys
        import api.app
        api.app.create_app().openapi()
        frameworks = ("tensorflow", "keras", "jax", "torch")
        print(",".join(sorted(m for m in sys.modules if m.split(".")[0] in frameworks)))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=Path(__file__).resolve().parent.parent,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == ""


def test_explanation_defaults_and_targets() -> None:
    body = EXPLANATION.validate_python({"model_id": "mdl_1", "images": ["a.png"]})
    assert (body.method, body.k, body.params) == ("lime", 5, LimeParams())
    assert body.target.model_dump() == {"kind": "top_k", "k": 1}
    label = EXPLANATION.validate_python(
        {"model_id": "m", "prefix": "", "target": {"kind": "label", "name": "salt"}}
    )
    assert label.target.model_dump() == {"kind": "label", "name": "salt"}
    for target in ({"kind": "latent"}, {"kind": "top_k", "k": 0}, {"kind": "label", "name": ""}):
        with pytest.raises(ValidationError):
            EXPLANATION.validate_python({"model_id": "m", "images": [], "target": target})


def test_training_params_refuse_paths_and_growing_layers() -> None:
    assert TrainingParams().model_dump()["weights"] == "none"
    assert TrainingParams(weights="imagenet", layer_sizes=[64, 16, 4]).layer_sizes == [64, 16, 4]
    for bad in ({"weights": "/models/w.h5"}, {"layer_sizes": [16, 16]}, {"layer_sizes": []}):
        with pytest.raises(ValidationError):
            TrainingParams.model_validate(bad)
