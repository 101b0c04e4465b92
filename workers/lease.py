"""Keeping a chunk's lease while a long step runs, and stopping when it is lost.

A heartbeat between batches is not enough: one batch (or one training epoch) can
outlast the lease, and an expired lease hands the chunk to a second worker. The keeper
heartbeats from a thread every third of a lease; the work checks `stop_reason()` (or
calls `beat()`) between steps. Recording is owner-checked in the kernel as well, so a
worker that was stopped past its lease writes nothing that counts even before it looks.
"""

from __future__ import annotations

import contextlib
import threading

from sqlalchemy.exc import OperationalError

from workers.context import WorkerContext
from xmlx import jobs


class ChunkStoppedError(Exception):
    """The chunk must stop: its job's cancel was requested, or the lease was lost
    (`lease_lost`: another worker owns the chunk now; leave it alone)."""

    def __init__(self, *, lease_lost: bool = False) -> None:
        super().__init__("lease lost" if lease_lost else "cancel requested")
        self.lease_lost = lease_lost


class LeaseKeeper:
    """Heartbeats `chunk_id` for `ctx.owner` from a thread while the block runs."""

    def __init__(self, ctx: WorkerContext, chunk_id: str) -> None:
        self.ctx, self.chunk_id = ctx, chunk_id
        self.cancel_requested = False
        self.lease_lost = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lease-keeper", daemon=True)

    def __enter__(self) -> LeaseKeeper:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def beat(self) -> None:
        """Heartbeat now; raise ChunkStoppedError on cancel or a lost lease."""
        settings = self.ctx.settings
        beat = jobs.heartbeat(
            self.ctx.sessions, self.chunk_id, self.ctx.owner, lease_seconds=settings.lease_seconds
        )
        self.lease_lost = self.lease_lost or not beat.alive
        self.cancel_requested = self.cancel_requested or beat.cancel_requested
        self.raise_if_stopped()

    def raise_if_stopped(self) -> None:
        if self.lease_lost or self.cancel_requested:
            raise ChunkStoppedError(lease_lost=self.lease_lost)

    def _run(self) -> None:
        interval = max(1.0, self.ctx.settings.lease_seconds / 3)
        while not self._stop.wait(interval):
            try:
                self.beat()
            except ChunkStoppedError:
                return  # the working thread sees the flags at its next check
            except OperationalError:
                continue  # a database blip: the next tick tries again


def is_transient(exc: BaseException) -> bool:
    """Worth a retry later: a storage, database or broker outage, not the work itself."""
    return bool(getattr(exc, "transient", False)) or isinstance(
        exc, (OperationalError, ConnectionError)
    )


def hand_back(ctx: WorkerContext, chunk_id: str) -> None:
    """Queue the chunk again without spending an attempt (a transient failure is not a
    crash). Best effort: with the database itself down, the lease runs out instead."""
    with contextlib.suppress(OperationalError):
        jobs.hand_back_chunk(ctx.sessions, chunk_id, ctx.owner)
