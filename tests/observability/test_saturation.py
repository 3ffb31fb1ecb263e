"""Saturation readers: process resource usage from /proc, and event-loop lag."""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import anyio.lowlevel
import pytest

from bastion._clock import ManualClock
from bastion.exceptions import ConfigurationError
from bastion.observability import saturation
from bastion.observability.saturation import LoopLagMonitor, ProcessSample, read_process

linux_only = pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="needs /proc")


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    """A child process that sleeps until it is killed, read only once it runs ``sleep``.

    Right after ``Popen`` returns, the child may still be between fork and exec, with no memory
    of its own mapped yet: reading it then finds a resident size of 0.
    """
    process = subprocess.Popen(["sleep", "30"], stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        # Read as the test will: /proc/<pid>/stat's resident size lags statm's (the kernel
        # batches its counters per thread), and mid-exec a child has a comm of "sleep" and a
        # page or two before its program is mapped.
        with contextlib.suppress(OSError):
            sample = read_process(process.pid)
            if sample.resident_memory_bytes > 0 and sample.virtual_memory_bytes > 1 << 20:
                break
        time.sleep(0.005)
    try:
        yield process
    finally:
        process.kill()
        process.wait()


# -------------------------------------------------------------------------------- read_process


@linux_only
def test_current_process_sample_is_sane() -> None:
    """The current process has memory, CPU time, stdio descriptors, a thread and a past start."""
    sample = read_process()
    assert sample.resident_memory_bytes > 0
    assert sample.virtual_memory_bytes >= sample.resident_memory_bytes
    assert sample.cpu_seconds >= 0
    assert sample.open_fds is not None
    assert sample.open_fds >= 3
    assert sample.max_fds is None or sample.max_fds >= sample.open_fds
    assert sample.threads is not None
    assert sample.threads >= 1
    assert 0 < sample.start_time_seconds <= time.time()


@linux_only
def test_own_pid_is_the_current_process() -> None:
    """Passing our own pid reads the same process as passing nothing."""
    by_pid = read_process(os.getpid())
    assert read_process().start_time_seconds == by_pid.start_time_seconds
    assert read_process().max_fds == by_pid.max_fds


@linux_only
def test_opening_a_file_counts_as_an_open_fd(tmp_path: Path) -> None:
    """An open file raises open_fds by at least one, and closing it lowers it again."""
    before = read_process().open_fds
    assert before is not None
    with (tmp_path / "held").open("wb"):
        during = read_process().open_fds
        assert during is not None
        assert during >= before + 1
    assert before == read_process().open_fds


@linux_only
def test_cpu_seconds_grow_with_work() -> None:
    """Burning CPU shows up in cpu_seconds (kernel ticks are 10 ms, so burn 0.1 s)."""
    before = read_process().cpu_seconds
    start = time.process_time()
    while time.process_time() - start < 0.1:
        pass
    assert read_process().cpu_seconds - before >= 0.05


@linux_only
def test_reads_another_live_process(sleeper: subprocess.Popen[bytes]) -> None:
    """Another process is read by pid: its start time is when it was launched, its limits ours."""
    launched_at = time.time()
    sample = read_process(sleeper.pid)
    # btime has whole-second resolution, so the start time is known to about a second.
    assert abs(sample.start_time_seconds - launched_at) < 2
    assert 1 == sample.threads
    assert sample.resident_memory_bytes > 0
    assert sample.open_fds is not None
    assert read_process().max_fds == sample.max_fds  # inherited, read from /proc/<pid>/limits


@linux_only
def test_a_process_that_exited_is_not_found(sleeper: subprocess.Popen[bytes]) -> None:
    """Once a process is gone and reaped, reading it raises ProcessLookupError."""
    sleeper.kill()
    sleeper.wait()
    with pytest.raises(ProcessLookupError):
        read_process(sleeper.pid)


@linux_only
def test_command_names_with_parentheses_and_spaces_are_parsed(tmp_path: Path) -> None:
    """A command name holding ') (' and spaces does not shift the fields of /proc/<pid>/stat."""
    name = "x) y (z"
    executable = tmp_path / name
    executable.symlink_to(sys.executable)
    process = subprocess.Popen(
        [str(executable), "-c", "print('ready', flush=True); import time; time.sleep(30)"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        assert b"ready\n" == process.stdout.readline()
        assert name == Path(f"/proc/{process.pid}/comm").read_text().rstrip("\n")
        sample = read_process(process.pid)
    finally:
        process.kill()
        process.wait()
        assert process.stdout is not None
        process.stdout.close()
    assert sample.threads is not None
    assert sample.threads >= 1
    assert sample.resident_memory_bytes > 1024 * 1024  # a Python interpreter, not garbage
    assert 0 < sample.start_time_seconds <= time.time()


def test_without_proc_the_current_process_is_read_portably(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without /proc: CPU time and peak memory from getrusage, no descriptors or threads."""
    monkeypatch.setattr(saturation, "_HAS_PROC", False)
    sample = read_process()
    assert sample.cpu_seconds > 0
    assert sample.resident_memory_bytes > 0
    assert 0 == sample.virtual_memory_bytes
    assert sample.open_fds is None
    assert sample.threads is None
    assert sample.start_time_seconds <= time.time()


def test_without_proc_another_process_cannot_be_read(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without /proc, asking for another pid says so instead of returning our own numbers."""
    monkeypatch.setattr(saturation, "_HAS_PROC", False)
    with pytest.raises(NotImplementedError, match="/proc"):
        read_process(os.getppid())


def test_process_sample_is_frozen() -> None:
    """A sample is an immutable value."""
    sample = ProcessSample(
        cpu_seconds=1.0,
        resident_memory_bytes=1,
        virtual_memory_bytes=1,
        open_fds=None,
        max_fds=None,
        start_time_seconds=0.0,
        threads=None,
    )
    with pytest.raises(AttributeError):
        sample.cpu_seconds = 2.0  # type: ignore[misc]


# ------------------------------------------------------------------------------ LoopLagMonitor


class ScriptExhaustedError(Exception):
    """The scripted sleep ran out of delays: ends a ``run()`` under test."""


class ScriptedSleep:
    """A sleep that advances a clock by the interval plus the next delay (the lag to simulate).

    When the delays run out it raises ``ScriptExhaustedError`` (``then="stop"``) or blocks until
    cancelled and notes the cancellation (``then="block"``).
    """

    def __init__(self, clock: ManualClock, delays: list[float], *, then: str = "stop") -> None:
        self.clock = clock
        self.pending = list(delays)
        self.then = then
        self.cancelled = False

    async def __call__(self, seconds: float) -> None:
        """Advance the clock, or stop or block once the script is played."""
        if self.pending:
            self.clock.advance(seconds + self.pending.pop(0))
            await anyio.lowlevel.checkpoint()
            return
        if self.then == "stop":
            raise ScriptExhaustedError
        try:
            await anyio.sleep_forever()
        except anyio.get_cancelled_exc_class():
            self.cancelled = True
            raise


@pytest.mark.anyio
async def test_lag_is_how_much_later_than_asked_the_sleep_returns() -> None:
    """Each measurement is exactly the injected delay; a wake-up on time is zero lag."""
    clock = ManualClock()
    seen: list[float] = []
    monitor = LoopLagMonitor(
        interval_s=0.5,
        clock=clock,
        sleep=ScriptedSleep(clock, [0.0, 0.25, 0.0625]),
        on_lag=seen.append,
    )
    with pytest.raises(ScriptExhaustedError):
        await monitor.run()
    assert 0.5 == monitor.interval_s
    assert [0.0, 0.25, 0.0625] == seen
    assert 0.0625 == monitor.last_lag_s
    assert 3 == monitor.count
    assert 0.3125 == monitor.sum_s


@pytest.mark.anyio
async def test_an_early_wake_up_is_zero_lag_not_negative() -> None:
    """A sleep that returns before the interval elapsed counts as no lag at all."""
    clock = ManualClock()
    monitor = LoopLagMonitor(interval_s=0.5, clock=clock, sleep=ScriptedSleep(clock, [-0.25]))
    with pytest.raises(ScriptExhaustedError):
        await monitor.run()
    assert 0.0 == monitor.last_lag_s
    assert 1 == monitor.count


@pytest.mark.anyio
async def test_take_max_returns_the_largest_lag_and_resets_it() -> None:
    """take_max() reports the worst lag since the previous call, then starts again from zero."""
    clock = ManualClock()
    monitor = LoopLagMonitor(
        interval_s=0.5, clock=clock, sleep=ScriptedSleep(clock, [0.125, 0.5, 0.25])
    )
    assert 0.0 == monitor.take_max()
    with pytest.raises(ScriptExhaustedError):
        await monitor.run()
    assert 0.5 == monitor.max_lag_s
    assert 0.5 == monitor.take_max()
    assert 0.0 == monitor.max_lag_s
    assert 0.0 == monitor.take_max()
    assert 0.25 == monitor.last_lag_s  # the latest measurement is not reset


@pytest.mark.anyio
async def test_a_failing_callback_is_logged_and_measuring_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An exception in on_lag is logged with its traceback; the monitor keeps measuring."""
    clock = ManualClock()

    def broken(lag_s: float) -> None:
        raise RuntimeError("histogram is gone")

    monitor = LoopLagMonitor(
        interval_s=0.5, clock=clock, sleep=ScriptedSleep(clock, [0.125, 0.25]), on_lag=broken
    )
    with (
        caplog.at_level(logging.ERROR, logger="bastion.observability"),
        pytest.raises(ScriptExhaustedError),
    ):
        await monitor.run()
    assert 2 == monitor.count
    assert 0.25 == monitor.max_lag_s
    assert 2 == len(caplog.records)
    assert caplog.records[0].exc_info is not None


@pytest.mark.anyio
async def test_running_measures_in_the_background_and_cancels_on_exit() -> None:
    """running() measures while the block runs and cancels the measuring task when it ends."""
    clock = ManualClock()
    measured = anyio.Event()
    seen: list[float] = []

    def on_lag(lag_s: float) -> None:
        seen.append(lag_s)
        if len(seen) == 2:
            measured.set()

    sleep = ScriptedSleep(clock, [0.125, 0.25], then="block")
    monitor = LoopLagMonitor(
        interval_s=0.5,
        clock=clock,
        sleep=sleep,
        on_lag=on_lag,
    )
    with anyio.fail_after(5):
        async with monitor.running() as running:
            assert monitor is running
            await measured.wait()
    assert [0.125, 0.25] == seen
    assert sleep.cancelled


@pytest.mark.anyio
async def test_an_error_in_the_block_propagates_unwrapped() -> None:
    """An exception raised inside running() comes out as itself, not in an ExceptionGroup."""
    clock = ManualClock()
    sleep = ScriptedSleep(clock, [], then="block")
    monitor = LoopLagMonitor(clock=clock, sleep=sleep)

    async def fail_inside() -> None:
        async with monitor.running():
            await anyio.lowlevel.checkpoint()
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        await fail_inside()
    assert sleep.cancelled


@pytest.mark.parametrize("interval_s", [0.0, -1.0, float("nan"), float("inf")])
def test_interval_must_be_a_positive_number(interval_s: float) -> None:
    """A zero, negative or non-finite interval is a configuration error."""
    with pytest.raises(ConfigurationError, match="interval_s"):
        LoopLagMonitor(interval_s=interval_s)


@pytest.mark.anyio
async def test_real_blocking_code_is_measured_as_lag() -> None:
    """With the real clock and sleep, 0.2 s of blocking code on the loop shows as >= 0.15 s."""
    monitor = LoopLagMonitor(interval_s=0.05)
    async with monitor.running():
        await anyio.sleep(0.01)  # the monitor is now asleep, due back 0.04 s from now
        time.sleep(0.2)  # noqa: ASYNC251 -- the blocking call whose lag is under test
        await anyio.sleep(0.01)
    assert monitor.max_lag_s >= 0.15
