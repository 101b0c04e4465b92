"""The core demo: generate dishes, train the two-step model, evaluate, explain.

Runs ``xmlcore`` in-process (no service), so it shows the method itself: the label
hierarchy learnt by the non-negative autoencoder, the CNN's predictions with their
hierarchy paths, P@k / PSP@k on held-out images, and a LIME panel per explained image.
``xmlx demo`` (the service demo) does the same through the API and workers.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from xmlcore.autoencoder import default_layer_sizes
from xmlcore.datasets import generate_dishes
from xmlcore.explain import LatentUnit, LimeExplainer, resolve_targets
from xmlcore.metrics import evaluate_ranking, hierarchy_nmi, propensities
from xmlcore.model import train_two_step
from xmlcore.viz import panel_png

Echo = Callable[[str], None]


def run_core_demo(
    out_dir: Path,
    *,
    preset: str = "small",
    seed: int = 0,
    epochs: int = 20,
    n_explained: int = 4,
    echo: Echo = print,
) -> dict[str, Any]:
    """Run the demo, write panels to ``out_dir``, and return the figures it printed."""
    started = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    data = generate_dishes(preset, seed=seed)
    space = data.label_space
    echo(f"generated {space.n_images} images x {space.n_labels} labels ({preset} preset)")
    order = np.random.default_rng(seed).permutation(space.n_images)
    n_test = space.n_images // 5
    test, train = np.sort(order[:n_test]), np.sort(order[n_test:])

    def progress(stage: str, epoch: int, logs: dict[str, float]) -> None:
        if stage == "regressor":
            echo(f"  cnn epoch {epoch + 1}: loss {logs.get('loss', float('nan')):.4f}")

    model = train_two_step(
        data.images[train],
        space.subset(train),
        layer_sizes=default_layer_sizes(space.n_labels),
        epochs=epochs,
        seed=seed,
        on_epoch=progress,
    )
    scores = model.predict_scores(data.images[test])
    prop = propensities(space.subset(train).matrix)
    figures = evaluate_ranking(space.subset(test).matrix, scores, ks=(1, 3, 5), propensity=prop)
    vocabulary = list(space.vocabulary)
    truth = [data.label_groups.get(label, "none") for label in vocabulary]
    hierarchy = model.hierarchy()
    figures["hierarchy_nmi"] = hierarchy_nmi(hierarchy.label_assignment().tolist(), truth)
    _print_figures(figures, echo)
    echo("\nlabel hierarchy (layer 1 units: their top labels)")
    for line in hierarchy.to_text().splitlines()[:8]:
        echo(f"  {line}")
    panels = _explain(model, data, test[:n_explained], out_dir, echo)
    figures["seconds"] = round(time.perf_counter() - started, 1)
    echo(f"\nexplanation panels: {', '.join(str(p) for p in panels)}")
    echo(f"done in {figures['seconds']} s")
    return figures


def _print_figures(figures: dict[str, float], echo: Echo) -> None:
    echo("\nheld-out ranking quality")
    for key in ("p@1", "p@3", "p@5", "ndcg@5", "psp@5", "coverage@5", "hierarchy_nmi"):
        if key in figures:
            echo(f"  {key:<14} {figures[key]:.3f}")


def _explain(model: Any, data: Any, rows: np.ndarray, out_dir: Path, echo: Echo) -> list[Path]:
    images = data.images[rows]
    latent = model.predict_latent(images)
    top_units = [int(np.argmax(code)) for code in latent]
    targets = resolve_targets(model, images, [[LatentUnit(u)] for u in top_units])
    explainer = LimeExplainer(model.outputs_fn, num_samples=300, seed=0)
    explanations = explainer.explain(images, targets)
    hierarchy = model.hierarchy()
    predictions = model.predict_top_k(images, k=5)
    paths = []
    for i, row in enumerate(rows):
        key = data.label_space.image_keys[row]
        path_text = hierarchy.path(top_units[i]).to_text()
        truth = data.label_space.labels_of(int(row))
        echo(f"\n{key}: true {', '.join(truth)}")
        echo("  predicted " + ", ".join(f"{label} {score:.2f}" for label, score in predictions[i]))
        echo(f"  explained {path_text}")
        png = panel_png(images[i], explanations[i][0], predictions[i], path_text, true_labels=truth)
        path = out_dir / f"{Path(key).stem}_panel.png"
        path.write_bytes(png)
        paths.append(path)
    return paths
