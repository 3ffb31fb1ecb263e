"""Rate-limit decisions on Redis: bastion's ``RateLimiter`` against the ``limits`` library.

``uv run --group bench python -m benchmarks.ratelimit [--redis-url URL] [--seconds N]
[--concurrency C] [--wait-quiet S]``

Every subject decides for the same handful of client keys, on the same Redis, in one run, with a
quota so large it never refuses (``1000000/minute``), so every decision does the full work of an
admitted request and both libraries write their state. Without ``--redis-url`` a throw-away
``redis-server`` is started on a free port (no persistence) and stopped at the end.

Subjects (rows):

- ``bastion-sliding``: ``RateLimiter(RedisStore.from_url(url))`` and ``limiter.hit(Limit(...),
  key)``: the default algorithm, the two-window sliding counter, one ``EVALSHA``.
- ``bastion-gcra``: the same with ``algorithm="gcra"``.
- ``limits-moving``: ``limits.aio.strategies.MovingWindowRateLimiter`` on
  ``limits.aio.storage.RedisStorage("async+redis://...", implementation="redispy")``,
  ``hit(RateLimitItemPerMinute(1000000), key)``: the reference of the budget.
- ``limits-sliding-counter``: ``SlidingWindowCounterRateLimiter`` on the same storage, when the
  installed ``limits`` has it: the algorithm closest to bastion's default.

Method, as in the rest of the harness (``benchmarks/README.md``):

- Warm-up: every subject decides for ``--warmup`` seconds sequentially and as many
  concurrently (scripts loaded, connection pools filled); then ``gc.freeze()``.
- Rounds: in each round every subject runs one *sequential* batch (one decision at a time:
  latency) and one *concurrent* batch (``--concurrency`` asyncio tasks deciding in a loop:
  throughput), each lasting ``--seconds / --rounds``; subjects take turns in an order rotated
  every round. A batch's sample is its decisions per second; its latency percentiles, the CPU
  time of this process and of the Redis server per decision are recorded next to it.
- Ratios are **paired**: subject / reference decisions per second within each round, then the
  median over rounds, with a distribution-free 95 % confidence interval of that median.
- Quiet rounds: the CPU used by other processes (``/proc/stat`` minus this process and the Redis
  server, when the server runs on this machine) is measured over each round; rounds where they
  used more than ``--quiet-share`` are kept in the JSON but not counted, and rounds go on until
  ``--rounds`` quiet ones were measured (at most ``--max-rounds``).
- Pinning: when this command starts Redis and two CPUs are usable, the server runs on one CPU
  (``taskset``) and this process on the other, so they do not take turns on one core.
- Commands: the Redis ``INFO commandstats`` deltas around every batch give the commands the
  server ran per decision, *including* those a Lua script runs (``redis.call`` counts there as
  well). Round trips are counted apart, after the rounds, for ``--count`` decisions per
  subject: the commands the client wrote to its sockets, and the commands ``MONITOR`` saw
  arrive from a client rather than from a script.

Exit status: 0 when every budget passed, 1 when one failed or a decision was refused or degraded.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import os
import shlex
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from benchmarks.machine import (
    CpuMeter,
    free_port,
    git_revision,
    machine_info,
    package_versions,
    wait_until_quiet,
)
from benchmarks.report import Stats, _paired, write_report

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterator, Sequence

    from redis.asyncio import Redis

__all__ = ["RatelimitConfig", "main"]

RESULTS = Path(__file__).resolve().parent / "results"

RATE_COUNT = 1_000_000
"""The quota per minute: far above what one run can spend, so no decision is ever a refusal."""
RATE = f"{RATE_COUNT}/minute"

PACKAGES = ("bastion", "redis", "hiredis", "limits", "uvloop")
"""Distributions whose versions the report records."""
MODES = ("sequential", "concurrent")
MIN_QUIET_ROUNDS = 5
"""Fewer quiet rounds than this (or than asked for) and the statistics use every round."""
_STARTUP_TIMEOUT_S = 10.0


@dataclass(frozen=True, slots=True, kw_only=True)
class RatelimitConfig:
    """How much to measure."""

    seconds: float = 12.0
    """Measured seconds per subject and mode, split over the rounds."""
    rounds: int = 24
    """Quiet rounds wanted; every subject gives one sample per mode and round."""
    max_rounds: int = 48
    """Rounds after which the run stops even if fewer than ``rounds`` were quiet."""
    concurrency: int = 32
    """asyncio tasks deciding at once in the concurrent batches."""
    keys: int = 8
    """Distinct client keys the decisions cycle through."""
    warmup_s: float = 1.0
    """Warm-up seconds per subject and mode."""
    count: int = 640
    """Decisions per subject whose round trips are counted (socket writes and ``MONITOR``)."""
    quiet_share: float = 0.10
    """A round is quiet when other processes used at most this share of the machine's CPU."""
    loop: str = "asyncio"
    """Event loop: the stock ``asyncio`` one, or ``uvloop``."""
    pin_cpus: bool = True
    """Pin a Redis started here and this process to different CPUs."""

    @property
    def batch_s(self) -> float:
        """Duration of one subject's batch in one mode and round."""
        return self.seconds / self.rounds


# -- subjects -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Opened:
    """A subject ready to decide: ``decide(key)`` is true for an admitted, regular decision."""

    decide: Callable[[str], Awaitable[bool]]
    close: Callable[[], Awaitable[None]]


@dataclass(frozen=True, slots=True, kw_only=True)
class Subject:
    """One way to decide on Redis (a row of the report)."""

    name: str
    title: str
    description: str
    open: Callable[[str, str], Awaitable[Opened]]
    """Opens the subject on a Redis URL, with its keys under a prefix of its own."""


