"""The machine a run happens on: what it is, what is installed, and how busy others keep it.

A benchmark on a shared machine is only as good as its account of the noise. ``CpuMeter`` measures
how much CPU *other* processes used while a mode ran (total busy time from ``/proc/stat`` minus
this process's and its children's CPU time), and ``wait_until_quiet`` lets a run wait for a calm
moment before it starts.
"""

from __future__ import annotations

import os
import platform
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Iterable

__all__ = [
    "PACKAGES",
    "CpuMeter",
    "free_port",
    "git_revision",
    "machine_info",
    "package_versions",
    "wait_until_quiet",
]


def free_port() -> int:
    """A 127.0.0.1 TCP port nothing listens on (the kernel's choice, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


PACKAGES = (
    "bastion",
    "fastapi",
    "starlette",
    "uvicorn",
    "uvloop",
    "httptools",
    "pydantic",
    "anyio",
    "asgi-correlation-id",
    "prometheus-fastapi-instrumentator",
    "prometheus-client",
    "slowapi",
    "limits",
    "fastapi-cache2",
)
"""Distributions whose versions every report records."""

REPO_ROOT = Path(__file__).resolve().parent.parent
_TICKS_PER_S = os.sysconf("SC_CLK_TCK")


def _cpu_model() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8")
    except OSError:
        return platform.processor() or "unknown"
    for line in text.splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def machine_info() -> dict[str, Any]:
    """CPU model, core counts, OS and Python."""
    return {
        "cpu_model": _cpu_model(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)),
        "platform": platform.platform(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "python_build": " ".join(sys.version.split()[1:]),
    }


def package_versions(names: Iterable[str] = PACKAGES) -> dict[str, str]:
    """Installed version of each distribution (``"not installed"`` when absent)."""
    versions = {}
    for name in names:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def git_revision() -> str:
    """The checked-out commit, ``+dirty`` when the tree has changes."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "none (no commit yet)"
    return head + ("+dirty" if dirty else "")


def _busy_and_total_s() -> tuple[float, float]:
    """CPU seconds spent busy and in total, summed over all CPUs, since boot."""
    with Path("/proc/stat").open(encoding="utf-8") as stat:
        fields = [int(value) for value in stat.readline().split()[1:9]]
    # user nice system idle iowait irq softirq steal (guest time is already counted in user)
    idle = fields[3] + fields[4]
    total = sum(fields)
    return (total - idle) / _TICKS_PER_S, total / _TICKS_PER_S


def _own_cpu_s() -> float:
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


@dataclass(slots=True)
class CpuMeter:
    """Measures the share of the machine's CPU used by other processes between start and stop.

    "Own" CPU time includes waited-for children (HTTP mode's servers and wrk runs) and what
    running children report (in-process workers), so what is left is interference: other
    people's tests, builds, editors. ``/proc/stat`` counts in ticks (10 ms), so a reading over a
    short interval is approximate.
    """

    _busy: float = 0.0
    _total: float = 0.0
    _own: float = 0.0

    def start(self, *, extra_own_s: float = 0.0) -> None:
        """Take the first reading; ``extra_own_s``: CPU seconds of processes of ours that are
        still running (the in-process workers), as they report it."""
        try:
            self._busy, self._total = _busy_and_total_s()
        except OSError:
            self._total = -1.0
        self._own = _own_cpu_s() + extra_own_s

    def others_share(self, *, extra_own_s: float = 0.0) -> float | None:
        """Fraction (0-1) of all CPUs' time used by others since ``start``; ``None`` if unknown.

        ``extra_own_s`` must be the same sum as at ``start``, read now.
        """
        try:
            busy, total = _busy_and_total_s()
        except OSError:
            return None
        elapsed = total - self._total
        if self._total < 0 or elapsed <= 0:
            return None
        others = (busy - self._busy) - (_own_cpu_s() + extra_own_s - self._own)
        return min(max(others / elapsed, 0.0), 1.0)


def wait_until_quiet(max_wait_s: float, *, max_busy: float = 0.15, window_s: float = 2.0) -> float:
    """Wait until the machine is at most ``max_busy`` busy over ``window_s``, or ``max_wait_s``.

    Returns the busy fraction of the last window, so the report can say how calm the start was.
    """
    deadline = time.monotonic() + max_wait_s
    while True:
        busy_before, total_before = _busy_and_total_s()
        time.sleep(window_s)
        busy_after, total_after = _busy_and_total_s()
        elapsed = total_after - total_before
        busy = (busy_after - busy_before) / elapsed if elapsed > 0 else 0.0
        if busy <= max_busy or time.monotonic() >= deadline:
            return busy
        print(f"  machine {busy:.0%} busy; waiting for a quieter moment", file=sys.stderr)
