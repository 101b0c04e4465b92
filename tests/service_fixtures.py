"""A running embedded stack for end-to-end and fault tests.

The database is a fresh one (PostgreSQL when ``XMLX_TEST_DATABASE_URL`` is set, else
SQLite); the broker is the machine's Redis on a randomly chosen database number when
``XMLX_TEST_REDIS_URL`` is set (so concurrent runs don't share queues), else a private
redis-server; S3 is a private SeaweedFS. Everything stops and is removed afterwards.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from pathlib import Path

from tests.kernel_fixtures import fresh_database
from xmlx.stack import Stack, start_stack


def isolated_redis_url() -> str | None:
    base = os.environ.get("XMLX_TEST_REDIS_URL")
    if not base:
        return None
    head = base.rsplit("/", 1)[0] if base.count("/") > 2 else base.rstrip("/")
    return f"{head}/{random.randint(1, 15)}"


def running_stack(root: Path, **kwargs: object) -> Iterator[Stack]:
    with fresh_database(root) as database_url:
        stack = start_stack(
            root / "stack",
            database_url=database_url,
            redis_url=isolated_redis_url(),
            echo=lambda _: None,
            **kwargs,  # type: ignore[arg-type]
        )
        try:
            yield stack
        finally:
            stack.stop()
