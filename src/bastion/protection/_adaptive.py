"""Adaptive concurrency limits: Gradient2 and AIMD on measured latency (Netflix concurrency-limits).

A fixed concurrency limit is a guess. An adaptive one is measured, the way TCP sizes its
congestion window: when requests get slower than they used to be, requests are queueing inside
the service (a database pool, a CPU, a downstream), so the limit shrinks; while latency holds,
the limit probes upward. By Little's law the right limit is throughput times latency.

- ``Gradient2`` (Netflix's default) compares a short-term latency with a long-term exponential
  average: ``gradient = clamp(tolerance * long / short, 0.5, 1)``,
  ``new = gradient * limit + headroom``, smoothed.
- ``AIMD`` grows the limit by one while the service is busy and latency is under a threshold,
  and cuts it by ``backoff_ratio`` when a window's latency exceeds it (or a request timed out).

``AdaptiveLimit`` feeds either one with per-window samples (average latency, most requests in
flight, whether any dropped) on an injected clock, so the algorithms are tested with synthetic
latencies and no sleeping.

Ported from ``Netflix/concurrency-limits`` (``Gradient2Limit``, ``AIMDLimit``, ``WindowedLimit``)
rather than depended on: it is Java, and the arithmetic is a few lines.
"""

from __future__ import annotations

from typing import Protocol

from bastion._clock import SYSTEM_CLOCK, Clock
from bastion.exceptions import ConfigurationError

__all__ = ["AIMD", "AdaptiveLimit", "Gradient2", "LimitAlgorithm"]


class LimitAlgorithm(Protocol):
    """Computes a new concurrency limit from one window of samples."""

    @property
    def limit(self) -> int:
        """The current limit."""
        ...

    def update(self, rtt_s: float, in_flight: int, dropped: bool) -> int:
        """Take one window's latency, its peak in-flight count and whether a request dropped;
        return the new limit."""
        ...


def _check_bounds(initial: int, min_limit: int, max_limit: int) -> None:
    if min_limit < 1:
        raise ConfigurationError(f"min_limit must be at least 1, got {min_limit}")
    if not min_limit <= initial <= max_limit:
        raise ConfigurationError(
            f"the initial limit {initial} must lie between min_limit {min_limit} and "
            f"max_limit {max_limit}"
        )


class _ExpAverage:
    """An exponential moving average over ``window`` samples, a plain mean while warming up."""

    __slots__ = ("_count", "_factor", "_sum", "_warmup", "value")

    def __init__(self, window: int, warmup: int) -> None:
        self._factor = 2.0 / (window + 1)
        self._warmup = warmup
        self._count = 0
        self._sum = 0.0
        self.value = 0.0

    def add(self, sample: float) -> float:
        if self._count < self._warmup:
            self._count += 1
            self._sum += sample
            self.value = self._sum / self._count
        else:
            self.value += (sample - self.value) * self._factor
        return self.value


class Gradient2:
    """Netflix's Gradient2: the limit follows the ratio of long-term to short-term latency.

    Args:
        initial: the starting limit.
        min_limit: the limit never goes below this.
        max_limit: the limit never goes above this.
        smoothing: weight of each new estimate (0-1]; lower reacts more slowly.
        headroom: added to the limit at every update (Netflix's ``queueSize``): how far the
            limit probes above what latency justifies.
        tolerance: how much slower than the long-term average the short-term latency may be
            before the limit shrinks (1.5: 50 % slower).
        long_window: samples in the long-term average (with a 10-sample warm-up).

    Raises:
        ConfigurationError: for inconsistent bounds or out-of-range parameters.
    """

    __slots__ = (
        "_estimate",
        "_headroom",
        "_long_rtt",
        "_max",
        "_min",
        "_smoothing",
        "_tolerance",
    )

    def __init__(
        self,
        *,
        initial: int = 20,
        min_limit: int = 5,
        max_limit: int = 1000,
        smoothing: float = 0.2,
        headroom: int = 4,
        tolerance: float = 1.5,
        long_window: int = 600,
    ) -> None:
        _check_bounds(initial, min_limit, max_limit)
        if not 0 < smoothing <= 1:
            raise ConfigurationError(f"smoothing must be in (0, 1], got {smoothing}")
        if tolerance < 1:
            raise ConfigurationError(f"tolerance must be at least 1, got {tolerance}")
        if headroom < 0 or long_window < 1:
            raise ConfigurationError("headroom must be >= 0 and long_window >= 1")
        self._estimate = float(initial)
        self._min = min_limit
        self._max = max_limit
        self._smoothing = smoothing
        self._headroom = headroom
        self._tolerance = tolerance
        self._long_rtt = _ExpAverage(long_window, 10)

    @property
    def limit(self) -> int:
        """The current limit."""
        return int(self._estimate)

    def update(self, rtt_s: float, in_flight: int, dropped: bool) -> int:
        """One window: ``rtt_s`` is its average latency, ``in_flight`` its peak concurrency."""
        short = rtt_s
        long = self._long_rtt.add(rtt_s)
        # After a long overload the long-term average sits far above today's latency; pulling it
        # down faster than the smoothing would brings the limit back to steady state sooner.
        if long / short > 2:
            self._long_rtt.value *= 0.95
        # A service using less than half its limit says nothing about a higher one.
        if in_flight < self._estimate / 2:
            return self.limit
        gradient = max(0.5, min(1.0, self._tolerance * long / short))
        target = self._estimate * gradient + self._headroom
        smoothed = self._estimate * (1 - self._smoothing) + target * self._smoothing
        self._estimate = max(float(self._min), min(float(self._max), smoothed))
        return self.limit


