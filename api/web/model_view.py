"""What the model page shows: the hierarchy as a tree, training curves as inline SVG,
and the ranking metrics as a table. Plain data in, plain data (or SVG text) out.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from markupsafe import Markup, escape

from xmlx.models import FINAL_JOB_STATES
from xmlx.report import hierarchy_units

METRIC_COLUMNS = (("p", "P@k"), ("psp", "PSP@k"), ("ndcg", "nDCG@k"), ("coverage", "coverage@k"))
CURVE_COLOURS = ("#2563eb", "#ea580c", "#16a34a", "#9333ea")
WIDTH, HEIGHT, PAD = 480, 200, 40


@dataclass
class TreeNode:
    layer: int
    index: int
    dead: bool
    summary: list[str]  # the strongest labels this unit reaches
    weight: float | None = None  # its weight in the parent unit
    children: list[TreeNode] = field(default_factory=list)
    labels: list[tuple[str, float]] = field(default_factory=list)  # layer 1: its own labels


def hierarchy_tree(hierarchy: Any, summary_size: int = 5) -> list[TreeNode]:
    """Top-layer units, each with its member units down to layer 1 and their labels."""
    layers = hierarchy_units(hierarchy)
    if not layers:
        return []
    reach: dict[tuple[int, int], dict[str, float]] = {}

    def labels_of(layer: int, index: int) -> dict[str, float]:
        if (layer, index) not in reach:
            total: dict[str, float] = defaultdict(float)
            for m in layers.get(layer, {}).get(index, {}).get("members", []):
                if layer == 1:
                    total[m["name"]] += m["weight"]
                elif m["index"] is not None:
                    for name, w in labels_of(layer - 1, m["index"]).items():
                        total[name] += m["weight"] * w
            reach[(layer, index)] = total
        return reach[(layer, index)]

    def node(layer: int, index: int, weight: float | None) -> TreeNode:
        unit = layers.get(layer, {}).get(index, {"members": []})
        strongest = sorted(labels_of(layer, index).items(), key=lambda kv: -kv[1])
        out = TreeNode(
            layer,
            index,
            bool(unit.get("dead")) or not strongest,
            [name for name, _ in strongest[:summary_size]],
            weight,
        )
        for m in unit["members"]:
            if layer == 1:
                out.labels.append((m["name"], m["weight"]))
            elif m["index"] is not None:
                out.children.append(node(layer - 1, m["index"], m["weight"]))
        return out

    top = max(layers)
    return [node(top, index, None) for index in sorted(layers[top])]


def metrics_table(metrics: dict[str, Any]) -> tuple[list[str], list[list[str]], dict[str, Any]]:
    """(header, rows by k, the other metrics) from keys like `p@1`, `psp@3`, `coverage@5`."""
    by_k: dict[int, dict[str, float]] = defaultdict(dict)
    others: dict[str, Any] = {}
    known = {prefix for prefix, _ in METRIC_COLUMNS}
    for key, value in metrics.items():
        name, _, k = key.partition("@")
        if name in known and k.isdigit() and isinstance(value, int | float):
            by_k[int(k)][name] = float(value)
        else:
            others[key] = value
    header = ["k"] + [title for _, title in METRIC_COLUMNS]
    rows = [
        [str(k)] + [f"{by_k[k][p]:.3f}" if p in by_k[k] else "—" for p, _ in METRIC_COLUMNS]
        for k in sorted(by_k)
    ]
    return header, rows, others


def curves_svg(title: str, series: dict[str, Any]) -> Markup | None:
    """Loss per epoch (every `*loss` series of a history) as one inline SVG chart."""
    lines = {
        name: [float(v) for v in values]
        for name, values in series.items()
        if name.endswith("loss") and isinstance(values, list) and values
    }
    finite = [v for values in lines.values() for v in values if math.isfinite(v)]
    if not finite:
        return None
    low, high = min(finite), max(finite)
    span = high - low or 1.0
    epochs = max(len(values) for values in lines.values())

    def point(i: int, v: float) -> str:
        x = PAD + (WIDTH - 2 * PAD) * (i / max(epochs - 1, 1))
        y = HEIGHT - PAD + (-(HEIGHT - 2 * PAD) * (v - low) / span)
        return f"{x:.1f},{y:.1f}"

    parts = [
        f'<svg class="curve" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        f'aria-label="{escape(title)}" xmlns="http://www.w3.org/2000/svg">',
        f'<text x="{PAD}" y="16" class="title">{escape(title)}</text>',
        f'<line x1="{PAD}" y1="{HEIGHT - PAD}" x2="{WIDTH - PAD}" y2="{HEIGHT - PAD}" '
        'class="axis"/>',
        f'<line x1="{PAD}" y1="{PAD}" x2="{PAD}" y2="{HEIGHT - PAD}" class="axis"/>',
        f'<text x="{PAD - 4}" y="{PAD + 4}" class="tick" text-anchor="end">{high:.3g}</text>',
        f'<text x="{PAD - 4}" y="{HEIGHT - PAD}" class="tick" text-anchor="end">{low:.3g}</text>',
        f'<text x="{WIDTH - PAD}" y="{HEIGHT - PAD + 16}" class="tick" text-anchor="end">'
        f"epoch {epochs}</text>",
        f'<text x="{PAD}" y="{HEIGHT - PAD + 16}" class="tick">1</text>',
    ]
    for n, (name, values) in enumerate(lines.items()):
        colour = CURVE_COLOURS[n % len(CURVE_COLOURS)]
        points = " ".join(point(i, v) for i, v in enumerate(values) if math.isfinite(v))
        parts.append(
            f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{points}"/>'
        )
        parts.append(
            f'<text x="{WIDTH - PAD - 110}" y="{PAD + 14 * n}" fill="{colour}" class="tick">'
            f"{escape(name)} {values[-1]:.4g}</text>"
        )
    parts.append("</svg>")
    return Markup("".join(parts))


def training_panel(job: Any) -> dict[str, Any]:
    """What `_training.html` shows of a training job: its live progress, one loss curve
    per stage that has epochs (growing while it trains), and whether it is over."""
    progress = job.training_progress or None
    curves = []
    for stage, series in ((progress or {}).get("history") or {}).items():
        numeric = {
            name: [math.nan if v is None else v for v in values]
            for name, values in series.items()
            if name.endswith("loss")
        }
        svg = curves_svg(f"{stage} loss per epoch", numeric)
        if svg is not None:
            curves.append((stage, svg))
    return {
        "job": job,
        "training": progress,
        "training_curves": curves,
        "training_final": job.state in FINAL_JOB_STATES,
    }
