"""Model metadata and the on-disk artifact of a two-step model.

An artifact is one directory with exactly three files: ``model.keras`` (the image
regressor, raw pixels -> latent), ``autoencoder.npz`` (the non-negative ``H_`` arrays
and the autoencoder config) and ``metadata.json`` (``ModelMetadata``). ``zip_directory``
and ``unzip_artifact`` turn it into one blob for object storage; unzipping accepts only
those three names with bounded sizes, so a hostile zip cannot write elsewhere.
"""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import keras
import numpy as np

from xmlcore.errors import ModelError

MODEL_FILE = "model.keras"
AUTOENCODER_FILE = "autoencoder.npz"
METADATA_FILE = "metadata.json"
ARTIFACT_FILES = (MODEL_FILE, AUTOENCODER_FILE, METADATA_FILE)
FORMAT = "xmlcore.TwoStepModel/1"
_MAX_MEMBER_BYTES = 2 * 1024**3


def library_versions() -> dict[str, str]:
    """Versions that decide whether an artifact loads and predicts the same elsewhere."""
    try:
        xmlx_version = importlib_metadata.version("xmlx")
    except importlib_metadata.PackageNotFoundError:
        xmlx_version = "unknown"
    return {"keras": keras.__version__, "numpy": np.__version__, "xmlcore": xmlx_version}


@dataclass
class ModelMetadata:
    """What a trained model is, how it was trained and with what; JSON round-trips.

    ``history`` maps a stage (``"autoencoder"``, ``"regressor"``) to its per-epoch
    ``{metric: [values]}``; ``metrics`` holds final figures; ``regressor_params`` are the
    ``LatentLabelRegressor`` hyper-parameters needed to rebuild it on load.
    """

    vocabulary: list[str]
    layer_sizes: list[int]
    latent_dim: int
    image_size: list[int]
    base: str
    weights: str
    preprocessing: str
    autoencoder_loss: str
    model_id: str | None = None
    keras_backend: str = field(default_factory=lambda: keras.backend.backend())
    versions: dict[str, str] = field(default_factory=library_versions)
    created_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat())
    metrics: dict[str, float] = field(default_factory=dict)
    history: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    regressor_params: dict[str, Any] = field(default_factory=dict)
    format: str = FORMAT

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> ModelMetadata:
        try:
            data = json.loads(text)
            if data.get("format") != FORMAT:
                raise ValueError(f"format is {data.get('format')!r}, expected {FORMAT!r}")
            return cls(**data)
        except (ValueError, TypeError, AttributeError) as exc:
            raise ModelError("model.corrupt_artifact", f"bad {METADATA_FILE}: {exc}") from exc


def save_autoencoder_state(path: Path, state: dict[str, Any]) -> None:
    """``get_state()`` of the autoencoder -> npz (arrays + one JSON string, no pickle)."""
    header = {key: value for key, value in state.items() if key not in ("weights", "label_bias")}
    arrays: dict[str, Any] = {"header": np.array(json.dumps(header))}
    arrays.update({f"H_{i}": np.asarray(h) for i, h in enumerate(state["weights"])})
    if state.get("label_bias") is not None:
        arrays["label_bias"] = np.asarray(state["label_bias"])
    np.savez(path, **arrays)


def load_autoencoder_state(path: Path) -> dict[str, Any]:
    """Inverse of ``save_autoencoder_state``; refuses pickled objects."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            header = json.loads(str(npz["header"]))
            count = sum(1 for name in npz.files if name.startswith("H_"))
            weights = [npz[f"H_{i}"] for i in range(count)]
            bias = npz["label_bias"] if "label_bias" in npz.files else None
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
        raise ModelError("model.corrupt_artifact", f"bad {AUTOENCODER_FILE}: {exc}") from exc
    return {**header, "weights": weights, "label_bias": bias}


def check_artifact_directory(directory: Path) -> None:
    missing = [name for name in ARTIFACT_FILES if not (directory / name).is_file()]
    if missing:
        raise ModelError("model.corrupt_artifact", f"{directory} lacks {', '.join(missing)}")


def zip_directory(directory: Path) -> bytes:
    """The three artifact files as one zip blob."""
    check_artifact_directory(directory)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
        for name in ARTIFACT_FILES:
            archive.write(directory / name, arcname=name)
    return buffer.getvalue()


def unzip_artifact(data: bytes, directory: Path) -> None:
    """Write the three artifact files of a zip blob into ``directory``."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            members = {info.filename: info for info in archive.infolist()}
            if set(members) != set(ARTIFACT_FILES):
                raise ValueError(f"expected members {ARTIFACT_FILES}, got {sorted(members)}")
            for name, info in members.items():
                if info.file_size > _MAX_MEMBER_BYTES:
                    raise ValueError(f"{name} is too large")
                (directory / name).write_bytes(archive.read(name))
    except (zipfile.BadZipFile, ValueError, OSError) as exc:
        raise ModelError("model.corrupt_artifact", f"not a model artifact zip: {exc}") from exc
