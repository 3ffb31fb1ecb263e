"""Prometheus metrics that add up across worker processes, in the text exposition format.

FastAPI example: ``Bastion(app)`` records the HTTP metrics and serves them at
``/_bastion/metrics``; an app adds its own through the same registry::

    bastion = Bastion(app)
    orders = bastion.metrics.counter("shop_orders_total", "Orders placed.", ["channel"])

    @app.post("/orders")
    async def place() -> None:
        orders.labels("web").inc()

Why not ``prometheus_client``: its multiprocess mode must be switched on by an environment
variable before it is imported, takes a lock and packs a struct on every update, and keeps one
file per dead worker forever. This registry writes each update straight into a memory-mapped
float (see ``_values``), tells live workers from dead ones by a file lock, and folds dead
workers into one archive, so totals stay exact and the directory stays small. It implements the
subset bastion needs: counters, gauges and histograms with fixed label names.

Cardinality is bounded: a family holds at most ``max_series`` label combinations; later ones
are all counted in one series whose labels are ``"other"``.
"""

from __future__ import annotations

import itertools
import math
import os
from bisect import bisect_left
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, TypeVar

from bastion.observability._values import (
    Values,
    WorkerFile,
    compact_dead,
    parse_entries,
    scan_directory,
)

__all__ = [
    "CONTENT_TYPE",
    "Counter",
    "Gauge",
    "GaugeMode",
    "Histogram",
    "MetricFamily",
    "MetricsRegistry",
    "render",
]

CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"
"""Media type of the Prometheus text exposition format 0.0.4."""

GaugeMode = Literal["sum", "max", "each"]
"""How the gauges of several workers combine: added up (in-flight requests), the largest (event
loop lag), or one series per worker with a ``pid`` label (memory)."""

_SEPARATOR = "\x00"
OVERFLOW = "other"


@dataclass(slots=True)
class MetricFamily:
    """One metric's merged values, ready to render.

    ``series`` maps label values to slots: one value for counters and gauges; for histograms
    the per-bucket counts (not cumulative), the ``+Inf`` bucket, then the sum.
    """

    name: str
    kind: Literal["counter", "gauge", "histogram"]
    help: str
    labels: tuple[str, ...]
    buckets: tuple[float, ...] = ()
    series: dict[tuple[str, ...], list[float]] = field(default_factory=dict)


class _Metric:
    __slots__ = ("_children", "_max_series", "_registry", "help", "labelnames", "name", "width")

    kind: Literal["counter", "gauge", "histogram"]

    def __init__(
        self,
        registry: MetricsRegistry,
        name: str,
        help: str,  # noqa: A002 - Prometheus's own word for it
        labelnames: Sequence[str],
        width: int,
        max_series: int,
    ) -> None:
        self._registry = registry
        self.name = name
        self.help = help
        self.labelnames = tuple(labelnames)
        self.width = width
        self._max_series = max_series
        self._children: dict[tuple[str, ...], int] = {}

    def _slot(self, values: tuple[str, ...]) -> int:
        """The first slot of the series for ``values`` (label values, in label order)."""
        try:
            return self._children[values]
        except KeyError:
            pass
        if len(values) != len(self.labelnames):
            raise ValueError(f"{self.name} takes labels {self.labelnames}, got {values}")
        key_values = values
        if len(self._children) >= self._max_series:
            key_values = (OVERFLOW,) * len(values)
        key = _SEPARATOR.join((self.name, *(value.replace(_SEPARATOR, "") for value in key_values)))
        first = self._registry.values.slots(key, self.width)
        self._children[values] = first
        return first

    def family(self) -> MetricFamily:
        """An empty family with this metric's identity, for merging into."""
        return MetricFamily(self.name, self.kind, self.help, self.labelnames)


class Counter(_Metric):
    """A value that only goes up; the name must end in ``_total``."""

    __slots__ = ()
    kind = "counter"

    def labels(self, *values: str) -> CounterChild:
        """The series for these label values."""
        return CounterChild(self._registry.values, self._slot(values))

    def inc(self, amount: float = 1.0) -> None:
        """Add to the series without labels."""
        self._registry.values.view[self._slot(())] += amount


