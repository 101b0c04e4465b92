"""Write a generated data set to a directory, and read its masks back.

Layout written by ``write_dataset``::

    images/<key>     encoded images (PNG; for JPEG the keys end in ``.jpg`` instead)
    manifest.csv     ``image,labels`` with labels joined by ``|`` (``xmlcore.labels``)
    groups.json      ground truth: label -> dish type and cuisine, visual labels, looks,
                     dish type -> cuisine, preset, seed and the full config
    scenes.csv       ``image,dish_type,cuisine,has_plate`` per image
    masks.npz        compressed bool (H, W) masks, one per visible label per image,
                     under the key ``"<image key>::<label>"``
    plates.npz       ``image_keys`` and ``masks`` (n, H, W): visible plate pixels
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import zipfile
import zlib
from pathlib import Path

import numpy as np

from xmlcore.datasets.generate import GeneratedDataset
from xmlcore.errors import ConfigError, ManifestError
from xmlcore.images import encode_jpeg, encode_png
from xmlcore.labels import manifest_to_csv

MASK_KEY_SEPARATOR = "::"
_EXTENSIONS = {"png": ".png", "jpeg": ".jpg"}


def write_dataset(
    ds: GeneratedDataset,
    directory: str | Path,
    image_format: str = "png",
    *,
    jpeg_quality: int = 90,
) -> Path:
    """Write ``ds`` under ``directory`` (created if needed); returns the manifest path.

    ``image_format`` is ``"png"`` (lossless, the default) or ``"jpeg"``.
    """
    if image_format not in _EXTENSIONS:
        raise ConfigError(
            "config.invalid_image_format",
            f"image_format must be one of {sorted(_EXTENSIONS)}, got {image_format!r}",
        )
    root = Path(directory)
    (root / "images").mkdir(parents=True, exist_ok=True)
    keys = [str(Path(k).with_suffix(_EXTENSIONS[image_format])) for k in ds.image_keys]
    for key, image in zip(keys, ds.images, strict=True):
        data = encode_png(image) if image_format == "png" else encode_jpeg(image, jpeg_quality)
        (root / "images" / key).write_bytes(data)
    manifest = root / "manifest.csv"
    manifest.write_bytes(manifest_to_csv(keys, ds.label_sets()))
    (root / "groups.json").write_text(json.dumps(_ground_truth(ds), indent=1, sort_keys=True))
    (root / "scenes.csv").write_text(_scenes_csv(ds, keys))
    masks = {
        f"{key}{MASK_KEY_SEPARATOR}{label}": mask
        for key, per_image in zip(keys, ds.masks, strict=True)
        for label, mask in per_image.items()
    }
    np.savez_compressed(root / "masks.npz", **masks)  # type: ignore[arg-type]
    np.savez_compressed(root / "plates.npz", image_keys=np.asarray(keys), masks=ds.plate_masks)
    return manifest


def read_masks(path: str | Path) -> dict[str, dict[str, np.ndarray]]:
    """``masks.npz`` as ``{image key: {label: bool (H, W) mask}}``.

    Raises ``ManifestError`` (``manifest.invalid_masks``) for a file that is not such an
    archive.
    """
    out: dict[str, dict[str, np.ndarray]] = {}
    try:
        archive = np.load(path, allow_pickle=False)
        if not isinstance(archive, np.lib.npyio.NpzFile):
            raise ManifestError("manifest.invalid_masks", f"{path} is not an .npz archive")
        with archive:
            for name in archive.files:
                key, sep, label = name.partition(MASK_KEY_SEPARATOR)
                mask = archive[name]
                if not sep or not label or mask.dtype != np.bool_ or mask.ndim != 2:
                    raise ManifestError(
                        "manifest.invalid_masks", f"{name!r} is not a '<image>::<label>' bool mask"
                    )
                out.setdefault(key, {})[label] = mask
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise ManifestError("manifest.invalid_masks", f"cannot read masks: {exc}") from exc
    return out


def _ground_truth(ds: GeneratedDataset) -> dict[str, object]:
    return {
        "preset": ds.preset,
        "seed": ds.seed,
        "config": dataclasses.asdict(ds.config),
        "label_groups": ds.label_groups,
        "label_cuisines": ds.label_cuisines,
        "visual_labels": sorted(ds.visual_labels),
        "looks": ds.looks,
        "dish_cuisines": ds.dish_cuisines,
    }


def _scenes_csv(ds: GeneratedDataset, keys: list[str]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["image", "dish_type", "cuisine", "has_plate"])
    for key, dish, plate in zip(keys, ds.dish_types, ds.has_plate, strict=True):
        writer.writerow([key, dish, ds.dish_cuisines[dish], int(plate)])
    return buffer.getvalue()
