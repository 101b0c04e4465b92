"""``xmlx tenants``: an operator's view of tenants -- their retention and quotas.

The same settings are at `PUT /v1/admin/tenants/{id}/limits` (an `admin` key). An
option left out keeps its value; `--clear NAME` removes a limit (no limit).
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console

from xmlx.settings import get_settings

tenants_app = typer.Typer(help="Tenants: retention and quotas.")
console = Console()
LIMITS = ("retention-days", "max-stored-bytes", "max-items-in-flight")


def register(app: typer.Typer) -> None:
    app.add_typer(tenants_app, name="tenants")


@tenants_app.command("limits")
def limits(
    tenant: Annotated[str, typer.Option(help="tenant name or id")],
    retention_days: Annotated[
        int | None,
        typer.Option(min=1, max=36_500, help="purge finished explanation jobs this old"),
    ] = None,
    max_stored_bytes: Annotated[
        int | None, typer.Option(min=0, help="bytes the tenant may keep in the store")
    ] = None,
    max_items_in_flight: Annotated[
        int | None, typer.Option(min=0, help="items of live jobs the tenant may have")
    ] = None,
    clear: Annotated[
        list[str] | None, typer.Option(help=f"remove a limit: one of {', '.join(LIMITS)}")
    ] = None,
) -> None:
    """Show a tenant's limits and usage; set those given."""
    from xmlx import quotas
    from xmlx import repository as repo
    from xmlx.db import engine_from_settings, make_session_factory, session_scope
    from xmlx.migrate import ensure_migrated

    cleared = set(clear or [])
    if not cleared <= set(LIMITS):
        raise typer.BadParameter(f"one of {', '.join(LIMITS)}", param_hint="--clear")
    engine = engine_from_settings(get_settings())
    ensure_migrated(engine)
    with session_scope(make_session_factory(engine)) as session:
        row = repo.get_tenant_by_name(session, tenant) or repo.get_tenant(session, tenant)
        if row is None:
            raise typer.BadParameter(f"no tenant {tenant!r}", param_hint="--tenant")
        chosen = {
            "retention_days": retention_days,
            "max_stored_bytes": max_stored_bytes,
            "max_items_in_flight": max_items_in_flight,
        }
        values = {
            field: None if field.replace("_", "-") in cleared
            else value if value is not None else getattr(row, field)
            for field, value in chosen.items()
        }  # fmt: skip
        quotas.set_limits(session, row.id, **values)
        stored = quotas.stored_bytes(session, row.id)
        in_flight = quotas.items_in_flight(session, row.id)
        name, tenant_id = row.name, row.id
    console.print(f"tenant {name} ({tenant_id})")
    for label, value in values.items():
        console.print(f"  {label.replace('_', '-'):20} {'none' if value is None else value}")
    console.print(f"  {'stored bytes':20} {stored}")
    console.print(f"  {'items in flight':20} {in_flight}")