async def _open_bastion(url: str, prefix: str, *, gcra: bool, plain: bool = False) -> Opened:
    from redis.asyncio import Redis as RedisClient

    from bastion.ratelimit import Limit, RateLimiter
    from bastion.stores.redis import RedisStore

    close: Callable[[], Awaitable[None]]
    if plain:
        client = RedisClient.from_url(url)
        store = RedisStore(client, prefix=prefix)
        close = client.aclose
    else:
        store = RedisStore.from_url(url, prefix=prefix)
        close = store.aclose
    limiter = RateLimiter(store)
    limit = Limit(RATE, algorithm="gcra" if gcra else "sliding_window")
    hit = limiter.hit

    async def decide(key: str) -> bool:
        decision = await hit(limit, key)
        # A degraded decision was made without Redis (fail_open): not a measurement.
        return decision.allowed and not decision.degraded

    return Opened(decide, close)


async def _open_bastion_sliding(url: str, prefix: str) -> Opened:
    return await _open_bastion(url, prefix, gcra=False)


async def _open_bastion_gcra(url: str, prefix: str) -> Opened:
    return await _open_bastion(url, prefix, gcra=True)


async def _open_bastion_plain(url: str, prefix: str) -> Opened:
    return await _open_bastion(url, prefix, gcra=False, plain=True)


async def _open_floor(url: str, prefix: str) -> Opened:
    from redis.asyncio import Redis as RedisClient

    client = RedisClient.from_url(url)
    script = client.register_script("return 1")

    async def decide(key: str) -> bool:
        return bool(await script(keys=[f"{prefix}:{key}"], args=[]))

    return Opened(decide, client.aclose)


def _limits_uri(url: str) -> str:
    """``limits``' spelling of a Redis URL: ``async+redis://``, ``async+redis+unix://``."""
    if url.startswith("unix://"):
        return "async+redis+unix://" + url.removeprefix("unix://")
    return "async+" + url


async def _open_limits(url: str, prefix: str, *, strategy: str) -> Opened:
    from limits import RateLimitItemPerMinute
    from limits.aio import strategies
    from limits.aio.storage import RedisStorage

    storage = RedisStorage(_limits_uri(url), implementation="redispy", key_prefix=prefix)
    limiter = getattr(strategies, strategy)(storage)
    item = RateLimitItemPerMinute(RATE_COUNT)
    hit = limiter.hit

    async def decide(key: str) -> bool:
        return bool(await hit(item, key))

    # limits has no close(); its redis-py client is the bridge's ``storage``.
    client: Redis = cast("Any", storage).bridge.storage
    return Opened(decide, client.aclose)


async def _open_limits_moving(url: str, prefix: str) -> Opened:
    return await _open_limits(url, prefix, strategy="MovingWindowRateLimiter")


async def _open_limits_sliding(url: str, prefix: str) -> Opened:
    return await _open_limits(url, prefix, strategy="SlidingWindowCounterRateLimiter")


SUBJECTS: tuple[Subject, ...] = (
    Subject(
        name="bastion-sliding",
        title="bastion RateLimiter, sliding window",
        description=(
            'RateLimiter(RedisStore.from_url(url)), limiter.hit(Limit("1000000/minute"), key): '
            "the default algorithm (two-window weighted counter), one EVALSHA per decision; "
            "RedisStore's defaults (blocking pool of 64, 0.5 s socket timeouts, health gate)."
        ),
        open=_open_bastion_sliding,
    ),
    Subject(
        name="bastion-gcra",
        title="bastion RateLimiter, GCRA",
        description=(
            'The same with Limit("1000000/minute", algorithm="gcra"): a token bucket held in '
            "one timestamp."
        ),
        open=_open_bastion_gcra,
    ),
    Subject(
        name="bastion-sliding-plain",
        title="bastion RateLimiter, sliding window, plain redis-py client",
        description=(
            "bastion-sliding on RedisStore(Redis.from_url(url)) instead of RedisStore.from_url: "
            "redis-py's default pool and no socket timeouts, as limits uses it. Not a "
            "recommended setup (no bound on connections, no timeouts); it shows what the "
            "store's client settings cost."
        ),
        open=_open_bastion_plain,
    ),
    Subject(
        name="limits-moving",
        title="limits MovingWindowRateLimiter",
        description=(
            'limits.aio.strategies.MovingWindowRateLimiter(RedisStorage("async+redis://...", '
            'implementation="redispy")).hit(RateLimitItemPerMinute(1000000), key): a list '
            "of timestamps per key, one EVALSHA per decision; redis-py's default pool."
        ),
        open=_open_limits_moving,
    ),
    Subject(
        name="limits-sliding-counter",
        title="limits SlidingWindowCounterRateLimiter",
        description=(
            "limits.aio.strategies.SlidingWindowCounterRateLimiter on the same storage: two "
            "counters per key, the algorithm closest to bastion's default."
        ),
        open=_open_limits_sliding,
    ),
    Subject(
        name="redis-py-floor",
        title="redis-py EVALSHA floor",
        description=(
            'redis-py\'s Redis.from_url(url).register_script("return 1") called with one key: '
            "one EVALSHA of a script that does nothing, through the client both libraries use. "
            "No rate limiter can decide faster on this client; the floor, like the raw ASGI row "
            "of the in-process report."
        ),
        open=_open_floor,
    ),
)

BASTION = "bastion-sliding"
REFERENCE = "limits-moving"
MIN_SPEEDUP = 1.5
"""Budget: bastion's decisions per second at least this many times the reference's."""

