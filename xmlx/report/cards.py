"""Result cards: what people look at for one item, as plain data.

`item_card` turns an item row into an image, a heatmap overlay, the top superpixel mask,
the predicted labels against the true ones and the hierarchy path of the explained
latent unit. The web UI (`api.web`) and the HTML report (`xmlx.report.html`) both render
these cards, so the two never disagree. Nothing here reads the database or storage:
`link` turns storage keys into addresses and the caller passes the hierarchy and the
true labels.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from xmlx.models import Item, ItemState

Truth = Mapping[str, frozenset[str]]
Layers = dict[int, dict[int, dict[str, Any]]]  # layer -> unit index -> unit (hierarchy_units)
Link = Callable[[str], str | None]  # storage key -> URL (None: not available)


@dataclass(frozen=True)
class LabelScore:
    label: str
    score: float
    true: bool | None  # None: the true labels are not known


@dataclass(frozen=True)
class HeatmapView:
    """One explained target's overlay: its label, address and colour-scale values."""

    label: str
    src: str
    low: float | None = None
    high: float | None = None

    @property
    def scale_text(self) -> str:
        """The values at the blue and red ends of the overlay's colour scale."""
        if self.low is None or self.high is None:
            return ""
        return f"blue {self.low:.3g} … red {self.high:.3g}"


@dataclass(frozen=True)
class Card:
    key: str
    state: str
    image: str | None = None
    heatmap: str | None = None
    mask: str | None = None
    labels: list[LabelScore] = field(default_factory=list)
    true_labels: list[str] | None = None
    missed: list[str] = field(default_factory=list)  # true labels not among the top ones
    target: str | None = None
    path: str | None = None
    path_note: str = ""
    metrics: dict[str, float] = field(default_factory=dict)  # of the explained target
    heatmaps: list[HeatmapView] = field(default_factory=list)  # one per explained target
    error_code: str | None = None
    error_message: str | None = None


def item_card(
    item: Item, image_prefix: str, link: Link, hierarchy: Layers, truth: Truth | None
) -> Card:
    """The card of one item; `link` turns storage keys into image addresses, `hierarchy`
    is the model's `hierarchy_units` (read once per page, not per card). Items of jobs
    without images (training: no `image_prefix`) get no pictures."""
    image = link(image_prefix + item.item_key) if image_prefix else None
    if item.state != ItemState.SUCCEEDED:
        return Card(
            item.item_key,
            item.state,
            image=image,
            error_code=item.error_code,
            error_message=item.error_message,
        )
    result = item.result or {}
    artifacts = item.artifacts or {}
    known = truth.get(item.item_key) if truth is not None else None
    labels = [
        LabelScore(
            str(e["label"]), float(e["score"]), None if known is None else e["label"] in known
        )
        for e in result.get("top_labels", [])
    ]
    predicted = {entry.label for entry in labels}
    target, path, note = _explained_path(result, hierarchy)
    return Card(
        key=item.item_key,
        state=item.state,
        image=image,
        heatmap=link(artifacts["heatmap.png"]) if "heatmap.png" in artifacts else None,
        mask=link(artifacts["mask.png"]) if "mask.png" in artifacts else None,
        labels=labels,
        true_labels=sorted(known) if known is not None else None,
        missed=sorted(known - predicted) if known is not None else [],
        target=target,
        path=path,
        path_note=note,
        metrics=_first_metrics(result),
        heatmaps=_heatmaps(result, artifacts, link),
    )


def _heatmaps(
    result: Mapping[str, Any], artifacts: Mapping[str, str], link: Link
) -> list[HeatmapView]:
    """One view per explanation that has an overlay artifact (``xmlcore.batch``); older
    results without ``overlay`` show their ``heatmap.png`` under the first target."""
    views = []
    for position, explanation in enumerate(result.get("explanations") or []):
        overlay = explanation.get("overlay") or {}
        name = str(overlay.get("artifact", "heatmap.png" if position == 0 else ""))
        src = link(artifacts[name]) if name in artifacts else None
        if src is None:
            continue
        scale = overlay.get("scale") or {}
        target = explanation.get("target") or {}
        label = str(
            target.get("name") or f"{target.get('kind', 'target')} {target.get('index', position)}"
        )
        views.append(HeatmapView(label, src, scale.get("low"), scale.get("high")))
    return views


