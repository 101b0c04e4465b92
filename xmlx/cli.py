"""The ``xmlx`` command: run the service's processes, manage it, and use it.

Process commands (``api``, ``worker``, ``beat``) start their programs by module path,
so this kernel never imports the API or the workers (ARCHITECTURE.md's dependency
direction); TensorFlow is only imported by the commands that run models.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console

from xmlx import cli_jobs, cli_tenants, cli_webhooks, cli_weights
from xmlx.settings import get_settings

app = typer.Typer(help="xmlx: interpretable extreme multi-label learning on images.")
db_app = typer.Typer(help="Database schema (Alembic migrations).")
keys_app = typer.Typer(help="API keys.")
app.add_typer(db_app, name="db")
app.add_typer(keys_app, name="keys")
cli_jobs.register(app)
cli_tenants.register(app)
cli_weights.register(app)
cli_webhooks.register(app)
console = Console()


@db_app.command("upgrade")
def db_upgrade(revision: str = "head") -> None:
    """Migrate the database to ``revision`` (default: the newest)."""
    from xmlx.migrate import upgrade

    settings = get_settings()
    _ensure_sqlite_dir(settings.database_url)
    upgrade(settings.database_url, revision)
    console.print(f"database at {revision}: {_redact(settings.database_url)}")


@db_app.command("downgrade")
def db_downgrade(revision: str = "base") -> None:
    """Undo migrations down to ``revision`` (default: an empty database)."""
    from xmlx.migrate import downgrade

    downgrade(get_settings().database_url, revision)
    console.print(f"database at {revision}")


@keys_app.command("create")
def keys_create(
    tenant: Annotated[str, typer.Option(help="tenant name; created when new")],
    name: Annotated[str, typer.Option(help="a label for this key")] = "",
    scope: Annotated[
        list[str] | None,
        typer.Option(help="read, submit or admin; repeat for several (default: read, submit)"),
    ] = None,
) -> None:
    """Create an API key for ``tenant`` and print it (it is shown only once).

    ``--scope admin`` makes the operator key that manages tenants and keys over the API
    (``/v1/admin``)."""
    from xmlx import repository as repo
    from xmlx.db import engine_from_settings, make_session_factory, session_scope
    from xmlx.migrate import ensure_migrated
    from xmlx.security import DEFAULT_SCOPES, format_scopes

    scopes = scope or list(DEFAULT_SCOPES)
    try:
        format_scopes(scopes)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--scope") from exc
    settings = get_settings()
    engine = engine_from_settings(settings)
    ensure_migrated(engine)
    with session_scope(make_session_factory(engine)) as session:
        row = repo.get_tenant_by_name(session, tenant) or repo.create_tenant(session, tenant)
        key, plaintext = repo.create_api_key(
            session, row.id, settings.api_key_pepper.get_secret_value(), name, scopes
        )
        tenant_id = row.id
    console.print(f"tenant {tenant} ({tenant_id}), key {key.id} ({key.scopes}):")
    typer.echo(plaintext)


@app.command()
def report(
    job: Annotated[str, typer.Argument(help="job id")],
    output: Annotated[Path, typer.Option("-o", "--output", help="HTML file to write")] = Path(
        "report.html"
    ),
    max_items: Annotated[int, typer.Option(help="cards at most")] = 500,
    state: Annotated[str | None, typer.Option(help="only items in this state")] = None,
) -> None:
    """Write a job's results as one self-contained HTML gallery (images inlined)."""
    from xmlx import repository as repo
    from xmlx.db import engine_from_settings, make_session_factory, session_scope
    from xmlx.report import write_report
    from xmlx.storage import make_object_store

    settings = get_settings()
    sessions = make_session_factory(engine_from_settings(settings))
    with session_scope(sessions) as session:
        row = repo.get_job_unscoped(session, job)
        tenant_id = row.tenant_id if row is not None else None
    if tenant_id is None:
        console.print(f"[red]no job {job}[/red]")
        raise typer.Exit(1)
    cards = write_report(
        sessions, make_object_store(settings), tenant_id, job, output,
        max_items=max_items, state=state,
    )  # fmt: skip
    console.print(f"{output}: {cards} images")


@app.command()
def api(
    host: str = "127.0.0.1",
    port: int = 8000,
    workers: Annotated[int, typer.Option(help="uvicorn worker processes")] = 1,
) -> None:
    """Serve the HTTP API (uvicorn)."""
    _exec(
        [sys.executable, "-m", "uvicorn", "api.app:app", "--host", host, "--port", str(port),
         "--workers", str(workers), "--no-access-log"]
    )  # fmt: skip