COMPARISONS: tuple[tuple[str, str], ...] = (
    (BASTION, REFERENCE),
    (BASTION, "limits-sliding-counter"),
    ("bastion-gcra", REFERENCE),
    ("bastion-gcra", BASTION),
    ("bastion-sliding-plain", BASTION),
    ("redis-py-floor", REFERENCE),
)
"""(subject, reference): throughput ratios printed for both modes."""


def _available_subjects() -> tuple[list[Subject], list[str]]:
    """The subjects this installation can run, and notes about those it cannot."""
    notes: list[str] = []
    try:
        from limits.aio import strategies
    except ImportError:
        notes.append("limits is not installed (`--group bench`): its rows were not measured.")
        return [s for s in SUBJECTS if not s.name.startswith("limits-")], notes
    chosen = []
    for subject in SUBJECTS:
        if subject.name == "limits-sliding-counter" and not hasattr(
            strategies, "SlidingWindowCounterRateLimiter"
        ):
            notes.append("this limits has no SlidingWindowCounterRateLimiter: row not measured.")
            continue
        chosen.append(subject)
    return chosen, notes


# -- a throw-away Redis ---------------------------------------------------------------------------


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


@dataclass(slots=True)
class LocalRedis:
    """A ``redis-server`` this command started: where it listens and which CPU it got."""

    url: str
    cpu: int | None
    log: Path


@contextlib.contextmanager
def _throwaway_redis(cpu: int | None) -> Iterator[LocalRedis]:
    """Start ``redis-server`` on 127.0.0.1 and a free port, without persistence; stop it after.

    With ``cpu``, the server runs pinned to that CPU (``taskset``, so its threads are too).
    """
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not on PATH: install it or pass --redis-url")
    pin = ["taskset", "-c", str(cpu)] if cpu is not None and shutil.which("taskset") else []
    with tempfile.TemporaryDirectory(prefix="bastion-bench-redis-") as directory:
        log = Path(directory) / "redis.log"
        for _attempt in range(5):
            port = free_port()
            command = [
                *pin, binary,
                "--port", str(port),
                "--bind", "127.0.0.1",
                "--save", "",
                "--appendonly", "no",
                "--dir", directory,
                "--logfile", str(log),
            ]  # fmt: skip
            process = subprocess.Popen(command, stdin=subprocess.DEVNULL)
            try:
                deadline = time.monotonic() + _STARTUP_TIMEOUT_S
                while time.monotonic() < deadline and process.poll() is None:
                    if _answers(port):
                        break
                    time.sleep(0.01)
                if process.poll() is None and _answers(port):
                    yield LocalRedis(f"redis://127.0.0.1:{port}/0", cpu if pin else None, log)
                    return
            finally:
                if process.poll() is None:
                    process.terminate()
                    try:
                        process.wait(timeout=10)
                    except subprocess.TimeoutExpired:
                        process.kill()
                        process.wait()
        tail = log.read_text(errors="replace")[-2000:] if log.exists() else "(no log)"
        raise SystemExit(f"redis-server did not start in 5 attempts:\n{tail}")


def _is_local(url: str) -> bool:
    if url.startswith("unix://"):
        return True
    host = url.partition("://")[2].rpartition("@")[2].split("/")[0]
    host = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    return host.strip("[]") in ("127.0.0.1", "localhost", "::1")


# -- measuring ------------------------------------------------------------------------------------


@dataclass(slots=True)
class Sample:
    """One batch of one subject in one mode and round."""

    decisions: int
    decisions_per_s: float
    p50_us: float
    p99_us: float
    client_cpu_us: float
    """CPU time of this process per decision."""
    redis_cpu_us: float
    """CPU time of the Redis server per decision (``INFO cpu``)."""
    commands: dict[str, int]
    """Commands the server ran during the batch (``INFO commandstats`` delta, without INFO)."""
    failed: int
    """Decisions that refused or degraded: must be 0."""


@dataclass(slots=True)
class Measured:
    """Everything one run measured."""

    samples: dict[str, dict[str, list[Sample]]] = field(default_factory=dict)
    """mode -> subject -> one sample per round."""
    round_orders: list[list[str]] = field(default_factory=list)
    round_others_share: list[float | None] = field(default_factory=list)
    round_quiet: list[bool] = field(default_factory=list)
    others_cpu_share: float | None = None
    round_trips: dict[str, dict[str, Any]] = field(default_factory=dict)
    memory_per_key: dict[str, float] = field(default_factory=dict)
    redis_version: str = ""
    warmup_failed: dict[str, int] = field(default_factory=dict)


def _percentile(ordered: Sequence[int], share: float) -> float:
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))] / 1000


async def _batch(
    decide: Callable[[str], Awaitable[bool]], keys: Sequence[str], concurrency: int, seconds: float
) -> tuple[int, int, float, float, list[int]]:
    """Decide in a loop for ``seconds`` with ``concurrency`` tasks.

    Returns decisions, failed decisions, wall seconds, CPU seconds and every latency in ns.
    """
    latencies: list[int] = []
    failed = 0
    clock = time.perf_counter_ns
    deadline = clock() + int(seconds * 1e9)
    count = len(keys)

    async def worker(offset: int) -> None:
        nonlocal failed
        record = latencies.append
        index = offset
        while True:
            start = clock()
            if start >= deadline:
                return
            admitted = await decide(keys[index % count])
            record(clock() - start)
            if not admitted:
                failed += 1
            index += 1

    cpu_start, wall_start = time.process_time(), time.perf_counter()
    if concurrency == 1:
        await worker(0)
    else:
        await asyncio.gather(*(worker(offset) for offset in range(concurrency)))
    wall, cpu = time.perf_counter() - wall_start, time.process_time() - cpu_start
    return len(latencies), failed, wall, cpu, latencies


