"""A job's aggregate of the metrics its results carry (``stability@5`` and the like).

Each explanation summary may hold ``"metrics": {name: value}`` (``Explanation.to_json``).
An item's metric is the mean over its explanations (its targets); a job keeps, per
name, the running sum and count over its succeeded items, so the job's mean is known
at any time without reading its items back (a job may hold 10^6 of them). Pure Python:
the service kernel calls this inside its result transaction.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

Sums = dict[str, dict[str, float]]
"""``{name: {"sum": s, "count": n}}``, JSON-ready."""


def item_metrics(result: Mapping[str, Any]) -> dict[str, float]:
    """Per metric name, its mean over the item's explanations (finite values only)."""
    found: dict[str, list[float]] = {}
    for explanation in result.get("explanations") or []:
        for name, value in (explanation.get("metrics") or {}).items():
            if isinstance(value, int | float) and math.isfinite(value):
                found.setdefault(str(name), []).append(float(value))
    return {name: sum(values) / len(values) for name, values in found.items()}


def add_metrics(sums: Mapping[str, Any] | None, metrics: Mapping[str, float]) -> Sums:
    """``sums`` with one more item's ``metrics`` counted in (a new dict)."""
    out: Sums = {name: dict(entry) for name, entry in (sums or {}).items()}
    for name, value in metrics.items():
        entry = out.setdefault(name, {"sum": 0.0, "count": 0})
        entry["sum"] += value
        entry["count"] += 1
    return out


def mean_metrics(sums: Mapping[str, Any] | None) -> dict[str, float]:
    """Per metric name, its mean over the items counted so far."""
    return {
        name: round(entry["sum"] / entry["count"], 6)
        for name, entry in (sums or {}).items()
        if entry.get("count")
    }