class Gauge(_Metric):
    """A value that goes up and down; ``mode`` says how workers' values combine."""

    __slots__ = ("mode",)
    kind = "gauge"

    def __init__(self, *args: object, mode: GaugeMode, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.mode = mode

    def labels(self, *values: str) -> GaugeChild:
        """The series for these label values."""
        return GaugeChild(self._registry.values, self._slot(values))

    def set(self, value: float) -> None:
        """Set the series without labels."""
        self._registry.values.view[self._slot(())] = value

    def inc(self, amount: float = 1.0) -> None:
        """Add to the series without labels."""
        self._registry.values.view[self._slot(())] += amount

    def dec(self, amount: float = 1.0) -> None:
        """Subtract from the series without labels."""
        self._registry.values.view[self._slot(())] -= amount

    def family(self) -> MetricFamily:
        """An empty family; ``each`` gauges gain a ``pid`` label."""
        labels = (*self.labelnames, "pid") if self.mode == "each" else self.labelnames
        return MetricFamily(self.name, self.kind, self.help, labels)


class Histogram(_Metric):
    """Observations counted in buckets (``le`` semantics: a bound includes its value)."""

    __slots__ = ("bounds",)
    kind = "histogram"

    def __init__(self, *args: object, bounds: Sequence[float], **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.bounds = tuple(float(bound) for bound in bounds)

    def labels(self, *values: str) -> HistogramChild:
        """The series for these label values."""
        return HistogramChild(self._registry.values, self._slot(values), self.bounds)

    def observe(self, value: float) -> None:
        """Count ``value`` in the series without labels."""
        self.labels().observe(value)

    def family(self) -> MetricFamily:
        """An empty family carrying the bucket bounds."""
        return MetricFamily(self.name, self.kind, self.help, self.labelnames, self.bounds)


class CounterChild:
    """One counter series; ``inc`` is a single float add in shared memory."""

    __slots__ = ("_slot", "_values")

    def __init__(self, values: Values, slot: int) -> None:
        self._values = values
        self._slot = slot

    def inc(self, amount: float = 1.0) -> None:
        """Add ``amount`` (not negative)."""
        self._values.view[self._slot] += amount


class GaugeChild:
    """One gauge series."""

    __slots__ = ("_slot", "_values")

    def __init__(self, values: Values, slot: int) -> None:
        self._values = values
        self._slot = slot

    def set(self, value: float) -> None:
        """Set the value."""
        self._values.view[self._slot] = value

    def inc(self, amount: float = 1.0) -> None:
        """Add to the value."""
        self._values.view[self._slot] += amount

    def dec(self, amount: float = 1.0) -> None:
        """Subtract from the value."""
        self._values.view[self._slot] -= amount

    def get(self) -> float:
        """This process's value."""
        return self._values.view[self._slot]

    @property
    def slot(self) -> int:
        """Index of this series' slot in the registry's values."""
        return self._slot


class HistogramChild:
    """One histogram series: a slot per bucket, one for ``+Inf``, one for the sum."""

    __slots__ = ("_bounds", "_slot", "_sum", "_values")

    def __init__(self, values: Values, slot: int, bounds: tuple[float, ...]) -> None:
        self._values = values
        self._slot = slot
        self._bounds = bounds
        self._sum = slot + len(bounds) + 1

    @property
    def slot(self) -> int:
        """Index of the first bucket's slot in the registry's values (then ``+Inf``, then sum)."""
        return self._slot

    @property
    def sum_slot(self) -> int:
        """Index of the sum's slot."""
        return self._sum

    def observe(self, value: float) -> None:
        """Count one observation of ``value``."""
        view = self._values.view
        view[self._slot + bisect_left(self._bounds, value)] += 1.0
        view[self._sum] += value


_M = TypeVar("_M", bound=_Metric)

Collector = Callable[[Sequence[int]], Iterable[MetricFamily]]
"""Computes families at scrape time, given the PIDs of the live workers (process metrics)."""


class MetricsRegistry:
    """The metrics of one process, and the merged view of all workers sharing ``directory``.

    Args:
        directory: where the server's workers share their values (see ``share``); ``None``
            keeps them in this process only (one worker, or until ``share`` is called).
        max_series: the most label combinations per metric (the rest count as ``"other"``).

    Metrics are declared once per process, at startup, in the same way by every worker (the
    merged view knows a metric by the declarations of the process that renders it).
    """

    __slots__ = ("_collectors", "_file", "_metrics", "directory", "max_series", "values")

    def __init__(self, *, directory: Path | None = None, max_series: int = 2_000) -> None:
        self.max_series = max_series
        self.values = Values()
        """This process's slots."""
        self.directory: Path | None = None
        self._file: WorkerFile | None = None
        self._metrics: dict[str, _Metric] = {}
        self._collectors: list[Collector] = []
        if directory is not None:
            self.share(directory)

    def share(self, directory: Path) -> None:
        """Move this process's values into ``directory``, shared with the server's other workers.

        Call it in the worker, after any fork (``Bastion`` does at lifespan startup); values
        counted before are kept.
        """
        if self._file is not None:
            raise RuntimeError(f"the metrics are already shared in {self.directory}")
        self._file = WorkerFile(directory, self.values)
        self.directory = directory

    # -- declaring ----------------------------------------------------------------------------

    def counter(self, name: str, help: str, labels: Sequence[str] = ()) -> Counter:  # noqa: A002
        """Declare a counter (or return the one already declared under ``name``)."""
        if not name.endswith("_total"):
            raise ValueError(f"counter {name!r} must end in '_total' (Prometheus naming)")
        return self._declare(Counter, name, help, labels, 1)

    def gauge(
        self,
        name: str,
        help: str,  # noqa: A002
        labels: Sequence[str] = (),
        *,
        mode: GaugeMode = "sum",
    ) -> Gauge:
        """Declare a gauge; ``mode`` says how workers combine (``sum``, ``max`` or ``each``)."""
        return self._declare(Gauge, name, help, labels, 1, mode=mode)

    def histogram(
        self,
        name: str,
        help: str,  # noqa: A002
        labels: Sequence[str] = (),
        *,
        buckets: Sequence[float],
    ) -> Histogram:
        """Declare a histogram with these bucket upper bounds (strictly increasing)."""
        bounds = [float(bound) for bound in buckets]
        if not bounds or any(b <= a for a, b in itertools.pairwise(bounds)):
            raise ValueError(f"histogram {name!r} needs strictly increasing bucket bounds")
        return self._declare(Histogram, name, help, labels, len(bounds) + 2, bounds=bounds)

    def add_collector(self, collector: Collector) -> None:
        """Add families computed at scrape time (e.g. process metrics of each live worker)."""
        self._collectors.append(collector)

    def _declare(
        self,
        cls: type[_M],
        name: str,
        help: str,  # noqa: A002
        labels: Sequence[str],
        width: int,
        **extra: object,
    ) -> _M:
        existing = self._metrics.get(name)
        if existing is not None:
            if not isinstance(existing, cls) or existing.labelnames != tuple(labels):
                raise ValueError(f"metric {name!r} is already declared differently")
            return existing
        metric = cls(self, name, help, labels, width, self.max_series, **extra)
        self._metrics[name] = metric
        return metric

    # -- reading ------------------------------------------------------------------------------

    def collect(self) -> list[MetricFamily]:
        """Every metric, merged across the live workers and the archive of dead ones."""
        families = {name: metric.family() for name, metric in self._metrics.items()}
        pids: list[int] = []
        if self.directory is not None:
            compact_dead(self.directory, self._monotonic())
            sources = scan_directory(self.directory)
        else:
            sources = [(os.getpid(), self.values.snapshot())]
        for pid, data in sources:
            if pid is not None:
                pids.append(pid)
            self._merge(families, pid, data)
        collected = list(families.values())
        for collector in self._collectors:
            collected.extend(collector(pids or [_own_pid()]))
        return collected

    def render(self) -> bytes:
        """The merged metrics in the Prometheus text format (``CONTENT_TYPE``)."""
        return render(self.collect())

    def _monotonic(self) -> frozenset[str]:
        return frozenset(name for name, metric in self._metrics.items() if metric.kind != "gauge")

    def _merge(self, families: dict[str, MetricFamily], pid: int | None, data: bytes) -> None:
        for key, slots in parse_entries(data):
            name, *label_values = key.split(_SEPARATOR)
            metric = self._metrics.get(name)
            if metric is None or len(slots) != metric.width:
                continue  # declared by another version of the code; not ours to show
            family = families[name]
            labels = tuple(label_values)
            if isinstance(metric, Gauge):
                if pid is None:
                    continue  # a dead worker's gauge means nothing
                if metric.mode == "each":
                    family.series[(*labels, str(pid))] = list(slots)
                    continue
                current = family.series.get(labels)
                if current is None:
                    family.series[labels] = list(slots)
                elif metric.mode == "max":
                    current[0] = max(current[0], slots[0])
                else:
                    current[0] += slots[0]
                continue
            current = family.series.get(labels)
            if current is None:
                family.series[labels] = list(slots)
            else:
                for index, value in enumerate(slots):
                    current[index] += value

    # -- lifecycle ----------------------------------------------------------------------------

    def close(self) -> None:
        """At a clean exit: fold this worker's counters into the shared archive, drop its file."""
        if self._file is not None:
            self._file.retire(self._monotonic())
            self._file = None
            self.directory = None


def _own_pid() -> int:
    return os.getpid()


# -- the text format ------------------------------------------------------------------------------


def _escape(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if math.isnan(value):
        return "NaN"
    if value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


def _labels(names: Sequence[str], values: Sequence[str], extra: str = "") -> str:
    pairs = [f'{name}="{_escape(value)}"' for name, value in zip(names, values, strict=True)]
    if extra:
        pairs.append(extra)
    return "{" + ",".join(pairs) + "}" if pairs else ""


def render(families: Iterable[MetricFamily]) -> bytes:
    """Families in the Prometheus text exposition format 0.0.4, sorted by name and labels."""
    lines: list[str] = []
    for family in sorted(families, key=lambda family: family.name):
        help_text = family.help.replace("\\", r"\\").replace("\n", r"\n")
        lines.append(f"# HELP {family.name} {help_text}")
        lines.append(f"# TYPE {family.name} {family.kind}")
        for labels, slots in sorted(family.series.items()):
            if family.kind != "histogram":
                lines.append(f"{family.name}{_labels(family.labels, labels)} {_number(slots[0])}")
                continue
            cumulative = 0.0
            for bound, count in zip((*family.buckets, math.inf), slots, strict=False):
                cumulative += count
                le = f'le="{_number(bound) if math.isinf(bound) else repr(bound)}"'
                bucket_labels = _labels(family.labels, labels, le)
                lines.append(f"{family.name}_bucket{bucket_labels} {_number(cumulative)}")
            suffix = _labels(family.labels, labels)
            lines.append(f"{family.name}_sum{suffix} {_number(slots[-1])}")
            lines.append(f"{family.name}_count{suffix} {_number(cumulative)}")
    lines.append("")
    return "\n".join(lines).encode()
