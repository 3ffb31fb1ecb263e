"""Adaptive concurrency limits: Gradient2, AIMD and their sampling windows, on synthetic latency."""

from __future__ import annotations

import pytest

from bastion._clock import ManualClock
from bastion.exceptions import ConfigurationError
from bastion.protection import AIMD, AdaptiveLimit, Gradient2


def crisp_gradient(**options: object) -> Gradient2:
    """A Gradient2 without smoothing (each window sets the limit), so its arithmetic is plain."""
    settings: dict[str, object] = {
        "initial": 100,
        "min_limit": 10,
        "max_limit": 100,
        "smoothing": 1.0,
        "headroom": 4,
    }
    settings.update(options)
    return Gradient2(**settings)  # type: ignore[arg-type]


def test_gradient2_holds_the_limit_while_latency_is_steady() -> None:
    """Steady latency under full load: gradient 1, the limit probes up and stops at max_limit."""
    limit = crisp_gradient()
    results = [limit.update(0.1, 100, False) for _ in range(20)]
    assert [100] * 20 == results


def test_gradient2_halves_the_limit_when_latency_jumps() -> None:
    """A window four times slower than the long-term average: gradient clamps at 0.5."""
    limit = crisp_gradient()
    for _ in range(20):
        limit.update(0.1, 100, False)
    assert 54 == limit.update(0.4, 100, False)  # 100 * 0.5 + 4
    assert 31 == limit.update(0.4, 54, False)  # 54 * 0.5 + 4


def test_gradient2_tolerates_latency_within_the_tolerance() -> None:
    """Latency up by less than the tolerance (1.5x) leaves the gradient at 1."""
    limit = crisp_gradient()
    for _ in range(20):
        limit.update(0.1, 100, False)
    assert 100 == limit.update(0.14, 100, False)


def test_gradient2_never_goes_below_min_limit() -> None:
    """However bad latency gets, the limit stays at least min_limit."""
    limit = crisp_gradient(min_limit=20)
    for _ in range(20):
        limit.update(0.1, 100, False)
    for _ in range(10):
        limit.update(5.0, 100, False)
    assert 20 == limit.limit


def test_gradient2_does_not_move_while_the_service_is_mostly_idle() -> None:
    """Fewer than half the permits in use says nothing about the limit: it stays."""
    limit = crisp_gradient()
    for _ in range(20):
        limit.update(0.1, 100, False)
    assert 100 == limit.update(1.0, 49, False)


def test_gradient2_grows_back_after_an_overload() -> None:
    """Once latency returns to normal, the limit climbs by the headroom per window."""
    limit = crisp_gradient(max_limit=1000, initial=100)
    for _ in range(10):
        limit.update(0.1, 0, False)  # idle windows: the average warms, the limit stays
    assert 54 == limit.update(0.4, 100, False)
    assert [58, 62, 66] == [limit.update(0.1, 54, False) for _ in range(3)]


def test_gradient2_smooths_each_step() -> None:
    """With smoothing 0.2, a steady busy window moves the limit a fifth of the headroom."""
    limit = Gradient2(initial=20, min_limit=5, max_limit=1000, smoothing=0.2, headroom=4)
    assert [20, 21, 22] == [limit.update(0.1, 20, False) for _ in range(3)]  # 20.8, 21.6, 22.4


def test_aimd_grows_by_one_while_busy_and_fast() -> None:
    """Latency under the threshold and at least half the limit in use: +1 per window."""
    limit = AIMD(initial=10, min_limit=1, max_limit=12, latency_threshold_s=0.5)
    assert [11, 12, 12] == [limit.update(0.1, 10, False) for _ in range(3)]


def test_aimd_backs_off_on_a_drop_or_slow_window() -> None:
    """A drop or a window slower than the threshold multiplies the limit by backoff_ratio."""
    limit = AIMD(initial=100, min_limit=5, max_limit=200, latency_threshold_s=0.5)
    assert 90 == limit.update(0.1, 100, True)
    assert 81 == limit.update(0.6, 90, False)


def test_aimd_stays_put_while_idle_and_respects_min_limit() -> None:
    """An idle window changes nothing; back-off never goes below min_limit."""
    limit = AIMD(initial=6, min_limit=5, max_limit=200, backoff_ratio=0.5)
    assert 6 == limit.update(0.1, 2, False)
    assert 5 == limit.update(0.1, 6, True)


