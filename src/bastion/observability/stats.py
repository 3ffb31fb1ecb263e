"""Per-route analytics over a sliding window, from cumulative histogram snapshots.

The request-duration histogram that the metrics expose is cumulative: counts only grow. Two
snapshots of it taken some time apart give everything a dashboard wants for that span: request
rate, error rate and latency percentiles, per route and in total. ``RouteStats`` keeps a bounded
ring of snapshots and reports the difference between the newest and the oldest one within the
window, computing percentiles the way Prometheus' ``histogram_quantile`` does, so the numbers
agree with a Grafana panel over the same metrics::

    stats = RouteStats(bounds=LATENCY_BUCKETS_S, window_s=300, interval_s=10)
    stats.add(snapshot())        # every interval_s, e.g. from a background task
    body = stats.report(top=10)  # JSON-ready
"""

from __future__ import annotations

import itertools
import math
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from bastion._clock import SYSTEM_CLOCK, Clock
from bastion.exceptions import ConfigurationError

__all__ = ["HistogramSample", "RouteStats", "SeriesKey", "Snapshot", "histogram_quantile"]

SeriesKey = tuple[str, str, str]
"""``(method, route, status_class)``; the status class is ``"2xx"``, ``"4xx"``, ``"5xx"``, ...
or ``"none"`` when no response was sent."""

_QUANTILES = (("p50_s", 0.5), ("p95_s", 0.95), ("p99_s", 0.99))


@dataclass(frozen=True, slots=True)
class HistogramSample:
    """One series of a cumulative histogram at one instant, as Prometheus exposes it."""

    count: float
    """Observations so far (the ``_count`` series, equal to the ``+Inf`` bucket)."""
    sum: float
    """Sum of the observations so far, in seconds (the ``_sum`` series)."""
    buckets: tuple[float, ...]
    """Cumulative count for each finite upper bound of ``RouteStats.bounds``, in order (the
    ``_bucket`` series without ``le="+Inf"``)."""


Snapshot = Mapping[SeriesKey, HistogramSample]
"""Every series of the request-duration histogram at one instant, summed across processes."""


def histogram_quantile(
    q: float, bounds: Sequence[float], buckets: Sequence[float], count: float
) -> float | None:
    """The ``q``-quantile of a histogram, estimated like Prometheus' ``histogram_quantile``.

    The quantile's rank is located in a bucket and interpolated linearly between the bucket's
    bounds. The first bucket's lower bound is 0 (if its upper bound is positive); a rank in the
    ``+Inf`` bucket returns the highest finite bound, because nothing is known above it.

    Args:
        q: the quantile, between 0 and 1.
        bounds: finite upper bounds, increasing.
        buckets: cumulative count for each bound (without the ``+Inf`` bucket).
        count: all observations (the ``+Inf`` bucket).

    Returns:
        The estimate, or ``None`` when there are no observations.

    Raises:
        ValueError: ``q`` is not between 0 and 1 (Prometheus would answer an infinity, which
            JSON cannot hold).
    """
    if not 0 <= q <= 1:
        raise ValueError(f"q must be between 0 and 1, got {q!r}")
    if count <= 0 or not bounds:
        return None
    rank = q * count
    previous_bound = 0.0
    previous_count = 0.0
    for index, (bound, cumulative) in enumerate(zip(bounds, buckets, strict=True)):
        if cumulative >= rank:
            if index == 0 and bound <= 0:
                return bound
            in_bucket = cumulative - previous_count
            if in_bucket <= 0:  # q == 0 and nothing at or below the first bounds
                return previous_bound
            return previous_bound + (bound - previous_bound) * (rank - previous_count) / in_bucket
        previous_bound = bound
        previous_count = cumulative
    return bounds[-1]


