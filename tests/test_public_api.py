"""xmlcore's public surface: every name in __all__ resolves, and the light modules stay light."""

import subprocess
import sys

import xmlcore


def test_every_exported_name_resolves() -> None:
    for name in xmlcore.__all__:
        assert getattr(xmlcore, name) is not None, name


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