class AIMD:
    """Additive increase, multiplicative decrease on a latency threshold.

    Args:
        initial: the starting limit.
        min_limit: the limit never goes below this.
        max_limit: the limit never goes above this.
        latency_threshold_s: a window whose average latency exceeds this counts as a drop.
        backoff_ratio: the limit is multiplied by this on a drop (0.5-1).

    Raises:
        ConfigurationError: for inconsistent bounds or out-of-range parameters.
    """

    __slots__ = ("_backoff", "_limit", "_max", "_min", "_threshold")

    def __init__(
        self,
        *,
        initial: int = 20,
        min_limit: int = 5,
        max_limit: int = 1000,
        latency_threshold_s: float = 1.0,
        backoff_ratio: float = 0.9,
    ) -> None:
        _check_bounds(initial, min_limit, max_limit)
        if not 0.5 <= backoff_ratio < 1:
            raise ConfigurationError(f"backoff_ratio must be in [0.5, 1), got {backoff_ratio}")
        if latency_threshold_s <= 0:
            raise ConfigurationError("latency_threshold_s must be positive")
        self._limit = initial
        self._min = min_limit
        self._max = max_limit
        self._threshold = latency_threshold_s
        self._backoff = backoff_ratio

    @property
    def limit(self) -> int:
        """The current limit."""
        return self._limit

    def update(self, rtt_s: float, in_flight: int, dropped: bool) -> int:
        """One window: back off on a drop or slow latency, else grow by one while busy."""
        limit = self._limit
        if dropped or rtt_s > self._threshold:
            limit = int(limit * self._backoff)
        elif in_flight * 2 >= limit:
            limit += 1
        self._limit = max(self._min, min(self._max, limit))
        return self._limit


class AdaptiveLimit:
    """Collects latency samples in time windows and lets an algorithm move the limit.

    A window closes at the first sample at least ``window_s`` after it opened; it updates the
    algorithm when it holds ``min_samples`` samples (fewer say too little and are dropped).
    Samples faster than ``min_rtt_s`` are ignored: they measure the framework, not the load.

    Args:
        algorithm: ``Gradient2`` or ``AIMD`` (or any ``LimitAlgorithm``).
        window_s: length of a sampling window in seconds.
        min_samples: samples a window needs before it counts.
        min_rtt_s: samples below this latency are ignored.
        clock: time source for the windows.

    Raises:
        ConfigurationError: for a non-positive window or sample count.
    """

    __slots__ = (
        "_clock",
        "_count",
        "_dropped",
        "_max_in_flight",
        "_min_rtt",
        "_min_samples",
        "_sum",
        "_window",
        "_window_end",
        "algorithm",
    )

    def __init__(
        self,
        algorithm: LimitAlgorithm,
        *,
        window_s: float = 1.0,
        min_samples: int = 10,
        min_rtt_s: float = 0.0001,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        if window_s <= 0 or min_samples < 1:
            raise ConfigurationError("window_s must be positive and min_samples at least 1")
        self.algorithm = algorithm
        self._window = window_s
        self._min_samples = min_samples
        self._min_rtt = min_rtt_s
        self._clock = clock
        self._window_end = clock.monotonic() + window_s
        self._reset()

    @property
    def limit(self) -> int:
        """The current limit."""
        return self.algorithm.limit

    def _reset(self) -> None:
        self._count = 0
        self._sum = 0.0
        self._max_in_flight = 0
        self._dropped = False

    def record(self, rtt_s: float, in_flight: int, dropped: bool) -> bool:
        """Add one finished request's sample; return whether the limit changed.

        Args:
            rtt_s: seconds the request held its permit (queue time excluded).
            in_flight: requests holding a permit when it was admitted, itself included.
            dropped: whether it timed out or was refused for overload downstream.
        """
        if rtt_s >= self._min_rtt:
            self._count += 1
            self._sum += rtt_s
            if in_flight > self._max_in_flight:
                self._max_in_flight = in_flight
            self._dropped = self._dropped or dropped
        now = self._clock.monotonic()
        if now < self._window_end:
            return False
        self._window_end = now + self._window
        changed = False
        if self._count >= self._min_samples:
            before = self.algorithm.limit
            after = self.algorithm.update(
                self._sum / self._count, self._max_in_flight, self._dropped
            )
            changed = after != before
        self._reset()
        return changed
