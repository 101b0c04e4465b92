"""`xmlx worker --gpus`: device detection, one real Celery worker process per GPU, each
seeing only its own device, supervised (warm shutdown on SIGTERM, non-zero exit when a
worker dies). No GPU is needed: `--gpus 0,1` only sets each child's environment."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from tests.service_fixtures import claimed_redis_url
from xmlx.embedded_redis import EmbeddedRedis, free_port
from xmlx.gpus import (
    GpuSelectionError,
    gpu_worker_env,
    parse_nvidia_smi_list,
    select_gpus,
    visible_gpus,
)

NVIDIA_SMI_L = """\
GPU 0: NVIDIA H200 (UUID: GPU-0f8e2a4c-1111-2222-3333-444455556666)
GPU 1: NVIDIA H200 (UUID: GPU-1a2b3c4d-1111-2222-3333-444455556666)
  MIG 3g.71gb     Device  0: (UUID: MIG-5c2e9b7a-aaaa-bbbb-cccc-ddddeeeeffff)
  MIG 3g.71gb     Device  1: (UUID: MIG-6d3f0c8b-aaaa-bbbb-cccc-ddddeeeeffff)
GPU 2: NVIDIA H200 (UUID: GPU-2b3c4d5e-1111-2222-3333-444455556666)
"""
FRAMEWORK_LIBRARIES = ("tensorflow", "jaxlib", "libtorch", "libcuda")


def test_nvidia_smi_listing_gives_gpus_and_mig_slices() -> None:
    assert parse_nvidia_smi_list(NVIDIA_SMI_L) == [
        "0",
        "MIG-5c2e9b7a-aaaa-bbbb-cccc-ddddeeeeffff",
        "MIG-6d3f0c8b-aaaa-bbbb-cccc-ddddeeeeffff",
        "2",
    ]
    assert parse_nvidia_smi_list("No devices were found\n") == []


def test_visible_gpus_from_cuda_visible_devices_or_nvidia_smi(tmp_path: Path) -> None:
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "0,1"}) == ["0", "1"]
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": ""}) == []
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "-1"}) == []
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "2,-1,3"}) == ["2"]  # CUDA stops at -1
    assert visible_gpus({"PATH": str(tmp_path)}) == []  # no nvidia-smi: no GPU
    # nvidia-smi is the driver's tool, not ours: a script printing its output stands in.
    fake = tmp_path / "nvidia-smi"
    fake.write_text(f"#!/bin/sh\ncat <<'EOF'\n{NVIDIA_SMI_L}EOF\n")
    fake.chmod(0o755)
    assert visible_gpus({"PATH": str(tmp_path)}) == parse_nvidia_smi_list(NVIDIA_SMI_L)
    fake.write_text("#!/bin/sh\necho 'NVIDIA-SMI has failed' >&2\nexit 9\n")
    assert visible_gpus({"PATH": str(tmp_path)}) == []


def test_select_gpus() -> None:
    visible = ["0", "1", "2"]
    assert select_gpus("all", visible) == visible
    assert select_gpus("2", visible) == ["0", "1"]
    assert select_gpus("1,3", visible) == ["1", "3"]  # ids are taken as given
    assert select_gpus("3,", []) == ["3"]
    assert select_gpus("GPU-0f8e2a4c-1111,MIG-5c2e9b7a", []) == [
        "GPU-0f8e2a4c-1111",
        "MIG-5c2e9b7a",
    ]
    for spec, visible_now, code in [
        ("all", [], "worker.no_gpus"),
        ("1", [], "worker.no_gpus"),
        ("4", visible, "worker.bad_gpus"),
        ("0", visible, "worker.bad_gpus"),
        ("first", visible, "worker.bad_gpus"),
        ("0,0", visible, "worker.bad_gpus"),
        ("0,$(reboot)", visible, "worker.bad_gpus"),
    ]:
        with pytest.raises(GpuSelectionError) as err:
            select_gpus(spec, visible_now)
        assert err.value.code == code, spec


def test_worker_env_pins_the_device_and_keeps_the_operators_choices() -> None:
    env = gpu_worker_env({"CUDA_VISIBLE_DEVICES": "0,1", "TF_FORCE_GPU_ALLOW_GROWTH": "false"}, "1")
    assert env["CUDA_VISIBLE_DEVICES"] == "1"
    assert env["TF_FORCE_GPU_ALLOW_GROWTH"] == "false"
    assert env["XLA_PYTHON_CLIENT_PREALLOCATE"] == "false"


# ---------------------------------------------------------------- real processes


@pytest.fixture(scope="module")
def broker_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with claimed_redis_url() as url:
        if url is not None:
            yield url
            return
        with EmbeddedRedis(tmp_path_factory.mktemp("redis")) as redis:
            yield redis.url


def worker_env(tmp_path: Path, broker_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
    return env | {"XMLX_REDIS_URL": broker_url, "XMLX_DATA_DIR": str(tmp_path)} | extra


def start_supervisor(
    tmp_path: Path, broker_url: str, gpus: str, *extra: str
) -> tuple[subprocess.Popen[bytes], Path]:
    log = tmp_path / "workers.log"
    # A queue nobody sends to: the workers start and idle, whatever else uses this Redis.
    args = [sys.executable, "-m", "xmlx.cli", "worker", "--gpus", gpus,
            "--queues", f"test-gpu-{uuid.uuid4().hex[:8]}", *extra]  # fmt: skip
    with log.open("wb") as out:
        process = subprocess.Popen(
            args, env=worker_env(tmp_path, broker_url), stdout=out, stderr=subprocess.STDOUT
        )
    return process, log


def wait_until_ready(
    process: subprocess.Popen[bytes], log: Path, workers: int
) -> list[psutil.Process]:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"supervisor exited {process.returncode}:\n{log.read_text()}")
        if log.read_text(errors="replace").count(" ready.") >= workers:
            return psutil.Process(process.pid).children()
        time.sleep(0.5)
    pytest.fail(f"workers not ready in time:\n{log.read_text()}")


def kill_leftovers(processes: list[psutil.Process]) -> None:
    for proc in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()


def test_one_worker_per_gpu_each_sees_its_own_device_and_stops_warm(
    tmp_path: Path, broker_url: str
) -> None:
    port = free_port()
    process, log = start_supervisor(tmp_path, broker_url, "0,1", "--metrics-port", str(port))
    started: list[psutil.Process] = []
    try:
        children = wait_until_ready(process, log, workers=2)
        started = [*children, *(g for c in children for g in c.children())]
        assert len(children) == 2
        # One exporter, the supervisor's, over one multiprocess folder all workers share.
        assert httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).status_code == 200
        folders = {child.environ()["PROMETHEUS_MULTIPROC_DIR"] for child in children}
        assert len(folders) == 1 and Path(folders.pop()).is_dir()
        assert not any("XMLX_WORKER_METRICS_PORT" in child.environ() for child in children)
        devices = sorted(child.environ()["CUDA_VISIBLE_DEVICES"] for child in children)
        assert devices == ["0", "1"]
        for child in children:
            env = child.environ()
            assert env["TF_FORCE_GPU_ALLOW_GROWTH"] == "true"
            assert env["XLA_PYTHON_CLIENT_PREALLOCATE"] == "false"
            assert "celery" in " ".join(child.cmdline()) and "--concurrency" in child.cmdline()
            # The Celery parent forks its pool child: it must never have loaded a framework
            # (a process that initialised CUDA cannot fork safely).
            maps = Path(f"/proc/{child.pid}/maps").read_text()
            assert not [lib for lib in FRAMEWORK_LIBRARIES if lib in maps]
            (pool_child,) = child.children()
            assert pool_child.environ()["CUDA_VISIBLE_DEVICES"] == env["CUDA_VISIBLE_DEVICES"]
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=90) == 0, log.read_text()
        assert not [p for p in started if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        assert "warm shutdown" in log.read_text().lower()
    finally:
        if process.poll() is None:
            process.kill()
        kill_leftovers(started)


def test_a_dead_worker_stops_the_others_and_fails_the_supervisor(
    tmp_path: Path, broker_url: str
) -> None:
    process, log = start_supervisor(tmp_path, broker_url, "0,1")
    started: list[psutil.Process] = []
    try:
        children = wait_until_ready(process, log, workers=2)
        started = [*children, *(g for c in children for g in c.children())]
        children[0].kill()
        assert process.wait(timeout=90) == 1, log.read_text()
        assert not children[1].is_running() or children[1].status() == psutil.STATUS_ZOMBIE
        assert "died: warm shutdown of the other workers" in log.read_text()
    finally:
        if process.poll() is None:
            process.kill()
        kill_leftovers(started)


def test_gpus_all_on_a_machine_without_gpus_says_so(tmp_path: Path) -> None:
    env = worker_env(tmp_path, "redis://127.0.0.1:1/0", PATH=str(Path(sys.executable).parent))
    done = subprocess.run(
        [sys.executable, "-m", "xmlx.cli", "worker", "--gpus", "all"],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2
    assert "no GPU found" in done.stdout + done.stderr
    assert "without --gpus for a CPU worker" in done.stdout + done.stderr