def _calls(info: dict[str, Any]) -> dict[str, int]:
    return {
        name.removeprefix("cmdstat_"): int(values["calls"])
        for name, values in info.items()
        if name.startswith("cmdstat_") and name != "cmdstat_info"
    }


def _redis_cpu(info: dict[str, Any]) -> float:
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


async def _measured_batch(
    admin: Redis,
    decide: Callable[[str], Awaitable[bool]],
    keys: Sequence[str],
    concurrency: int,
    seconds: float,
) -> Sample:
    gc.collect()
    before = await admin.info("commandstats", "cpu")
    decisions, failed, wall, cpu, latencies = await _batch(decide, keys, concurrency, seconds)
    after = await admin.info("commandstats", "cpu")
    latencies.sort()
    calls_before, calls_after = _calls(before), _calls(after)
    commands = {
        name: calls - calls_before.get(name, 0)
        for name, calls in calls_after.items()
        if calls != calls_before.get(name, 0)
    }
    return Sample(
        decisions=decisions,
        decisions_per_s=decisions / wall,
        p50_us=_percentile(latencies, 0.50),
        p99_us=_percentile(latencies, 0.99),
        client_cpu_us=cpu / decisions * 1e6,
        redis_cpu_us=(_redis_cpu(after) - _redis_cpu(before)) / decisions * 1e6,
        commands=commands,
        failed=failed,
    )


async def _count_round_trips(
    admin: Redis,
    signal: Redis,
    decide: Callable[[str], Awaitable[bool]],
    keys: Sequence[str],
    decisions: int,
    concurrency: int,
) -> dict[str, Any]:
    """Count what ``decisions`` decisions send: socket writes, and ``MONITOR``'s view of them.

    Decisions run ``concurrency`` at a time, as in the concurrent batches, after the rounds
    (``MONITOR`` slows the server down; nothing here is timed).
    """
    from redis.asyncio.connection import AbstractConnection

    sentinel = f"bench-sentinel-{uuid.uuid4().hex}"
    tasks = min(concurrency, decisions)
    per_task = decisions // tasks
    made = tasks * per_task
    seen: list[tuple[str, str]] = []
    writes = 0
    original = AbstractConnection.send_packed_command

    async def counting(self: AbstractConnection, command: Any, check_health: bool = True) -> None:
        nonlocal writes
        writes += 1
        await original(self, command, check_health)

    # The sentinel goes through a connection opened beforehand, so MONITOR sees nothing of a
    # connection being set up (HELLO, CLIENT SETINFO) that is not the subject's.
    await signal.ping()
    async with admin.monitor() as monitor:

        async def listen() -> None:
            while True:
                command = await monitor.next_command()
                name = command["command"].split(" ", 1)[0].lower()
                if name == "echo" and sentinel in command["command"]:
                    return
                seen.append((command["client_type"], name))

        listener = asyncio.create_task(listen())
        AbstractConnection.send_packed_command = counting  # type: ignore[method-assign]
        try:
            await asyncio.gather(
                *(_sequence(decide, keys, task * per_task, per_task) for task in range(tasks))
            )
        finally:
            AbstractConnection.send_packed_command = original  # type: ignore[method-assign]
        await signal.echo(sentinel)
        await asyncio.wait_for(listener, 30)
    from_clients: dict[str, int] = {}
    from_scripts: dict[str, int] = {}
    for client_type, name in seen:
        target = from_scripts if client_type == "lua" else from_clients
        target[name] = target.get(name, 0) + 1
    return {
        "counted_decisions": made,
        "socket_writes": writes,
        "round_trips_per_decision": writes / made,
        "monitor_client_commands": from_clients,
        "monitor_script_commands": from_scripts,
        "client_commands_per_decision": sum(from_clients.values()) / made,
        "script_commands_per_decision": sum(from_scripts.values()) / made,
    }


async def _sequence(
    decide: Callable[[str], Awaitable[bool]], keys: Sequence[str], offset: int, count: int
) -> None:
    for index in range(offset, offset + count):
        if not await decide(keys[index % len(keys)]):
            raise RuntimeError("a decision was refused or degraded while counting round trips")


async def _keys_under(admin: Redis, prefix: str) -> list[bytes]:
    return [key async for key in admin.scan_iter(match=f"{prefix}*", count=1000)]


