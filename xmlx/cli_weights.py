"""``xmlx weights``: the operator imports pretrained backbone weights into the store.

Run with the service's settings (it writes to the service's object store); the check
that the file loads into the base imports Keras, so it runs where TensorFlow (or
another Keras backend) is installed, e.g. in the worker image.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from xmlx.errors import XmlxError
from xmlx.settings import get_settings
from xmlx.weights import PRETRAINED_BASES, import_weights, weights_record

weights_app = typer.Typer(help="Pretrained backbone weights (ImageNet) for weights='imagenet'.")
console = Console()


def register(app: typer.Typer) -> None:
    app.add_typer(weights_app, name="weights")


@weights_app.command("import")
def import_file(
    file: Annotated[Path, typer.Argument(help="a Keras .h5 / .weights.h5 file, without top")],
    base: Annotated[str, typer.Option(help=f"one of {', '.join(PRETRAINED_BASES)}")],
) -> None:
    """Check FILE loads into BASE, store it, and make it BASE's 'imagenet' weights."""
    from xmlcore.backbones import check_weights_file
    from xmlcore.errors import XmlcoreError
    from xmlx.storage import make_object_store

    store = make_object_store(get_settings())
    store.ensure_bucket()
    try:
        record = import_weights(store, base, file, check=check_weights_file)
    except (XmlxError, XmlcoreError) as exc:
        console.print(f"[red]{exc.code}: {exc.message}[/red]")
        raise typer.Exit(1) from exc
    console.print(f"{base}: {record.source} ({record.size} bytes, sha256 {record.sha256})")
    console.print(f"stored at {record.key}; training with weights='imagenet' now uses it")


@weights_app.command("list")
def list_weights() -> None:
    """Which bases have imported weights."""
    from xmlx.storage import make_object_store

    store = make_object_store(get_settings())
    for base in PRETRAINED_BASES:
        record = weights_record(store, base)
        shown = f"{record.source}, sha256 {record.sha256[:16]}" if record else "none imported"
        console.print(f"{base}: {shown}")
