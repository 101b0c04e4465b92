"""A running embedded stack for end-to-end and fault tests.

The database is a fresh one (PostgreSQL when ``XMLX_TEST_DATABASE_URL`` is set, else
SQLite); S3 is a private SeaweedFS. The broker is the machine's Redis when
``XMLX_TEST_REDIS_URL`` is set, on a database number this stack CLAIMS (an atomic
``SET NX`` in database 0), so no other stack — in this run or a concurrent one — can
consume its queues; when every number is taken, or no shared Redis is configured, it
gets a private redis-server. Everything stops and is removed afterwards.
"""

from __future__ import annotations

import os
import random
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import redis

from tests.kernel_fixtures import fresh_database
from xmlx.stack import Stack, start_stack

CLAIM_PREFIX = "xmlx:test:redis-db-claim:"
CLAIM_SECONDS = 2 * 3600  # outlives any test run; a crashed run's claim expires


@contextmanager
def claimed_redis_url() -> Iterator[str | None]:
    """A database of the shared test Redis that only this caller uses, or None."""
    base = os.environ.get("XMLX_TEST_REDIS_URL")
    if not base:
        yield None
        return
    head = base.rsplit("/", 1)[0] if base.count("/") > 2 else base.rstrip("/")
    admin = redis.Redis.from_url(f"{head}/0")
    token = uuid.uuid4().hex
    for number in random.sample(range(1, 16), 15):
        key = f"{CLAIM_PREFIX}{number}"
        if not admin.set(key, token, nx=True, ex=CLAIM_SECONDS):
            continue
        url = f"{head}/{number}"
        redis.Redis.from_url(url).flushdb()
        try:
            yield url
        finally:
            if admin.get(key) == token.encode():
                admin.delete(key)
        return
    yield None


def running_stack(root: Path, **kwargs: object) -> Iterator[Stack]:
    with fresh_database(root) as database_url, claimed_redis_url() as redis_url:
        stack = start_stack(
            root / "stack",
            database_url=database_url,
            redis_url=redis_url,
            echo=lambda _: None,
            **kwargs,  # type: ignore[arg-type]
        )
        try:
            yield stack
        finally:
            stack.stop()
