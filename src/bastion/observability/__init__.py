"""Observability: structured logs, the access log, Prometheus metrics, spans, saturation, stats."""

from __future__ import annotations

__all__: list[str] = []
