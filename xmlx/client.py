"""A small Python client for the xmlx HTTP API.

``Client(base_url, api_key)`` uploads images straight to storage through presigned
URLs, registers datasets, trains models, submits explanation and prediction batches,
waits with a progress bar, pages through results, and deletes what it no longer needs
(``delete_job``, ``delete_model``, ``delete_dataset``, ``delete_uploads``). Errors from
the API come back as ``ApiError`` carrying the problem document's stable ``code``.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from xmlx.client_display import ProgressDisplay, describe_training

FINAL_STATES = frozenset({"succeeded", "partially_succeeded", "failed", "cancelled"})
UPLOAD_BATCH = 500


class ApiError(Exception):
    """An API answer outside 2xx: ``status``, stable ``code`` and the problem ``detail``."""

    def __init__(self, status: int, code: str, detail: str, body: Any = None) -> None:
        super().__init__(f"{status} {code}: {detail}")
        self.status = status
        self.code = code
        self.detail = detail
        self.body = body


@dataclass(frozen=True)
class JobStatus:
    id: str
    kind: str
    state: str
    total: int
    done: int
    failed: int
    raw: dict[str, Any]
    # A training job's live progress (stage, epoch, epochs, loss, val_loss, eta_seconds,
    # history per stage), as the API's `training` field; None for other jobs.
    training: dict[str, Any] | None = None
    # Means of the metrics the job's results carry (the API's `metrics`): e.g.
    # `stability@5`, and `deletion_auc` / `insertion_auc` when `evaluate` was asked for.
    metrics: dict[str, float] | None = None

    @property
    def finished(self) -> bool:
        return self.state in FINAL_STATES

    def training_line(self) -> str:
        """The training progress in one line, e.g. `cnn epoch 7/30 loss 0.12 val 0.15
        ETA 42 s`; empty when the job reports none."""
        return describe_training(self.training)

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> JobStatus:
        progress = body.get("progress", {})
        return cls(
            id=body["id"],
            kind=body.get("kind", ""),
            state=body["state"],
            total=int(progress.get("total", 0)),
            done=int(progress.get("done", 0)),
            failed=int(progress.get("failed", 0)),
            raw=dict(body),
            training=body.get("training"),
            metrics=body.get("metrics"),
        )


@dataclass(frozen=True)
class ItemResult:
    key: str
    state: str
    result: dict[str, Any] | None
    artifacts: dict[str, str]
    error_code: str | None
    error_message: str | None

    @property
    def top_labels(self) -> list[tuple[str, float]]:
        labels = (self.result or {}).get("top_labels", [])
        return [(entry["label"], float(entry["score"])) for entry in labels]

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> ItemResult:
        error = body.get("error") or {}
        return cls(
            key=body["key"],
            state=body["state"],
            result=body.get("result"),
            artifacts=dict(body.get("artifacts") or {}),
            error_code=error.get("code"),
            error_message=error.get("message"),
        )


EXPORT_FORMATS = ("jsonl", "csv", "parquet")


class Client:
    def __init__(self, base_url: str, api_key: str, *, timeout: float = 30.0) -> None:
        self.http = httpx.Client(
            base_url=base_url.rstrip("/"),
            headers={"Authorization": f"Bearer {api_key}"},
            timeout=timeout,
        )

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.http.request(method, path, **kwargs)
        if response.status_code >= 400:
            raise _api_error(response)
        return response.json() if response.content else None

    def upload(self, files: Mapping[str, bytes], content_type: str = "image/png") -> None:
        """Send ``{key: bytes}`` to the tenant's upload area through presigned PUT URLs."""
        keys = list(files)
        with ThreadPoolExecutor(8) as pool:
            for start in range(0, len(keys), UPLOAD_BATCH):
                batch = keys[start : start + UPLOAD_BATCH]
                body = {"keys": batch, "content_type": content_type}
                grants = self.request("POST", "/v1/uploads", json=body)["uploads"]
                list(pool.map(lambda g: self._put(g, files[g["key"]], content_type), grants))

    def _put(self, grant: Mapping[str, Any], data: bytes, content_type: str) -> None:
        headers = {"Content-Type": content_type, **(grant.get("headers") or {})}
        response = httpx.put(grant["url"], content=data, headers=headers, timeout=60.0)
        if response.status_code >= 300:
            raise ApiError(response.status_code, "upload.failed", response.text[:500])

    def create_dataset(self, name: str, images_prefix: str, manifest_key: str) -> dict[str, Any]:
        body = {"name": name, "images_prefix": images_prefix, "manifest_key": manifest_key}
        return dict(self.request("POST", "/v1/datasets", json=body))

    def train(
        self, dataset_id: str, name: str = "", *, callback_url: str | None = None, **training: Any
    ) -> dict[str, Any]:
        """Start a training job; returns ``{"job": ..., "model": ...}``. `callback_url`:
        POSTed once, signed, when the job ends (docs/DEPLOY.md, "Webhooks")."""
        body: dict[str, Any] = {"dataset_id": dataset_id, "name": name, "training": training}
        if callback_url is not None:
            body["callback_url"] = callback_url
        return dict(self.request("POST", "/v1/models", json=body))

    def explain(
        self,
        model_id: str,
        images: Iterable[str] | None = None,
        *,
        prefix: str | None = None,
        manifest_key: str | None = None,
        dataset_id: str | None = None,
        method: str = "lime",
        target: Mapping[str, Any] | None = None,
        params: Mapping[str, Any] | None = None,
        k: int = 5,
        idempotency_key: str | None = None,
        evaluate: Sequence[str] | None = None,
        callback_url: str | None = None,
    ) -> JobStatus:
        """Submit an explanation batch. `method`: lime, kernel_shap, occlusion or a
        gradient method (GET /v1/capabilities lists them with their params);
        `evaluate`: faithfulness curves to score every result with ("deletion",
        "insertion"); `callback_url`: POSTed once, signed, when the job ends instead of
        (or besides) polling with `wait`."""
        body: dict[str, Any] = {"model_id": model_id, "method": method, "k": k,
                                "params": dict(params or {})}  # fmt: skip
        if callback_url is not None:
            body["callback_url"] = callback_url
        if evaluate:
            body["evaluate"] = list(evaluate)
        if images is not None:
            body["images"] = list(images)
        if prefix is not None:
            body["prefix"] = prefix
        if manifest_key is not None:
            body["manifest_key"] = manifest_key
        if dataset_id is not None:
            body["dataset_id"] = dataset_id
        if target is not None:
            body["target"] = dict(target)
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        return JobStatus.from_json(
            self.request("POST", "/v1/explanations", json=body, headers=headers)
        )

    def webhooks(self, job_id: str) -> list[dict[str, Any]]:
        """The job's webhook deliveries: state, attempts, last status and error code."""
        return list(self.request("GET", f"/v1/jobs/{job_id}/webhooks")["items"])

    def job(self, job_id: str) -> JobStatus:
        return JobStatus.from_json(self.request("GET", f"/v1/jobs/{job_id}"))

    def retrain(self, model_id: str, *, callback_url: str | None = None) -> dict[str, Any]:
        """Train a failed model again under its id, resuming from its checkpoints;
        returns ``{"job": ..., "model": ...}``. Without `callback_url` the new job reports
        where the failed training did."""
        body = {"callback_url": callback_url} if callback_url is not None else None
        return dict(self.request("POST", f"/v1/models/{model_id}/retrain", json=body))

    def model(self, model_id: str) -> dict[str, Any]:
        return dict(self.request("GET", f"/v1/models/{model_id}"))

    def hierarchy(self, model_id: str) -> dict[str, Any]:
        return dict(self.request("GET", f"/v1/models/{model_id}/hierarchy"))

    def cancel(self, job_id: str) -> JobStatus:
        return JobStatus.from_json(self.request("POST", f"/v1/jobs/{job_id}/cancel"))

    def delete_job(self, job_id: str) -> dict[str, Any]:
        """Delete a job, its results and artifacts (a running one is cancelled first);
        returns the purge record (`purge` shows its progress). A model or dataset still
        in use answers `model.in_use` / `dataset.in_use` (409)."""
        return dict(self.request("DELETE", f"/v1/jobs/{job_id}"))

    def delete_model(self, model_id: str) -> dict[str, Any]:
        return dict(self.request("DELETE", f"/v1/models/{model_id}"))

    def delete_dataset(self, dataset_id: str) -> dict[str, Any]:
        return dict(self.request("DELETE", f"/v1/datasets/{dataset_id}"))

    def delete_uploads(self, prefix: str) -> dict[str, Any]:
        return dict(self.request("DELETE", "/v1/uploads", params={"prefix": prefix}))

    def purge(self, purge_id: str) -> dict[str, Any]:
        return dict(self.request("GET", f"/v1/purges/{purge_id}"))

    def wait(
        self, job_id: str, *, progress: bool = False, timeout: float = 3600.0, poll: float = 1.0
    ) -> JobStatus:
        """Poll until the job reaches a final state; a rich progress bar with ``progress``."""
        deadline = time.monotonic() + timeout
        bar = ProgressDisplay(job_id) if progress else None
        try:
            while True:
                status = self.job(job_id)
                if bar is not None:
                    bar.update(status)
                if status.finished:
                    return status
                if time.monotonic() > deadline:
                    raise TimeoutError(f"job {job_id} still {status.state} after {timeout:.0f} s")
                time.sleep(poll)
        finally:
            if bar is not None:
                bar.close()

    def iter_results(
        self, job_id: str, *, state: str | None = None, page_size: int = 200
    ) -> Iterator[ItemResult]:
        params: dict[str, Any] = {"limit": page_size}
        if state is not None:
            params["state"] = state
        while True:
            page = self.request("GET", f"/v1/jobs/{job_id}/results", params=params)
            for item in page["items"]:
                yield ItemResult.from_json(item)
            if not page.get("next_cursor"):
                return
            params["cursor"] = page["next_cursor"]

    def export_results(
        self, job_id: str, dest: Path, *, fmt: str | None = None, state: str | None = None
    ) -> int:
        """Stream every result into the file ``dest`` as JSON Lines, CSV or Parquet (from
        ``fmt``, else the file's suffix); returns the bytes written. The download is
        never held in memory: a million-item job is written as it arrives."""
        fmt = fmt or dest.suffix.lstrip(".").lower()
        if fmt not in EXPORT_FORMATS:
            raise ValueError(f"format {fmt!r}: use one of {', '.join(EXPORT_FORMATS)}")
        params = {"format": fmt, **({"state": state} if state else {})}
        written = 0
        with self.http.stream("GET", f"/v1/jobs/{job_id}/results", params=params) as answer:
            if answer.status_code >= 400:
                answer.read()
                raise _api_error(answer)
            with dest.open("wb") as out:
                for block in answer.iter_bytes():
                    written += out.write(block)
        return written

    def download_artifacts(
        self, job_id: str, dest: Path, *, names: Iterable[str] | None = None
    ) -> list[Path]:
        """Fetch the succeeded items' artifacts (through their presigned URLs) into
        ``dest`` as ``<image stem>_<name>``. ``names`` picks some (e.g. ``weights.npy``);
        by default every picture: one heatmap per explained label (``heatmap.png``,
        ``heatmap_2.png``, ...) and the top-superpixel mask."""
        wanted = set(names) if names is not None else None
        written = []
        dest.mkdir(parents=True, exist_ok=True)
        for item in self.iter_results(job_id, state="succeeded"):
            for name, url in item.artifacts.items():
                if not (name in wanted if wanted is not None else name.endswith(".png")):
                    continue
                response = httpx.get(url, timeout=60.0)
                response.raise_for_status()
                path = dest / f"{Path(item.key).stem}_{name}"
                path.write_bytes(response.content)
                written.append(path)
        return written


def _api_error(response: httpx.Response) -> ApiError:
    try:
        body = response.json()
    except ValueError:
        return ApiError(response.status_code, "http.error", response.text[:500])
    return ApiError(response.status_code, str(body.get("code", "http.error")),
                    str(body.get("detail", body.get("title", ""))), body)  # fmt: skip
