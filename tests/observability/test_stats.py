"""RouteStats: rates, error rates and latency percentiles per route over a sliding window."""

from __future__ import annotations

import itertools
import math

import orjson
import pytest

from bastion._clock import ManualClock
from bastion.exceptions import ConfigurationError
from bastion.observability.stats import HistogramSample, RouteStats, Snapshot, histogram_quantile

BOUNDS = (0.1, 0.2, 0.3, 0.45)


def hist(*per_bucket: float, sum_s: float = 0.0) -> HistogramSample:
    """A sample from per-bucket (not cumulative) counts, one per bound and the last for +Inf."""
    assert len(BOUNDS) + 1 == len(per_bucket)
    cumulative = list(itertools.accumulate(per_bucket))
    return HistogramSample(count=cumulative[-1], sum=sum_s, buckets=tuple(cumulative[:-1]))


def fast(requests: float) -> HistogramSample:
    """``requests`` observations of 50 ms each (all in the first bucket)."""
    return hist(requests, 0, 0, 0, 0, sum_s=0.05 * requests)


def stats_between(
    clock: ManualClock, before: Snapshot, after: Snapshot, *, seconds: float = 50
) -> RouteStats:
    """RouteStats that saw ``before``, then ``after`` ``seconds`` later."""
    stats = RouteStats(BOUNDS, window_s=300, interval_s=10, clock=clock)
    stats.add(before)
    clock.advance(seconds)
    stats.add(after)
    return stats


# -------------------------------------------------------------------------- rates and errors


def test_rates_and_error_rates_come_from_the_window_delta(manual_clock: ManualClock) -> None:
    """Requests, rates, 5xx and 4xx are the increase between the oldest and newest snapshot."""
    before = {
        ("GET", "/items", "2xx"): fast(1000),
        ("POST", "/items", "4xx"): fast(2),
    }
    after = {
        ("GET", "/items", "2xx"): fast(1090),
        ("GET", "/items", "5xx"): fast(10),  # absent before: counts from zero
        ("POST", "/items", "4xx"): fast(7),
        ("POST", "/items", "2xx"): fast(20),
    }
    report = stats_between(manual_clock, before, after, seconds=50).report()

    assert 50.0 == report["window_s"]
    get, post = report["routes"]
    assert ("GET", "/items") == (get["method"], get["route"])
    assert 100 == get["requests"]
    assert 2.0 == get["rate_per_s"]
    assert 10 == get["errors"]
    assert 0.1 == get["error_rate"]
    assert 0 == get["client_errors"]

    assert ("POST", "/items") == (post["method"], post["route"])
    assert 25 == post["requests"]
    assert 0.5 == post["rate_per_s"]
    assert 0 == post["errors"]
    assert 0.0 == post["error_rate"]
    assert 5 == post["client_errors"]

    total = report["total"]
    assert 125 == total["requests"]
    assert 2.5 == total["rate_per_s"]
    assert 10 == total["errors"]
    assert 0.08 == total["error_rate"]
    assert 5 == total["client_errors"]
    assert "method" not in total
    assert "route" not in total


def test_requests_without_a_response_count_but_are_not_errors(manual_clock: ManualClock) -> None:
    """The "none" status class (no response was sent) adds requests, not errors."""
    after = {("GET", "/stream", "none"): fast(4), ("GET", "/stream", "2xx"): fast(6)}
    route = stats_between(manual_clock, {}, after).report()["routes"][0]
    assert 10 == route["requests"]
    assert 0 == route["errors"]
    assert 0 == route["client_errors"]
    assert 0.0 == route["error_rate"]


def test_routes_without_requests_in_the_window_are_left_out(manual_clock: ManualClock) -> None:
    """A route whose counts did not move in the window is not listed."""
    before = {("GET", "/idle", "2xx"): fast(50), ("GET", "/busy", "2xx"): fast(1)}
    after = {("GET", "/idle", "2xx"): fast(50), ("GET", "/busy", "2xx"): fast(6)}
    report = stats_between(manual_clock, before, after).report()
    assert ["/busy"] == [route["route"] for route in report["routes"]]


def test_mean_is_the_sum_delta_over_the_request_delta(manual_clock: ManualClock) -> None:
    """mean_s divides the increase of the sum by the increase of the count."""
    before = {("GET", "/", "2xx"): hist(10, 0, 0, 0, 0, sum_s=0.5)}
    after = {("GET", "/", "2xx"): hist(10, 0, 4, 0, 0, sum_s=1.5)}
    report = stats_between(manual_clock, before, after).report()
    assert 0.25 == report["routes"][0]["mean_s"]
    assert 0.25 == report["total"]["mean_s"]


# ------------------------------------------------------------------------------- percentiles


