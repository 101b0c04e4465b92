"""A private PostgreSQL server from the machine's binaries, for fault tests and benches.

`EmbeddedPostgres(data_dir).start()` runs `initdb` once (trust authentication, loopback
only) and then `postgres` on a free port with its own data directory, so stopping,
killing or restarting it never touches a PostgreSQL that someone else runs (the
machine's shared server on 5432 included). PostgreSQL refuses to run as root; as root
the cluster belongs to the `postgres` system user and the processes run as that user.

`stop()` is a fast shutdown (SIGINT), `crash()` an immediate one (SIGQUIT: no
checkpoint, crash recovery on the next start, like a killed server), `kill()` SIGKILL
of the postmaster. `start()` again on the same object reuses the data and the port.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import sqlalchemy as sa

from xmlx.embedded_redis import free_port, wait_for_port

SUPERUSER = "postgres"


class EmbeddedPostgresError(RuntimeError):
    """No PostgreSQL binaries, or the server did not start."""


def postgres_bin_dir() -> Path | None:
    """The newest `/usr/lib/postgresql/*/bin` holding initdb and postgres, or PATH's."""
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name)
    )
    for directory in reversed(candidates):
        if (Path(directory) / "initdb").exists() and (Path(directory) / "postgres").exists():
            return Path(directory)
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb and shutil.which("postgres") else None


def _run_as() -> str | None:
    """The OS user to run PostgreSQL as: None for ourselves, `postgres` when we are root."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam("postgres")
    except KeyError as exc:
        raise EmbeddedPostgresError("running as root and there is no 'postgres' user") from exc
    return "postgres"


@dataclass
class EmbeddedPostgres:
    """A postgres child process on a private port; `url(database)` is what clients use.

    As root, every directory above `data_dir` must be enterable by the `postgres` user
    (use a directory from `tempfile.mkdtemp` with mode 0o755, not pytest's tmp_path).
    """

    data_dir: Path
    port: int = 0
    process: subprocess.Popen[bytes] | None = field(default=None, init=False)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    @property
    def cluster_dir(self) -> Path:
        return self.data_dir / "cluster"

    def start(self, timeout: float = 60.0) -> EmbeddedPostgres:
        if self.process is not None and self.process.poll() is None:
            return self
        bin_dir = postgres_bin_dir()
        if bin_dir is None:
            raise EmbeddedPostgresError("no PostgreSQL binaries (initdb, postgres) found")
        self.data_dir = self.data_dir.resolve()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        user = _run_as()
        if user is not None:
            shutil.chown(self.data_dir, user, user)
        if not (self.cluster_dir / "PG_VERSION").exists():
            self._initdb(bin_dir, user)
        self.port = self.port or free_port()
        self.process = self._spawn(bin_dir, user)
        try:
            self._wait_ready(timeout)
        except EmbeddedPostgresError:
            self.kill()
            raise
        return self

    def create_database(self, name: str) -> str:
        """Create database `name` (if missing) and return its URL."""
        engine = sa.create_engine(self.url(), isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as connection:
                exists = connection.execute(
                    sa.text("SELECT 1 FROM pg_database WHERE datname = :name"), {"name": name}
                ).first()
                if exists is None:
                    connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
        finally:
            engine.dispose()
        return self.url(name)

    def stop(self, timeout: float = 30.0) -> None:
        """Fast shutdown: running transactions roll back, a checkpoint is written."""
        self._signal(signal.SIGINT, timeout)

    def crash(self, timeout: float = 30.0) -> None:
        """Immediate shutdown (no checkpoint): the next start runs crash recovery."""
        self._signal(signal.SIGQUIT, timeout)

    def kill(self) -> None:
        self._signal(signal.SIGKILL, 30.0)

    def _signal(self, signum: int, timeout: float) -> None:
        proc, self.process = self.process, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signum)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        _wait_session_gone(proc.pid, timeout)

    def _initdb(self, bin_dir: Path, user: str | None) -> None:
        args = [str(bin_dir / "initdb"), "-D", str(self.cluster_dir), "-U", SUPERUSER,
                "-A", "trust", "-E", "UTF8", "--locale", "C", "--no-sync"]  # fmt: skip
        done = subprocess.run(args, user=user, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise EmbeddedPostgresError(f"initdb failed: {done.stderr[-2000:]}")

    def _spawn(self, bin_dir: Path, user: str | None) -> subprocess.Popen[bytes]:
        args = [
            str(bin_dir / "postgres"), "-D", str(self.cluster_dir),
            "-c", f"port={self.port}",
            "-c", "listen_addresses=127.0.0.1",
            "-c", f"unix_socket_directories={self.data_dir}",
            # A test server: durability against a crashed process is all we need (the
            # OS keeps written pages), not against a crashed machine.
            "-c", "fsync=off",
            "-c", "full_page_writes=off",
            "-c", "max_connections=200",
            "-c", "shared_buffers=32MB",
        ]  # fmt: skip
        log = (self.data_dir / "postgres.log").open("ab")
        try:
            return subprocess.Popen(
                args, user=user, stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )  # fmt: skip
        finally:
            log.close()

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        try:
            wait_for_port(self.port, timeout)
        except RuntimeError as exc:
            raise EmbeddedPostgresError(f"postgres did not listen: {self._tail()}") from exc
        engine = sa.create_engine(self.url())
        try:
            while True:
                assert self.process is not None
                if self.process.poll() is not None:
                    raise EmbeddedPostgresError(f"postgres exited: {self._tail()}")
                try:
                    with engine.connect() as connection:
                        connection.execute(sa.text("SELECT 1"))
                    return
                except sa.exc.OperationalError as exc:  # still starting / recovering
                    if time.monotonic() > deadline:
                        raise EmbeddedPostgresError(f"postgres not ready: {exc}") from exc
                    time.sleep(0.2)
        finally:
            engine.dispose()

    def _tail(self, n_bytes: int = 2000) -> str:
        log = self.data_dir / "postgres.log"
        return log.read_bytes()[-n_bytes:].decode(errors="replace") if log.exists() else ""

    def __enter__(self) -> EmbeddedPostgres:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _wait_session_gone(session_id: int, timeout: float) -> None:
    """Wait until no process of the server's session is left: backends outlive a killed
    postmaster for a moment, and a new one refuses to start while they hold its memory."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and session_members(session_id):
        time.sleep(0.1)


def session_members(session_id: int) -> list[int]:
    """Live (non-zombie) processes of a Unix session, read from /proc."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # After ")": state, ppid, pgrp, session. A zombie holds nothing any more.
        if int(fields[3]) == session_id and fields[0] != "Z":
            members.append(int(stat.parent.name))
    return members


__all__ = ["EmbeddedPostgres", "EmbeddedPostgresError", "postgres_bin_dir", "session_members"]
