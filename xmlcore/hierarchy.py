"""The label hierarchy read out of a deep non-negative autoencoder (Kang et al., 3-4).

Column ``j`` of ``H_1`` (p, k_1) ranks the labels that make layer-1 unit ``j``; column
``u`` of ``H_l`` (k_{l-1}, k_l) ranks the layer-(l-1) units that make layer-l unit ``u``.
Because every ``H_l >= 0`` these rankings are additive, part-based "label sets".

Numbering (one convention everywhere): layers are 1..L as in the paper; units are
0-based, the column index of ``H_l``, in text and JSON alike, so "H1, Label 9" is
column 9 of ``H_1`` and unit 9 is ``LatentUnit(9)`` for the explainers. (The paper's
R code printed 1-based units.) A unit whose column holds no positive weight (relative
to the largest weight of the whole hierarchy) is ``dead``: it encodes nothing.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from xmlcore.errors import ConfigError

if TYPE_CHECKING:
    from xmlcore.autoencoder import DeepNonNegativeAutoencoder

_DEAD_RELATIVE = 1e-8


@dataclass(frozen=True)
class HierarchyUnit:
    """Unit ``index`` (0-based) of layer ``layer`` (1..L) and its strongest members.

    ``members`` are ``(name, weight)`` by decreasing weight, only positive weights: label
    names for layer 1, child units named ``"unit 64"`` for deeper layers.
    ``member_indices`` are the matching vocabulary indices (layer 1) or child unit
    indices (deeper layers).
    """

    layer: int
    index: int
    members: list[tuple[str, float]]
    member_indices: list[int]
    dead: bool = False

    def to_text(self) -> str:
        """``"H1, Label 64: garlic, onion, chicken stock"`` (the paper's read-out)."""
        body = "(dead unit)" if self.dead else ", ".join(name for name, _ in self.members)
        return f"H{self.layer}, Label {self.index}: {body}"

    def to_json(self) -> dict[str, Any]:
        return {
            "layer": self.layer,
            "index": self.index,
            "dead": self.dead,
            "members": [
                {"name": name, "index": i, "weight": weight}
                for (name, weight), i in zip(self.members, self.member_indices, strict=True)
            ],
        }


@dataclass(frozen=True)
class HierarchyPath:
    """A top-layer unit, its strongest descendants per lower layer, and their labels.

    ``levels[i]`` lists ``(unit, effective_weight)`` for layer ``L-1-i`` (so the last
    level is layer 1); the effective weight of a unit is how much it feeds the top unit
    through the units chosen one layer up. ``labels`` are the strongest labels reached
    through the chosen layer-1 units, ``(name, effective_weight)``.
    """

    top: HierarchyUnit
    levels: list[list[tuple[HierarchyUnit, float]]]
    labels: list[tuple[str, float]]

    def to_text(self) -> str:
        """``latent 9 <- units 64, 34, 11 <- garlic, onion, ...`` then one line per unit."""
        parts = [f"latent {self.top.index}"]
        parts += ["units " + ", ".join(str(u.index) for u, _ in level) for level in self.levels]
        parts.append(", ".join(name for name, _ in self.labels))
        lines = [" <- ".join(parts)]
        lines += [unit.to_text() for level in self.levels for unit, _ in level]
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        return {
            "top": self.top.to_json(),
            "levels": [
                {
                    "layer": level[0][0].layer if level else None,
                    "units": [{**unit.to_json(), "path_weight": w} for unit, w in level],
                }
                for level in self.levels
            ],
            "labels": [{"name": name, "weight": w} for name, w in self.labels],
        }


class LabelHierarchy:
    """Readable label sets of every unit of every layer of a fitted autoencoder."""

    def __init__(self, H: Sequence[Any], vocabulary: Sequence[str], top_n: int = 5) -> None:
        self.H = _check_weights(H, len(vocabulary))
        if not isinstance(top_n, int | np.integer) or top_n < 1:
            raise ConfigError("hierarchy.bad_param", f"top_n must be a positive int: {top_n!r}")
        self.vocabulary = tuple(str(v) for v in vocabulary)
        self.top_n = top_n
        scale = max(float(h.max()) for h in self.H)
        self._dead_below = _DEAD_RELATIVE * scale

    @classmethod
    def from_weights(
        cls, H: Sequence[Any], vocabulary: Sequence[str], top_n: int = 5
    ) -> LabelHierarchy:
        """From ``[H_1, ..., H_L]`` shaped ``(p, k_1), (k_1, k_2), ...``, all ``>= 0``."""
        return cls(H, vocabulary, top_n)

    @classmethod
    def from_autoencoder(
        cls, ae: DeepNonNegativeAutoencoder, vocabulary: Sequence[str], top_n: int = 5
    ) -> LabelHierarchy:
        """From a fitted ``DeepNonNegativeAutoencoder`` (its ``H_``)."""
        return cls(ae.H_, vocabulary, top_n)

    @property
    def n_layers(self) -> int:
        return len(self.H)

    @property
    def layer_sizes(self) -> tuple[int, ...]:
        return tuple(h.shape[1] for h in self.H)

    def unit(self, layer: int, index: int) -> HierarchyUnit:
        """Unit ``index`` (0-based) of ``layer`` (1..L)."""
        h = self._layer(layer)
        if not 0 <= index < h.shape[1]:
            raise ConfigError(
                "hierarchy.unknown_unit",
                f"layer {layer} has units 0..{h.shape[1] - 1}, got {index}",
            )
        column = h[:, index]
        order = [int(i) for i in np.argsort(-column, kind="stable")[: self.top_n]]
        order = [i for i in order if column[i] > self._dead_below]
        names = [self._member_name(layer, i) for i in order]
        return HierarchyUnit(
            layer=layer,
            index=index,
            members=[(n, float(column[i])) for n, i in zip(names, order, strict=True)],
            member_indices=order,
            dead=not order,
        )

    def units(self, layer: int) -> list[HierarchyUnit]:
        """Every unit of ``layer`` (1..L), in index order."""
        return [self.unit(layer, j) for j in range(self._layer(layer).shape[1])]

    def path(self, index: int, fanout: int = 3) -> HierarchyPath:
        """The ``fanout`` strongest descendants per layer of top-layer unit ``index``."""
        if not isinstance(fanout, int | np.integer) or fanout < 1:
            raise ConfigError("hierarchy.bad_param", f"fanout must be a positive int: {fanout}")
        top = self.unit(self.n_layers, index)
        weight = np.zeros(self.H[-1].shape[1])
        weight[index] = 1.0
        chosen = [index]
        levels = []
        for layer in range(self.n_layers, 1, -1):
            weight = self.H[layer - 1][:, chosen] @ weight[chosen]
            chosen = self._strongest(weight, fanout)
            levels.append([(self.unit(layer - 1, u), float(weight[u])) for u in chosen])
        label_weight = self.H[0][:, chosen] @ weight[chosen]
        labels = [
            (self.vocabulary[i], float(label_weight[i]))
            for i in self._strongest(label_weight, self.top_n)
        ]
        return HierarchyPath(top=top, levels=levels, labels=labels)

    def label_assignment(self) -> np.ndarray:
        """(p,) int: the layer-1 unit with the largest weight per label; -1 if none."""
        h = self.H[0]
        best = np.argmax(h, axis=1)
        best[h.max(axis=1) <= self._dead_below] = -1
        return best

    def to_text(self) -> str:
        """Every unit of every layer, one ``H<l>, Label <j>: ...`` line each."""
        layers = range(1, self.n_layers + 1)
        return "\n".join(u.to_text() for layer in layers for u in self.units(layer))

    def to_json(self) -> dict[str, Any]:
        """JSON-serialisable: sizes, numbering convention and every unit of every layer."""
        return {
            "n_labels": len(self.vocabulary),
            "layer_sizes": list(self.layer_sizes),
            "top_n": self.top_n,
            "numbering": "layers 1..L, units 0-based (column of H_l)",
            "layers": [
                {"layer": layer, "units": [u.to_json() for u in self.units(layer)]}
                for layer in range(1, self.n_layers + 1)
            ],
        }

    def _layer(self, layer: int) -> np.ndarray:
        if not isinstance(layer, int | np.integer) or not 1 <= layer <= self.n_layers:
            raise ConfigError(
                "hierarchy.unknown_layer", f"layers are 1..{self.n_layers}, got {layer}"
            )
        return self.H[layer - 1]

    def _member_name(self, layer: int, i: int) -> str:
        return self.vocabulary[i] if layer == 1 else f"unit {i}"

    def _strongest(self, weight: np.ndarray, n: int) -> list[int]:
        order = np.argsort(-weight, kind="stable")[:n]
        return [int(i) for i in order if weight[i] > self._dead_below]


def _check_weights(H: Sequence[Any], n_labels: int) -> list[np.ndarray]:
    arrays = [np.asarray(h, dtype=np.float64) for h in H]
    problem = None
    if not arrays or any(h.ndim != 2 or h.size == 0 for h in arrays):
        problem = "expected a non-empty list of 2-D matrices [H_1, ..., H_L]"
    elif arrays[0].shape[0] != n_labels:
        problem = f"H_1 has {arrays[0].shape[0]} rows but the vocabulary has {n_labels} labels"
    elif any(a.shape[1] != b.shape[0] for a, b in itertools.pairwise(arrays)):
        problem = f"shapes do not chain: {[h.shape for h in arrays]}"
    elif any(not np.isfinite(h).all() or h.min() < 0 for h in arrays):
        problem = "weights must be finite and non-negative"
    if problem:
        raise ConfigError("hierarchy.bad_weights", problem)
    return arrays
