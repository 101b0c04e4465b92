"""Results galleries: one card per item, in the browser UI and in a shareable HTML file.

`item_card` turns an item row into what people look at (image, heatmap overlay, top
superpixel mask, predicted labels against true ones, the hierarchy path of the
explained latent unit); the web UI (`api.web`) and `write_report` both build on it, so
the two never disagree. `write_report` writes a self-contained HTML file: every image
is inlined as a `data:` URI and the page references nothing outside itself, so it can
be mailed or attached to an issue. It reads items a page at a time and writes as it
goes, so memory stays flat however large the job.
"""

from __future__ import annotations

import base64
import functools
import json
import threading
from collections import OrderedDict, defaultdict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jinja2 import Environment
from sqlalchemy.orm import Session

from xmlcore.errors import XmlcoreError
from xmlcore.labels import read_manifest
from xmlx import repository as repo
from xmlx.dataset_images import images_storage_prefix
from xmlx.db import SessionFactory, session_scope
from xmlx.jobs import JobError
from xmlx.models import Item, ItemState, Job
from xmlx.storage import ObjectStore, StorageError

MAX_INLINE_BYTES = 8 * 1024 * 1024
MAX_MANIFEST_BYTES = 50 * 1024 * 1024
_MAGIC = ((b"\x89PNG", "image/png"), (b"\xff\xd8", "image/jpeg"), (b"GIF8", "image/gif"))

Truth = Mapping[str, frozenset[str]]
Layers = dict[int, dict[int, dict[str, Any]]]  # layer -> unit index -> unit (hierarchy_units)
Link = Callable[[str], str | None]  # storage key -> URL (None: not available)


@dataclass(frozen=True)
class LabelScore:
    label: str
    score: float
    true: bool | None  # None: the true labels are not known


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
    )


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


class TruthCache:
    """True labels of a job's images, read once per dataset from its manifest.

    A job's item keys are relative to `params["image_prefix"]`; a dataset's manifest
    applies when that is the dataset's images folder. The dataset named by the job
    (`params["dataset_id"]`) is tried first, then the one its model was trained on.
    """

    def __init__(self, max_datasets: int = 8) -> None:
        self._entries: OrderedDict[str, tuple[str, Truth]] = OrderedDict()
        self._lock = threading.Lock()
        self.max_datasets = max_datasets

    def for_job(self, session: Session, store: ObjectStore, job: Job) -> Truth | None:
        prefix = job.params.get("image_prefix")
        model = repo.get_model(session, job.tenant_id, job.model_id) if job.model_id else None
        candidates = [job.params.get("dataset_id"), model.dataset_id if model else None]
        for dataset_id in dict.fromkeys(str(c) for c in candidates if c):
            entry = self._dataset(session, store, job.tenant_id, dataset_id)
            if entry is not None and entry[0] == prefix:
                return entry[1]
        return None

    def _dataset(
        self, session: Session, store: ObjectStore, tenant_id: str, dataset_id: str
    ) -> tuple[str, Truth] | None:
        with self._lock:
            if dataset_id in self._entries:
                self._entries.move_to_end(dataset_id)
                return self._entries[dataset_id]
        dataset = repo.get_dataset(session, tenant_id, dataset_id)
        if dataset is None:
            return None
        try:
            image_prefix = images_storage_prefix(store, dataset)
            space = read_manifest(store.get_bytes(dataset.manifest_key, MAX_MANIFEST_BYTES))
        except (StorageError, XmlcoreError, ValueError):
            return None  # images folder or manifest unreadable: predictions only
        truth = {key: frozenset(space.labels_of(row)) for row, key in enumerate(space.image_keys)}
        entry = (image_prefix, truth)
        with self._lock:
            self._entries[dataset_id] = entry
            while len(self._entries) > self.max_datasets:
                self._entries.popitem(last=False)
        return entry


