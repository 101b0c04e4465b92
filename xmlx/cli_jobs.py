"""``xmlx`` commands that use a running service through its HTTP API.

The API address and key come from ``--api-url`` / ``--api-key`` or the client-side
variables ``XMLX_API_URL`` / ``XMLX_API_KEY`` (not service settings: they belong to
whoever runs the command).
"""

from __future__ import annotations

import json
import time
import webbrowser
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from xmlx.client import ApiError, Client, JobStatus
from xmlx.client_display import describe_faithfulness

console = Console()
ApiUrl = Annotated[str, typer.Option(envvar="XMLX_API_URL", help="the API's base URL")]
ApiKey = Annotated[str, typer.Option(envvar="XMLX_API_KEY", help="an API key (xmlx keys create)")]
DEFAULT_URL = "http://127.0.0.1:8000"


def register(app: typer.Typer) -> None:
    app.command()(submit)
    app.command()(status)
    app.command()(results)
    app.command()(retrain)


def submit(
    model: Annotated[str, typer.Argument(help="model id")],
    images: Annotated[list[str] | None, typer.Argument(help="image keys")] = None,
    prefix: Annotated[
        str | None, typer.Option(help="explain every image under this prefix")
    ] = None,
    manifest: Annotated[
        str | None,
        typer.Option(help="an uploaded key list (one key a line), for batches over 10,000"),
    ] = None,
    dataset: Annotated[str | None, typer.Option(help="keys are relative to this dataset")] = None,
    method: Annotated[
        str, typer.Option(help="lime, kernel_shap, occlusion, integrated_gradients, ...")
    ] = "lime",
    evaluate: Annotated[
        list[str] | None,
        typer.Option(help="score every result: deletion and/or insertion (repeat the option)"),
    ] = None,
    target: Annotated[
        str, typer.Option(help='JSON, e.g. {"kind": "label", "name": "garlic"}')
    ] = '{"kind": "top_k", "k": 1}',
    params: Annotated[str, typer.Option(help='JSON, e.g. {"num_samples": 500}')] = "{}",
    callback_url: Annotated[
        str | None, typer.Option(help="POSTed once, signed, when the job ends (webhook)")
    ] = None,
    wait: Annotated[bool, typer.Option(help="wait with a progress bar")] = True,
    api_url: ApiUrl = DEFAULT_URL,
    api_key: ApiKey = "",
) -> None:
    """Submit an explanation batch."""
    with _client(api_url, api_key) as client:
        job = _call(lambda: client.explain(
            model, images or None, prefix=prefix, manifest_key=manifest, dataset_id=dataset,
            method=method, evaluate=evaluate, callback_url=callback_url,
            target=json.loads(target), params=json.loads(params),
        ))  # fmt: skip
        console.print(f"job {job.id}: {job.state}, {job.total} items")
        if wait:
            _print_status(client.wait(job.id, progress=True))


def status(
    job: Annotated[str, typer.Argument(help="job id")],
    watch: Annotated[bool, typer.Option(help="refresh until the job finishes")] = False,
    api_url: ApiUrl = DEFAULT_URL,
    api_key: ApiKey = "",
) -> None:
    """Show a job's state and progress."""
    with _client(api_url, api_key) as client:
        if watch:
            _print_status(client.wait(job, progress=True))
        else:
            _print_status(_call(lambda: client.job(job)))


def results(
    job: Annotated[str, typer.Argument(help="job id")],
    state: Annotated[str | None, typer.Option(help="only items in this state")] = None,
    limit: Annotated[int, typer.Option(help="rows to print")] = 20,
    jsonl: Annotated[bool, typer.Option(help="print every item as JSON lines")] = False,
    open_: Annotated[bool, typer.Option("--open", help="open the job page in a browser")] = False,
    export: Annotated[
        Path | None,
        typer.Option(help="write every result to this file (.jsonl, .csv or .parquet)"),
    ] = None,
    api_url: ApiUrl = DEFAULT_URL,
    api_key: ApiKey = "",
) -> None:
    """Print a job's per-item results (top labels, hierarchy path, errors), or export them."""
    if open_:
        webbrowser.open(f"{api_url.rstrip('/')}/ui/jobs/{job}")
    with _client(api_url, api_key) as client:
        if export is not None:
            written = _call(lambda: client.export_results(job, export, state=state))
            console.print(f"{written} bytes written to {export}")
            return
        table = Table("item", "state", "top labels", "hierarchy / error")
        for count, item in enumerate(client.iter_results(job, state=state)):
            if jsonl:
                typer.echo(json.dumps(item.__dict__, default=str))
                continue
            if count >= limit:
                break
            labels = ", ".join(f"{label} {score:.2f}" for label, score in item.top_labels[:3])
            detail = (item.result or {}).get("top_latent", {}).get("text", "").split("\n")[0]
            table.add_row(
                item.key, item.state, labels, detail or f"{item.error_code}: {item.error_message}"
            )
        if not jsonl:
            console.print(table)


def retrain(
    model: Annotated[str, typer.Argument(help="id of a FAILED model")],
    callback_url: Annotated[
        str | None,
        typer.Option(help="where the new job reports its end (default: the failed one's)"),
    ] = None,
    wait: Annotated[bool, typer.Option(help="wait with a progress bar")] = True,
    api_url: ApiUrl = DEFAULT_URL,
    api_key: ApiKey = "",
) -> None:
    """Train a failed model again under its id (it resumes from its checkpoints)."""
    with _client(api_url, api_key) as client:
        created = _call(lambda: client.retrain(model, callback_url=callback_url))
        job_id = created["job"]["id"]
        console.print(f"job {job_id}: {created['job']['state']}, model {model} retraining")
        if wait:
            _print_status(client.wait(job_id, progress=True))


def _print_status(job: JobStatus) -> None:
    raw: dict[str, Any] = job.raw
    console.print(f"job {job.id} ({job.kind}): [bold]{job.state}[/bold] "
                  f"{job.done} done, {job.failed} failed of {job.total}")  # fmt: skip
    if job.training:
        console.print(f"training: {job.training_line()}", highlight=False)
    if text := describe_faithfulness(job.metrics):
        console.print(f"faithfulness (means over the items): {text}", highlight=False)
    errors = raw.get("errors") or raw.get("error_summary")
    if errors:
        console.print(f"errors: {errors}")


def _client(api_url: str, api_key: str) -> Client:
    if not api_key:
        console.print("an API key is needed: --api-key or XMLX_API_KEY (xmlx keys create)")
        raise typer.Exit(2)
    return Client(api_url, api_key)


def _call(fn: Any) -> Any:
    try:
        return fn()
    except ApiError as exc:
        console.print(f"[red]{exc.status} {exc.code}[/red]: {exc.detail}")
        raise typer.Exit(1) from exc


def wait_for_interrupt() -> None:
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        return


def open_path(path: Path) -> None:
    webbrowser.open(path.resolve().as_uri())
