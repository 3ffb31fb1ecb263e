"""Prometheus metrics of ``@cached`` functions, fed by their events.

``bastion_cache_function_calls_total{function, result, source}`` counts calls: ``result`` is
``hit`` or ``miss``; ``source`` says where a hit came from (``local``, ``memory``, ``redis``) or
whether a miss ran the function (``ran``) or shared a concurrent call's run (``shared``).
``bastion_cache_function_duration_seconds{function, result}`` is the calls' latency. Function
names come from the code (never from requests), so the label set stays bounded.

The registry is duck-typed (``counter``/``histogram`` with ``labels(...)``), so this capability
needs nothing from ``bastion.observability``; ``Bastion`` passes its registry in.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from bastion.events import FunctionCacheHit, FunctionCacheMiss, Hooks

__all__ = ["DURATION_BUCKETS", "function_cache_metrics"]

DURATION_BUCKETS = (0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0)
"""Bucket bounds of the call duration histogram: from a local hit to a slow upstream."""


class _Registry(Protocol):
    def counter(self, name: str, help: str, labels: Sequence[str] = ()) -> Any: ...  # noqa: A002

    def histogram(
        self,
        name: str,
        help: str,  # noqa: A002
        labels: Sequence[str] = (),
        *,
        buckets: Sequence[float],
    ) -> Any: ...


def function_cache_metrics(hooks: Hooks, registry: _Registry) -> None:
    """Subscribe to ``FunctionCacheHit``/``FunctionCacheMiss`` and record them in ``registry``.

    Args:
        hooks: where the cached functions publish (``Bastion.hooks``).
        registry: a metrics registry (``Bastion.metrics``).
    """
    calls = registry.counter(
        "bastion_cache_function_calls_total",
        "Calls of @cached functions by outcome.",
        ["function", "result", "source"],
    )
    durations = registry.histogram(
        "bastion_cache_function_duration_seconds",
        "Duration of calls of @cached functions.",
        ["function", "result"],
        buckets=DURATION_BUCKETS,
    )
    series: dict[tuple[str, str, str], tuple[Any, Any]] = {}

    def record(function: str, result: str, source: str, duration_s: float) -> None:
        labels = (function, result, source)
        children = series.get(labels)
        if children is None:
            children = series[labels] = (
                calls.labels(function, result, source),
                durations.labels(function, result),
            )
        children[0].inc()
        children[1].observe(duration_s)

    def on_hit(event: FunctionCacheHit) -> None:
        record(event.function, "hit", event.level, event.duration_s)

    def on_miss(event: FunctionCacheMiss) -> None:
        record(event.function, "miss", "shared" if event.shared else "ran", event.duration_s)

    hooks.subscribe(FunctionCacheHit, on_hit)
    hooks.subscribe(FunctionCacheMiss, on_miss)
