"""``xmlx webhooks``: a tenant's default callback URL and signing secret, from the
server's shell (the API has the same at /v1/webhook-settings and
/v1/admin/tenants/{id}/webhook-settings)."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console

from xmlx.settings import get_settings

webhooks_app = typer.Typer(help="Webhooks: a tenant's default callback URL and secret.")
console = Console()


def register(app: typer.Typer) -> None:
    app.add_typer(webhooks_app, name="webhooks")


@webhooks_app.command("set")
def set_default(
    tenant: Annotated[str, typer.Option(help="tenant name")],
    url: Annotated[str | None, typer.Option(help="default callback URL (omit: none)")] = None,
    rotate_secret: Annotated[bool, typer.Option(help="replace the signing secret")] = False,
) -> None:
    """Set TENANT's default callback URL (checked like a job's callback_url); prints the
    URL and the signing secret (created on first use, replaced with --rotate-secret)."""
    from xmlx import repository as repo
    from xmlx.db import engine_from_settings, make_session_factory, session_scope
    from xmlx.migrate import ensure_migrated
    from xmlx.repository import webhooks as webhook_repo
    from xmlx.webhooks import WebhookUrlError, check_callback_url, new_secret

    settings = get_settings()
    if url is not None:
        try:
            check_callback_url(url, settings.webhook_allowed_host_set)
        except WebhookUrlError as exc:
            raise typer.BadParameter(exc.message, param_hint="--url") from exc
    engine = engine_from_settings(settings)
    ensure_migrated(engine)
    with session_scope(make_session_factory(engine)) as session:
        row = repo.get_tenant_by_name(session, tenant)
        if row is None:
            raise typer.BadParameter(f"no tenant named {tenant!r}", param_hint="--tenant")
        current = webhook_repo.get_settings(session, row.id)
        secret = new_secret() if rotate_secret or current is None else None
        saved = webhook_repo.put_settings(session, row.id, url=url, secret=secret)
        console.print(f"tenant {tenant} ({row.id}): url {saved.url or '(none)'}")
        console.print(f"signing secret: {saved.secret}", soft_wrap=True)
    engine.dispose()
