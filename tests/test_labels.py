"""Label manifests: parsing, every error code with its line, round trips, LabelSpace."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from xmlcore.errors import ConfigError, ManifestError
from xmlcore.labels import (
    LabelSpace,
    UnknownLabelError,
    manifest_to_csv,
    manifest_to_jsonl,
    read_manifest,
)


def make_csv(*rows: str, header: str = "image,labels") -> bytes:
    return ("\n".join([header, *rows]) + "\n").encode("utf-8")


def assert_manifest_error(data: bytes | str, code: str, line: int, **kwargs: object) -> None:
    with pytest.raises(ManifestError) as info:
        read_manifest(data, **kwargs)  # type: ignore[arg-type]
    assert info.value.code == code
    assert info.value.line == line


def test_csv_basic_matrix_and_sorted_vocabulary() -> None:
    space = read_manifest(make_csv("a.jpg,onion|garlic", "b.jpg,garlic", "c.jpg,"))
    assert space.image_keys == ("a.jpg", "b.jpg", "c.jpg")
    assert space.vocabulary == ("garlic", "onion")
    assert isinstance(space.matrix, sp.csr_matrix)
    assert space.matrix.dtype == np.float32
    np.testing.assert_array_equal(space.matrix.toarray(), [[1, 1], [1, 0], [0, 0]])
    assert space.empty_rows == 1
    assert (space.n_images, space.n_labels) == (3, 2)
    np.testing.assert_array_equal(space.label_counts(), [2, 1])
    assert space.labels_of(0) == ["garlic", "onion"]
    assert space.labels_of(-1) == []
    assert space.index_of("onion") == 1


def test_csv_strips_whitespace_collapses_duplicates_ignores_extra_columns() -> None:
    data = make_csv(
        'a.jpg,3," salt | pepper |salt||",x',
        '"b, with comma.jpg",1,pepper,y',
        header="image,rating,labels,notes",
    )
    space = read_manifest(data)
    assert space.image_keys == ("a.jpg", "b, with comma.jpg")
    assert space.labels_of(0) == ["pepper", "salt"]
    assert space.matrix.nnz == 3  # the repeated "salt" is stored once


def test_bom_and_crlf_and_blank_lines_tolerated() -> None:
    data = "\ufeffimage,labels\r\n\r\na.jpg,x\r\n\r\nb.jpg,y|x\r\n".encode()
    space = read_manifest(data)
    assert space.image_keys == ("a.jpg", "b.jpg")
    assert space.vocabulary == ("x", "y")


def test_str_input_and_explicit_format() -> None:
    space = read_manifest("image,labels\na,x\n", format="csv")
    assert space.labels_of(0) == ["x"]
    with pytest.raises(ConfigError):
        read_manifest("image,labels\na,x\n", format="xml")  # type: ignore[arg-type]


def test_jsonl_auto_detected() -> None:
    data = b'\n  {"image": "a.jpg", "labels": ["b", "a", "b"]}\n{"image": "c.jpg", "labels": []}\n'
    space = read_manifest(data)
    assert space.vocabulary == ("a", "b")
    assert space.labels_of(0) == ["a", "b"]
    assert space.empty_rows == 1


@pytest.mark.parametrize(
    ("data", "code", "line"),
    [
        (b"", "manifest.empty", 1),
        (b"\n\n", "manifest.empty", 1),
        (b"image,labels\n", "manifest.empty", 1),
        (b"name,labels\na,x\n", "manifest.missing_column", 1),
        (b"\nimage,tags\na,x\n", "manifest.missing_column", 2),
        (make_csv("a,x", "b,y", "a,z"), "manifest.duplicate_image", 4),
        (make_csv("a,x", ",y"), "manifest.bad_row", 3),
        (make_csv("a,x", "   ,y"), "manifest.bad_row", 3),
        (make_csv("a,x", "b"), "manifest.bad_row", 3),
        (make_csv("a,x", '"b"c,y'), "manifest.bad_row", 3),
        (b"image,labels\na,x\nb,\xff\xfe\n", "manifest.not_utf8", 3),
    ],
)
def test_csv_errors_have_codes_and_lines(data: bytes, code: str, line: int) -> None:
    assert_manifest_error(data, code, line)


def test_quoted_multiline_field_reports_the_line_where_the_record_starts() -> None:
    data = make_csv('a,"x|\ny"', "a,z")
    assert_manifest_error(data, "manifest.duplicate_image", 4)
    space = read_manifest(make_csv('a,"x|\ny"'))
    assert space.labels_of(0) == ["x", "y"]


@pytest.mark.parametrize(
    ("data", "code", "line"),
    [
        (b'{"image": "a", "labels": []}\n{"image": "b", "labels": [}\n', "manifest.bad_json", 2),
        (b'{"image": "a", "labels": []}\n["b", []]\n', "manifest.bad_row", 2),
        (b'{"image": "a", "labels": []}\n\n{"labels": ["x"]}\n', "manifest.bad_row", 3),
        (b'{"image": 3, "labels": ["x"]}\n', "manifest.bad_row", 1),
        (b'{"image": "", "labels": ["x"]}\n', "manifest.bad_row", 1),
        (b'{"image": "a", "labels": "x|y"}\n', "manifest.bad_row", 1),
        (b'{"image": "a", "labels": ["x", 2]}\n', "manifest.bad_row", 1),
        (b'{"image": "a"}\n', "manifest.bad_row", 1),
        (
            b'{"image": "a", "labels": []}\n{"image": "a", "labels": []}\n',
            "manifest.duplicate_image",
            2,
        ),
    ],
)
def test_jsonl_errors_have_codes_and_lines(data: bytes, code: str, line: int) -> None:
    assert_manifest_error(data, code, line)


def test_too_many_rows_refused_at_the_first_extra_row() -> None:
    data = make_csv("a,x", "b,x", "c,x")
    assert read_manifest(data, max_rows=3).n_images == 3
    assert_manifest_error(data, "manifest.too_large", 4, max_rows=2)


def test_round_trip_csv_and_jsonl() -> None:
    keys = ["a.jpg", "dir/b, c.jpg", 'q"uote.png', "é.jpg"]
    label_sets = [{"x", "y"}, set(), {"with,comma", 'with "quote"'}, {"ü"}]
    for writer in (manifest_to_csv, manifest_to_jsonl):
        space = read_manifest(writer(keys, label_sets))
        assert space.image_keys == tuple(keys)
        assert [set(space.labels_of(i)) for i in range(len(keys))] == label_sets
        assert space.empty_rows == 1


def test_writers_refuse_what_would_not_read_back() -> None:
    with pytest.raises(ManifestError):
        manifest_to_csv(["a"], [{"x|y"}])
    with pytest.raises(ManifestError):
        manifest_to_jsonl([" a"], [{"x"}])
    with pytest.raises(ManifestError) as info:
        manifest_to_csv(["a", "a"], [set(), set()])
    assert info.value.code == "manifest.duplicate_image"
    with pytest.raises(ConfigError):
        manifest_to_csv(["a"], [])


def test_from_label_sets_with_fixed_vocabulary_keeps_its_order() -> None:
    space = LabelSpace.from_label_sets(["a", "b"], [["z"], ["y", "z"]], vocabulary=["z", "y", "w"])
    assert space.vocabulary == ("z", "y", "w")
    np.testing.assert_array_equal(space.matrix.toarray(), [[1, 0, 0], [1, 1, 0]])
    np.testing.assert_array_equal(space.label_counts(), [2, 1, 0])
    with pytest.raises(UnknownLabelError) as info:
        LabelSpace.from_label_sets(["a"], [["q"]], vocabulary=["z"])
    assert info.value.code == "labels.unknown"


def test_index_of_unknown_label_is_a_key_error_with_a_code() -> None:
    space = LabelSpace.from_label_sets(["a"], [["x"]])
    with pytest.raises(KeyError):
        space.index_of("nope")
    with pytest.raises(ManifestError) as info:
        space.index_of("nope")
    assert info.value.code == "labels.unknown"
    assert "nope" in str(info.value)


def test_subset_by_indices_and_mask() -> None:
    space = LabelSpace.from_label_sets(["a", "b", "c"], [["x"], [], ["x", "y"]])
    part = space.subset([2, 1])
    assert part.image_keys == ("c", "b")
    assert part.vocabulary == space.vocabulary
    np.testing.assert_array_equal(part.matrix.toarray(), [[1, 1], [0, 0]])
    assert part.empty_rows == 1
    masked = space.subset(np.array([True, False, True]))
    assert masked.image_keys == ("a", "c")
    assert masked.empty_rows == 0
    with pytest.raises(ConfigError):
        space.labels_of(3)
