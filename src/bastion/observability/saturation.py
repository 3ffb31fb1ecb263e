"""Saturation signals: what the process uses (CPU, memory, file descriptors) and event-loop lag.

``read_process()`` returns the numbers behind the standard Prometheus process metrics
(``process_cpu_seconds_total``, ``process_resident_memory_bytes``,
``process_virtual_memory_bytes``, ``process_open_fds``, ``process_max_fds``,
``process_start_time_seconds``). On Linux they come from ``/proc``, read the way the Prometheus
clients read them; elsewhere from ``resource`` and ``os``, with what those cannot tell left out.

``LoopLagMonitor`` measures how late the event loop wakes a task that asked to sleep: a loop
blocked by synchronous code or starved of CPU wakes it late, and every request waits as long::

    monitor = LoopLagMonitor(interval_s=0.5, on_lag=lag_histogram.observe)
    async with monitor.running():
        ...  # serve; read monitor.last_lag_s or monitor.take_max() when scraped
"""

from __future__ import annotations

import functools
import logging
import math
import os
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import anyio

from bastion._clock import SYSTEM_CLOCK, Clock
from bastion.exceptions import ConfigurationError

__all__ = ["LoopLagMonitor", "ProcessSample", "read_process"]

logger = logging.getLogger("bastion.observability")

_HAS_PROC = Path("/proc/self/stat").is_file()
# Fixed for the life of the process (and of the machine, for the boot time): read them once.
_CLK_TCK = float(os.sysconf("SC_CLK_TCK")) if _HAS_PROC else 100.0
_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if _HAS_PROC else 4096
# Without /proc there is no portable process start time; the import of bastion, which a server
# does while starting, is the closest thing at hand.
_IMPORTED_AT_S = time.time()


@dataclass(frozen=True, slots=True)
class ProcessSample:
    """What one process uses at one instant: the standard Prometheus process metrics."""

    cpu_seconds: float
    """User plus system CPU time consumed so far (``process_cpu_seconds_total``)."""
    resident_memory_bytes: int
    """Resident set size (``process_resident_memory_bytes``). Without ``/proc`` this is the peak
    resident size, the only one ``getrusage`` reports."""
    virtual_memory_bytes: int
    """Virtual memory size (``process_virtual_memory_bytes``); ``0`` without ``/proc``."""
    open_fds: int | None
    """Open file descriptors (``process_open_fds``); ``None`` when they cannot be counted."""
    max_fds: int | None
    """Soft limit on open file descriptors (``process_max_fds``); ``None`` when unlimited or
    unknown."""
    start_time_seconds: float
    """Start time, in seconds since the epoch (``process_start_time_seconds``). Without
    ``/proc``: when bastion was imported."""
    threads: int | None
    """OS threads of the process; ``None`` without ``/proc``."""


def read_process(pid: int | None = None) -> ProcessSample:
    """Sample a process's resource usage: the current one by default.

    It is cheap enough to run on every scrape: on Linux it reads ``/proc/<pid>/stat`` and lists
    ``/proc/<pid>/fd`` (plus ``/proc/<pid>/limits`` for another process), tens of microseconds
    in all.

    Args:
        pid: the process to sample; ``None`` for the current process.

    Returns:
        The sample.

    Raises:
        ProcessLookupError: there is no process ``pid`` (or it exited while being read).
        NotImplementedError: ``pid`` is another process and this platform has no ``/proc``.
    """
    own = pid is None or pid == os.getpid()
    if not _HAS_PROC:
        if not own:
            raise NotImplementedError("reading another process needs /proc (Linux)")
        return _read_portable()
    return _read_proc("self" if own else str(pid), own=own)


def _read_proc(name: str, *, own: bool) -> ProcessSample:
    directory = f"/proc/{name}"
    try:
        stat = _read_file(f"{directory}/stat")
    except FileNotFoundError:
        raise ProcessLookupError(f"no process {name}") from None
    # The command name (field 2) is in parentheses and may itself hold spaces and ')': the
    # fields that follow start after the *last* ')'. fields[0] is field 3 of proc_pid_stat(5).
    fields = stat[stat.rindex(b")") + 2 :].split()
    ticks = int(fields[11]) + int(fields[12])  # utime, stime
    try:
        # Names only: Path.iterdir() would build a Path per descriptor on every scrape.
        open_fds: int | None = len(os.listdir(f"{directory}/fd"))  # noqa: PTH208
    except PermissionError:  # another user's process
        open_fds = None
    except FileNotFoundError:
        raise ProcessLookupError(f"process {name} exited while being read") from None
    return ProcessSample(
        cpu_seconds=ticks / _CLK_TCK,
        resident_memory_bytes=int(fields[21]) * _PAGE_SIZE,
        virtual_memory_bytes=int(fields[20]),
        open_fds=open_fds,
        max_fds=_own_max_fds() if own else _max_fds_from_limits(directory),
        start_time_seconds=_boot_time() + int(fields[19]) / _CLK_TCK,
        threads=int(fields[17]),
    )


def _read_file(path: str) -> bytes:
    # os.open and os.read on a str path: half the cost of Path.read_bytes, which matters on
    # every scrape. /proc files report size 0, so read until the end.
    fd = os.open(path, os.O_RDONLY)
    try:
        chunks = []
        while chunk := os.read(fd, 4096):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


@functools.cache
def _boot_time() -> float:
    for line in _read_file("/proc/stat").splitlines():
        if line.startswith(b"btime "):
            return float(line.split()[1])
    return 0.0  # pragma: no cover -- every Linux kernel writes btime