TRUTH = TruthCache()  # one per process: manifests are immutable, read each once

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>xmlx report {{ job.id }}</title>
<style>
body{font:14px/1.4 system-ui,sans-serif;margin:1.5rem;color:#1d2330;background:#f6f7f9}
h1{font-size:1.3rem}.meta{color:#555}.grid{display:grid;gap:1rem;
grid-template-columns:repeat(auto-fill,minmax(340px,1fr))}.card{background:#fff;
border:1px solid #d9dde4;border-radius:8px;padding:.8rem}.card.failed{border-color:#d33}
.imgs{display:flex;gap:.4rem}.imgs figure{margin:0;flex:0 0 calc((100% - .8rem)/3);
text-align:center;font-size:.75rem}
.imgs img{width:100%;image-rendering:pixelated;border-radius:4px}
.ok{color:#1a7f37}.no{color:#888}.path{font-family:monospace;font-size:.8rem;
background:#f0f2f5;padding:.3rem;border-radius:4px;word-break:break-word}
.err{color:#b42318;font-family:monospace}ul{padding-left:1.1rem;margin:.3rem 0}
</style></head><body>
<h1>Job {{ job.id }}</h1>
<p class="meta">{{ job.kind }} &middot; {{ job.state }} &middot; {{ job.done }} succeeded,
{{ job.failed }} failed of {{ job.total }} &middot; model {{ job.model_id or "none" }}
&middot; created {{ job.created_at.strftime("%Y-%m-%d %H:%M UTC") }}</p>
<p class="meta">{{ shown }}{% if state %} ({{ state }} items){% endif %}
{% if truth_known %}&middot; true labels from the dataset manifest ({{ "\u2713" }} = correct)
{% endif %}</p>
<div class="grid">
"""
_CARD = """<section class="card {{ card.state }}"><h2 style="font-size:1rem">{{ card.key }}</h2>
<div class="imgs">{% for src, name in ((card.image, "image"), (card.heatmap, "heatmap"),
(card.mask, "top superpixels")) if src %}<figure><img src="{{ src }}" alt="{{ name }}">
<figcaption>{{ name }}</figcaption></figure>{% endfor %}</div>
{% if card.error_code %}<p class="err">{{ card.error_code }}: {{ card.error_message }}</p>
{% else %}<ul>{% for l in card.labels %}<li class="{{ 'ok' if l.true else '' }}">
{{ "\u2713 " if l.true }}{{ l.label }} <span class="no">{{ "%.3f"|format(l.score) }}</span></li>
{% endfor %}</ul>{% if card.missed %}<p class="no">missed: {{ card.missed|join(", ") }}</p>
{% endif %}{% if card.path %}<p>{% if card.target %}explained <b>{{ card.target }}</b> &middot;
{% endif %}hierarchy path of the {{ card.path_note }}</p>
<div class="path">{{ card.path }}</div>{% endif %}{% endif %}</section>
"""


def write_report(
    sessions: SessionFactory,
    store: ObjectStore,
    tenant_id: str,
    job_id: str,
    path: Path | str,
    *,
    max_items: int = 500,
    state: str | None = None,
) -> int:
    """Write job `job_id`'s gallery (at most `max_items` cards, optionally only items in
    `state`) to `path` as one self-contained HTML file; returns the number of cards.

    Raises `JobError` `job.not_found` when the tenant has no such job.
    """
    with session_scope(sessions) as session:
        job = repo.get_job(session, tenant_id, job_id)
        if job is None:
            raise JobError("job.not_found", f"no job {job_id}")
        model = repo.get_model(session, tenant_id, job.model_id) if job.model_id else None
        truth = TRUTH.for_job(session, store, job)
    hierarchy = hierarchy_units(model.hierarchy if model is not None else None)
    prefix = str(job.params.get("image_prefix", ""))
    env = Environment(autoescape=True)
    card_template = env.from_string(_CARD)
    written = 0
    with Path(path).open("w", encoding="utf-8") as out:
        out.write(
            env.from_string(_PAGE).render(
                job=job,
                state=state,
                truth_known=truth is not None,
                shown=f"first {min(max_items, job.total)} of {job.total} items",
            )
        )
        link = functools.partial(_data_uri, store)
        for item in _items(sessions, tenant_id, job_id, state, max_items):
            out.write(card_template.render(card=item_card(item, prefix, link, hierarchy, truth)))
            written += 1
        out.write("</div></body></html>\n")
    return written


def _items(
    sessions: SessionFactory, tenant_id: str, job_id: str, state: str | None, max_items: int
) -> Iterator[Item]:
    cursor: str | None = None
    left = max_items
    while left > 0:
        with session_scope(sessions) as session:
            page = repo.list_items(
                session, tenant_id, job_id, state=state, limit=min(left, 200), cursor=cursor
            )
        if page is None:
            return
        yield from page.rows
        left -= len(page.rows)
        if page.next_cursor is None:
            return
        cursor = page.next_cursor


def _data_uri(store: ObjectStore, key: str) -> str | None:
    """The object inlined as a `data:` URI; None when missing, too large or not an image."""
    try:
        data = store.get_bytes(key, max_bytes=MAX_INLINE_BYTES)
    except StorageError:
        return None
    mime = next((m for magic, m in _MAGIC if data.startswith(magic)), None)
    if mime is None and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        mime = "image/webp"
    if mime is None:
        return None
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"
