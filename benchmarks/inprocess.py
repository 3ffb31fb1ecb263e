"""In-process mode: every app's ASGI callable driven directly, with no network and no server.

What one request costs here is everything between the server handing over a scope and the last
response message: middleware, routing, validation, serialization. Not measured: sockets, HTTP
parsing, the server itself (HTTP mode covers those). No HTTP client either: httpx's own cost per
request would be larger than some of the differences measured. ``driver.py`` plays the server's
part, each app in its own worker process; this module runs the rounds and collects the samples.

Method, and why (this project's machines are shared and virtual: the same code can run 1.5 times
slower for a second or two, then fast again, whatever runs inside the VM):

- Warm-up: every app serves ``warmup`` requests; the last fifth *calibrates* its batch size so
  that each app's batch lasts about ``batch_ms``.
- Rounds: in each round every app serves one batch of sequential requests (no concurrency: this
  measures per-request overhead), apps taking turns in an order rotated every round. Rounds are
  short (``batch_ms`` per app: 10 ms by default), so the apps of one round ran under the same
  conditions; and many (``rounds``), so medians have something to work with. Longer batches
  were tried: 40 ms batches doubled the spread of the paired ratios on this project's machine.
- One sample is the mean µs/request of one batch (``time.perf_counter_ns`` around it); the
  worker's CPU time (``time.process_time_ns``, all its threads) is taken around the same batch.
- Ratios are **paired**: app / baseline within each round, then the median over rounds. A slow
  spell that slows everything by the same factor cancels out of a paired ratio; it does not
  cancel out of a ratio of medians, which the report prints as well.
- Quiet rounds: the CPU used by *other* processes is measured over windows of about a second;
  the rounds of a window in which they used more than ``quiet_share`` of the machine are kept in
  the data but not counted, and rounds go on until ``rounds`` quiet ones were measured (or
  ``max_rounds`` were run). Rounds are judged by the machine's load, never by their results.
- Fresh processes: the rounds are split between ``processes`` sets of worker processes, started
  one set after the other. Where a process's objects land in memory, and its string-hash seed,
  make one app a few percent faster or slower *for the whole life of that process*: on this
  project's machine, whole runs of one process per app disagreed by several times each run's
  own confidence interval. More processes turn that bias into spread that the median sees
  (pyperf runs 20 processes per benchmark for the same reason).
  Batch sizes are calibrated in the first set and kept for the others.
- Function calls per request are counted afterwards with ``cProfile`` over a separate batch: a
  deterministic cost proxy that no noise can move.
"""

from __future__ import annotations

import multiprocessing
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from benchmarks.driver import worker_main
from benchmarks.machine import CpuMeter

if TYPE_CHECKING:
    from collections.abc import Sequence
    from multiprocessing.process import BaseProcess

    from benchmarks.driver import Command
    from benchmarks.scenarios import Scenario

__all__ = ["QUIET_WINDOW_S", "InProcessConfig", "InProcessResult", "WorkerError", "run"]

QUIET_WINDOW_S = 1.0
"""Rounds are judged quiet or noisy together, over windows of about this many seconds."""


@dataclass(frozen=True, slots=True, kw_only=True)
class InProcessConfig:
    """How much to measure."""

    rounds: int = 201
    """Quiet rounds wanted; every app gives one sample per round."""
    max_rounds: int = 800
    """Rounds after which the run stops even if fewer than ``rounds`` were quiet."""
    quiet_share: float = 0.10
    """A round is quiet when other processes used at most this share of the machine's CPU."""
    batch_ms: float = 10.0
    """Target duration of one app's batch; each app's request count is calibrated to it."""
    requests: int | None = None
    """Requests per batch for every app instead of calibrating (``None``: calibrate)."""
    warmup: int = 1000
    """Requests per app before the first round (caches, lazy middleware stacks, the
    interpreter's specialization); the last fifth calibrates the batch size."""
    profiled: int = 200
    """Requests per app, after the rounds, run under ``cProfile`` to count function calls."""
    processes: int = 5
    """Sets of fresh worker processes (one per app each) that share the rounds: see the module
    docstring. Each set runs ``rounds / processes`` quiet rounds (rounded up)."""


