"""Chaos scenario 17: the database, Redis and S3 each stopped under a load of pollers;
every answer counted. The goal (issue 16): 503 `service.unavailable` with Retry-After
while a dependency is down, zero 500s, and 200s again once it is back.

Each phase: pollers (bench/load.py style, threads with httpx) keep sending the
requests a client sends -- GET a job, list jobs, and one in five a POST /v1/datasets
(reads the manifest from S3, writes a row) -- then the dependency is stopped for
`down_seconds` and started again, and the phase ends `after_seconds` after the first
200 that follows. Only private servers are stopped (the harness's own PostgreSQL,
Redis and SeaweedFS), never the machine's. Per phase: requests by status, 503s with
and without Retry-After, 500s, transport errors, seconds to recover. Pass: no 500, no
503 without Retry-After, no transport error (the API itself stays up), recovery within
60 s, and the database and storage phases answered at least one 503 (the outage was
seen). With Redis down the API fails open (rate limit, key cache): 200s are right.

Run alone: ``python bench/chaos_outages.py [--quick]`` (a stack without workers: no
training, a model marked ready as load.py does); ``python bench/chaos.py --scenario 17``
runs it on the full chaos stack. The last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from xmlx.client import Client  # noqa: E402
from xmlx.embedded_postgres import EmbeddedPostgres, postgres_bin_dir  # noqa: E402
from xmlx.embedded_redis import EmbeddedRedis  # noqa: E402
from xmlx.embedded_s3 import start_seaweedfs  # noqa: E402
from xmlx.stack import BUCKET, Stack, start_stack  # noqa: E402

MANIFEST = b"image,labels\na.png,salt|rice\nb.png,salt\nc.png,oil|rice\nd.png,oil\n"
OUTAGE_ENV = {
    "XMLX_RATE_LIMIT_PER_MINUTE": "1000000",
    # A stopped S3 refuses connections at once; bound boto's retries so an answer
    # (503) comes within a second or two, as a client would want.
    "XMLX_S3_MAX_ATTEMPTS": "2",
    "XMLX_S3_CONNECT_TIMEOUT_SECONDS": "1",
    "XMLX_S3_READ_TIMEOUT_SECONDS": "5",
}


class Harness(Protocol):
    """What a phase needs (bench/chaos.py's `Chaos` has it too)."""

    stack: Stack
    redis: EmbeddedRedis
    postgres: EmbeddedPostgres | None
    client: Client
    model_id: str


@dataclass(frozen=True)
class OutageSizes:
    pollers: int = 8
    down_seconds: float = 15.0
    after_seconds: float = 5.0

    @classmethod
    def quick(cls) -> OutageSizes:
        return cls(pollers=4, down_seconds=3.0, after_seconds=1.0)


@dataclass
class Tally:
    statuses: Counter[int] = field(default_factory=Counter)
    unavailable_with_retry_after: int = 0
    unavailable_without_retry_after: int = 0
    transport_errors: list[str] = field(default_factory=list)
    codes_500: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, answer: httpx.Response | None, error: str | None = None) -> None:
        with self.lock:
            if answer is None:
                self.transport_errors.append(str(error)[:200])
                return
            self.statuses[answer.status_code] += 1
            if answer.status_code == 503:
                if answer.headers.get("Retry-After", "").isdigit():
                    self.unavailable_with_retry_after += 1
                else:
                    self.unavailable_without_retry_after += 1
            if answer.status_code >= 500 and answer.status_code != 503:
                self.codes_500.append(answer.text[:200])


class Pollers:
    """`n` threads sending a client's requests until stopped, into the current tally."""

    def __init__(self, harness: Harness, job_id: str, n: int) -> None:
        self.api_url = harness.stack.api_url
        self.auth = harness.client.http.headers["Authorization"]
        self.job_id, self.tally = job_id, Tally()
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True)
                        for i in range(n)]  # fmt: skip

    def __enter__(self) -> Pollers:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=30)

    def _run(self, index: int) -> None:
        headers = {"Authorization": self.auth}
        dataset = {"name": "o", "images_prefix": "outage/images/",
                   "manifest_key": "outage/manifest.csv"}  # fmt: skip
        with httpx.Client(base_url=self.api_url, headers=headers, timeout=30) as http:
            for n in range(index, 10**9):
                if self.stop.is_set():
                    return
                tally = self.tally
                try:
                    if n % 5 == 4:
                        answer = http.post("/v1/datasets", json=dataset)
                    elif n % 5 == 3:
                        answer = http.get("/v1/jobs", params={"limit": 5})
                    else:
                        answer = http.get(f"/v1/jobs/{self.job_id}")
                    tally.add(answer)
                except httpx.HTTPError as exc:
                    tally.add(None, f"{type(exc).__name__}: {exc}")
                time.sleep(0.05)


