"""The results gallery (`api.web`) over HTTP: sign-in, jobs, the job page's cards and
filters, the model page, tenant isolation. The job is a real one: a dataset registered
through the API from generated dishes, a model row with a real hierarchy, items
finished through the kernel with real PNG artifacts, as a worker would."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from skimage.segmentation import slic

from api.app import create_app
from tests.api_fixtures import API_TEST_PEPPER, ApiUser, upload_files
from xmlcore.batch import heatmap_name
from xmlcore.datasets import generate_dishes, write_dataset
from xmlcore.hierarchy import LabelHierarchy
from xmlcore.overlay import render_overlay
from xmlcore.viz import mask_png
from xmlx import jobs
from xmlx import repository as repo
from xmlx.db import SessionFactory, session_scope
from xmlx.keys import item_artifact_key
from xmlx.models import ModelState
from xmlx.report import hierarchy_path, hierarchy_units, path_text
from xmlx.repository import items_with_label
from xmlx.settings import Settings
from xmlx.storage import ObjectStore, make_object_store

N_ITEMS = 30
FAILED = ("dish_00004.png", "dish_00011.png")
TOP_REGIONS: dict[str, np.ndarray] = {}
"""Item key -> bool (H, W): the top superpixels of its first overlay (finish_items)."""


@dataclass(frozen=True)
class Gallery:
    user: ApiUser
    job_id: str
    model_id: str
    dataset_id: str
    keys: list[str]
    predicted: dict[str, list[str]]  # item key -> predicted labels, best first
    truth: dict[str, set[str]]
    vocabulary: tuple[str, ...]


def make_user(sessions: SessionFactory) -> ApiUser:
    with session_scope(sessions) as session:
        tenant = repo.create_tenant(session, f"web-{uuid.uuid4().hex}")
        _row, key = repo.create_api_key(session, tenant.id, API_TEST_PEPPER, "web")
        return ApiUser(tenant.id, key)


def make_ready_model(sessions: SessionFactory, tenant_id: str, dataset_id: str, vocab: Any) -> str:
    """A model row as the training worker leaves it: hierarchy, history, metrics."""
    rng = np.random.default_rng(0)
    H1 = rng.random((len(vocab), 8)) * (rng.random((len(vocab), 8)) < 0.35)
    H2 = rng.random((8, 4)) * (rng.random((8, 4)) < 0.6)
    epochs = np.arange(1, 13)
    history = {
        "autoencoder": {"loss": list(0.3 / epochs + 0.02), "val_loss": list(0.32 / epochs + 0.03)},
        "regressor": {"loss": list(1.0 / np.sqrt(epochs)), "val_loss": list(1.1 / np.sqrt(epochs))},
    }
    metrics = {
        "p@1": 0.71,
        "p@3": 0.55,
        "p@5": 0.43,
        "psp@1": 0.38,
        "psp@3": 0.33,
        "psp@5": 0.31,
        "coverage@1": 0.21,
        "coverage@3": 0.42,
        "coverage@5": 0.58,
        "ndcg@3": 0.6,
        "n_train": 48,
    }
    with session_scope(sessions) as session:
        model = repo.create_model(session, tenant_id, dataset_id, name="dishes-2l")
        hierarchy = LabelHierarchy.from_weights([H1, H2], vocab).to_json()
        assert repo.transition_model(
            session,
            model.id,
            [ModelState.PENDING],
            ModelState.READY,
            artifact_key=f"tenants/{tenant_id}/models/{model.id}/model.zip",
            hierarchy=hierarchy,
            history=history,
            metrics=metrics,
        )
        return model.id


def _pictures(
    image: np.ndarray, label_masks: list[np.ndarray], seed: int
) -> tuple[dict[str, bytes], list[dict[str, Any]]]:
    """Per explained label, a heatmap peaked on its pixels rendered as the service does
    (``heatmap.png``, ``heatmap_2.png``), the first label's top-superpixel mask, and the
    ``overlay`` summary of each (artifact name, colour scale, top region)."""
    rng = np.random.default_rng(seed)
    segments = slic(image, n_segments=25, start_label=0)
    pictures: dict[str, bytes] = {}
    overlays = []
    for position, label_mask in enumerate(label_masks):
        heatmap = label_mask.astype(np.float32) + 0.15 * rng.standard_normal(label_mask.shape)
        means = np.bincount(segments.ravel(), heatmap.ravel()) / np.bincount(segments.ravel())
        top = [int(s) for s in np.argsort(-means)[:3]]
        overlay = render_overlay(image, heatmap, segments=segments, top_segments=top)
        name = heatmap_name(position)
        pictures[name] = overlay.png()
        overlays.append(
            {"artifact": name, "scale": overlay.scale.to_json(), "top": np.isin(segments, top)}
        )
        if position == 0:
            pictures["mask.png"] = mask_png(image, segments, top)
    return pictures, overlays


def _result(
    truth: list[str], visible: set[str], vocab: tuple[str, ...], seed: int
) -> dict[str, Any]:
    """Four top labels (three true, one wrong); the first two are explained, a visible
    one first."""
    rng = np.random.default_rng(seed)
    wrong = [label for label in vocab if label not in truth]
    truth = sorted(truth, key=lambda label: label not in visible)
    labels = [*truth[:2], wrong[seed % len(wrong)], *truth[2:3]]
    scores = sorted(rng.uniform(0.2, 0.95, len(labels)), reverse=True)
    explanations = []
    for explained in labels[:2]:  # top_k with k=2: the two best labels, each with a map
        target = {
            "column": 4 + vocab.index(explained),
            "kind": "label",
            "index": vocab.index(explained),
            "name": explained,
            "hierarchy_path": None,
        }
        explanations.append(
            {
                "image_index": 0,
                "target": target,
                "method": "lime",
                "score": 0.81,
                "top_segments": [1, 4, 7],
                "provenance": {"seed": seed},
                "metrics": {"stability@5": 0.8},
            }
        )
    return {
        "top_labels": [
            {"label": lb, "score": round(float(s), 6)} for lb, s in zip(labels, scores, strict=True)
        ],
        "latent": [round(float(v), 6) for v in rng.random(4)],
        "explanations": explanations,
    }


def register_dishes(client: httpx.Client, user: ApiUser, ds: Any, tmp_path: Path) -> str:
    """Upload `ds` (images and manifest) and register it through the API; its id."""
    manifest = write_dataset(ds, tmp_path / "dishes")
    images = {
        f"dishes/images/{path.name}": path.read_bytes()
        for path in sorted((manifest.parent / "images").iterdir())
    }
    api_client = cast(TestClient, client)  # the helpers only use httpx.Client's methods
    upload_files(api_client, user, images, "image/png")
    upload_files(api_client, user, {"dishes/manifest.csv": manifest.read_bytes()}, "text/csv")
    body = {
        "name": "dishes",
        "images_prefix": "dishes/images",
        "manifest_key": "dishes/manifest.csv",
    }
    answer = client.post("/v1/datasets", json=body, headers=user.headers)
    assert answer.status_code == 201, answer.text
    return str(answer.json()["id"])


def make_gallery(
    client: httpx.Client,
    sessions: SessionFactory,
    store: ObjectStore,
    tmp_path: Path,
    image_size: int | None = None,
) -> Gallery:
    """A finished explanation job on the generated "tiny" dishes, with two failed items."""
    user = make_user(sessions)
    ds = generate_dishes("tiny", **({"image_size": image_size} if image_size else {}))
    dataset_id = register_dishes(client, user, ds, tmp_path)
    vocab = ds.label_space.vocabulary
    model_id = make_ready_model(sessions, user.tenant_id, dataset_id, vocab)
    with session_scope(sessions) as session:
        row = repo.get_dataset(session, user.tenant_id, dataset_id)
        assert row is not None and row.image_prefix is not None
        prefix = row.image_prefix
    keys = list(ds.image_keys[:N_ITEMS])
    params = {
        "image_prefix": prefix,
        "method": "lime",
        "target": {"kind": "top_k", "k": 2},
        "k": 4,
        "dataset_id": dataset_id,
    }
    job = jobs.create_job(
        sessions,
        tenant_id=user.tenant_id,
        kind="explain",
        item_keys=keys,
        params=params,
        model_id=model_id,
        chunk_size=8,
    ).job
    predicted, truth = finish_items(sessions, store, user.tenant_id, job.id, ds, keys)
    return Gallery(user, job.id, model_id, dataset_id, keys, predicted, truth, vocab)


def finish_items(
    sessions: SessionFactory,
    store: ObjectStore,
    tenant_id: str,
    job_id: str,
    ds: Any,
    keys: list[str],
) -> tuple[dict[str, list[str]], dict[str, set[str]]]:
    """Record every item as a worker would (artifacts first); FAILED ones fail."""
    vocab = ds.label_space.vocabulary
    predicted, truth = {}, {}
    for i, key in enumerate(keys):
        truth[key] = set(ds.label_space.labels_of(i))
        if key in FAILED:
            jobs.record_item_failure(
                sessions,
                job_id,
                key,
                code="image.corrupt",
                message="the PNG data stream is truncated",
            )
            continue
        result = _result(sorted(truth[key]), set(ds.masks[i]), vocab, i)
        predicted[key] = [entry["label"] for entry in result["top_labels"]]
        blank = np.zeros(ds.images[i].shape[:2], bool)
        explained = [ds.masks[i].get(e["target"]["name"], blank) for e in result["explanations"]]
        pictures, overlays = _pictures(ds.images[i], explained, i)
        for summary, overlay in zip(result["explanations"], overlays, strict=True):
            summary["overlay"] = {k: v for k, v in overlay.items() if k != "top"}
        TOP_REGIONS[key] = overlays[0]["top"]
        artifacts = {}
        for name, data in pictures.items():
            artifacts[name] = item_artifact_key(tenant_id, job_id, key, name)
            store.put_bytes(artifacts[name], data, "image/png")
        jobs.record_item_success(sessions, job_id, key, result=result, artifacts=artifacts)
    return predicted, truth


@pytest.fixture(scope="module")
def web_settings(make_api_settings: Any) -> Settings:
    return make_api_settings()


@pytest.fixture(scope="module")
def web_client(web_settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(web_settings)) as client:
        yield client


@pytest.fixture(scope="module")
def gallery(
    web_client: TestClient,
    web_settings: Settings,
    session_factory: SessionFactory,
    tmp_path_factory: pytest.TempPathFactory,
) -> Gallery:
    store = make_object_store(web_settings)
    return make_gallery(web_client, session_factory, store, tmp_path_factory.mktemp("dishes"))


def sign_in(client: TestClient, key: str) -> None:
    client.cookies.clear()
    answer = client.post(
        "/ui/login", data={"api_key": key, "next": "/ui/jobs"}, follow_redirects=False
    )
    assert answer.status_code == 303, answer.text
    assert answer.headers["location"] == "/ui/jobs"


def cards(html: str) -> list[str]:
    return re.findall(r'<article class="card card-\w+" data-key="([^"]+)"', html)


def test_pages_need_sign_in_and_the_cookie_is_strict(
    web_client: TestClient, gallery: Gallery
) -> None:
    web_client.cookies.clear()
    answer = web_client.get(f"/ui/jobs/{gallery.job_id}?state=failed", follow_redirects=False)
    assert answer.status_code == 303
    assert answer.headers["location"].startswith("/ui/login?next=%2Fui%2Fjobs%2Fjob_")
    assert web_client.get("/ui/jobs/x/progress").status_code == 401
    bad = web_client.post("/ui/login", data={"api_key": "xmlx_nope"}, follow_redirects=False)
    assert bad.status_code == 401 and "not valid" in bad.text
    good = web_client.post(
        "/ui/login",
        data={"api_key": gallery.user.key, "next": "https://evil.example/"},
        follow_redirects=False,
    )
    assert good.status_code == 303 and good.headers["location"] == "/ui/jobs"  # no open redirect
    cookie = good.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/ui" in cookie
    assert gallery.user.key not in cookie  # a signed session, not the key itself
    assert web_client.get("/ui/jobs").status_code == 200
    web_client.post("/ui/logout")
    assert web_client.get("/ui/jobs", follow_redirects=False).status_code == 303


def test_forged_or_revoked_sessions_are_refused(
    web_client: TestClient, gallery: Gallery, session_factory: SessionFactory
) -> None:
    user = make_user(session_factory)
    sign_in(web_client, user.key)
    token = web_client.cookies["xmlx_session"]
    key_id, expires, signature = token.split(".")
    web_client.cookies.set("xmlx_session", f"{key_id}.{int(expires) + 999}.{signature}", path="/ui")
    assert web_client.get("/ui/jobs", follow_redirects=False).status_code == 303
    web_client.cookies.set("xmlx_session", token, path="/ui")
    assert web_client.get("/ui/jobs", follow_redirects=False).status_code == 200
    with session_scope(session_factory) as session:
        assert repo.revoke_api_key(session, user.tenant_id, key_id)
    assert web_client.get("/ui/jobs", follow_redirects=False).status_code == 303


def test_jobs_list_and_progress(web_client: TestClient, gallery: Gallery) -> None:
    sign_in(web_client, gallery.user.key)
    html = web_client.get("/ui/jobs").text
    assert f'href="/ui/jobs/{gallery.job_id}"' in html and "partially_succeeded" in html
    assert f"{N_ITEMS} / {N_ITEMS}" in html
    assert web_client.get("/ui/jobs?state=running").text.count("data-job=") == 0
    progress = web_client.get(f"/ui/jobs/{gallery.job_id}/progress").json()
    assert progress == {
        "state": "partially_succeeded",
        "total": N_ITEMS,
        "done": N_ITEMS - len(FAILED),
        "failed": len(FAILED),
        "final": True,
    }
    assert web_client.get("/ui/jobs?state=bogus").status_code == 400


def test_job_page_cards_paths_matches_and_pagination(
    web_client: TestClient, gallery: Gallery
) -> None:
    sign_in(web_client, gallery.user.key)
    first = web_client.get(f"/ui/jobs/{gallery.job_id}?limit=12")
    assert first.status_code == 200 and first.headers["cache-control"] == "private, no-store"
    html = first.text
    assert cards(html) == gallery.keys[:12]
    key = gallery.keys[0]
    # image, heatmap and mask of the 10 successes, and both labels' overlays in the
    # label switch; the image of the 2 failures
    assert html.count("/v1/files/") == 5 * 10 + 2
    second = gallery.predicted[key][1]
    assert f'data-label="{second}"' in html and "heatmap_2.png" in html
    assert "blue -" in html and "red " in html  # the colour scale's values
    for label in gallery.predicted[key]:
        assert label in html
    true_first = gallery.predicted[key][0]
    assert f"✓ {true_first}" in html  # predicted and true
    assert "most active latent unit" in html
    assert re.search(r"latent \d &lt;- units [\d, ]+ &lt;- \w", html)
    assert "<code>image.corrupt</code>" in html  # dish_00004 is on the first page
    assert html.count('<span data-metric="stability@5">stability@5 0.80</span>') == 10
    assert '<dt>Mean stability@5</dt><dd data-metric="stability@5">0.80</dd>' in html
    more = re.search(r'href="([^"]+cursor=[^"]+)"', html)
    assert more is not None
    second = web_client.get(more.group(1).replace("&amp;", "&")).text
    assert cards(second) == gallery.keys[12:24]


def test_filters_by_state_and_label(web_client: TestClient, gallery: Gallery) -> None:
    sign_in(web_client, gallery.user.key)
    failed = web_client.get(f"/ui/jobs/{gallery.job_id}?state=failed").text
    assert cards(failed) == list(FAILED)
    assert failed.count("<code>image.corrupt</code>") == len(FAILED) + 1  # + the summary
    assert "the PNG data stream is truncated" in failed
    label = gallery.predicted[gallery.keys[0]][0]
    expected = [k for k in gallery.keys if label in gallery.predicted.get(k, [])]
    assert 0 < len(expected) < N_ITEMS - len(FAILED)
    shown = cards(web_client.get(f"/ui/jobs/{gallery.job_id}", params={"label": label}).text)
    assert shown == expected
    assert cards(web_client.get(f"/ui/jobs/{gallery.job_id}?label=no%25such_").text) == []
    both = web_client.get(f"/ui/jobs/{gallery.job_id}", params={"label": label, "state": "failed"})
    assert cards(both.text) == []


def test_model_page_tree_curves_and_metrics(web_client: TestClient, gallery: Gallery) -> None:
    sign_in(web_client, gallery.user.key)
    html = web_client.get(f"/ui/models/{gallery.model_id}").text
    assert html.count('<details class="unit') >= 4 + 8  # 4 top units, their layer-1 units
    assert html.count("<polyline") == 4  # loss and val_loss of both stages
    assert "<th>PSP@k</th>" in html and "<td>0.380</td>" in html and "n_train 48" in html
    assert "H2, unit 0" in html and "H1, unit" in html
    assert f'href="/ui/models/{gallery.model_id}"' in web_client.get("/ui/models").text


def test_other_tenants_see_404_pages(
    web_client: TestClient, gallery: Gallery, session_factory: SessionFactory
) -> None:
    sign_in(web_client, make_user(session_factory).key)
    for path in (f"/ui/jobs/{gallery.job_id}", f"/ui/models/{gallery.model_id}"):
        answer = web_client.get(path)
        assert answer.status_code == 404 and "Not found" in answer.text
    assert web_client.get(f"/ui/jobs/{gallery.job_id}/progress").status_code == 404
    assert gallery.job_id not in web_client.get("/ui/jobs").text


def test_static_files_are_a_fixed_list(web_client: TestClient) -> None:
    assert web_client.get("/ui/static/app.css").headers["content-type"].startswith("text/css")
    assert "data-poll" in web_client.get("/ui/static/app.js").text
    assert web_client.get("/ui/static/..%2F__init__.py").status_code == 404


def test_hierarchy_path_from_stored_json_matches_xmlcore() -> None:
    rng = np.random.default_rng(3)
    vocab = [f"label {i}" for i in range(12)]
    H = [rng.random((12, 6)) * (rng.random((12, 6)) < 0.5), rng.random((6, 3))]
    full = LabelHierarchy.from_weights(H, vocab, top_n=12)  # nothing truncated
    stored = full.to_json()
    for unit in range(3):
        expected = full.path(unit)
        rebuilt = hierarchy_path(hierarchy_units(stored), unit, fanout=3, top_n=12)
        assert rebuilt is not None
        assert path_text(rebuilt) == expected.to_text().splitlines()[0]
        names = [(label["name"], label["weight"]) for label in rebuilt["labels"]]
        assert [n for n, _ in names] == [n for n, _ in expected.labels]
        assert [w for _, w in names] == pytest.approx([w for _, w in expected.labels])
    assert hierarchy_path(hierarchy_units(stored), 7) is None


def test_label_scan_window_pages_on_to_every_match(
    gallery: Gallery, session_factory: SessionFactory
) -> None:
    label = gallery.predicted[gallery.keys[1]][2]  # a wrong guess: rarer than the true ones
    expected = [k for k in gallery.keys if label in gallery.predicted.get(k, [])]
    found, cursor, calls = [], None, 0
    while True:
        with session_scope(session_factory) as session:
            page = items_with_label(
                session,
                gallery.user.tenant_id,
                gallery.job_id,
                label,
                limit=2,
                cursor=cursor,
                window=5,
            )
            assert page is not None
            found += [item.item_key for item in page.rows]
        calls += 1
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert found == expected
    assert calls >= (N_ITEMS - len(FAILED)) // 5  # never more than 5 items looked at per call
    with session_scope(session_factory) as session:
        assert (
            items_with_label(session, make_user(session_factory).tenant_id, gallery.job_id, label)
            is None
        )


def test_pages_of_a_model_in_training_and_its_training_job(
    web_client: TestClient, gallery: Gallery, session_factory: SessionFactory
) -> None:
    with session_scope(session_factory) as session:
        model = repo.create_model(session, gallery.user.tenant_id, gallery.dataset_id, name="new")
    params = {"dataset": {"image_prefix": "x/"}, "training": {}}
    job = jobs.create_job(
        session_factory,
        tenant_id=gallery.user.tenant_id,
        kind="train",
        item_keys=["model"],
        params=params,
        model_id=model.id,
    ).job
    sign_in(web_client, gallery.user.key)
    html = web_client.get(f"/ui/models/{model.id}").text
    assert "No metrics yet" in html and "No hierarchy yet (the model is pending)" in html
    assert f'href="/ui/jobs/{job.id}"' in html
    page = web_client.get(f"/ui/jobs/{job.id}").text
    assert cards(page) == ["model"] and "<img" not in page
    assert f'data-poll="{job.id}"' in page  # not final: the page polls its progress