class _Totals:
    """Deltas of one group of series (a route, or everything) over the window."""

    __slots__ = ("buckets", "client_errors", "count", "errors", "sum")

    def __init__(self, size: int) -> None:
        self.count = 0.0
        self.sum = 0.0
        self.errors = 0.0
        self.client_errors = 0.0
        self.buckets = [0.0] * size

    def add(self, status_class: str, count: float, total: float, buckets: Iterable[float]) -> None:
        self.count += count
        self.sum += total
        if status_class == "5xx":
            self.errors += count
        elif status_class == "4xx":
            self.client_errors += count
        for index, value in enumerate(buckets):
            self.buckets[index] += value

    def fields(self, bounds: Sequence[float], window_s: float) -> dict[str, Any]:
        requests = self.count
        # Buckets summed from independent series may disagree by rounding; cumulative counts
        # must not decrease and cannot exceed the total (Prometheus makes the same repair).
        buckets: list[float] = []
        highest = 0.0
        for value in self.buckets:
            highest = min(max(highest, value), requests)
            buckets.append(highest)
        fields: dict[str, Any] = {
            "requests": round(requests),
            "rate_per_s": requests / window_s if window_s > 0 else None,
            "errors": round(self.errors),
            "error_rate": self.errors / requests if requests > 0 else None,
            "client_errors": round(self.client_errors),
        }
        for name, q in _QUANTILES:
            fields[name] = histogram_quantile(q, bounds, buckets, requests)
        fields["mean_s"] = self.sum / requests if requests > 0 else None
        return fields


