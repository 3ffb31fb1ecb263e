"""Layer 4 of the pipeline: HTTP metrics, the access log and spans, observed once per request.

``Telemetry`` is the ``RequestObserver`` that ``Bastion`` hands its pipeline. It reads what the
request context already knows (route template, status, response bytes, start time), so
observing a request costs no extra ``send`` wrapper and no second header scan. Each part is
optional; with all three on, a request pays for one clock read, a few float adds in shared
memory, one queued log record and, with the ``otel`` extra, a span.

The HTTP metrics follow OpenTelemetry's HTTP server conventions, translated to Prometheus
names: ``http_server_request_duration_seconds`` (with OpenTelemetry's advised buckets),
``http_server_active_requests``, ``http_server_request_body_size_bytes`` and
``http_server_response_body_size_bytes``, labelled by method, route template and status class.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from bastion._clock import SYSTEM_CLOCK, Clock
from bastion.context import RequestContext
from bastion.events import Event, Hooks, event_name
from bastion.observability.metrics import MetricsRegistry
from bastion.types import Scope

__all__ = [
    "AccessLogger",
    "BODY_SIZE_BUCKETS",
    "HttpMetrics",
    "Telemetry",
    "UNMATCHED_ROUTE",
    "event_metrics",
]

UNMATCHED_ROUTE = "unmatched"
"""The ``route`` label of every request no route matched: raw paths never become labels."""

BODY_SIZE_BUCKETS = (0, 100, 1_000, 10_000, 100_000, 1_000_000, 10_000_000, 100_000_000)
"""Bucket bounds of the body size histograms, in bytes."""

# OpenTelemetry's list: any other method is recorded as "_OTHER" so clients cannot mint labels.
_KNOWN_METHODS = frozenset(
    ("GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH", "QUERY")
)
_BODILESS = frozenset(("GET", "HEAD", "OPTIONS", "DELETE", "TRACE"))
_STATUS_CLASS = {status: f"{status // 100}xx" for status in range(100, 600)}


class AccessLogger(Protocol):
    """What writes the access log (``bastion.observability.logs.AccessLog``)."""

    def record(self, context: RequestContext, scope: Scope, duration_s: float) -> None:
        """Log one finished request."""


class _Tracer(Protocol):
    def request_started(self, context: RequestContext, scope: Scope) -> Any: ...

    def request_finished(
        self, context: RequestContext, scope: Scope, state: Any, error: BaseException | None
    ) -> None: ...


class HttpMetrics:
    """The HTTP server metrics, recorded from a finished request's context.

    Args:
        registry: where the metrics are declared.
        duration_buckets: bounds of the duration histogram, in seconds.
    """

    __slots__ = (
        "_active_slot",
        "_duration",
        "_duration_bounds",
        "_request_size",
        "_response_size",
        "_series",
        "_size_bounds",
        "_values",
    )

    def __init__(self, registry: MetricsRegistry, *, duration_buckets: Sequence[float]) -> None:
        labels = ("method", "route", "status_class")
        self._duration = registry.histogram(
            "http_server_request_duration_seconds",
            "Duration of HTTP server requests.",
            labels,
            buckets=duration_buckets,
        )
        self._request_size = registry.histogram(
            "http_server_request_body_size_bytes",
            "Size of HTTP server request bodies (from Content-Length).",
            labels,
            buckets=BODY_SIZE_BUCKETS,
        )
        self._response_size = registry.histogram(
            "http_server_response_body_size_bytes",
            "Size of HTTP server response bodies as sent by the application.",
            labels,
            buckets=BODY_SIZE_BUCKETS,
        )
        active = registry.gauge(
            "http_server_active_requests", "HTTP server requests in flight.", mode="sum"
        ).labels()
        self._values = registry.values
        self._active_slot = active.slot
        self._duration_bounds = self._duration.bounds
        self._size_bounds = self._response_size.bounds
        # Keyed by what the request carries, already bounded: known methods, templates, statuses.
        # The value is where each histogram's buckets and sum live, so that recording a request
        # is a handful of float additions without a method call per histogram.
        self._series: dict[tuple[str, str | None, int | None], tuple[int, ...]] = {}

    def request_started(self, context: RequestContext, scope: Scope) -> None:
        """A request entered the app. The ``RequestObserver`` signature: ``Telemetry`` without
        tracing hands this method to the pipeline, which saves a frame per request."""
        self._values.view[self._active_slot] += 1.0

    def finished(self, context: RequestContext, scope: Scope, duration_s: float) -> None:
        """A request's response is complete."""
        view = self._values.view
        view[self._active_slot] -= 1.0
        method = context.method
        if method not in _KNOWN_METHODS:
            method = "_OTHER"
        key = (method, context.route, context.status)
        series = self._series.get(key)
        if series is None:
            series = self._new_series(key)
            view = self._values.view  # allocating may have grown (and moved) the slots
        duration, duration_sum, request, request_sum, response, response_sum = series
        view[duration + bisect_left(self._duration_bounds, duration_s)] += 1.0
        view[duration_sum] += duration_s
        sent = context.response_bytes
        size_bounds = self._size_bounds
        view[response + bisect_left(size_bounds, sent)] += 1.0
        view[response_sum] += sent
        if method in _BODILESS:  # no body: the first bucket, and nothing to add to the sum
            view[request] += 1.0
        else:
            received = _content_length(scope)
            view[request + bisect_left(size_bounds, received)] += 1.0
            view[request_sum] += received

    def _new_series(self, key: tuple[str, str | None, int | None]) -> tuple[int, ...]:
        method, route, status = key
        labels = (
            method,
            route if route is not None else UNMATCHED_ROUTE,
            _STATUS_CLASS.get(status, "none") if status is not None else "none",
        )
        series: list[int] = []
        for histogram in (self._duration, self._request_size, self._response_size):
            child = histogram.labels(*labels)
            series += (child.slot, child.sum_slot)
        self._series[key] = found = tuple(series)
        return found


