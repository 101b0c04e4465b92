"""Label manifests: which image carries which labels, read into a sparse 0/1 matrix.

A manifest is CSV (header ``image,labels``, labels joined by ``|``; other columns are
ignored) or JSON Lines (``{"image": "a.jpg", "labels": ["x", "y"]}``). Every problem is a
``ManifestError`` with a stable code and the 1-based line where it was found, so a user
can fix a file of a million rows without guessing.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import scipy.sparse as sp

from xmlcore.errors import ConfigError, ManifestError

ManifestFormat = Literal["auto", "csv", "jsonl"]

LABEL_SEPARATOR = "|"
DEFAULT_MAX_ROWS = 1_000_000
_BOM = "\ufeff"


class UnknownLabelError(ManifestError, KeyError):
    """A label name is not in the vocabulary (code ``labels.unknown``).

    Also a ``KeyError`` so that dictionary-style callers can catch it the usual way.
    """

    default_code = "labels.unknown"

    def __str__(self) -> str:
        # KeyError would print repr(message) with quotes; the plain message reads better.
        return Exception.__str__(self)


@dataclass(frozen=True, eq=False)
class LabelSpace:
    """Images x labels as a CSR matrix of 0/1 float32.

    ``image_keys[i]`` names row ``i``; ``vocabulary[j]`` names column ``j`` (sorted by name
    when the vocabulary is derived from the data). ``empty_rows`` counts images that carry
    no label at all; they are kept, since "nothing to see here" is information too.
    """

    image_keys: tuple[str, ...]
    vocabulary: tuple[str, ...]
    matrix: sp.csr_matrix
    empty_rows: int

    @property
    def n_images(self) -> int:
        return len(self.image_keys)

    @property
    def n_labels(self) -> int:
        return len(self.vocabulary)

    def label_counts(self) -> np.ndarray:
        """Number of images per label, ``(p,)`` int64."""
        return np.asarray(self.matrix.sum(axis=0), dtype=np.int64).ravel()

    def index_of(self, label: str) -> int:
        """Column of ``label``; raises ``UnknownLabelError`` (``labels.unknown``)."""
        index = _vocabulary_index(self.vocabulary).get(label)
        if index is None:
            raise UnknownLabelError(None, f"unknown label {label!r}")
        return index

    def labels_of(self, row: int) -> list[str]:
        """Label names of image ``row``, in vocabulary order."""
        if not -self.n_images <= row < self.n_images:
            raise ConfigError("labels.bad_row", f"row {row} out of range 0..{self.n_images - 1}")
        row %= self.n_images
        start, stop = self.matrix.indptr[row], self.matrix.indptr[row + 1]
        return [self.vocabulary[j] for j in sorted(self.matrix.indices[start:stop])]

    def subset(self, rows: Sequence[int] | np.ndarray) -> LabelSpace:
        """The images ``rows`` (indices or a boolean mask), same vocabulary."""
        index = np.arange(self.n_images)[np.asarray(rows)]
        matrix = sp.csr_matrix(self.matrix[index])
        keys = tuple(self.image_keys[i] for i in index)
        return LabelSpace(keys, self.vocabulary, matrix, _count_empty(matrix))

    @classmethod
    def from_label_sets(
        cls,
        keys: Sequence[str],
        label_sets: Sequence[Iterable[str]],
        vocabulary: Sequence[str] | None = None,
    ) -> LabelSpace:
        """Build from one label collection per key.

        Without ``vocabulary`` the columns are every label seen, sorted by name. With one,
        its order is kept as given (it usually comes from a trained model) and a label
        outside it raises ``UnknownLabelError`` (``labels.unknown``).
        """
        if len(keys) != len(label_sets):
            raise ConfigError(
                "labels.length_mismatch", f"{len(keys)} keys but {len(label_sets)} label sets"
            )
        _check_unique_keys(keys)
        sets = [_unique(labels) for labels in label_sets]
        if vocabulary is None:
            vocab = tuple(sorted({label for labels in sets for label in labels}))
        else:
            vocab = tuple(vocabulary)
            if len(set(vocab)) != len(vocab):
                raise ConfigError("labels.duplicate_label", "the vocabulary repeats a label")
        matrix = _build_matrix(sets, vocab)
        return cls(tuple(keys), vocab, matrix, _count_empty(matrix))


def _vocabulary_index(vocabulary: tuple[str, ...]) -> dict[str, int]:
    return {name: j for j, name in enumerate(vocabulary)}


def _unique(labels: Iterable[str]) -> list[str]:
    """Labels in first-seen order without repeats (a repeat carries no extra meaning)."""
    return list(dict.fromkeys(labels))


def _check_unique_keys(keys: Sequence[str]) -> None:
    seen: set[str] = set()
    for position, key in enumerate(keys):
        if key in seen:
            raise ManifestError(
                "manifest.duplicate_image", f"image {key!r} appears twice (row {position})"
            )
        seen.add(key)


def _build_matrix(sets: list[list[str]], vocab: tuple[str, ...]) -> sp.csr_matrix:
    index = _vocabulary_index(vocab)
    indptr = np.zeros(len(sets) + 1, dtype=np.int64)
    columns: list[int] = []
    for row, labels in enumerate(sets):
        for label in labels:
            column = index.get(label)
            if column is None:
                raise UnknownLabelError(None, f"label {label!r} (row {row}) is not in vocabulary")
            columns.append(column)
        indptr[row + 1] = len(columns)
    indices = np.asarray(columns, dtype=np.int64)
    data = np.ones(len(columns), dtype=np.float32)
    matrix = sp.csr_matrix((data, indices, indptr), shape=(len(sets), len(vocab)))
    matrix.sort_indices()
    return matrix


def _count_empty(matrix: sp.csr_matrix) -> int:
    return int(np.count_nonzero(np.diff(matrix.indptr) == 0))


# ----------------------------------------------------------------------------- reading


def read_manifest(
    data: bytes | str,
    *,
    format: ManifestFormat = "auto",
    max_rows: int = DEFAULT_MAX_ROWS,
) -> LabelSpace:
    """Parse a CSV or JSONL manifest into a ``LabelSpace``.

    ``format="auto"`` picks JSONL when the first non-blank character is ``{``. A UTF-8 BOM
    is accepted. Raises ``ManifestError`` with codes ``manifest.empty``,
    ``manifest.missing_column``, ``manifest.duplicate_image``, ``manifest.not_utf8``,
    ``manifest.bad_json``, ``manifest.bad_row`` and ``manifest.too_large`` (more than
    ``max_rows`` images), each with the 1-based ``line``.
    """
    text = _decode(data)
    if format == "auto":
        format = "jsonl" if text.lstrip().startswith("{") else "csv"
    if format == "csv":
        rows = _csv_rows(text)
    elif format == "jsonl":
        rows = _jsonl_rows(text)
    else:
        raise ConfigError("manifest.bad_format", f"format must be auto, csv or jsonl: {format!r}")
    keys: list[str] = []
    label_sets: list[list[str]] = []
    first_line: dict[str, int] = {}
    for line, key, labels in rows:
        if key in first_line:
            raise ManifestError(
                "manifest.duplicate_image",
                f"image {key!r} already listed on line {first_line[key]}",
                line=line,
            )
        if len(keys) >= max_rows:
            raise ManifestError("manifest.too_large", f"more than {max_rows} images", line=line)
        first_line[key] = line
        keys.append(key)
        label_sets.append(labels)
    if not keys:
        raise ManifestError("manifest.empty", "the manifest lists no image", line=1)
    return LabelSpace.from_label_sets(keys, label_sets)


def _decode(data: bytes | str) -> str:
    if isinstance(data, str):
        text = data
    else:
        try:
            text = bytes(data).decode("utf-8")
        except UnicodeDecodeError as exc:
            line = bytes(data)[: exc.start].count(b"\n") + 1
            raise ManifestError(
                "manifest.not_utf8", f"byte {exc.start} is not valid UTF-8", line=line
            ) from exc
    return text.removeprefix(_BOM)


def _clean_labels(raw: Iterable[str]) -> list[str]:
    return _unique(label.strip() for label in raw if label.strip())


def _csv_rows(text: str) -> Iterator[tuple[int, str, list[str]]]:
    """Yield ``(line, key, labels)``; ``line`` is where the record starts."""
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = next((row for row in reader if any(cell.strip() for cell in row)), None)
        if header is None:
            raise ManifestError("manifest.empty", "the manifest is empty", line=1)
        header_line = reader.line_num
        names = [cell.strip().lower() for cell in header]
        for needed in ("image", "labels"):
            if needed not in names:
                raise ManifestError(
                    "manifest.missing_column",
                    f"header has no {needed!r} column (found {header})",
                    line=header_line,
                )
        image_col, labels_col = names.index("image"), names.index("labels")
        start = reader.line_num + 1
        for row in reader:
            line, start = start, reader.line_num + 1
            if not any(cell.strip() for cell in row):
                continue
            if len(row) <= max(image_col, labels_col):
                raise ManifestError(
                    "manifest.bad_row", f"expected {len(header)} fields, got {len(row)}", line=line
                )
            key = _check_key(row[image_col], line)
            yield line, key, _clean_labels(row[labels_col].split(LABEL_SEPARATOR))
    except csv.Error as exc:
        line = reader.line_num
        raise ManifestError("manifest.bad_row", f"malformed CSV: {exc}", line=line) from exc


def _check_key(raw: object, line: int) -> str:
    if not isinstance(raw, str):
        raise ManifestError("manifest.bad_row", "'image' must be a string", line=line)
    key = raw.strip()
    if not key:
        raise ManifestError("manifest.bad_row", "empty image key", line=line)
    return key


def _jsonl_rows(text: str) -> Iterator[tuple[int, str, list[str]]]:
    # Split on "\n" only: str.splitlines() would also break on U+2028 inside a JSON string.
    for line, raw in enumerate(text.split("\n"), start=1):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ManifestError("manifest.bad_json", f"invalid JSON: {exc.msg}", line=line) from exc
        if not isinstance(record, dict):
            raise ManifestError("manifest.bad_row", "each line must be a JSON object", line=line)
        if "image" not in record:
            raise ManifestError("manifest.bad_row", "missing 'image'", line=line)
        key = _check_key(record["image"], line)
        labels = record.get("labels")
        if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
            raise ManifestError("manifest.bad_row", "'labels' must be a list of strings", line=line)
        yield line, key, _clean_labels(labels)


# ----------------------------------------------------------------------------- writing


def _checked_records(
    keys: Sequence[str], label_sets: Sequence[Iterable[str]]
) -> list[tuple[str, list[str]]]:
    """Refuse what would not read back identically (the reader strips and splits on |)."""
    if len(keys) != len(label_sets):
        raise ConfigError(
            "labels.length_mismatch", f"{len(keys)} keys but {len(label_sets)} label sets"
        )
    _check_unique_keys(keys)
    records = []
    for key, labels in zip(keys, label_sets, strict=True):
        if not key or key != key.strip():
            raise ManifestError("manifest.bad_row", f"image key {key!r} is empty or padded")
        names = sorted(set(labels))
        for name in names:
            if not name or name != name.strip() or LABEL_SEPARATOR in name:
                raise ManifestError(
                    "manifest.bad_row", f"label {name!r} is empty, padded or contains '|'"
                )
        records.append((key, names))
    return records


def manifest_to_csv(keys: Sequence[str], label_sets: Sequence[Iterable[str]]) -> bytes:
    """UTF-8 CSV with header ``image,labels`` that ``read_manifest`` reads back."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["image", "labels"])
    for key, names in _checked_records(keys, label_sets):
        writer.writerow([key, LABEL_SEPARATOR.join(names)])
    return out.getvalue().encode("utf-8")


def manifest_to_jsonl(keys: Sequence[str], label_sets: Sequence[Iterable[str]]) -> bytes:
    """UTF-8 JSON Lines, one ``{"image", "labels"}`` object per image."""
    lines = [
        json.dumps({"image": key, "labels": names}, ensure_ascii=False) + "\n"
        for key, names in _checked_records(keys, label_sets)
    ]
    return "".join(lines).encode("utf-8")
