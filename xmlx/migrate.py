"""Schema migrations from code: upgrade, downgrade, current revision, and the start-up check.

The API and the workers call `ensure_migrated(engine)` before serving: a database
behind (or ahead of) the code fails at start-up with a message saying what to run,
instead of failing later inside a request with a missing column.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine

from xmlx.db import create_engine
from xmlx.errors import XmlxError

PROJECT_ROOT = Path(__file__).resolve().parent.parent
ALEMBIC_INI = PROJECT_ROOT / "alembic.ini"
MIGRATIONS_DIR = PROJECT_ROOT / "migrations"


class MigrationError(XmlxError):
    """`db.not_migrated`: the database schema is not the one this code expects."""


def alembic_config(url: str | None = None) -> Config:
    """The Alembic config of this project, optionally pointed at `url`."""
    config = Config(str(ALEMBIC_INI)) if ALEMBIC_INI.exists() else Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    if url is not None:
        # ConfigParser treats % as interpolation; URLs may hold escaped passwords.
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def upgrade(url: str, revision: str = "head") -> None:
    _run(url, lambda config: command.upgrade(config, revision))


def downgrade(url: str, revision: str = "base") -> None:
    _run(url, lambda config: command.downgrade(config, revision))


def _run(url: str, action: Callable[[Config], None]) -> None:
    engine = create_engine(url)
    try:
        with engine.begin() as connection:
            config = alembic_config(url)
            config.attributes["connection"] = connection
            action(config)
    finally:
        engine.dispose()


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def ensure_migrated(engine: Engine) -> None:
    """Raise MigrationError (`db.not_migrated`) unless the database is at the code's head."""
    current = current_revision(engine)
    head = head_revision()
    if current != head:
        shown = current or "empty (no schema)"
        raise MigrationError(
            "db.not_migrated",
            f"database {engine.url.render_as_string(hide_password=True)} is at revision "
            f"{shown}, this code needs {head}: run `alembic upgrade head` "
            "(or xmlx.migrate.upgrade) first",
        )