def _first_metrics(result: Mapping[str, Any]) -> dict[str, float]:
    """The metrics of the explanation the card shows (its first target)."""
    explanations = result.get("explanations") or []
    metrics = explanations[0].get("metrics") if explanations else None
    return {str(k): float(v) for k, v in (metrics or {}).items()}


def _explained_path(
    result: Mapping[str, Any], hierarchy: Layers
) -> tuple[str | None, str | None, str]:
    """(target name, path text, what the path is of) for a result."""
    explanations = result.get("explanations") or []
    target = explanations[0].get("target", {}) if explanations else {}
    if target.get("hierarchy_path"):
        return target.get("name"), path_text(target["hierarchy_path"]), "explained latent unit"
    latent = result.get("latent") or []
    if not latent or not hierarchy:
        return target.get("name"), None, ""
    top = max(range(len(latent)), key=lambda i: latent[i])
    path = hierarchy_path(hierarchy, top)
    return target.get("name"), path_text(path) if path else None, "most active latent unit"


def hierarchy_units(hierarchy: Any) -> Layers:
    """{layer: {unit index: unit}} from a stored `LabelHierarchy.to_json()`; members
    normalised to `{"name", "index", "weight"}` (older rows store `[name, weight]`)."""
    layers: Layers = {}
    stored = json.loads(hierarchy) if isinstance(hierarchy, str) else hierarchy or {}
    for layer in stored.get("layers", []):
        units = layers.setdefault(int(layer["layer"]), {})
        for unit in layer.get("units", []):
            members = [_member(m) for m in unit.get("members", [])]
            units[int(unit["index"])] = {**unit, "members": members}
    return layers


def _member(raw: Any) -> dict[str, Any]:
    if isinstance(raw, Mapping):
        name, index, weight = str(raw["name"]), raw.get("index"), float(raw["weight"])
    else:
        name, weight, index = str(raw[0]), float(raw[1]), None
    if index is None and name.startswith("unit ") and name[5:].isdigit():
        index = int(name[5:])
    return {"name": name, "index": index, "weight": weight}


def hierarchy_path(
    layers: Layers, index: int, fanout: int = 3, top_n: int = 5
) -> dict[str, Any] | None:
    """`LabelHierarchy.path(index).to_json()` rebuilt from a stored hierarchy's `layers`
    (`hierarchy_units`; it keeps each unit's strongest members only); None when the unit
    is unknown."""
    if not layers or index not in layers[max(layers)]:
        return None
    top_layer = max(layers)
    weight: dict[int, float] = {index: 1.0}
    chosen, levels = [index], []
    for layer in range(top_layer, 1, -1):
        below: dict[int, float] = defaultdict(float)
        for unit in chosen:
            for m in layers[layer].get(unit, {}).get("members", []):
                if m["index"] is not None:
                    below[m["index"]] += weight[unit] * m["weight"]
        weight, chosen = below, _strongest(below, fanout)
        units = [
            {**layers[layer - 1].get(u, {"index": u}), "path_weight": weight[u]} for u in chosen
        ]
        levels.append({"layer": layer - 1, "units": units})
    labels: dict[str, float] = defaultdict(float)
    for unit in chosen:
        for m in layers[1].get(unit, {}).get("members", []):
            labels[m["name"]] += weight[unit] * m["weight"]
    named = [{"name": name, "weight": labels[name]} for name in _strongest(labels, top_n)]
    return {"top": layers[top_layer][index], "levels": levels, "labels": named}


def _strongest(weights: Mapping[Any, float], n: int) -> list[Any]:
    return [k for k, w in sorted(weights.items(), key=lambda kv: -kv[1])[:n] if w > 0]


def path_text(path: Mapping[str, Any]) -> str:
    """`latent 9 <- units 64, 34, 11 <- garlic, onion, chicken stock` (HierarchyPath.to_text)."""
    parts = [f"latent {path['top']['index']}"]
    for level in path.get("levels", []):
        parts.append("units " + ", ".join(str(u["index"]) for u in level["units"]))
    parts.append(", ".join(label["name"] for label in path.get("labels", [])))
    return " <- ".join(parts)