class RouteStats:
    """Request rate, error rate and latency percentiles per route over a sliding window.

    ``add()`` records a snapshot of the cumulative histogram with the clock's time;
    ``report()`` subtracts the oldest snapshot within ``window_s`` of the newest from the newest.

    Memory is bounded whatever the call rate: a snapshot is kept for the window only if it is
    at least ``interval_s`` younger than the previous one kept; otherwise it just replaces the
    newest, which ``report()`` always uses. So at most ``window_s / interval_s + 2`` snapshots
    are held.

    Counters that went *down* between the two snapshots (a worker restarted and its counts were
    lost) are treated like Prometheus' ``rate()`` treats a reset: the newest value is the
    increase. When only part of a sum over workers is lost, that undercounts the window.

    Args:
        bounds: finite upper bounds of the histogram's buckets, increasing. A trailing ``+Inf``
            is accepted and dropped.
        window_s: how far back the report looks.
        interval_s: the resolution: the least time between two snapshots kept.
        clock: time source; only ``monotonic()`` is used.

    Raises:
        ConfigurationError: the bounds or the durations are invalid.
    """

    __slots__ = ("_bounds", "_clock", "_interval_s", "_latest", "_ring", "_window_s")

    def __init__(
        self,
        bounds: Sequence[float],
        *,
        window_s: float = 300,
        interval_s: float = 10,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        finite = [float(bound) for bound in bounds]
        if finite and finite[-1] == math.inf:
            finite.pop()
        if not finite:
            raise ConfigurationError("bounds must hold at least one finite bucket bound")
        if not all(math.isfinite(bound) for bound in finite) or any(
            low >= high for low, high in itertools.pairwise(finite)
        ):
            raise ConfigurationError(f"bounds must be finite and increasing, got {list(bounds)}")
        for name, value in (("window_s", window_s), ("interval_s", interval_s)):
            if not (math.isfinite(value) and value > 0):
                raise ConfigurationError(
                    f"{name} must be a positive number of seconds, got {value!r}"
                )
        if interval_s > window_s:
            raise ConfigurationError(
                f"interval_s ({interval_s}) must not exceed window_s ({window_s})"
            )
        self._bounds = tuple(finite)
        self._window_s = float(window_s)
        self._interval_s = float(interval_s)
        self._clock = clock
        # Kept snapshots, each at least interval_s after the previous; maxlen is a backstop,
        # add() already drops those older than the window.
        self._ring: deque[tuple[float, dict[SeriesKey, HistogramSample]]] = deque(
            maxlen=math.ceil(self._window_s / self._interval_s) + 1
        )
        self._latest: tuple[float, dict[SeriesKey, HistogramSample]] | None = None

    @property
    def bounds(self) -> tuple[float, ...]:
        """The finite bucket bounds, increasing."""
        return self._bounds

    @property
    def window_s(self) -> float:
        """How far back the report looks, in seconds."""
        return self._window_s

    @property
    def interval_s(self) -> float:
        """The least time between two snapshots kept, in seconds."""
        return self._interval_s

    def __len__(self) -> int:
        """How many snapshots are held (the newest counts once)."""
        apart = self._latest is not None and (not self._ring or self._ring[-1] is not self._latest)
        return len(self._ring) + int(apart)

    def add(self, snapshot: Snapshot) -> None:
        """Record the histogram's series as they are now.

        The mapping is copied, so the caller may reuse it.

        Raises:
            ValueError: a sample's bucket count does not match ``bounds``.
        """
        size = len(self._bounds)
        for key, sample in snapshot.items():
            if len(sample.buckets) != size:
                raise ValueError(
                    f"series {key} has {len(sample.buckets)} buckets, expected {size} "
                    "(one per finite bound; the +Inf bucket is the count)"
                )
        now = self._clock.monotonic()
        entry = (now, dict(snapshot))
        self._latest = entry
        if not self._ring or now - self._ring[-1][0] >= self._interval_s:
            self._ring.append(entry)
        elif now == self._ring[-1][0]:  # no time passed: the older one measures nothing
            self._ring[-1] = entry
        horizon = now - self._window_s
        while self._ring[0][0] < horizon:
            self._ring.popleft()

    def report(self, *, top: int = 10) -> dict[str, Any]:
        """The window's statistics, ready for JSON.

        Rates are per second over ``window_s``, the span actually covered (less than the
        configured window until that much history exists). Before two snapshots at different
        times exist the covered span is ``0``: counts are ``0`` and ``rate_per_s`` is ``None``
        (unknown rather than zero). ``error_rate``, the percentiles and ``mean_s`` are ``None``
        when there were no requests. Routes without requests in the window are left out.

        Args:
            top: how many of the busiest routes ``top`` holds.

        Returns:
            ``{"window_s", "routes", "top", "total"}``. Each route has ``method``, ``route``,
            ``requests``, ``rate_per_s``, ``errors`` (5xx), ``error_rate`` (5xx / requests),
            ``client_errors`` (4xx), ``p50_s``, ``p95_s``, ``p99_s`` and ``mean_s``, and the
            routes are sorted by requests, most first. ``total`` has the same fields but
            ``method`` and ``route``, over all series.
        """
        if top < 0:
            raise ValueError(f"top must be >= 0, got {top}")
        size = len(self._bounds)
        total = _Totals(size)
        routes: dict[tuple[str, str], _Totals] = {}
        window_s = 0.0
        if self._latest is not None and self._ring:
            newest_at, newest = self._latest
            oldest_at, oldest = self._ring[0]
            window_s = newest_at - oldest_at
            for key, sample in newest.items():
                before = oldest.get(key)
                count, total_s, buckets = _increase(before, sample)
                if count <= 0:
                    continue
                method, route, status_class = key
                group = routes.get((method, route))
                if group is None:
                    group = routes[method, route] = _Totals(size)
                group.add(status_class, count, total_s, buckets)
                total.add(status_class, count, total_s, buckets)
        ordered = sorted(routes.items(), key=lambda item: (-item[1].count, item[0][1], item[0][0]))
        route_fields = [
            {"method": method, "route": route, **group.fields(self._bounds, window_s)}
            for (method, route), group in ordered
        ]
        return {
            "window_s": window_s,
            "routes": route_fields,
            "top": route_fields[:top],
            "total": total.fields(self._bounds, window_s),
        }


def _increase(
    before: HistogramSample | None, after: HistogramSample
) -> tuple[float, float, Iterable[float]]:
    """What one series gained between two snapshots; a series that went down was reset."""
    if (
        before is None
        or after.count < before.count
        or any(new < old for new, old in zip(after.buckets, before.buckets, strict=True))
    ):
        return after.count, after.sum, after.buckets
    # The sum is not a reset signal: summed across processes in another order it may shrink by
    # a rounding error while the counts stand still.
    return (
        after.count - before.count,
        max(0.0, after.sum - before.sum),
        [new - old for new, old in zip(after.buckets, before.buckets, strict=True)],
    )