async def _measure(
    url: str,
    subjects: Sequence[Subject],
    config: RatelimitConfig,
    *,
    redis_local: bool,
) -> Measured:
    from redis.asyncio import Redis as RedisClient

    measured = Measured()
    token = uuid.uuid4().hex[:8]
    prefixes = {subject.name: f"bench-{token}-{subject.name}" for subject in subjects}
    keys = [f"user:{index}" for index in range(config.keys)]
    admin = RedisClient.from_url(url)
    signal = RedisClient.from_url(url)
    opened: dict[str, Opened] = {}
    try:
        measured.redis_version = str((await admin.info("server"))["redis_version"])
        for subject in subjects:
            opened[subject.name] = await subject.open(url, prefixes[subject.name])

        print(f"warm-up: {config.warmup_s:.1f} s per subject and mode", file=sys.stderr)
        for subject in subjects:
            for concurrency in (1, config.concurrency):
                _, failed, *_ = await _batch(
                    opened[subject.name].decide, keys, concurrency, config.warmup_s
                )
                measured.warmup_failed[subject.name] = (
                    measured.warmup_failed.get(subject.name, 0) + failed
                )
        gc.collect()
        gc.freeze()

        async def redis_cpu() -> float:
            return _redis_cpu(await admin.info("cpu")) if redis_local else 0.0

        for mode in MODES:
            measured.samples[mode] = {subject.name: [] for subject in subjects}
        overall = CpuMeter()
        overall.start(extra_own_s=await redis_cpu())
        quiet_rounds = 0
        names = [subject.name for subject in subjects]
        while quiet_rounds < config.rounds and len(measured.round_orders) < config.max_rounds:
            shift = len(measured.round_orders) % len(names)
            order = names[shift:] + names[:shift]
            meter = CpuMeter()
            meter.start(extra_own_s=await redis_cpu())
            for mode, concurrency in zip(MODES, (1, config.concurrency), strict=True):
                for name in order:
                    measured.samples[mode][name].append(
                        await _measured_batch(
                            admin, opened[name].decide, keys, concurrency, config.batch_s
                        )
                    )
            share = meter.others_share(extra_own_s=await redis_cpu())
            quiet = share is None or share <= config.quiet_share
            quiet_rounds += quiet
            measured.round_orders.append(order)
            measured.round_others_share.append(share)
            measured.round_quiet.append(quiet)
            line = ", ".join(
                f"{name} {measured.samples['concurrent'][name][-1].decisions_per_s:,.0f}/s"
                for name in names
            )
            print(
                f"  round {len(measured.round_orders)}: {quiet_rounds}/{config.rounds} quiet "
                f"(others {'?' if share is None else f'{share:.0%}'}"
                f"{'' if quiet else ', NOISY, not counted'}); concurrent: {line}",
                file=sys.stderr,
            )
        measured.others_cpu_share = overall.others_share(extra_own_s=await redis_cpu())
        gc.unfreeze()

        print(f"counting round trips: {config.count} decisions per subject", file=sys.stderr)
        for subject in subjects:
            measured.round_trips[subject.name] = await _count_round_trips(
                admin, signal, opened[subject.name].decide, keys, config.count, config.concurrency
            )
        for subject in subjects:
            stored = await _keys_under(admin, prefixes[subject.name] + ":")
            usage = [await admin.memory_usage(key, samples=0) or 0 for key in stored]
            measured.memory_per_key[subject.name] = sum(usage) / len(keys)
    finally:
        for handle in opened.values():
            await handle.close()
        leftovers = await _keys_under(admin, f"bench-{token}-")
        for start in range(0, len(leftovers), 500):
            await admin.unlink(*leftovers[start : start + 500])
        await admin.aclose()
        await signal.aclose()
    return measured


# -- the report -----------------------------------------------------------------------------------


def _used_rounds(measured: Measured, config: RatelimitConfig) -> list[int]:
    quiet = [index for index, is_quiet in enumerate(measured.round_quiet) if is_quiet]
    if len(quiet) >= min(MIN_QUIET_ROUNDS, config.rounds):
        return quiet
    return list(range(len(measured.round_quiet)))


def _ratio(
    samples: dict[str, list[Sample]], used: Sequence[int], subject: str, reference: str
) -> dict[str, Any]:
    """subject / reference decisions per second: paired per round, and three other estimates."""
    mine = [samples[subject][i].decisions_per_s for i in used]
    theirs = [samples[reference][i].decisions_per_s for i in used]
    paired = _paired(mine, theirs)
    return {
        "subject": subject,
        "reference": reference,
        "ratio": paired["paired_median"],
        **paired,
        "ratio_of_medians": statistics.median(mine) / statistics.median(theirs),
        "best_ratio": max(mine) / max(theirs),
    }