def test_percentiles_interpolate_within_the_bucket(manual_clock: ManualClock) -> None:
    """p50, p95 and p99 are histogram_quantile's linear interpolation, computed by hand."""
    # Per bucket 50, 30, 15, 4 and 1 above 0.45 s; cumulative 50, 80, 95, 99, 100.
    after = {("GET", "/", "2xx"): hist(50, 30, 15, 4, 1, sum_s=20.0)}
    route = stats_between(manual_clock, {}, after).report()["routes"][0]
    assert pytest.approx(0.0 + 0.1 * 50 / 50) == route["p50_s"]  # rank 50, first bucket
    assert pytest.approx(0.2 + 0.1 * (95 - 80) / 15) == route["p95_s"]  # rank 95, (0.2, 0.3]
    assert pytest.approx(0.3 + 0.15 * (99 - 95) / 4) == route["p99_s"]  # rank 99, (0.3, 0.45]
    assert 0.2 == route["mean_s"]


def test_percentiles_match_the_prometheus_documentation_example(
    manual_clock: ManualClock,
) -> None:
    """Prometheus' "errors of quantile estimation": all near 220 ms gives p95 = 295 ms; all
    near 320 ms gives 442.5 ms, with buckets 0.1, 0.2, 0.3 and 0.45 s."""
    near_220ms = {("GET", "/", "2xx"): hist(0, 0, 1000, 0, 0, sum_s=220.0)}
    near_320ms = {("GET", "/", "2xx"): hist(0, 0, 1000, 1000, 0, sum_s=540.0)}
    stats = RouteStats(BOUNDS, window_s=60, interval_s=10, clock=manual_clock)
    stats.add({})
    manual_clock.advance(60)
    stats.add(near_220ms)
    assert pytest.approx(0.295) == stats.report()["routes"][0]["p95_s"]
    manual_clock.advance(60)  # the window now holds only the second minute
    stats.add(near_320ms)
    assert pytest.approx(0.4425) == stats.report()["routes"][0]["p95_s"]


def test_percentiles_describe_the_window_not_the_whole_history(
    manual_clock: ManualClock,
) -> None:
    """Fast requests before the window do not dilute the slow ones inside it."""
    before = {("GET", "/", "2xx"): fast(10_000)}
    after = {("GET", "/", "2xx"): hist(10_000, 0, 0, 100, 0, sum_s=530.0)}
    route = stats_between(manual_clock, before, after).report()["routes"][0]
    assert pytest.approx(0.3 + 0.15 * 0.5) == route["p50_s"]
    assert pytest.approx(0.3 + 0.15 * 0.99) == route["p99_s"]


def test_a_quantile_above_the_highest_bound_is_that_bound(manual_clock: ManualClock) -> None:
    """Observations past every finite bucket (+Inf) report the highest finite bound."""
    after = {("GET", "/slow", "2xx"): hist(0, 0, 0, 0, 10, sum_s=50.0)}
    route = stats_between(manual_clock, {}, after).report()["routes"][0]
    assert 0.45 == route["p50_s"]
    assert 0.45 == route["p99_s"]
    assert 5.0 == route["mean_s"]


def test_route_percentiles_merge_its_status_classes(manual_clock: ManualClock) -> None:
    """A route's percentiles come from the buckets of all its status classes summed."""
    after = {
        ("GET", "/", "2xx"): hist(50, 0, 0, 0, 0),
        ("GET", "/", "5xx"): hist(0, 0, 0, 50, 0),
    }
    report = stats_between(manual_clock, {}, after).report()
    assert pytest.approx(0.1) == report["routes"][0]["p50_s"]
    assert pytest.approx(0.3 + 0.15 * 45 / 50) == report["routes"][0]["p95_s"]
    assert report["routes"][0]["p95_s"] == report["total"]["p95_s"]


def test_histogram_quantile_edge_cases() -> None:
    """No observations is None; a first bound <= 0 is returned as is; q must be in [0, 1]."""
    assert histogram_quantile(0.5, BOUNDS, (0, 0, 0, 0), 0) is None
    assert 0.0 == histogram_quantile(0.5, (0.0, 1.0), (5, 10), 10)
    assert 0.0 == histogram_quantile(0.0, BOUNDS, (0, 0, 5, 10), 10)
    assert 0.45 == histogram_quantile(1.0, BOUNDS, (0, 0, 5, 10), 20)
    with pytest.raises(ValueError, match="between 0 and 1"):
        histogram_quantile(1.5, BOUNDS, (0, 0, 0, 1), 1)


# --------------------------------------------------------------------- window, resets, memory


