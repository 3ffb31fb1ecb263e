"""Everything observability adds to a service, built from ``Settings`` and run by the lifespan.

``Bastion`` makes one ``Observability`` and asks it for three things: the request observer for
its pipeline, the ops endpoints (``/metrics``, ``/stats``) and a resource to open and close.
Opening configures logging, starts the tracer, moves the metrics into the directory the
server's workers share, and starts two background tasks: the event-loop lag monitor and the
stats sampler. Closing undoes it in reverse, logging last so shutdown messages are written.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import anyio
import orjson

from bastion._asgi import get_header, send_body
from bastion._clock import Clock
from bastion._ops import OpsEndpoint
from bastion.events import Event, Hooks
from bastion.observability.logs import LoggingSetup, configure_logging, note_decision
from bastion.observability.metrics import CONTENT_TYPE, MetricFamily, MetricsRegistry
from bastion.observability.saturation import LoopLagMonitor, read_process
from bastion.observability.stats import HistogramSample, RouteStats
from bastion.observability.telemetry import HttpMetrics, Telemetry, event_metrics
from bastion.settings import Settings
from bastion.types import Receive, Scope, Send

__all__ = ["Observability", "default_metrics_directory", "prune_stale_directories"]

logger = logging.getLogger("bastion.observability")

_DURATION = "http_server_request_duration_seconds"
_NO_STORE = ((b"cache-control", b"no-store"),)
_BEARER = b"bearer "
# Process supervisors whose workers should share one metrics directory (and `bastion demo
# --workers N`, which runs uvicorn's supervisor in its own process).
_SUPERVISORS = ("uvicorn", "gunicorn", "hypercorn", "granian")


def default_metrics_directory(*, base: Path | None = None) -> Path | None:
    """The directory the workers of this process's server share, or ``None`` for none.

    When the parent process is a server supervisor (``uvicorn --workers N``, gunicorn,
    hypercorn, granian), its workers are siblings: they share a directory named after the
    parent's PID and start time, which no later server can reuse by accident. A process
    started any other way keeps its metrics to itself; set ``BASTION_METRICS__DIRECTORY`` to
    share them. Only Linux exposes the parent's command line; elsewhere, ``None``.
    """
    parent = os.getppid()
    try:
        arguments = Path(f"/proc/{parent}/cmdline").read_bytes().rstrip(b"\0").split(b"\0")
        stat = Path(f"/proc/{parent}/stat").read_text()
    except OSError:
        return None
    if not _is_supervisor([argument.decode(errors="replace") for argument in arguments]):
        return None
    if base is None:
        base = Path(tempfile.gettempdir()) / f"bastion-metrics-{os.getuid()}"
    return base / f"{parent}-{_start_time(stat)}"


def _start_time(stat: str) -> str:
    return stat.rsplit(")", 1)[1].split()[19]  # field 22, counted after the command name


def prune_stale_directories(root: Path) -> list[Path]:
    """Delete the metrics directories of supervisors that are gone (from earlier servers).

    A directory is named ``<pid>-<start time>``; it is stale when no process with that PID
    and start time exists. Returns the directories deleted.
    """
    removed = []
    for directory in root.glob("*-*"):
        pid, _, started = directory.name.partition("-")
        try:
            alive = _start_time(Path(f"/proc/{pid}/stat").read_text()) == started
        except (OSError, IndexError):
            alive = False
        if not alive and directory.is_dir():
            shutil.rmtree(directory, ignore_errors=True)
            removed.append(directory)
    return removed


def _is_supervisor(arguments: Sequence[str]) -> bool:
    """Whether a command line runs a server supervisor (the program, not a wrapper like uv)."""
    if not arguments:
        return False
    program = Path(arguments[0]).name
    if program.startswith("python") and len(arguments) > 1:
        # python -m uvicorn ..., or python /venv/bin/uvicorn ...
        program = arguments[2] if arguments[1] == "-m" and len(arguments) > 2 else arguments[1]
        program = Path(program).name
    if program.startswith("bastion"):
        return "--workers" in arguments  # only `bastion demo --workers N` supervises
    return program.startswith(_SUPERVISORS)


class Observability:
    """Logs, metrics, spans, saturation and stats for one service.

    Args:
        settings: bastion's settings (sections ``logging``, ``metrics``, ``stats``, ``tracing``).
        hooks: the event registry; every event is counted in ``bastion_events_total`` and, with
            tracing on, recorded on the span of the request that published it.
        clock: the clock of the request contexts, for durations and the stats window.
    """

    def __init__(self, settings: Settings, *, hooks: Hooks, clock: Clock) -> None:
        self.settings = settings
        self.clock = clock
        self.hooks = hooks
        metrics = settings.metrics
        self.registry = MetricsRegistry(max_series=metrics.max_series)
        self.http_metrics = (
            HttpMetrics(self.registry, duration_buckets=metrics.duration_buckets)
            if metrics.enabled
            else None
        )
        self.telemetry = Telemetry(metrics=self.http_metrics, clock=clock)
        self.stats = RouteStats(
            metrics.duration_buckets,
            window_s=settings.stats.window_s,
            interval_s=settings.stats.interval_s,
            clock=clock,
        )
        self.loop_lag = LoopLagMonitor(clock=clock, on_lag=self._record_lag)
        self.logging: LoggingSetup | None = None
        self.tracing: Any = None
        self._lag_gauge = self.registry.gauge(
            "bastion_event_loop_lag_seconds",
            "How late the event loop ran a timer at its last check (per worker).",
            mode="each",
        ).labels()
        self._dropped = self.registry.counter(
            "bastion_log_lines_dropped_total",
            "Log lines dropped because the writer could not keep up.",
        ).labels()
        self._dropped_seen = 0
        if metrics.enabled:
            event_metrics(hooks, self.registry)
            self.registry.add_collector(_process_families)
        self._exit_stack: contextlib.AsyncExitStack | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._unsubscribe_decisions: Callable[[], None] | None = None
        self._metrics_server: asyncio.Server | None = None

    # -- what Bastion wires ---------------------------------------------------------------------

    def endpoints(self, *, admin_key: str | None) -> dict[str, OpsEndpoint]:
        """``/metrics`` and ``/stats``, behind ``admin_key`` when one is set."""
        if not self.settings.metrics.enabled:
            return {}
        expected = _BEARER + admin_key.encode() if admin_key else None

        def allowed(scope: Scope) -> bool:
            if expected is None:
                return True
            header = get_header(scope.get("headers", ()), b"authorization") or b""
            presented = header[: len(_BEARER)].lower() + header[len(_BEARER) :].strip()
            return hmac.compare_digest(expected, presented)

        async def metrics(scope: Scope, receive: Receive, send: Send) -> None:
            if not allowed(scope):
                await _unauthorized(send)
                return
            body = await anyio.to_thread.run_sync(self.render_metrics)
            await send_body(
                send,
                body,
                content_type=CONTENT_TYPE,
                headers=_NO_STORE,
                head=scope["method"] == "HEAD",
            )

        async def stats(scope: Scope, receive: Receive, send: Send) -> None:
            if not allowed(scope):
                await _unauthorized(send)
                return
            await self.sample()
            report = self.stats.report(top=self.settings.stats.top_routes)
            await send_body(
                send,
                orjson.dumps(report),
                content_type=b"application/json",
                headers=_NO_STORE,
                head=scope["method"] == "HEAD",
            )

        return {"/metrics": metrics, "/stats": stats}

    def render_metrics(self) -> bytes:
        """The scrape: every worker's metrics, merged (file I/O: call it off the event loop)."""
        self._refresh()
        return self.registry.render()

    async def sample(self) -> None:
        """Add the current request-duration histograms to the stats window."""
        families = await anyio.to_thread.run_sync(self.registry.collect)
        self.stats.add(_duration_snapshot(families))

    # -- lifecycle ------------------------------------------------------------------------------

    async def open(self) -> None:
        """Configure logging and tracing, share the metrics, start the background tasks."""
        settings = self.settings
        self.logging = configure_logging(settings.logging, service_name=settings.service_name)
        self.telemetry.access_log = self.logging.access_log if settings.logging.access_log else None
        if self.telemetry.access_log is not None:
            # The access line of each request lists what bastion decided for it.
            self._unsubscribe_decisions = self.hooks.subscribe(Event, note_decision)
        if settings.tracing.enabled:
            from bastion.observability.tracing import Tracing, build_tracer_provider

            provider = build_tracer_provider(settings.tracing, service_name=settings.service_name)
            self.tracing = Tracing(provider, set_global=settings.tracing.global_provider)
            self.tracing.follow_events(self.hooks)
            self.telemetry.tracing = self.tracing
        if settings.metrics.enabled:
            directory = settings.metrics.directory
            if directory is None:
                directory = default_metrics_directory()
                if directory is not None:
                    prune_stale_directories(directory.parent)
            if directory is not None:
                self.registry.share(directory)
                logger.info("metrics shared with sibling workers in %s", directory)
            if settings.metrics.port is not None:
                self._metrics_server = await _serve_metrics(
                    self, settings.metrics.host, settings.metrics.port
                )
        stack = contextlib.AsyncExitStack()
        await stack.enter_async_context(self.loop_lag.running())
        self._exit_stack = stack
        if settings.metrics.enabled:
            self._tasks.append(asyncio.create_task(self._sample_forever()))

    async def close(self) -> None:
        """Stop the tasks, flush spans, archive the metrics, then flush and restore logging."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        if self._exit_stack is not None:
            await self._exit_stack.aclose()
            self._exit_stack = None
        if self._metrics_server is not None:
            self._metrics_server.close()
            await self._metrics_server.wait_closed()
            self._metrics_server = None
        if self.tracing is not None:
            await self.tracing.close()
            self.telemetry.tracing = self.tracing = None
        self.registry.close()
        if self._unsubscribe_decisions is not None:
            self._unsubscribe_decisions()
            self._unsubscribe_decisions = None
        if self.logging is not None:
            self.telemetry.access_log = None
            self.logging.close()
            self.logging = None

    # -- internals ------------------------------------------------------------------------------

    def _record_lag(self, lag_s: float) -> None:
        self._lag_gauge.set(lag_s)
        self._refresh()

    def _refresh(self) -> None:
        """Copy process-local counts into the shared values, for sibling workers' scrapes."""
        if self.logging is not None:
            dropped = self.logging.sink.dropped if self.logging.sink is not None else 0
            if dropped > self._dropped_seen:
                self._dropped.inc(dropped - self._dropped_seen)
                self._dropped_seen = dropped

    async def _sample_forever(self) -> None:
        interval = self.settings.stats.interval_s
        while True:
            try:
                await self.sample()
            except Exception:  # a failed sample leaves a gap in the window, nothing worse
                logger.exception("sampling metrics for /stats failed")
            await anyio.sleep(interval)