@app.command()
def worker(
    queues: Annotated[str, typer.Option(help="comma-separated queues")] = "gpu,train,default",
    concurrency: Annotated[int, typer.Option(help="pool processes (CPU worker only)")] = 1,
    name: Annotated[str, typer.Option(help="node name")] = "",
    gpus: Annotated[
        str | None,
        typer.Option(help="one worker process per GPU: all, a count N, or ids (0,1 / 3,)"),
    ] = None,
    metrics_port: Annotated[
        int | None,
        typer.Option(help="serve Prometheus metrics of every worker process on this port"),
    ] = None,
) -> None:
    """Run a Celery worker; with --gpus, one worker process per GPU, supervised.

    With --metrics-port, every pool process writes its metrics to one multiprocess
    directory and one exporter serves their sum (`xmlx.metrics_export`): the Celery
    parent's, or with --gpus the supervisor's."""
    from xmlx import metrics_export

    if metrics_port is not None:
        metrics_export.prepare_directory(os.environ)
    if gpus is None:
        if metrics_port is not None:
            os.environ[metrics_export.PORT_ENV] = str(metrics_port)
        _exec(_celery_worker_args(queues, concurrency, name))
    from xmlx.gpus import GpuSelectionError, gpu_worker_env, select_gpus, visible_gpus
    from xmlx.supervisor import ChildSpec, Supervisor

    try:
        devices = select_gpus(gpus, visible_gpus(os.environ))
    except GpuSelectionError as exc:
        console.print(f"[red]{exc.message}[/red]")
        raise typer.Exit(2) from exc
    prefix = name.split("@")[0] if name else "gpu"
    os.environ.pop(metrics_export.PORT_ENV, None)  # the supervisor exports, not each worker
    specs = [
        ChildSpec(
            f"{prefix}{i}",
            _celery_worker_args(queues, 1, f"{prefix}{i}@%h"),
            gpu_worker_env(os.environ, device),
        )
        for i, device in enumerate(devices)
    ]
    console.print(f"{len(specs)} GPU worker(s) on device(s) {', '.join(devices)}")
    if metrics_port is not None:
        metrics_export.start_exporter(metrics_port)
        console.print(f"worker metrics on port {metrics_port}")
    raise typer.Exit(Supervisor(specs, echo=console.print).run())


def _celery_worker_args(queues: str, concurrency: int, name: str) -> list[str]:
    # prefork with a framework-free parent: the pool child imports Keras and initialises
    # CUDA after the fork, and a replacement child is forked from the same clean parent.
    # Unlike the solo and threads pools, prefork enforces the hard time limit.
    args = [sys.executable, "-m", "celery", "-A", "workers.celery_app", "worker",
            "-Q", queues, "--pool", "prefork", "--concurrency", str(concurrency),
            "--loglevel", "INFO", "--without-gossip", "--without-mingle"]  # fmt: skip
    return [*args, "-n", name] if name else args


@app.command()
def beat() -> None:
    """Run the scheduler that triggers the reconciler (exactly one per deployment)."""
    schedule = get_settings().data_dir / "celerybeat-schedule"
    schedule.parent.mkdir(parents=True, exist_ok=True)
    _exec([sys.executable, "-m", "celery", "-A", "workers.celery_app", "beat",
           "--loglevel", "INFO", "-s", str(schedule)])  # fmt: skip


@app.command()
def up(
    root: Annotated[Path, typer.Option(help="data directory of the stack")] = Path(".xmlx/stack"),
    workers: Annotated[int, typer.Option(help="worker processes")] = 1,
    port: Annotated[int, typer.Option(help="API port")] = 8000,
) -> None:
    """Run the embedded stack (database, Redis, S3, API, workers) until Ctrl-C."""
    from xmlx.stack import start_stack

    stack = start_stack(root, workers=workers, api_port=port, echo=console.print)
    console.print("create a key with: [bold]xmlx keys create --tenant me[/bold] "
                  f"(with XMLX_DATABASE_URL={stack.env['XMLX_DATABASE_URL']})")  # fmt: skip
    console.print("Ctrl-C stops everything")
    try:
        cli_jobs.wait_for_interrupt()
    finally:
        stack.stop()


@app.command()
def demo(
    core: Annotated[bool, typer.Option(help="run xmlcore in-process, without the service")] = False,
    out: Annotated[Path, typer.Option(help="where to write results")] = Path(".xmlx/demo"),
    epochs: int = 20,
    keep: Annotated[bool, typer.Option(help="keep the stack running to browse /ui")] = False,
) -> None:
    """Generate a dataset, train, explain, and print the results and where to look."""
    if core:
        from xmlx.demo_core import run_core_demo

        run_core_demo(out, epochs=epochs, echo=console.print)
        return
    from xmlx.demo_service import DemoConfig, run_service_demo

    run_service_demo(out, console=console, config=DemoConfig(epochs=epochs, keep_running=keep))


def _exec(args: list[str]) -> NoReturn:
    # Replace this process so signals (SIGTERM for a warm shutdown) reach the program
    # itself; a wrapper in between would die first and leave a chunk half done.
    os.execv(args[0], args)


def _ensure_sqlite_dir(url: str) -> None:
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)


def _redact(url: str) -> str:
    head, sep, tail = url.partition("@")
    return f"{head.split(':')[0]}://***@{tail}" if sep else url


if __name__ == "__main__":
    app()