def build_report(
    *,
    name: str,
    command: str,
    started: datetime,
    config: RatelimitConfig,
    subjects: Sequence[Subject],
    measured: Measured,
    redis: dict[str, Any],
    notes: Sequence[str],
) -> dict[str, Any]:
    """Everything measured and everything needed to reproduce it, as JSON-ready data."""
    used = _used_rounds(measured, config)
    modes: dict[str, Any] = {}
    for mode, by_subject in measured.samples.items():
        rows = {}
        for subject, samples in by_subject.items():
            chosen = [samples[i] for i in used]
            summary = Stats.of([s.decisions_per_s for s in chosen])
            rows[subject] = {
                "decisions_per_s_median": summary.median,
                "decisions_per_s_min": summary.minimum,
                "decisions_per_s_max": summary.maximum,
                "spread_pct": summary.spread_pct,
                "latency_p50_us_median": statistics.median(s.p50_us for s in chosen),
                "latency_p99_us_median": statistics.median(s.p99_us for s in chosen),
                "client_cpu_us_median": statistics.median(s.client_cpu_us for s in chosen),
                "redis_cpu_us_median": statistics.median(s.redis_cpu_us for s in chosen),
                "samples": [asdict(s) for s in samples],
            }
        modes[mode] = {
            "concurrency": 1 if mode == "sequential" else config.concurrency,
            "results": rows,
            "comparisons": [
                _ratio(by_subject, used, subject, reference)
                for subject, reference in COMPARISONS
                if subject in by_subject and reference in by_subject
            ],
        }

    commands: dict[str, Any] = {}
    for subject in (s.name for s in subjects):
        total: dict[str, int] = {}
        decisions = 0
        for mode in MODES:
            for sample in measured.samples[mode][subject]:
                decisions += sample.decisions
                for command_name, calls in sample.commands.items():
                    total[command_name] = total.get(command_name, 0) + calls
        per_decision = {k: v / decisions for k, v in sorted(total.items(), key=lambda kv: -kv[1])}
        commands[subject] = {
            "decisions": decisions,
            "commandstats_calls": total,
            "commands_per_decision": sum(total.values()) / decisions,
            "commands_per_decision_by_name": per_decision,
            **measured.round_trips.get(subject, {}),
            "redis_memory_bytes_per_client": measured.memory_per_key.get(subject),
        }

    budgets: list[dict[str, Any]] = []
    concurrent = modes["concurrent"]
    speed = next(
        (
            c
            for c in concurrent["comparisons"]
            if (c["subject"], c["reference"]) == (BASTION, REFERENCE)
        ),
        None,
    )
    if speed is not None:
        passed = speed["ratio"] >= MIN_SPEEDUP
        others = (speed["ratio_of_medians"], speed["best_ratio"])
        budgets.append(
            {
                "statement": f"bastion makes at least {MIN_SPEEDUP}x the decisions per second "
                f"of limits' async moving window on the same Redis ({config.concurrency} "
                "concurrent tasks)",
                "kind": "speedup",
                "min_ratio": MIN_SPEEDUP,
                **speed,
                "verdict": "PASS" if passed else "FAIL",
                "settled": all((estimate >= MIN_SPEEDUP) == passed for estimate in others),
                "borderline": speed["paired_ci_low"] < MIN_SPEEDUP <= speed["paired_ci_high"],
            }
        )
    mine = commands.get(BASTION)
    if mine is not None and "socket_writes" in mine:
        from_clients = mine["monitor_client_commands"]
        evalsha = mine["commandstats_calls"].get("evalsha", 0)
        counted = mine["counted_decisions"]
        # At most one: the store sends the decisions of one event-loop turn as one pipeline,
        # so concurrent decisions share socket writes. Each is still exactly one EVALSHA.
        one = (
            mine["socket_writes"] <= counted
            and from_clients == {"evalsha": counted}
            and evalsha == mine["decisions"]
        )
        budgets.append(
            {
                "statement": "a bastion rate-limit decision on Redis costs one round trip "
                "at most (one EVALSHA; concurrent decisions share a pipeline's round trip)",
                "kind": "round_trips",
                "round_trips_per_decision": mine["round_trips_per_decision"],
                "client_commands_per_decision": mine["client_commands_per_decision"],
                "evalsha_per_decision": evalsha / mine["decisions"],
                "verdict": "PASS" if one else "FAIL",
            }
        )

    failures = {
        subject: sum(s.failed for mode in MODES for s in measured.samples[mode][subject])
        + measured.warmup_failed.get(subject, 0)
        for subject in (s.name for s in subjects)
    }
    return {
        "name": name,
        "started_utc": started.astimezone(UTC).isoformat(timespec="seconds"),
        "finished_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": command,
        "git_revision": git_revision(),
        "machine": machine_info(),
        "packages": package_versions(PACKAGES),
        "redis": {**redis, "version": measured.redis_version},
        "config": {**asdict(config), "batch_s": config.batch_s, "rate": RATE},
        "subjects": {s.name: {"title": s.title, "description": s.description} for s in subjects},
        "round_orders": measured.round_orders,
        "round_others_share": measured.round_others_share,
        "round_quiet": measured.round_quiet,
        "rounds_used": used,
        "only_quiet_rounds": len(used) == sum(measured.round_quiet),
        "others_cpu_share": measured.others_cpu_share,
        "modes": modes,
        "commands": commands,
        "failed_decisions": failures,
        "budgets": budgets,
        "notes": list(notes),
    }


def _x(value: float) -> str:
    return f"{value:.2f}x"


def _share(value: float | None) -> str:
    return "unknown" if value is None else f"{value:.0%}"


def _per_decision(counts: dict[str, int], decisions: int) -> str:
    if not counts:
        return "none"
    return ", ".join(
        f"{name} {calls / decisions:.2f}"
        for name, calls in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    )


