"""GPU workers: which GPUs a machine shows, and the environment of one worker per GPU.

``xmlx worker --gpus all|N|ID,ID`` starts one Celery worker process per GPU
(``xmlx.supervisor``). Each one sees exactly its own device (``CUDA_VISIBLE_DEVICES``),
so the frameworks inside never touch another worker's GPU, and each one is told not
to reserve the device's whole memory up front (TensorFlow grabs nearly all of it, JAX
75 %), so ``nvidia-smi`` shows real use and the batch size can be chosen from what is
actually free (``xmlx.device_memory``).

Detection never imports a framework: the supervisor must stay free of CUDA, because
the Celery parent it starts forks its pool child, and a process that initialised CUDA
must not fork. ``CUDA_VISIBLE_DEVICES``, when set, is the truth (empty or ``-1``: no
GPU); otherwise ``nvidia-smi -L`` lists the devices (MIG slices replace their GPU).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Mapping

from xmlx.errors import XmlxError

# Each framework's "do not reserve all the GPU memory at start-up" switch. Set only when
# the operator has not chosen otherwise (a one-worker-per-GPU pod may turn growth off).
GPU_MEMORY_ENV = {
    "TF_FORCE_GPU_ALLOW_GROWTH": "true",
    "XLA_PYTHON_CLIENT_PREALLOCATE": "false",
    "PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True",
}
_GPU_LINE = re.compile(r"^GPU (\d+): .*\(UUID: (GPU-[0-9A-Fa-f-]+)\)")
_MIG_LINE = re.compile(r"^\s+MIG .*\(UUID: (MIG-[0-9A-Za-z/-]+)\)")
_DEVICE_ID = re.compile(r"^(\d{1,3}|(GPU|MIG)-[0-9A-Za-z/-]{1,100})$")
NVIDIA_SMI_TIMEOUT_SECONDS = 20


class GpuSelectionError(XmlxError):
    """``worker.no_gpus`` (none visible) or ``worker.bad_gpus`` (a bad ``--gpus`` value)."""


def parse_nvidia_smi_list(text: str) -> list[str]:
    """Device ids from ``nvidia-smi -L``: GPU indexes, or the MIG UUIDs of a GPU split
    into MIG slices (each slice is a device a worker can own)."""
    devices: list[str] = []
    for line in text.splitlines():
        gpu, mig = _GPU_LINE.match(line), _MIG_LINE.match(line)
        if gpu:
            devices.append(gpu.group(1))
        elif mig and devices:
            if not devices[-1].startswith("MIG-"):
                devices.pop()  # the GPU is split: its slices are the devices
            devices.append(mig.group(1))
    return devices


def visible_gpus(env: Mapping[str, str], nvidia_smi: str = "nvidia-smi") -> list[str]:
    """The GPUs this process may use: ``CUDA_VISIBLE_DEVICES`` when set, else what
    ``nvidia-smi -L`` lists (none when it is not installed or fails)."""
    if "CUDA_VISIBLE_DEVICES" in env:
        value = env["CUDA_VISIBLE_DEVICES"].strip()
        ids = [part.strip() for part in value.split(",") if part.strip()]
        # CUDA stops at the first invalid entry; "-1" is the usual way to say "none".
        kept = []
        for device in ids:
            if not _DEVICE_ID.match(device):
                break
            kept.append(device)
        return kept
    binary = shutil.which(nvidia_smi, path=env.get("PATH"))
    if binary is None:
        return []
    try:
        listing = subprocess.run(
            [binary, "-L"], capture_output=True, text=True,
            timeout=NVIDIA_SMI_TIMEOUT_SECONDS, check=True,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return []
    return parse_nvidia_smi_list(listing.stdout)


def select_gpus(spec: str, visible: list[str]) -> list[str]:
    """The devices ``--gpus spec`` names: ``all`` (every visible one), ``N`` (the first
    N visible), or a comma-separated list of ids (``0,1``; one id: ``3,``), taken as
    given so a worker can be pinned to a device this process does not see."""
    spec = spec.strip()
    if spec == "all" or spec.isdigit():
        if not visible:
            raise GpuSelectionError(
                "worker.no_gpus",
                "no GPU found (CUDA_VISIBLE_DEVICES is empty or unset and nvidia-smi lists "
                "none); run `xmlx worker` without --gpus for a CPU worker",
            )
        if spec == "all":
            return list(visible)
        count = int(spec)
        if not 1 <= count <= len(visible):
            raise GpuSelectionError(
                "worker.bad_gpus", f"--gpus {count}: this machine shows {len(visible)} GPU(s)"
            )
        return visible[:count]
    ids = [part.strip() for part in spec.split(",") if part.strip()]
    if "," not in spec or not ids:
        raise GpuSelectionError(
            "worker.bad_gpus", f"--gpus {spec!r}: give all, a count, or ids such as 0,1 or 3,"
        )
    bad = [device for device in ids if not _DEVICE_ID.match(device)]
    if bad or len(set(ids)) != len(ids):
        raise GpuSelectionError(
            "worker.bad_gpus", f"--gpus {spec!r}: ids must be distinct indexes or UUIDs"
        )
    return ids


def gpu_worker_env(base: Mapping[str, str], device: str) -> dict[str, str]:
    """The environment of the worker that owns ``device``: only that device visible,
    memory grown on demand (unless ``base`` already says otherwise)."""
    env = {**GPU_MEMORY_ENV, **base}
    env["CUDA_VISIBLE_DEVICES"] = device
    return env


def nvidia_smi_free_bytes(env: Mapping[str, str], nvidia_smi: str = "nvidia-smi") -> int | None:
    """Free memory of this process's first visible GPU per ``nvidia-smi``, or None.
    (TensorFlow reports only its own use, so a TensorFlow worker asks the driver.)"""
    devices = visible_gpus(env, nvidia_smi)
    binary = shutil.which(nvidia_smi, path=env.get("PATH"))
    if not devices or binary is None:
        return None
    query = [binary, "--query-gpu=memory.free", "--format=csv,noheader,nounits", "-i", devices[0]]
    try:
        out = subprocess.run(
            query, capture_output=True, text=True, timeout=NVIDIA_SMI_TIMEOUT_SECONDS, check=True
        ).stdout.split()
        return int(out[0]) * 1024 * 1024 if out else None  # MiB
    except (OSError, subprocess.SubprocessError, ValueError):
        return None