def _duration_snapshot(
    families: Iterable[MetricFamily],
) -> dict[tuple[str, str, str], HistogramSample]:
    snapshot: dict[tuple[str, str, str], HistogramSample] = {}
    for family in families:
        if family.name != _DURATION:
            continue
        for (method, route, status_class), slots in family.series.items():
            buckets, cumulative = [], 0.0
            for count in slots[: len(family.buckets)]:
                cumulative += count
                buckets.append(cumulative)
            total = cumulative + slots[len(family.buckets)]
            snapshot[(method, route, status_class)] = HistogramSample(
                count=total, sum=slots[-1], buckets=tuple(buckets)
            )
    return snapshot


def _process_families(pids: Sequence[int]) -> list[MetricFamily]:
    """The standard ``process_*`` metrics of every live worker, labelled by ``pid``."""
    families = {
        "process_cpu_seconds_total": MetricFamily(
            "process_cpu_seconds_total", "counter", "User and system CPU time spent.", ("pid",)
        ),
        "process_resident_memory_bytes": MetricFamily(
            "process_resident_memory_bytes", "gauge", "Resident memory size.", ("pid",)
        ),
        "process_virtual_memory_bytes": MetricFamily(
            "process_virtual_memory_bytes", "gauge", "Virtual memory size.", ("pid",)
        ),
        "process_open_fds": MetricFamily(
            "process_open_fds", "gauge", "Open file descriptors.", ("pid",)
        ),
        "process_max_fds": MetricFamily(
            "process_max_fds", "gauge", "Limit of open file descriptors.", ("pid",)
        ),
        "process_start_time_seconds": MetricFamily(
            "process_start_time_seconds", "gauge", "Start time since the epoch.", ("pid",)
        ),
    }
    for pid in pids:
        try:
            sample = read_process(pid)
        except (OSError, NotImplementedError):  # exited since the scan; or not Linux
            continue
        label = (str(pid),)
        families["process_cpu_seconds_total"].series[label] = [sample.cpu_seconds]
        families["process_resident_memory_bytes"].series[label] = [
            float(sample.resident_memory_bytes)
        ]
        families["process_virtual_memory_bytes"].series[label] = [
            float(sample.virtual_memory_bytes)
        ]
        if sample.open_fds is not None:
            families["process_open_fds"].series[label] = [float(sample.open_fds)]
        if sample.max_fds is not None:
            families["process_max_fds"].series[label] = [float(sample.max_fds)]
        families["process_start_time_seconds"].series[label] = [sample.start_time_seconds]
    return list(families.values())