def render_markdown(report: dict[str, Any]) -> str:
    """The human-readable report."""
    machine, config, redis = report["machine"], report["config"], report["redis"]
    titles = {name: subject["title"] for name, subject in report["subjects"].items()}
    packages = ", ".join(f"{name} {v}" for name, v in report["packages"].items())
    run, used = len(report["round_quiet"]), len(report["rounds_used"])
    if report["only_quiet_rounds"]:
        rounds = (
            f"{used} quiet rounds used of {run} run (a round is quiet when other processes used "
            f"at most {config['quiet_share']:.0%} of the CPU)"
        )
    else:
        rounds = (
            f"**only {sum(report['round_quiet'])} of {run} rounds were quiet, so all {run} are "
            "used: treat these numbers as noisy**"
        )
    lines = [
        f"# Benchmark `{report['name']}`",
        "",
        f"- Command: `{report['command']}`",
        (
            f"- Started {report['started_utc']}, finished {report['finished_utc']}; "
            f"revision {report['git_revision']}"
        ),
        (
            f"- Machine: {machine['cpu_model']}, {machine['logical_cpus']} logical CPUs "
            f"({machine['usable_cpus']} usable), {machine['platform']}, {machine['python']}"
        ),
        f"- Packages: {packages}",
        f"- Redis: {redis['version']} at {redis['url']}; {redis['placement']}",
        "",
        (
            f"Every subject decides `{config['rate']}` (never reached: every decision is an "
            f"admitted one that writes its state) for {config['keys']} client keys in turn, on "
            f"the same Redis, on the {config['loop']} event loop. After a warm-up of "
            f"{config['warmup_s']:.1f} s per subject and mode, each round runs every subject "
            f"for {config['batch_s']:.2f} s sequentially (one decision at a time) and "
            f"{config['batch_s']:.2f} s with {config['concurrency']} concurrent asyncio tasks, "
            f"subjects in an order rotated every round; {rounds}. Other processes used "
            f"{_share(report['others_cpu_share'])} of the CPU over the whole run. *vs "
            f"{titles.get(REFERENCE, REFERENCE)}* is the median over rounds of the per-round "
            "ratio of decisions per second (quartiles in brackets); CPU columns are per decision."
        ),
    ]
    for mode, section in report["modes"].items():
        results = section["results"]
        reference = {c["subject"]: c for c in section["comparisons"] if c["reference"] == REFERENCE}
        heading = (
            "Sequential (concurrency 1: latency)"
            if mode == "sequential"
            else f"Concurrent ({section['concurrency']} tasks: throughput)"
        )
        lines += [
            "",
            f"## {heading}",
            "",
            (
                "| subject | decisions/s (median) | min | max | p50 µs | p99 µs | client CPU µs "
                f"| Redis CPU µs | vs {titles.get(REFERENCE, REFERENCE)} |"
            ),
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for subject, row in results.items():
            versus = reference.get(subject)
            lines.append(
                f"| {titles[subject]} | {row['decisions_per_s_median']:,.0f} | "
                f"{row['decisions_per_s_min']:,.0f} | {row['decisions_per_s_max']:,.0f} | "
                f"{row['latency_p50_us_median']:.0f} | {row['latency_p99_us_median']:.0f} | "
                f"{row['client_cpu_us_median']:.1f} | "
                f"{row['redis_cpu_us_median']:.1f} | "
                + (
                    f"{_x(versus['ratio'])} ({versus['paired_p25']:.2f} to "
                    f"{versus['paired_p75']:.2f})"
                    if versus
                    else "-"
                )
                + " |"
            )
        lines.append("")
        lines.extend(
            f"- {titles[c['subject']]} vs {titles[c['reference']]}: {_x(c['ratio'])} the "
            f"decisions per second (95 % CI {c['paired_ci_low']:.2f} to "
            f"{c['paired_ci_high']:.2f}; ratio of medians {c['ratio_of_medians']:.2f}; best "
            f"round vs best round {c['best_ratio']:.2f})."
            for c in section["comparisons"]
        )

    lines += [
        "",
        "## Round trips and commands",
        "",
        (
            "*Round trips* are the commands the client wrote to its sockets, counted over "
            f"{config['count']} decisions per subject after the rounds; *sent* is what `MONITOR` "
            "saw arrive from a client in the same decisions, and *run by the script* what it saw "
            "a Lua script call. *Commands per decision* is the `INFO commandstats` delta over "
            "every measured batch divided by its decisions: it counts the commands a script "
            "runs as well, so it is the server's work, not the round trips. *Redis memory* is "
            "`MEMORY USAGE` of a subject's keys at the end, per client key (GCRA's key expires "
            "once its bucket is full again, 60 µs after a decision at this rate, so none is "
            "left; the floor keeps no state)."
        ),
        "",
        (
            "| subject | round trips / decision | sent (MONITOR) | run by the script (MONITOR) "
            "| commands / decision (commandstats) | Redis memory per client |"
        ),
        "|---|---:|---|---|---:|---:|",
    ]
    for subject, row in report["commands"].items():
        counted = row.get("socket_writes") is not None
        memory = row.get("redis_memory_bytes_per_client")
        lines.append(
            f"| {titles[subject]} | "
            + (f"{row['round_trips_per_decision']:.2f}" if counted else "-")
            + " | "
            + (
                _per_decision(row["monitor_client_commands"], row["counted_decisions"])
                if counted
                else "-"
            )
            + " | "
            + (
                _per_decision(row["monitor_script_commands"], row["counted_decisions"])
                if counted
                else "-"
            )
            + f" | {row['commands_per_decision']:.2f} ("
            + _per_decision(row["commandstats_calls"], row["decisions"])
            + ") | "
            + ("-" if memory is None else f"{memory:,.0f} B")
            + " |"
        )

    lines += ["", "## Budgets", ""]
    for budget in report["budgets"]:
        if budget["kind"] == "speedup":
            lines.append(
                f"- **{budget['verdict']}**: {budget['statement']}. "
                f"{budget['subject']} / {budget['reference']} decisions per second = "
                f"**{budget['ratio']:.2f}x** (at least {budget['min_ratio']:.1f}x), the median of "
                f"{used} per-round ratios (95 % confidence interval {budget['paired_ci_low']:.2f} "
                f"to {budget['paired_ci_high']:.2f}; quartiles {budget['paired_p25']:.2f} to "
                f"{budget['paired_p75']:.2f}). Other estimates: ratio of medians "
                f"{budget['ratio_of_medians']:.2f}, best round vs best round "
                f"{budget['best_ratio']:.2f}."
            )
            if budget["borderline"]:
                lines.append(
                    "  **Borderline**: the limit lies inside the confidence interval; another run "
                    "may give the other verdict."
                )
            if not budget["settled"]:
                lines.append(
                    "  **Unsettled**: other estimates land on the other side of the limit."
                )
        else:
            lines.append(
                f"- **{budget['verdict']}**: {budget['statement']}: "
                f"{budget['round_trips_per_decision']:.2f} socket writes per decision, "
                f"{budget['client_commands_per_decision']:.2f} commands sent per decision seen "
                f"by MONITOR (EVALSHA only), {budget['evalsha_per_decision']:.2f} EVALSHA per "
                "decision in the server's command statistics over every measured batch."
            )
    failed = {name: count for name, count in report["failed_decisions"].items() if count}
    if failed:
        lines.append(
            "- **FAIL**: decisions were refused or degraded, so the run measured something else: "
            + ", ".join(f"{name} {count}" for name, count in failed.items())
        )

    lines += ["", "## Subjects", ""]
    lines += [
        f"- **{subject['title']}** (`{name}`): {subject['description']}"
        for name, subject in report["subjects"].items()
    ]
    if report["notes"]:
        lines += ["", "## Notes", ""]
        lines += [f"- {note}" for note in report["notes"]]
    return "\n".join(lines) + "\n"


# -- the command ----------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    defaults = RatelimitConfig()
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.ratelimit",
        description="Rate-limit decisions on Redis: bastion against the limits library.",
    )
    parser.add_argument(
        "--redis-url", help="a Redis nobody else uses (default: start a throw-away redis-server)"
    )
    parser.add_argument(
        "--seconds",
        type=float,
        default=defaults.seconds,
        help="measured seconds per subject and mode, split over the rounds (%(default)s)",
    )
    parser.add_argument(
        "--rounds", type=int, default=defaults.rounds, help="quiet rounds wanted (%(default)s)"
    )
    parser.add_argument(
        "--max-rounds", type=int, help="stop after this many rounds (default: twice --rounds)"
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        default=defaults.concurrency,
        help="tasks in the concurrent batches (%(default)s)",
    )
    parser.add_argument("--keys", type=int, default=defaults.keys, help="client keys (%(default)s)")
    parser.add_argument(
        "--warmup",
        type=float,
        default=defaults.warmup_s,
        help="warm-up seconds per subject and mode (%(default)s)",
    )
    parser.add_argument(
        "--count",
        type=int,
        default=defaults.count,
        help="decisions per subject whose round trips are counted (%(default)s)",
    )
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default=defaults.loop)
    parser.add_argument(
        "--no-pin", action="store_true", help="do not pin Redis and this process to CPUs"
    )
    parser.add_argument(
        "--quiet-share",
        type=float,
        default=defaults.quiet_share,
        help="a round is quiet if other processes used at most this share of the CPU",
    )
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="first wait up to this long for the machine to be at most 15%% busy",
    )
    parser.add_argument("--name", help="report name (default: ratelimit-YYYYMMDD)")
    parser.add_argument("--output-dir", type=Path, default=RESULTS)
    parser.add_argument("--no-write", action="store_true", help="print the report only")
    return parser


