"""Run several worker processes as one: start them, pass on stop signals, watch them.

``xmlx worker --gpus`` runs one Celery worker per GPU under this supervisor. It is a
plain parent that never imports a framework (so nothing here holds CUDA), and:

- puts each child in its own session, so a Ctrl-C in the terminal reaches only the
  supervisor, which passes exactly one SIGTERM on: Celery's warm shutdown (finish the
  running chunk). A second Ctrl-C/SIGTERM passes SIGQUIT: Celery's cold shutdown.
- asks the kernel to SIGTERM the children if the supervisor itself dies (Linux
  ``PR_SET_PDEATHSIG``), so a killed supervisor does not leave orphans holding GPUs.
- exits non-zero as soon as one child dies on its own, after a warm shutdown of the
  others: a worker short of a GPU is a fault the orchestrator must see and restart.
"""

from __future__ import annotations

import ctypes
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import FrameType

POLL_SECONDS = 0.2
_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class ChildSpec:
    name: str
    args: list[str]
    env: dict[str, str]


def _die_with_parent() -> None:
    # Runs in the child between fork and exec; Linux only (elsewhere a no-op).
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)


class Supervisor:
    """Start ``specs`` and run until they have all exited; ``run`` returns the exit code."""

    def __init__(self, specs: Sequence[ChildSpec], echo: Callable[[str], None] = print) -> None:
        self.specs = list(specs)
        self.echo = echo
        self.children: dict[str, subprocess.Popen[bytes]] = {}
        self._stop_signals = 0
        self._failed: str | None = None

    def run(self) -> int:
        previous = {
            sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)
        }
        try:
            for spec in self.specs:
                if self._stop_signals:
                    break  # stopped while starting: do not start the rest
                self.children[spec.name] = subprocess.Popen(
                    spec.args, env=spec.env, start_new_session=True, preexec_fn=_die_with_parent
                )
                self.echo(f"started {spec.name} (pid {self.children[spec.name].pid})")
            return self._watch()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._stop_signals += 1
        self._forward(signal.SIGTERM if self._stop_signals == 1 else signal.SIGQUIT)

    def _forward(self, sig: signal.Signals) -> None:
        for process in self.children.values():
            if process.poll() is None:
                process.send_signal(sig)

    def _watch(self) -> int:
        reported: set[str] = set()
        while True:
            for name, process in self.children.items():
                code = process.poll()
                if code is None or name in reported:
                    continue
                reported.add(name)
                self.echo(f"{name} exited with code {code}")
                if not self._stop_signals and self._failed is None:
                    self._failed = name
                    self.echo(f"{name} died: warm shutdown of the other workers")
                    self._forward(signal.SIGTERM)
            if len(reported) == len(self.children):
                break
            time.sleep(POLL_SECONDS)
        if self._failed is not None:
            return 1
        return 0 if all(p.returncode == 0 for p in self.children.values()) else 1