def _phase(
    pollers: Pollers,
    harness: Harness,
    stop: Callable[[], object],
    start: Callable[[], object],
    sizes: OutageSizes,
) -> dict[str, Any]:
    tally = pollers.tally = Tally()
    time.sleep(0.5)
    stop()
    time.sleep(sizes.down_seconds)
    start()
    back = time.monotonic()
    recovered = None
    with httpx.Client(base_url=harness.stack.api_url, timeout=10,
                      headers={"Authorization": pollers.auth}) as http:  # fmt: skip
        while time.monotonic() - back < 60:
            try:
                if http.get(f"/v1/jobs/{pollers.job_id}").status_code == 200:
                    recovered = round(time.monotonic() - back, 1)
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
    time.sleep(sizes.after_seconds)
    pollers.tally = Tally()
    return {
        "requests": sum(tally.statuses.values()) + len(tally.transport_errors),
        "by_status": {str(k): v for k, v in sorted(tally.statuses.items())},
        "unavailable_with_retry_after": tally.unavailable_with_retry_after,
        "unavailable_without_retry_after": tally.unavailable_without_retry_after,
        "server_errors": len(tally.codes_500),
        "server_error_samples": tally.codes_500[:3],
        "transport_errors": len(tally.transport_errors),
        "transport_error_samples": tally.transport_errors[:3],
        "recovery_seconds": recovered,
    }


def _restart_s3(harness: Harness) -> None:
    old = harness.stack.s3
    assert old is not None
    harness.stack.s3 = start_seaweedfs(old.data_dir, s3_port=old.ports["s3"], bucket=BUCKET)


def outages_under_load(harness: Harness, sizes: OutageSizes | None = None) -> dict[str, Any]:
    """17. Database, Redis and S3 each stopped under pollers: 503 + Retry-After, no 500."""
    sizes = sizes or OutageSizes()
    started = time.monotonic()
    harness.client.upload({"outage/manifest.csv": MANIFEST}, content_type="text/csv")
    body = {"model_id": harness.model_id, "images": ["outage/images/a.png"]}
    job_id = str(harness.client.request("POST", "/v1/predictions", json=body)["id"])
    s3 = harness.stack.s3
    assert s3 is not None
    phases: dict[str, dict[str, Any]] = {}
    with Pollers(harness, job_id, sizes.pollers) as pollers:
        if harness.postgres is not None:
            pg = harness.postgres
            phases["database"] = _phase(pollers, harness, pg.crash, pg.start, sizes)
        redis = harness.redis
        phases["redis"] = _phase(pollers, harness, redis.kill, redis.start, sizes)
        phases["storage"] = _phase(
            pollers, harness, lambda: s3.stop(), lambda: _restart_s3(harness), sizes
        )
    clean = all(
        p["server_errors"] == 0 and p["unavailable_without_retry_after"] == 0
        and p["transport_errors"] == 0 and p["recovery_seconds"] is not None
        for p in phases.values()
    )  # fmt: skip
    seen = all(phases[name]["unavailable_with_retry_after"] > 0
               for name in ("database", "storage") if name in phases)  # fmt: skip
    report: dict[str, Any] = {
        "scenario": 17, "phases": phases, "down_seconds": sizes.down_seconds,
        "pollers": sizes.pollers,
        "server_errors": sum(p["server_errors"] for p in phases.values()),
        "unavailable_with_retry_after": sum(
            p["unavailable_with_retry_after"] for p in phases.values()
        ),
        "seconds": round(time.monotonic() - started, 1), "passed": clean and seen,
    }  # fmt: skip
    if harness.postgres is None:
        report["database_skipped"] = "no PostgreSQL binaries: the database phase did not run"
    return report


@dataclass
class OutageStack:
    stack: Stack
    redis: EmbeddedRedis
    postgres: EmbeddedPostgres | None
    client: Client
    model_id: str


@contextmanager
def outage_stack(root: Path, echo: Callable[[str], None] = print) -> Iterator[OutageStack]:
    """Private PostgreSQL (if its binaries are here), Redis and SeaweedFS, and the API
    alone (no worker, no beat: the pollers measure the API), with a ready model."""
    sys.path.insert(0, str(ROOT / "bench"))
    from load import prepare_model

    from xmlx.demo_service import create_api_key

    with ExitStack() as cleanup:
        postgres = None
        if postgres_bin_dir() is not None:
            directory = Path(tempfile.mkdtemp(prefix="xmlx-outage-pg-"))
            directory.chmod(0o755)  # as root, the server runs as `postgres`
            cleanup.callback(shutil.rmtree, directory, ignore_errors=True)
            postgres = EmbeddedPostgres(directory).start()
            cleanup.callback(postgres.kill)
        database_url = postgres.create_database("xmlx") if postgres else None
        redis = EmbeddedRedis(root / "redis").start()
        cleanup.callback(redis.stop)
        stack = start_stack(root / "stack", workers=0, beat=False, database_url=database_url,
                            redis_url=redis.url, extra_env=OUTAGE_ENV, echo=echo)  # fmt: skip
        cleanup.callback(stack.stop)
        api_key = create_api_key(stack, "outages")
        model_id = prepare_model(stack, api_key)
        client = cleanup.enter_context(Client(stack.api_url, api_key, timeout=60))
        yield OutageStack(stack, redis, postgres, client, model_id)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="CI-sized: 4 pollers, 3 s down")
    parser.add_argument("--root", type=Path, help="working directory, kept (default: temporary)")
    args = parser.parse_args(argv)
    sizes = OutageSizes.quick() if args.quick else OutageSizes()
    echo = lambda line: print(line, file=sys.stderr)  # noqa: E731
    with (
        tempfile.TemporaryDirectory(prefix="xmlx-outages-") as tmp,
        outage_stack(args.root or Path(tmp), echo=echo) as harness,
    ):
        report = outages_under_load(harness, sizes)
    print(json.dumps(report), flush=True)
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