@dataclass(slots=True)
class InProcessResult:
    """Samples per app, in µs/request, one per round, and what the rounds looked like."""

    loop: str = ""
    """Class of the event loop that ran the apps."""
    batch_requests: dict[str, int] = field(default_factory=dict)
    """App name -> requests per batch (calibrated to ``batch_ms`` unless fixed)."""
    samples_us: dict[str, list[float]] = field(default_factory=dict)
    """App name -> mean wall-clock µs/request of each round, in round order."""
    cpu_samples_us: dict[str, list[float]] = field(default_factory=dict)
    """App name -> mean CPU µs/request (the app's process, all threads) of each round. It does
    not grow while the process waits for a CPU another process holds."""
    round_orders: list[list[str]] = field(default_factory=list)
    """The order apps ran in, per round."""
    round_others_share: list[float | None] = field(default_factory=list)
    """Share of the machine's CPU other processes used during each round."""
    round_quiet: list[bool] = field(default_factory=list)
    """Whether each round was quiet (``others <= quiet_share``); the report uses quiet rounds."""
    others_cpu_share: float | None = None
    """Share of the machine's CPU other processes used during all rounds (``None``: unknown)."""
    calls_per_request: dict[str, float] = field(default_factory=dict)
    """App name -> function calls (Python and built-in) per request, counted by ``cProfile``."""


class WorkerError(RuntimeError):
    """An app's worker failed: it did not build, start, answer correctly or stop."""


class _Worker:
    """The coordinator's handle on one app's worker process."""

    def __init__(self, name: str, scenario: Scenario) -> None:
        context = multiprocessing.get_context("spawn")
        self.name = name
        self._connection, child = context.Pipe()
        self._process: BaseProcess = context.Process(
            target=worker_main, args=(name, scenario, child), name=f"bench-{name}", daemon=True
        )
        self._process.start()
        child.close()
        self.cpu_s = 0.0
        """The worker's CPU seconds as of its last answer."""

    def answer(self) -> Any:
        """Wait for the worker's next answer and return its result.

        Raises:
            WorkerError: the worker reported an error or died.
        """
        try:
            status, result, cpu_s = self._connection.recv()
        except EOFError:
            raise WorkerError(f"{self.name}: the worker died ({self._process.exitcode})") from None
        if status != "ok":
            raise WorkerError(f"{self.name}: {result}")
        self.cpu_s = cpu_s
        return result

    def ask(self, command: Command) -> Any:
        """Send ``command`` and return the worker's answer."""
        self._connection.send(command)
        return self.answer()

    def stop(self) -> str | None:
        """Ask the worker to shut its app down, then reap it (killing it if it hangs).

        Returns what went wrong while stopping (a failed lifespan shutdown), or ``None``.
        """
        problem = None
        try:
            if self._process.is_alive():
                self.ask(("stop", 0))
        except (WorkerError, OSError) as exc:
            problem = str(exc)
        finally:
            self._process.join(timeout=10)
            if self._process.is_alive():
                self._process.kill()
                self._process.join()
            self._connection.close()
        return problem


def _own_cpu_s(workers: Sequence[_Worker]) -> float:
    return sum(worker.cpu_s for worker in workers)


def _round(workers: Sequence[_Worker], result: InProcessResult) -> None:
    """Every app serves one batch, in an order rotated each round."""
    shift = len(result.round_orders) % len(workers)
    order = [*workers[shift:], *workers[:shift]]
    result.round_orders.append([worker.name for worker in order])
    for worker in order:
        count = result.batch_requests[worker.name]
        wall_ns, cpu_ns = worker.ask(("batch", count))
        result.samples_us[worker.name].append(wall_ns / count / 1000)
        result.cpu_samples_us[worker.name].append(cpu_ns / count / 1000)


