"""xmlcore's public surface: every name in __all__ resolves, and the light modules stay light."""

import importlib
import subprocess
import sys

import numpy as np
import pytest

import xmlcore


def test_every_exported_name_is_the_object_of_its_module() -> None:
    for name in xmlcore.__all__:
        module = importlib.import_module(f"xmlcore.{xmlcore._EXPORTS[name]}")
        exported = getattr(xmlcore, name)
        assert exported is getattr(module, name), name
        # our own code, not a third-party name re-exported by accident
        owner = getattr(exported, "__module__", module.__name__)
        assert owner.startswith("xmlcore."), (name, owner)
    with pytest.raises(AttributeError):
        _ = xmlcore.NotExported  # type: ignore[attr-defined]


def test_the_public_names_work_together() -> None:
    space = xmlcore.LabelSpace.from_label_sets(
        ["a.png", "b.png"], [["salt", "rice"], ["oil"]], vocabulary=["oil", "rice", "salt"]
    )
    Y = space.matrix
    np.testing.assert_array_equal(np.asarray(Y.todense() if hasattr(Y, "todense") else Y),
                                  [[0, 1, 1], [1, 0, 0]])  # fmt: skip
    perfect = np.array([[0.0, 0.9, 0.8], [0.7, 0.1, 0.2]])
    assert xmlcore.precision_at_k(Y, perfect, 1) == 1.0
    assert xmlcore.precision_at_k(Y, 1.0 - perfect, 1) == 0.0
    csv = xmlcore.manifest_to_csv(space.image_keys, [space.labels_of(0), space.labels_of(1)])
    again = xmlcore.read_manifest(csv)
    assert again.image_keys == space.image_keys and again.labels_of(0) == space.labels_of(0)


def test_labels_and_metrics_do_not_import_keras() -> None:
    code = (
        "import sys, xmlcore, xmlcore.labels, xmlcore.metrics, xmlcore.images;"
        "from xmlcore import LabelSpace, precision_at_k;"
        "heavy = [m for m in ('keras', 'tensorflow') if m in sys.modules];"
        "print(','.join(heavy))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == ""
