"""`xmlx.report.write_report`: a self-contained HTML gallery of a job (images inlined)."""

from __future__ import annotations

import base64
import io
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from tests.test_web import FAILED, N_ITEMS, Gallery, make_gallery, make_user
from xmlcore.hierarchy import LabelHierarchy
from xmlx.db import SessionFactory
from xmlx.jobs import JobError
from xmlx.keys import item_artifact_key
from xmlx.models import Item
from xmlx.report import hierarchy_units, item_card, write_report
from xmlx.settings import Settings
from xmlx.storage import ObjectStore, make_object_store


class References(HTMLParser):
    """Every src/href of a page, and the number of report cards."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.cards = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        self.urls += [v for k, v in values.items() if k in ("src", "href") and v]
        self.cards += tag == "section" and "card" in (values.get("class") or "")


def parse(path: Path) -> References:
    refs = References()
    refs.feed(path.read_text(encoding="utf-8"))
    return refs


@pytest.fixture(scope="module")
def store(api_settings: Settings) -> ObjectStore:
    return make_object_store(api_settings)


@pytest.fixture(scope="module")
def gallery(
    session_client: TestClient,
    session_factory: SessionFactory,
    store: ObjectStore,
    tmp_path_factory: pytest.TempPathFactory,
) -> Gallery:
    return make_gallery(session_client, session_factory, store, tmp_path_factory.mktemp("d"))


def test_report_is_self_contained_with_every_card(
    gallery: Gallery, session_factory: SessionFactory, store: ObjectStore, tmp_path: Path
) -> None:
    path = tmp_path / "report.html"
    written = write_report(session_factory, store, gallery.user.tenant_id, gallery.job_id, path)
    assert written == N_ITEMS
    refs = parse(path)
    assert refs.cards == N_ITEMS
    assert refs.urls and all(url.startswith("data:image/png;base64,") for url in refs.urls)
    # image, heatmap, mask and the link to the second label's heatmap per success
    assert len(refs.urls) == 4 * (N_ITEMS - len(FAILED)) + len(FAILED)
    first = Image.open(io.BytesIO(base64.b64decode(refs.urls[0].split(",", 1)[1])))
    assert first.size == (32, 32) and first.getextrema() != ((0, 0), (0, 0), (0, 0))
    html = path.read_text(encoding="utf-8")
    assert not re.search(r"https?://(?!www\.w3\.org)", html)  # nothing fetched from anywhere
    assert html.count("image.corrupt:") == len(FAILED)
    first_label = gallery.predicted[gallery.keys[0]][0]
    assert f"heatmap of\n<b>{first_label}</b>" in html and "other labels' heatmaps" in html
    assert html.count("blue -") >= N_ITEMS - len(FAILED)  # every overlay's colour scale
    assert f"\u2713 {gallery.predicted[gallery.keys[0]][0]}" in html
    assert re.search(r"latent \d &lt;- units [\d, ]+ &lt;- \w", html)
    assert html.count("\nstability@5 0.80\n") == N_ITEMS - len(FAILED)  # one per card
    assert "mean stability@5 0.80" in html


def test_report_limits_and_state_filter(
    gallery: Gallery, session_factory: SessionFactory, store: ObjectStore, tmp_path: Path
) -> None:
    def report(path: Path, **options: Any) -> int:
        tenant_id = gallery.user.tenant_id
        return write_report(session_factory, store, tenant_id, gallery.job_id, path, **options)

    assert report(tmp_path / "five.html", max_items=5) == 5
    assert parse(tmp_path / "five.html").cards == 5
    assert report(tmp_path / "failed.html", state="failed") == len(FAILED)
    html = (tmp_path / "failed.html").read_text(encoding="utf-8")
    assert all(key in html for key in FAILED) and "the PNG data stream is truncated" in html


def test_missing_artifact_leaves_a_card_without_it(
    gallery: Gallery, session_factory: SessionFactory, store: ObjectStore, tmp_path: Path
) -> None:
    key = gallery.keys[-1]
    heatmap = item_artifact_key(gallery.user.tenant_id, gallery.job_id, key, "heatmap.png")
    saved = store.get_bytes(heatmap)
    store.delete(heatmap)
    try:
        path = tmp_path / "r.html"
        write_report(session_factory, store, gallery.user.tenant_id, gallery.job_id, path)
    finally:
        store.put_bytes(heatmap, saved, "image/png")
    assert parse(path).cards == N_ITEMS
    assert len(parse(path).urls) == 4 * (N_ITEMS - len(FAILED)) + len(FAILED) - 1


def test_other_tenants_job_is_not_found(
    gallery: Gallery, session_factory: SessionFactory, store: ObjectStore, tmp_path: Path
) -> None:
    stranger = make_user(session_factory)
    with pytest.raises(JobError) as caught:
        write_report(session_factory, store, stranger.tenant_id, gallery.job_id, tmp_path / "x")
    assert caught.value.code == "job.not_found"
    assert not (tmp_path / "x").exists()


def test_card_of_a_latent_target_shows_its_own_path() -> None:
    rng = np.random.default_rng(1)
    vocab = ["garlic", "onion", "chicken stock", "rice", "basil", "salt"]
    hierarchy = LabelHierarchy.from_weights([rng.random((6, 4)), rng.random((4, 2))], vocab)
    explained = hierarchy.path(1)
    target = {
        "kind": "latent",
        "index": 1,
        "name": "latent 1",
        "hierarchy_path": explained.to_json(),
    }
    result = {
        "top_labels": [{"label": "garlic", "score": 0.9}, {"label": "rice", "score": 0.4}],
        "latent": [5.0, 0.1],
        "explanations": [{"target": target}],
    }
    item = Item(item_key="a.png", state="succeeded", result=result, artifacts={})
    truth = {"a.png": frozenset({"garlic", "salt"})}
    card = item_card(
        item, "p/", lambda key: f"url:{key}", hierarchy_units(hierarchy.to_json()), truth
    )
    assert card.path == explained.to_text().splitlines()[0]  # not the most active unit 0
    assert card.path_note == "explained latent unit" and card.target == "latent 1"
    assert [(s.label, s.true) for s in card.labels] == [("garlic", True), ("rice", False)]
    assert card.missed == ["salt"] and card.image == "url:p/a.png" and card.heatmap is None


def test_true_labels_come_from_the_dataset_the_job_explains_not_only_the_models(
    session_factory: SessionFactory, object_store: ObjectStore, tenant_id: str
) -> None:
    """Explanation jobs store the images folder, not a dataset id: the report finds the
    dataset by its folder (before, it only ever tried the training dataset)."""
    from xmlcore.labels import manifest_to_csv
    from xmlx import jobs
    from xmlx import repository as repo
    from xmlx.db import session_scope
    from xmlx.report import TruthCache

    folders = {name: f"tenants/{tenant_id}/uploads/{name}/" for name in ("train", "other")}
    with session_scope(session_factory) as session:
        trained_on, other = (
            repo.create_dataset(session, tenant_id, name=name, image_prefix=folder)
            for name, folder in folders.items()
        )
        model_id = repo.create_model(session, tenant_id, trained_on.id).id
    object_store.put_bytes(trained_on.manifest_key, manifest_to_csv(["a.png"], [["salt"]]))
    object_store.put_bytes(other.manifest_key, manifest_to_csv(["a.png"], [["rice", "oil"]]))
    truths = {}
    for name, folder in folders.items():
        job = jobs.create_job(
            session_factory, tenant_id=tenant_id, kind="predict", item_keys=["a.png"],
            params={"image_prefix": folder, "k": 3}, model_id=model_id,
        ).job  # fmt: skip
        with session_scope(session_factory) as session:
            truths[name] = TruthCache().for_job(session, object_store, job)
    assert truths["train"] == {"a.png": frozenset({"salt"})}
    assert truths["other"] == {"a.png": frozenset({"rice", "oil"})}