async def _unauthorized(send: Send) -> None:
    await send_body(
        send,
        orjson.dumps({"type": "about:blank", "title": "Unauthorized", "status": 401}),
        status=401,
        content_type=b"application/problem+json",
        headers=((b"www-authenticate", b'Bearer realm="bastion-ops"'), *_NO_STORE),
    )


async def _serve_metrics(observability: Observability, host: str, port: int) -> asyncio.Server:
    """A minimal HTTP/1.1 server for ``GET /metrics`` on ``port``, shared by all workers."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=5)
            method, _, target = request.split(b"\r\n", 1)[0].partition(b" ")
            path = target.split(b" ", 1)[0].split(b"?", 1)[0]
            if method in (b"GET", b"HEAD") and path == b"/metrics":
                body = await anyio.to_thread.run_sync(observability.render_metrics)
                status, content_type = b"200 OK", CONTENT_TYPE
            else:
                body, status, content_type = b"not found\n", b"404 Not Found", b"text/plain"
            writer.write(
                b"HTTP/1.1 " + status + b"\r\ncontent-type: " + content_type
                + b"\r\ncontent-length: " + str(len(body)).encode()
                + b"\r\nconnection: close\r\n\r\n" + (b"" if method == b"HEAD" else body)
            )  # fmt: skip
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
            pass
        finally:
            writer.close()

    return await asyncio.start_server(handle, host=host, port=port, reuse_port=True)
