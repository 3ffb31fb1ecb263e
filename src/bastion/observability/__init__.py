"""Observability: structured logs, the access log, Prometheus metrics, spans, saturation, stats.

``Bastion(app)`` turns all of it on from settings (see ``docs/logging.md``, ``docs/metrics.md``
and ``docs/tracing.md``). Each part also works alone: ``configure_logging`` and ``AccessLog``,
``MetricsRegistry`` and ``HttpMetrics``, ``Tracing``, ``LoopLagMonitor``, ``RouteStats``.
"""

from __future__ import annotations

from bastion.observability._assembly import Observability, default_metrics_directory
from bastion.observability.logs import (
    AccessLog,
    ConsoleFormatter,
    JsonFormatter,
    LoggingSetup,
    LogSink,
    Redactor,
    SinkHandler,
    configure_logging,
)
from bastion.observability.metrics import Counter, Gauge, Histogram, MetricsRegistry
from bastion.observability.saturation import LoopLagMonitor, ProcessSample, read_process
from bastion.observability.stats import HistogramSample, RouteStats
from bastion.observability.telemetry import HttpMetrics, Telemetry, event_metrics
from bastion.observability.tracing import Tracing, build_tracer_provider, span

__all__ = [
    "AccessLog",
    "ConsoleFormatter",
    "Counter",
    "Gauge",
    "Histogram",
    "HistogramSample",
    "HttpMetrics",
    "JsonFormatter",
    "LogSink",
    "LoggingSetup",
    "LoopLagMonitor",
    "MetricsRegistry",
    "Observability",
    "ProcessSample",
    "Redactor",
    "RouteStats",
    "SinkHandler",
    "Telemetry",
    "Tracing",
    "build_tracer_provider",
    "configure_logging",
    "default_metrics_directory",
    "event_metrics",
    "read_process",
    "span",
]