def test_the_window_drops_snapshots_older_than_window_s(manual_clock: ManualClock) -> None:
    """After a busy first minute and a quiet second one, a 60 s window sees only the second."""
    stats = RouteStats(BOUNDS, window_s=60, interval_s=10, clock=manual_clock)
    requests = 0
    for second in range(0, 121, 10):
        if second:
            requests += 100 if second <= 60 else 10
            manual_clock.advance(10)
        stats.add({("GET", "/", "2xx"): fast(requests)})
    report = stats.report()
    assert 60.0 == report["window_s"]
    assert 60 == report["total"]["requests"]
    assert 1.0 == report["total"]["rate_per_s"]
    assert 7 == len(stats)  # 60 s / 10 s + 1


def test_a_gap_longer_than_the_window_leaves_a_zero_window(manual_clock: ManualClock) -> None:
    """A snapshot after a silence longer than the window has nothing in the window to compare."""
    stats = RouteStats(BOUNDS, window_s=60, interval_s=10, clock=manual_clock)
    stats.add({("GET", "/", "2xx"): fast(1)})
    manual_clock.advance(61)
    stats.add({("GET", "/", "2xx"): fast(100)})
    report = stats.report()
    assert 0.0 == report["window_s"]
    assert [] == report["routes"]
    assert 1 == len(stats)


def test_a_counter_that_went_down_counts_as_a_reset(manual_clock: ManualClock) -> None:
    """A series lower than before (its worker restarted) counts its newest value, never less."""
    before = {("GET", "/", "2xx"): hist(80, 20, 0, 0, 0, sum_s=9.0)}
    after = {("GET", "/", "2xx"): hist(10, 0, 20, 0, 0, sum_s=5.0)}
    report = stats_between(manual_clock, before, after).report()
    route = report["routes"][0]
    assert 30 == route["requests"]
    assert pytest.approx(5.0 / 30) == route["mean_s"]
    assert pytest.approx(0.2 + 0.1 * (15 - 10) / 20) == route["p50_s"]
    assert all(value >= 0 for value in report["total"].values() if value is not None)


def test_a_single_bucket_going_down_counts_as_a_reset(manual_clock: ManualClock) -> None:
    """Lower bucket counts under a higher total are a reset too, not negative bucket deltas."""
    before = {("GET", "/", "2xx"): hist(10, 0, 0, 0, 0)}
    after = {("GET", "/", "2xx"): hist(5, 0, 0, 10, 0)}
    route = stats_between(manual_clock, before, after).report()["routes"][0]
    assert 15 == route["requests"]
    assert pytest.approx(0.3 + 0.15 * (7.5 - 5) / 10) == route["p50_s"]  # newest buckets alone


def test_a_sum_that_shrank_by_rounding_is_not_negative(manual_clock: ManualClock) -> None:
    """Counts up but the sum a hair lower (summed in another order): mean 0, not negative."""
    before = {("GET", "/", "2xx"): hist(10, 0, 0, 0, 0, sum_s=1.0)}
    after = {("GET", "/", "2xx"): hist(11, 0, 0, 0, 0, sum_s=1.0 - 1e-12)}
    route = stats_between(manual_clock, before, after).report()["routes"][0]
    assert 1 == route["requests"]
    assert 0.0 == route["mean_s"]


def test_adding_more_often_than_the_interval_replaces_the_newest(
    manual_clock: ManualClock,
) -> None:
    """Snapshots closer than interval_s replace the newest: the report still sees the latest."""
    stats = RouteStats(BOUNDS, window_s=300, interval_s=10, clock=manual_clock)
    for second in range(6):
        stats.add({("GET", "/", "2xx"): fast(second * 10)})
        manual_clock.advance(1)
    report = stats.report()
    assert 2 == len(stats)
    assert 5.0 == report["window_s"]
    assert 50 == report["total"]["requests"]
    assert 10.0 == report["total"]["rate_per_s"]


def test_memory_is_bounded_however_often_add_is_called(manual_clock: ManualClock) -> None:
    """10,000 adds, ten a second, keep at most window_s / interval_s + 2 snapshots."""
    stats = RouteStats(BOUNDS, window_s=300, interval_s=10, clock=manual_clock)
    for step in range(10_000):
        stats.add({("GET", "/", "2xx"): fast(step)})
        assert len(stats) <= 300 / 10 + 2
        manual_clock.advance(0.1)
    report = stats.report()
    assert 290 <= report["window_s"] <= 300
    assert math.isclose(10.0, report["total"]["rate_per_s"])


def test_memory_is_bounded_when_time_stands_still(manual_clock: ManualClock) -> None:
    """10,000 adds at one instant hold one snapshot, and the window is zero."""
    stats = RouteStats(BOUNDS, window_s=300, interval_s=10, clock=manual_clock)
    for step in range(10_000):
        stats.add({("GET", "/", "2xx"): fast(step)})
    assert 1 == len(stats)
    assert 0.0 == stats.report()["window_s"]