def _own_max_fds() -> int | None:
    # The soft limit of the current process, without reading and parsing /proc/self/limits.
    import resource

    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return None if soft == resource.RLIM_INFINITY else soft


def _max_fds_from_limits(directory: str) -> int | None:
    try:
        limits = _read_file(f"{directory}/limits")
    except FileNotFoundError:
        raise ProcessLookupError(f"process {directory} exited while being read") from None
    except PermissionError:  # pragma: no cover -- limits is world-readable on current kernels
        return None
    for line in limits.splitlines():
        if line.startswith(b"Max open files"):
            soft = line.split()[3]
            return int(soft) if soft.isdigit() else None  # "unlimited"
    return None  # pragma: no cover -- every Linux kernel lists it


def _read_portable() -> ProcessSample:
    """The current process, from what every platform offers (``os.times`` and ``resource``)."""
    times = os.times()
    rss = 0
    max_fds: int | None = None
    try:
        import resource
    except ImportError:  # pragma: no cover -- Windows
        pass
    else:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        # ru_maxrss is in bytes on macOS and in kibibytes on Linux and the BSDs.
        rss = usage.ru_maxrss if sys.platform == "darwin" else usage.ru_maxrss * 1024
        max_fds = _own_max_fds()
    return ProcessSample(
        cpu_seconds=times.user + times.system,
        resident_memory_bytes=rss,
        virtual_memory_bytes=0,
        open_fds=None,
        max_fds=max_fds,
        start_time_seconds=_IMPORTED_AT_S,
        threads=None,
    )


class LoopLagMonitor:
    """Measures event-loop lag: how much later than asked the loop wakes a sleeping task.

    Every ``interval_s`` it notes when it should wake, sleeps, and records
    ``max(0, woke - expected)``. A healthy loop lags by well under a millisecond; a loop that
    runs blocking code lags by as long as that code runs, and so does every request it serves.

    Args:
        interval_s: time between measurements; also how long a stall may go unnoticed.
        clock: time source of the measurements.
        sleep: how to sleep (``anyio.sleep``); tests inject one that advances a manual clock.
        on_lag: called with every measurement in seconds, e.g. a histogram's ``observe``. It
            runs on the event loop, so it must be quick; an exception it raises is logged and the
            monitor goes on.

    Raises:
        ConfigurationError: ``interval_s`` is not a positive number.
    """

    __slots__ = (
        "_clock",
        "_count",
        "_interval_s",
        "_last_lag_s",
        "_max_lag_s",
        "_on_lag",
        "_sleep",
        "_sum_s",
    )

    def __init__(
        self,
        *,
        interval_s: float = 0.5,
        clock: Clock = SYSTEM_CLOCK,
        sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
        on_lag: Callable[[float], None] | None = None,
    ) -> None:
        if not (math.isfinite(interval_s) and interval_s > 0):
            raise ConfigurationError(
                f"interval_s must be a positive number of seconds, got {interval_s!r}"
            )
        self._interval_s = float(interval_s)
        self._clock = clock
        self._sleep = sleep
        self._on_lag = on_lag
        self._last_lag_s = 0.0
        self._max_lag_s = 0.0
        self._count = 0
        self._sum_s = 0.0

    @property
    def interval_s(self) -> float:
        """Time between measurements, in seconds."""
        return self._interval_s

    @property
    def last_lag_s(self) -> float:
        """The latest measurement, in seconds (``0.0`` before the first)."""
        return self._last_lag_s

    @property
    def max_lag_s(self) -> float:
        """The largest measurement since the last ``take_max()`` (or since the start)."""
        return self._max_lag_s

    @property
    def count(self) -> int:
        """How many measurements were taken."""
        return self._count

    @property
    def sum_s(self) -> float:
        """The sum of all measurements, in seconds (with ``count``: the mean lag)."""
        return self._sum_s

    def take_max(self) -> float:
        """Return the largest lag since the previous call and start a new maximum from zero.

        A scrape that reports this sees every stall between two scrapes, however short, which a
        gauge of the last measurement would miss.
        """
        largest, self._max_lag_s = self._max_lag_s, 0.0
        return largest

    async def run(self) -> None:
        """Measure forever; cancel the task that runs it to stop."""
        while True:
            expected = self._clock.monotonic() + self._interval_s
            await self._sleep(self._interval_s)
            self._record(max(0.0, self._clock.monotonic() - expected))

    @asynccontextmanager
    async def running(self) -> AsyncIterator[LoopLagMonitor]:
        """Run the monitor in a background task for the duration of the ``async with`` block.

        An exception raised in the block propagates as it is, not wrapped in an
        ``ExceptionGroup``.

        Yields:
            The monitor itself.
        """
        failure: Exception | None = None
        async with anyio.create_task_group() as task_group:
            task_group.start_soon(self.run, name="bastion-loop-lag-monitor")
            try:
                yield self
            except Exception as exc:
                # Re-raised below, outside the task group, which would otherwise wrap the
                # block's own error in an ExceptionGroup.
                failure = exc
            finally:
                task_group.cancel_scope.cancel()
        if failure is not None:
            raise failure

    def _record(self, lag_s: float) -> None:
        self._last_lag_s = lag_s
        self._max_lag_s = max(self._max_lag_s, lag_s)
        self._count += 1
        self._sum_s += lag_s
        if self._on_lag is not None:
            try:
                self._on_lag(lag_s)
            except Exception:  # a broken metrics hook must not stop the measurements
                logger.exception("loop lag callback %r failed", self._on_lag)