def _rounds(
    workers: Sequence[_Worker], config: InProcessConfig, result: InProcessResult, last_round: int
) -> int:
    """Run rounds for about ``QUIET_WINDOW_S`` (never past ``last_round``); judge them together;
    return how many were quiet.

    ``/proc/stat`` counts in 10 ms ticks, too coarse to judge one short round on its own, so the
    rounds of a window share one verdict.
    """
    first = len(result.round_orders)
    meter = CpuMeter()
    meter.start(extra_own_s=_own_cpu_s(workers))
    deadline = time.monotonic() + QUIET_WINDOW_S
    while time.monotonic() < deadline and len(result.round_orders) < last_round:
        _round(workers, result)
    share = meter.others_share(extra_own_s=_own_cpu_s(workers))
    quiet = share is None or share <= config.quiet_share
    count = len(result.round_orders) - first
    result.round_others_share += [share] * count
    result.round_quiet += [quiet] * count
    return count if quiet else 0


def _print_progress(result: InProcessResult, quiet_rounds: int, wanted: int) -> None:
    share = result.round_others_share[-1]
    busy = "?" if share is None else f"{share:.0%}"
    verdict = "" if result.round_quiet[-1] else ", NOISY, not counted"
    medians = "  ".join(
        f"{name} {statistics.median(samples[-10:]):.1f}"
        for name, samples in result.samples_us.items()
    )
    print(
        f"  inprocess round {len(result.round_orders)}: {quiet_rounds}/{wanted} quiet in this set "
        f"(others {busy} in the last second{verdict}); last 10 medians µs: {medians}",
        file=sys.stderr,
        flush=True,
    )


def _measure(
    workers: Sequence[_Worker],
    config: InProcessConfig,
    result: InProcessResult,
    *,
    rounds: int,
    max_rounds: int,
    progress: bool,
) -> None:
    """One set of workers: warm up, then run until ``rounds`` more quiet rounds (at most
    ``max_rounds`` more rounds); batch sizes are calibrated by the first set only."""
    for worker in workers:
        result.loop = worker.answer()  # the worker started its app and checked one response
    for worker in workers:
        per_request_ns = worker.ask(("warmup", config.warmup))
        if worker.name not in result.batch_requests:
            calibrated = max(10, round(config.batch_ms * 1e6 / per_request_ns))
            result.batch_requests[worker.name] = config.requests or calibrated
            result.samples_us[worker.name] = []
            result.cpu_samples_us[worker.name] = []
    quiet_rounds = 0
    last_round = len(result.round_orders) + max_rounds
    while quiet_rounds < rounds and len(result.round_orders) < last_round:
        quiet_rounds += _rounds(workers, config, result, last_round)
        if progress:
            _print_progress(result, quiet_rounds, rounds)
    for worker in workers:
        result.calls_per_request[worker.name] = worker.ask(("calls", config.profiled))


def run(
    apps: Sequence[str],
    scenario: Scenario,
    config: InProcessConfig,
    *,
    progress: bool = False,
) -> InProcessResult:
    """Measure ``apps`` (registry names) in-process; see the module docstring.

    Raises:
        WorkerError: an app failed to build, start, answer correctly or stop.
    """
    result = InProcessResult()
    sets = max(1, config.processes)
    overall = CpuMeter()
    overall.start()
    finished_cpu_s = 0.0  # of the workers of earlier sets: ours, not other processes'
    for index in range(sets):
        rounds = -(-config.rounds // sets)
        max_rounds = -(-config.max_rounds // sets)
        workers: list[_Worker] = []
        try:
            # Started together: their imports and startups overlap; nothing is measured yet.
            workers.extend(_Worker(name, scenario) for name in apps)
            _measure(
                workers, config, result, rounds=rounds, max_rounds=max_rounds, progress=progress
            )
        finally:
            # Every worker is reaped, even when one of them failed; the first failure propagates.
            problems = [problem for worker in workers if (problem := worker.stop())]
            finished_cpu_s += _own_cpu_s(workers)
        if problems:
            raise WorkerError("; ".join(problems))
        if progress:
            print(f"  inprocess: process set {index + 1}/{sets} done", file=sys.stderr, flush=True)
    result.others_cpu_share = overall.others_share(extra_own_s=finished_cpu_s)
    return result
