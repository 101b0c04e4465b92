"""Baselines on the same footing as the two-step model: same CNN body, same training loop.

- ``BinaryRelevanceModel``: the backbone with a sigmoid output per label, trained with
  binary cross-entropy (one independent yes/no per label, no label compression).
- ``NMFTwoStepModel``: the paper's shallow alternative. ``sklearn`` NMF factorises
  V ~ W H with the same k as the autoencoder's last layer, the same
  ``LatentLabelRegressor`` regresses W from the image (with the same decoder-aware
  ``label_loss`` through H when one is set), and scores are ``max(W, 0) H``.

Both take every ``ImageNetwork`` hyper-parameter (``base``, ``weights``, ``image_size``,
``fine_tune_layers``, ``head_units``, ``epochs``, ...) as keyword arguments and offer
``fit(images, label_space)``, ``predict_scores(images) -> (N, p)`` and
``predict_top_k(images, k)``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp
from sklearn.decomposition import NMF

from xmlcore.cnn import ImageNetwork, LatentLabelRegressor
from xmlcore.errors import ConfigError, ModelError
from xmlcore.model import top_k_labels

__all__ = ["BinaryRelevanceModel", "LabelClassifier", "NMFTwoStepModel"]


class LabelClassifier(ImageNetwork):
    """The shared CNN body with a sigmoid output per label and binary cross-entropy."""

    activation = "sigmoid"
    loss = "binary_crossentropy"


class _LabelModel:
    """Shared plumbing: the vocabulary, label-matrix checks and top-k ranking."""

    vocabulary_: tuple[str, ...]

    def predict_scores(self, images: Any) -> np.ndarray:
        raise NotImplementedError

    def predict_top_k(self, images: Any, k: int = 5) -> list[list[tuple[str, float]]]:
        """Per image, the ``k`` best ``(label, score)`` pairs, best first."""
        return top_k_labels(self.predict_scores(images), self._vocabulary(), k)

    def _vocabulary(self) -> tuple[str, ...]:
        vocabulary = getattr(self, "vocabulary_", None)
        if vocabulary is None:
            raise ModelError("model.not_fitted", f"{type(self).__name__} is not fitted yet")
        return vocabulary

    @staticmethod
    def _label_matrix(label_space: Any) -> np.ndarray:
        matrix = label_space.matrix
        V = matrix.toarray() if sp.issparse(matrix) else np.asarray(matrix)
        if V.ndim != 2 or V.shape[0] < 2 or V.shape[1] < 1:
            raise ConfigError(
                "config.labels", f"need a (n >= 2, p >= 1) label matrix, got {V.shape}"
            )
        return V.astype("float32")


class BinaryRelevanceModel(_LabelModel):
    """One sigmoid per label on the shared CNN body (``**params``: ``ImageNetwork``'s)."""

    def __init__(self, **params: Any) -> None:
        self.params = params

    def fit(self, images: Any, label_space: Any) -> BinaryRelevanceModel:
        V = self._label_matrix(label_space)
        self.network_ = LabelClassifier(**self.params)
        if hasattr(images, "with_targets"):
            self.network_.fit(images.with_targets(V))
        else:
            self.network_.fit(images, V)
        self.vocabulary_ = tuple(label_space.vocabulary)
        return self

    def predict_scores(self, images: Any) -> np.ndarray:
        """Label probabilities ``(N, p)`` float32 in ``vocabulary_`` order."""
        self._vocabulary()
        return self.network_.predict(images)


class NMFTwoStepModel(_LabelModel):
    """NMF label compression + the same latent regressor (``**params``: ``ImageNetwork``'s).

    ``n_components`` should equal the autoencoder's last layer size for a fair
    comparison; ``nmf_params`` go to ``sklearn.decomposition.NMF``.
    """

    def __init__(
        self, n_components: int = 16, nmf_params: dict[str, Any] | None = None, **params: Any
    ) -> None:
        self.n_components = n_components
        self.nmf_params = nmf_params
        self.params = params

    def fit(self, images: Any, label_space: Any) -> NMFTwoStepModel:
        V = self._label_matrix(label_space)
        if not 1 <= self.n_components <= min(V.shape):
            raise ConfigError("config.n_components", f"n_components must be in 1..{min(V.shape)}")
        nmf_settings = {
            "init": "nndsvda",
            "max_iter": 500,
            "random_state": self.params.get("seed", 0),
        }
        self.nmf_ = NMF(
            n_components=self.n_components, **{**nmf_settings, **(self.nmf_params or {})}
        )
        codes = self.nmf_.fit_transform(V).astype("float32")
        self.regressor_ = LatentLabelRegressor(**self.params)
        # the same decoder-aware label loss as the two-step model, when one is set
        decoder = {"decoder": self.nmf_.components_, "labels": V}
        if hasattr(images, "with_targets"):
            self.regressor_.fit(images.with_targets(codes), **decoder)
        else:
            self.regressor_.fit(images, codes, **decoder)
        self.vocabulary_ = tuple(label_space.vocabulary)
        return self

    def predict_latent(self, images: Any) -> np.ndarray:
        """NMF codes ``(N, k)`` regressed from the images, clipped at 0 like the two-step model."""
        self._vocabulary()
        return np.maximum(self.regressor_.predict(images), 0.0)

    def predict_scores(self, images: Any) -> np.ndarray:
        """Decoded label scores ``(N, p)`` = codes @ components."""
        latent = self.predict_latent(images)
        return latent @ self.nmf_.components_.astype("float32")