def test_the_snapshot_is_copied(manual_clock: ManualClock) -> None:
    """Mutating the mapping after add() does not change what was recorded."""
    stats = RouteStats(BOUNDS, clock=manual_clock)
    snapshot = {("GET", "/", "2xx"): fast(0)}
    stats.add(snapshot)
    manual_clock.advance(10)
    snapshot[("GET", "/", "2xx")] = fast(10)
    stats.add(snapshot)
    snapshot[("GET", "/", "2xx")] = fast(1_000)
    assert 10 == stats.report()["total"]["requests"]


# ------------------------------------------------------------------------ ordering and output


def test_routes_are_sorted_by_requests_and_top_keeps_the_busiest(
    manual_clock: ManualClock,
) -> None:
    """Routes come busiest first (ties by route, then method); top holds the first ``top``."""
    after = {
        ("GET", "/a", "2xx"): fast(5),
        ("GET", "/b", "2xx"): fast(50),
        ("POST", "/b", "2xx"): fast(20),
        ("GET", "/c", "2xx"): fast(20),
        ("DELETE", "/c", "2xx"): fast(1),
    }
    report = stats_between(manual_clock, {}, after).report(top=3)
    order = [(route["method"], route["route"]) for route in report["routes"]]
    assert [
        ("GET", "/b"),
        ("POST", "/b"),
        ("GET", "/c"),
        ("GET", "/a"),
        ("DELETE", "/c"),
    ] == order
    assert report["routes"][:3] == report["top"]
    assert [] == stats_between(ManualClock(), {}, after).report(top=0)["top"]
    with pytest.raises(ValueError, match="top"):
        stats_between(ManualClock(), {}, after).report(top=-1)


def test_a_single_snapshot_reports_a_zero_window(manual_clock: ManualClock) -> None:
    """With one snapshot (or none) nothing is measured: no routes, rate None, not 0."""
    stats = RouteStats(BOUNDS, clock=manual_clock)
    empty = stats.report()
    stats.add({("GET", "/", "2xx"): fast(100)})
    for report in (empty, stats.report()):
        assert 0.0 == report["window_s"]
        assert [] == report["routes"]
        assert [] == report["top"]
        assert {
            "requests": 0,
            "rate_per_s": None,
            "errors": 0,
            "error_rate": None,
            "client_errors": 0,
            "p50_s": None,
            "p95_s": None,
            "p99_s": None,
            "mean_s": None,
        } == report["total"]


def test_a_window_without_requests_has_a_zero_rate(manual_clock: ManualClock) -> None:
    """A measured window with no traffic has rate 0.0; ratios and percentiles stay None."""
    total = stats_between(manual_clock, {}, {}).report()["total"]
    assert 0.0 == total["rate_per_s"]
    assert total["error_rate"] is None
    assert total["p50_s"] is None


def test_the_report_is_json_serializable(manual_clock: ManualClock) -> None:
    """orjson encodes the report, and it decodes to the same values."""
    after = {
        ("GET", "/items/{id}", "2xx"): hist(5, 3, 1, 1, 0, sum_s=1.5),
        ("GET", "/items/{id}", "5xx"): hist(0, 0, 0, 0, 2, sum_s=9.0),
    }
    report = stats_between(manual_clock, {}, after).report()
    assert report == orjson.loads(orjson.dumps(report))


# ----------------------------------------------------------------------------- configuration


@pytest.mark.parametrize(
    "bounds",
    [(), (math.inf,), (0.1, 0.1), (0.2, 0.1), (0.1, math.nan), (-math.inf, 0.1)],
)
def test_bounds_must_be_finite_and_increasing(bounds: tuple[float, ...]) -> None:
    """Empty, unsorted, repeated or non-finite bounds are configuration errors."""
    with pytest.raises(ConfigurationError, match="bounds"):
        RouteStats(bounds)


def test_a_trailing_infinite_bound_is_dropped() -> None:
    """Bounds copied from a client library that end in +Inf are accepted without it."""
    stats = RouteStats((*BOUNDS, math.inf))
    assert BOUNDS == stats.bounds
    assert (300.0, 10.0) == (stats.window_s, stats.interval_s)


@pytest.mark.parametrize(
    ("window_s", "interval_s"),
    [(0, 10), (300, 0), (300, -1), (math.inf, 10), (300, math.nan), (5, 10)],
)
def test_window_and_interval_must_be_positive_and_ordered(
    window_s: float, interval_s: float
) -> None:
    """Both durations are positive and finite, and the interval fits in the window."""
    with pytest.raises(ConfigurationError):
        RouteStats(BOUNDS, window_s=window_s, interval_s=interval_s)


def test_a_sample_with_the_wrong_bucket_count_is_rejected() -> None:
    """Every sample needs one cumulative count per finite bound."""
    stats = RouteStats(BOUNDS)
    with pytest.raises(ValueError, match="expected 4"):
        stats.add({("GET", "/", "2xx"): HistogramSample(count=1, sum=0.1, buckets=(1, 1))})
    assert 0 == len(stats)