def _command(argv: Sequence[str] | None) -> str:
    arguments = shlex.join(sys.argv[1:] if argv is None else argv)
    prefix = "uv run --group bench " if "UV" in os.environ else ""
    return f"{prefix}python -m benchmarks.ratelimit {arguments}".rstrip()


def _run(coroutine: Awaitable[Measured], loop: str) -> Measured:
    async def wrapped() -> Measured:
        return await coroutine

    if loop == "uvloop":
        import uvloop

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(wrapped())
    return asyncio.run(wrapped())


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; see the module docstring for the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.concurrency < 1 or args.keys < 1 or args.seconds <= 0:
        parser.error("--rounds, --concurrency, --keys and --seconds must be positive")
    if args.count < 1:
        parser.error("--count must be positive")
    config = RatelimitConfig(
        seconds=args.seconds,
        rounds=args.rounds,
        max_rounds=args.max_rounds or 2 * args.rounds,
        concurrency=args.concurrency,
        keys=args.keys,
        warmup_s=args.warmup,
        count=args.count,
        quiet_share=args.quiet_share,
        loop=args.loop,
        pin_cpus=not args.no_pin,
    )
    subjects, notes = _available_subjects()
    started = datetime.now(UTC)
    name = args.name or f"ratelimit-{started:%Y%m%d}"

    from bastion._urls import redact_url

    cpus = sorted(os.sched_getaffinity(0))
    pin = config.pin_cpus and args.redis_url is None and len(cpus) >= 2
    previous_affinity = set(cpus)
    with contextlib.ExitStack() as stack:
        if args.redis_url is None:
            server = stack.enter_context(_throwaway_redis(cpus[-1] if pin else None))
            url = server.url
            if server.cpu is not None:
                os.sched_setaffinity(0, set(cpus[:-1]))
                stack.callback(os.sched_setaffinity, 0, previous_affinity)
                placement = (
                    f"started by this command (no persistence), pinned to CPU {server.cpu}; "
                    f"this process on CPU {','.join(map(str, cpus[:-1]))}"
                )
            else:
                placement = "started by this command (no persistence), not pinned"
        else:
            url = args.redis_url
            placement = "given with --redis-url" + (
                " (on this machine: its CPU is not counted as others')"
                if _is_local(url)
                else " (elsewhere: its CPU is not measured)"
            )
        redis_local = _is_local(url)
        print(
            f"ratelimit: {len(subjects)} subjects on {redact_url(url)}, {config}", file=sys.stderr
        )
        if args.wait_quiet > 0:
            busy = wait_until_quiet(args.wait_quiet)
            notes.append(f"The run started when the machine was {busy:.0%} busy (--wait-quiet).")
        measured = _run(_measure(url, subjects, config, redis_local=redis_local), config.loop)

    report = build_report(
        name=name,
        command=_command(argv),
        started=started,
        config=config,
        subjects=subjects,
        measured=measured,
        redis={"url": redact_url(url), "placement": placement},
        notes=notes,
    )
    print(render_markdown(report))
    if not args.no_write:
        write_report(report, args.output_dir, render=render_markdown)
    failed = any(b["verdict"] != "PASS" for b in report["budgets"])
    return 1 if failed or any(report["failed_decisions"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