def _content_length(scope: Scope) -> int:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return max(int(value), 0)
            except ValueError:
                return 0
    return 0


class Telemetry:
    """The pipeline's ``RequestObserver``: metrics, access log and spans for each request.

    Args:
        metrics: the HTTP metrics, or ``None``.
        access_log: writes one line per request, or ``None``.
        tracing: records one server span per request (``bastion.observability.tracing``),
            or ``None``.
        clock: measures durations; the same clock as the request context's ``started``.
    """

    __slots__ = ("_tracing", "access_log", "clock", "metrics", "request_started")

    def __init__(
        self,
        *,
        metrics: HttpMetrics | None = None,
        access_log: AccessLogger | None = None,
        tracing: _Tracer | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.metrics = metrics
        self.access_log = access_log
        self.clock = clock
        self.request_started: Callable[[RequestContext, Scope], Any]
        self.tracing = tracing  # binds request_started

    @property
    def tracing(self) -> _Tracer | None:
        """The span recorder, or ``None``; set at startup, when the exporter is known."""
        return self._tracing

    @tracing.setter
    def tracing(self, tracing: _Tracer | None) -> None:
        self._tracing = tracing
        # Without tracing, starting a request is at most the in-flight gauge: the pipeline then
        # calls the metrics directly rather than through a second frame.
        metrics = self.metrics
        self.request_started = (
            self._request_started
            if tracing is not None
            else metrics.request_started
            if metrics is not None
            else _nothing_started
        )

    def _request_started(self, context: RequestContext, scope: Scope) -> Any:
        """Count the request in flight and open its span (``request_started`` with tracing)."""
        if self.metrics is not None:
            self.metrics.request_started(context, scope)
        if self._tracing is not None:
            return self._tracing.request_started(context, scope)
        return None

    def request_finished(
        self, context: RequestContext, scope: Scope, state: Any, error: BaseException | None
    ) -> None:
        """Close the span, record the metrics, write the access line."""
        duration = self.clock.monotonic() - context.started
        tracing = self._tracing
        if tracing is not None:
            tracing.request_finished(context, scope, state, error)
        if self.metrics is not None:
            self.metrics.finished(context, scope, duration)
        if self.access_log is not None:
            self.access_log.record(context, scope, duration)


def _nothing_started(context: RequestContext, scope: Scope) -> None:
    return None


def event_metrics(hooks: Hooks, registry: MetricsRegistry) -> None:
    """Count every event bastion's features publish: ``bastion_events_total{event=...}``.

    The label is the event class in snake case (``store_down``, ``rate_limited``), a set fixed
    by the code, so it is safe as a label.
    """
    counter = registry.counter(
        "bastion_events_total", "Decisions and state changes reported by bastion.", ["event"]
    )
    children: dict[type[Event], Any] = {}

    def count(event: Event) -> None:
        kind = type(event)
        child = children.get(kind)
        if child is None:
            child = children[kind] = counter.labels(event_name(kind))
        child.inc()

    hooks.subscribe(Event, count)
