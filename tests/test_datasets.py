"""xmlcore.datasets: the procedural dishes generator every other test leans on."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from xmlcore.datasets import (
    PANTRY,
    PRESETS,
    generate_dishes,
    read_masks,
    sample_recipes,
    write_dataset,
)
from xmlcore.datasets.primitives import COLOURS, SHAPES, TEXTURES, enumerate_primitives
from xmlcore.errors import ConfigError, ManifestError
from xmlcore.images import decode_image
from xmlcore.labels import read_manifest


@pytest.fixture(scope="module")
def tiny():
    return generate_dishes("tiny", seed=0)


@pytest.fixture(scope="module")
def small():
    return generate_dishes("small", seed=0)


def test_tiny_shapes_and_dtypes(tiny):
    c = PRESETS["tiny"]
    assert tiny.images.shape == (c.n_images, c.image_size, c.image_size, 3)
    assert tiny.images.dtype == np.uint8
    space = tiny.label_space
    assert (space.n_images, space.n_labels) == (c.n_images, c.n_labels)
    assert space.matrix.dtype == np.float32
    assert list(space.vocabulary) == sorted(space.vocabulary)
    assert tiny.image_keys[0] == "dish_00001.png" and len(set(tiny.image_keys)) == c.n_images
    assert len(tiny.masks) == len(tiny.dish_types) == c.n_images
    assert tiny.has_plate.dtype == np.bool_ and tiny.has_plate.shape == (c.n_images,)
    assert tiny.plate_masks.shape == (c.n_images, c.image_size, c.image_size)
    assert tiny.preset == "tiny" and tiny.seed == 0
    assert set(tiny.label_groups) == set(tiny.label_cuisines) == set(space.vocabulary)


def test_same_seed_is_byte_identical_and_other_seeds_differ(tiny):
    again = generate_dishes("tiny", seed=0)
    assert again.images.tobytes() == tiny.images.tobytes()
    assert (again.label_space.matrix != tiny.label_space.matrix).nnz == 0
    assert again.label_space.vocabulary == tiny.label_space.vocabulary
    for a, b in zip(again.masks, tiny.masks, strict=True):
        assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    other = generate_dishes("tiny", seed=1)
    assert other.images.tobytes() != tiny.images.tobytes()
    assert other.label_sets() != tiny.label_sets()


def test_label_frequencies_have_a_head_and_a_tail(small):
    freq = small.label_space.label_counts() / small.n_images
    assert freq.min() > 0, "every label of the vocabulary occurs"
    assert freq.max() >= 10 * np.median(freq)
    assert (freq < 0.01).sum() >= 1


def test_masks_cover_exactly_the_visible_labels(small):
    size = small.config.image_size
    for i, masks in enumerate(small.masks):
        labels = set(small.label_space.labels_of(i))
        assert set(masks) == labels & small.visual_labels
        assert small.config.min_visible <= len(masks) <= small.config.max_visible
        stacked = np.stack(list(masks.values()))
        assert stacked.dtype == np.bool_ and stacked.shape[1:] == (size, size)
        assert stacked.any(axis=(1, 2)).all(), "every visible label can be seen"
        assert stacked.sum(axis=0).max() == 1, "visible parts never overlap"
        assert not (stacked.any(axis=0) & small.plate_masks[i]).any()


def test_invisible_labels_occur_but_have_no_mask(small):
    invisible = set(small.label_space.vocabulary) - small.visual_labels
    assert len(invisible) == small.config.n_invisible
    assert "salt" in invisible and small.label_groups["salt"] == PANTRY
    counts = dict(zip(small.label_space.vocabulary, small.label_space.label_counts(), strict=True))
    assert counts["salt"] == max(counts.values()), "salt-like staples are the head"
    assert all(not (invisible & set(m)) for m in small.masks)


def test_plate_in_most_images_and_only_there(small):
    assert 0.65 <= small.has_plate.mean() <= 0.95
    assert np.array_equal(small.plate_masks.any(axis=(1, 2)), small.has_plate)


def test_solid_ingredients_show_their_colour(small):
    checked = 0
    for i, masks in enumerate(small.masks):
        for label, mask in masks.items():
            texture, colour, _ = small.looks[label].split(" ", 2)
            if texture == "solid" and mask.sum() >= 10:
                median = np.median(small.images[i][mask].astype(float), axis=0)
                assert np.abs(median - COLOURS[colour]).max() < 60, (label, median)
                checked += 1
    assert checked > 50


def test_hierarchy_groups_cooccur(small):
    """Labels of one dish type travel together: the signal hierarchy recovery needs."""
    Y = small.label_space.matrix.toarray()
    vocab = small.label_space.vocabulary
    groups = np.array([small.label_groups[v] for v in vocab])
    dish_groups = set(small.dish_cuisines)
    assert set(groups) == dish_groups | {PANTRY}
    assert len(dish_groups) == small.config.n_dish_types
    assert set(small.dish_cuisines.values()) == set(small.label_cuisines.values()) - {PANTRY}
    inter = Y.T @ Y
    union = Y.sum(0)[:, None] + Y.sum(0)[None, :] - inter
    jaccard = inter / np.maximum(union, 1)
    grouped = groups != PANTRY
    same = (groups[:, None] == groups[None, :]) & ~np.eye(len(vocab), dtype=bool)
    pair = grouped[:, None] & grouped[None, :]
    assert jaccard[same & pair].mean() > 2.5 * jaccard[~same & pair].mean()


def test_every_visible_label_looks_different(small):
    assert len(set(small.looks.values())) == len(small.looks) == len(small.visual_labels)
    first = enumerate_primitives(len(SHAPES) * len(COLOURS))
    assert len({(p.shape, p.colour) for p in first}) == len(first)
    every = enumerate_primitives(len(SHAPES) * len(COLOURS) * len(TEXTURES))
    assert len(set(every)) == len(every)
    with pytest.raises(ConfigError):
        enumerate_primitives(len(every) + 1)


def test_paper_preset_has_the_papers_counts():
    c = PRESETS["paper"]
    assert (c.n_images, c.n_labels) == (3379, 708)
    book = sample_recipes("paper", seed=0)
    assert book.membership.shape == (3379, 708)
    assert book.membership.sum(axis=0).min() >= 1
    freq = book.membership.mean(axis=0)
    assert (freq < 0.01).mean() > 0.5, "most of the 708 ingredients are tail labels"
    rendered = generate_dishes("paper", n_images=12, image_size=32)
    assert rendered.images.shape == (12, 32, 32, 3)
    assert rendered.label_space.n_labels == 708


def test_sample_recipes_matches_generated_labels(tiny):
    book = sample_recipes("tiny", seed=0)
    assert [sorted(s) for s in book.label_sets()] == tiny.label_sets()
    assert book.label_groups == tiny.label_groups


def test_overrides_and_bad_arguments():
    ds = generate_dishes("tiny", seed=2, n_images=7, image_size=24, plate_probability=1.0)
    assert ds.images.shape == (7, 24, 24, 3) and ds.has_plate.all()
    cases = [
        ({"preset": "huge"}, "config.unknown_preset"),
        ({"colour_depth": 3}, "config.unknown_parameter"),
        ({"n_labels": 8}, "config.invalid_dataset"),
        ({"plate_probability": 1.5}, "config.invalid_dataset"),
        ({"image_size": 8}, "config.invalid_dataset"),
        ({"seed": -1}, "config.invalid_seed"),
    ]
    for kwargs, code in cases:
        args = {"preset": "tiny", **kwargs}
        with pytest.raises(ConfigError) as err:
            generate_dishes(**args)  # type: ignore[arg-type]
        assert err.value.code == code


def test_write_dataset_round_trips(tiny, tmp_path):
    manifest = write_dataset(tiny, tmp_path)
    space = read_manifest(manifest.read_bytes())
    assert space.image_keys == tiny.image_keys and space.vocabulary == tiny.label_space.vocabulary
    assert (space.matrix != tiny.label_space.matrix).nnz == 0
    for key, image in zip(tiny.image_keys, tiny.images, strict=True):
        assert np.array_equal(decode_image((tmp_path / "images" / key).read_bytes()), image)
    masks = read_masks(tmp_path / "masks.npz")
    for key, expected in zip(tiny.image_keys, tiny.masks, strict=True):
        assert masks[key].keys() == expected.keys()
        assert all(np.array_equal(masks[key][k], expected[k]) for k in expected)
    truth = json.loads((tmp_path / "groups.json").read_text())
    assert truth["label_groups"] == tiny.label_groups
    assert truth["visual_labels"] == sorted(tiny.visual_labels)
    with (tmp_path / "scenes.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["dish_type"] for r in rows] == list(tiny.dish_types)
    with np.load(tmp_path / "plates.npz") as plates:
        assert np.array_equal(plates["masks"], tiny.plate_masks)


def test_write_dataset_as_jpeg(tiny, tmp_path):
    manifest = write_dataset(tiny, tmp_path, image_format="jpeg")
    space = read_manifest(manifest.read_bytes())
    assert space.image_keys[0] == "dish_00001.jpg"
    decoded = decode_image((tmp_path / "images" / space.image_keys[0]).read_bytes())
    assert np.abs(decoded.astype(int) - tiny.images[0]).mean() < 12
    assert set(read_masks(tmp_path / "masks.npz")) == set(space.image_keys)
    with pytest.raises(ConfigError):
        write_dataset(tiny, tmp_path, image_format="gif")


def test_read_masks_rejects_other_files(tmp_path):
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not an archive")
    with pytest.raises(ManifestError) as err:
        read_masks(junk)
    assert err.value.code == "manifest.invalid_masks"
    unnamed = tmp_path / "unnamed.npz"
    np.savez(unnamed, np.zeros((4, 4), dtype=bool))
    with pytest.raises(ManifestError):
        read_masks(unnamed)