@pytest.mark.parametrize(
    "options",
    [
        {"initial": 3, "min_limit": 5, "max_limit": 10},
        {"initial": 20, "min_limit": 5, "max_limit": 10},
        {"initial": 5, "min_limit": 0, "max_limit": 10},
        {"smoothing": 0.0},
        {"tolerance": 0.5},
    ],
)
def test_gradient2_rejects_inconsistent_options(options: dict[str, float]) -> None:
    """Bounds that contradict each other and out-of-range parameters fail at construction."""
    with pytest.raises(ConfigurationError):
        Gradient2(**options)  # type: ignore[arg-type]


@pytest.mark.parametrize("options", [{"backoff_ratio": 1.0}, {"latency_threshold_s": 0}])
def test_aimd_rejects_out_of_range_options(options: dict[str, float]) -> None:
    """A back-off that does not back off, or a zero threshold, is a configuration error."""
    with pytest.raises(ConfigurationError):
        AIMD(**options)  # type: ignore[arg-type]


def windowed_aimd(clock: ManualClock, *, min_samples: int, **options: float) -> AdaptiveLimit:
    """An AIMD limit starting at 10 (between 1 and 100) in one-second windows on ``clock``."""
    return AdaptiveLimit(
        AIMD(initial=10, min_limit=1, max_limit=100),
        window_s=1.0,
        min_samples=min_samples,
        clock=clock,
        **options,
    )


def test_a_window_updates_the_algorithm_once_with_its_average() -> None:
    """Samples within a window are averaged; the window closes at its first sample after it."""
    clock = ManualClock()
    algorithm = AIMD(initial=10, min_limit=1, max_limit=100, latency_threshold_s=0.5)
    adaptive = AdaptiveLimit(algorithm, window_s=1.0, min_samples=3, clock=clock)
    changes = [adaptive.record(rtt, 10, False) for rtt in (0.2, 0.4, 0.9)]  # average 0.5
    clock.advance(1.0)
    changes.append(adaptive.record(0.5, 10, False))  # average 0.5: not above the threshold

    assert [False, False, False, True] == changes
    assert 11 == adaptive.limit


def test_a_window_with_too_few_samples_is_dropped() -> None:
    """A window holding fewer than min_samples samples does not move the limit."""
    clock = ManualClock()
    adaptive = windowed_aimd(clock, min_samples=5)
    adaptive.record(0.1, 10, False)
    clock.advance(1.5)

    assert False is adaptive.record(0.1, 10, False)
    assert 10 == adaptive.limit


def test_a_drop_anywhere_in_the_window_counts() -> None:
    """One dropped request in a window makes the whole window a drop for AIMD."""
    clock = ManualClock()
    adaptive = windowed_aimd(clock, min_samples=2)
    adaptive.record(0.1, 10, True)
    clock.advance(1.0)
    adaptive.record(0.1, 10, False)

    assert 9 == adaptive.limit


def test_samples_faster_than_min_rtt_are_ignored() -> None:
    """Requests answered in microseconds (a 404, a cache hit) do not count as samples."""
    clock = ManualClock()
    adaptive = windowed_aimd(clock, min_samples=2, min_rtt_s=0.001)
    adaptive.record(0.00001, 10, False)
    clock.advance(1.0)
    adaptive.record(0.00001, 10, False)

    assert 10 == adaptive.limit


def test_the_peak_in_flight_of_a_window_is_what_the_algorithm_sees() -> None:
    """A window's busiest moment decides whether the service was using its limit."""
    clock = ManualClock()
    adaptive = windowed_aimd(clock, min_samples=3)
    for in_flight in (1, 6, 2):
        adaptive.record(0.1, in_flight, False)
    clock.advance(1.0)
    adaptive.record(0.1, 1, False)

    assert 11 == adaptive.limit  # 6 * 2 >= 10: busy enough to grow


def test_an_adaptive_limit_rejects_an_empty_window() -> None:
    """A window of zero seconds or zero samples is a configuration error."""
    with pytest.raises(ConfigurationError):
        AdaptiveLimit(AIMD(), window_s=0)
    with pytest.raises(ConfigurationError):
        AdaptiveLimit(AIMD(), min_samples=0)
