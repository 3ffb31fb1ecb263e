"""HealthRegistry: aggregation, timeouts, concurrency, caching, single-flight, drain, startup."""

from __future__ import annotations

import logging

import anyio
import pytest

from bastion._clock import ManualClock
from bastion.exceptions import ConfigurationError
from bastion.health import CheckResult, HealthRegistry, HealthStatus


async def up() -> None:
    """A check that passes."""


async def down() -> bool:
    """A check that fails by returning False."""
    return False


async def boom() -> None:
    """A check that raises with a secret in its message."""
    raise ConnectionError("redis://:hunter2@db:6379 refused")


class Counting:
    """A check that counts its runs and can be held until released."""

    def __init__(self, *, hold: bool = False) -> None:
        self.runs = 0
        self.started = anyio.Event()
        self.release = anyio.Event()
        if not hold:
            self.release.set()

    async def __call__(self) -> None:
        self.runs += 1
        self.started.set()
        await self.release.wait()


@pytest.mark.anyio
async def test_all_up_is_up_with_200() -> None:
    """Every check UP makes the group UP, answered with 200."""
    registry = HealthRegistry()
    registry.add("a", up)
    registry.add("b", up)
    report = await registry.evaluate("ready")
    assert HealthStatus.UP == report.status
    assert 200 == report.http_status
    assert ["a", "b"] == [check.name for check in report.checks]


@pytest.mark.anyio
async def test_empty_group_is_up() -> None:
    """A group without checks is UP."""
    assert HealthStatus.UP == (await HealthRegistry().evaluate("live")).status


@pytest.mark.anyio
async def test_non_critical_down_is_degraded_with_200() -> None:
    """A non-critical check DOWN makes the group DEGRADED, still 200."""
    registry = HealthRegistry()
    registry.add("db", up)
    registry.add("search", down, critical=False)
    report = await registry.evaluate("ready")
    assert HealthStatus.DEGRADED == report.status
    assert 200 == report.http_status


@pytest.mark.anyio
async def test_critical_down_is_down_with_503() -> None:
    """A critical check DOWN makes the group DOWN, answered with 503."""
    registry = HealthRegistry()
    registry.add("search", down, critical=False)
    registry.add("db", down)
    report = await registry.evaluate("ready")
    assert HealthStatus.DOWN == report.status
    assert 503 == report.http_status


@pytest.mark.anyio
async def test_check_result_carries_status_and_details() -> None:
    """A CheckResult's status and details are reported; DEGRADED degrades even when critical."""

    async def lagging() -> CheckResult:
        return CheckResult(HealthStatus.DEGRADED, {"lag_ms": 120})

    registry = HealthRegistry()
    registry.add("loop", lagging)
    report = await registry.evaluate("ready")
    assert HealthStatus.DEGRADED == report.status
    assert {"lag_ms": 120} == dict(report.checks[0].details)


@pytest.mark.anyio
async def test_exception_is_down_with_type_and_message() -> None:
    """A raising check is DOWN; the type is the error, the message is kept apart."""
    registry = HealthRegistry()
    registry.add("redis", boom)
    outcome = (await registry.evaluate("ready")).checks[0]
    assert HealthStatus.DOWN == outcome.status
    assert "ConnectionError" == outcome.error
    assert "redis://:hunter2@db:6379 refused" == outcome.message


@pytest.mark.anyio
async def test_invalid_result_is_down() -> None:
    """A check returning something else than None, a bool or a CheckResult is DOWN."""

    async def odd() -> str:
        return "ok"

    registry = HealthRegistry()
    registry.add("odd", odd)  # type: ignore[arg-type]
    outcome = (await registry.evaluate("ready")).checks[0]
    assert HealthStatus.DOWN == outcome.status
    assert "invalid result" == outcome.error


@pytest.mark.anyio
async def test_timeout_is_down() -> None:
    """A check exceeding its timeout is DOWN with a timeout error."""
    never = anyio.Event()

    async def hangs() -> None:
        await never.wait()

    registry = HealthRegistry()
    registry.add("slow", hangs, timeout_s=0.05)
    with anyio.fail_after(5):
        report = await registry.evaluate("ready")
    assert HealthStatus.DOWN == report.status
    assert "timeout" == report.checks[0].error
    assert "timed out after 0.05s" == report.checks[0].message


@pytest.mark.anyio
async def test_checks_run_concurrently() -> None:
    """Both checks of a group have started before either finishes."""
    first, second = Counting(hold=True), Counting(hold=True)
    registry = HealthRegistry()
    registry.add("first", first)
    registry.add("second", second)
    reports = []
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:

            async def evaluate() -> None:
                reports.append(await registry.evaluate("ready"))

            tg.start_soon(evaluate)
            await first.started.wait()
            await second.started.wait()
            first.release.set()
            second.release.set()
    assert HealthStatus.UP == reports[0].status


@pytest.mark.anyio
async def test_outcomes_are_cached_by_the_clock(manual_clock: ManualClock) -> None:
    """A check runs once per cache interval, measured by the injected clock."""
    check = Counting()
    registry = HealthRegistry(clock=manual_clock, cache_s=1.0)
    registry.add("c", check)
    await registry.evaluate("ready")
    await registry.evaluate("ready")
    manual_clock.advance(0.9)
    await registry.evaluate("ready")
    assert 1 == check.runs
    manual_clock.advance(0.2)
    await registry.evaluate("ready")
    assert 2 == check.runs


@pytest.mark.anyio
async def test_zero_cache_runs_every_time(manual_clock: ManualClock) -> None:
    """With cache_s=0 every evaluation runs the check."""
    check = Counting()
    registry = HealthRegistry(clock=manual_clock, cache_s=0)
    registry.add("c", check)
    await registry.evaluate("ready")
    await registry.evaluate("ready")
    assert 2 == check.runs


@pytest.mark.anyio
async def test_concurrent_evaluations_share_one_run(manual_clock: ManualClock) -> None:
    """Ten evaluations arriving while a check runs all get that single run's outcome."""
    check = Counting(hold=True)
    registry = HealthRegistry(clock=manual_clock, cache_s=0)
    registry.add("c", check)
    reports = []

    async def evaluate() -> None:
        reports.append(await registry.evaluate("ready"))

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            for _ in range(10):
                tg.start_soon(evaluate)
            await check.started.wait()
            await anyio.wait_all_tasks_blocked()
            check.release.set()
    assert 1 == check.runs
    assert 10 == len(reports)
    assert {HealthStatus.UP} == {report.status for report in reports}


@pytest.mark.anyio
async def test_cancelled_run_lets_a_waiter_run_again(manual_clock: ManualClock) -> None:
    """When the evaluation running a check is cancelled, a waiting evaluation runs it itself."""
    check = Counting(hold=True)
    registry = HealthRegistry(clock=manual_clock, cache_s=0)
    registry.add("c", check)
    reports = []
    with anyio.fail_after(5):
        async with anyio.create_task_group() as outer:
            runner_scope = anyio.CancelScope()

            async def runner() -> None:
                with runner_scope:
                    await registry.evaluate("ready")

            async def waiter() -> None:
                reports.append(await registry.evaluate("ready"))

            outer.start_soon(runner)
            await check.started.wait()
            outer.start_soon(waiter)
            await anyio.wait_all_tasks_blocked()
            runner_scope.cancel()
            await anyio.wait_all_tasks_blocked()
            check.release.set()
    assert [HealthStatus.UP] == [report.status for report in reports]
    assert 2 <= check.runs


@pytest.mark.anyio
async def test_draining_flips_ready_down_at_once(manual_clock: ManualClock) -> None:
    """set_draining() makes ready DOWN with reason draining, even with a fresh cached UP."""
    registry = HealthRegistry(clock=manual_clock)
    registry.add("db", up)
    assert HealthStatus.UP == (await registry.evaluate("ready")).status
    registry.set_draining()
    report = await registry.evaluate("ready")
    assert registry.draining
    assert HealthStatus.DOWN == report.status
    assert "draining" == report.reason
    assert HealthStatus.UP == (await registry.evaluate("live")).status


@pytest.mark.anyio
async def test_startup_is_down_until_marked_started() -> None:
    """The startup group is DOWN (starting) until mark_started(), then runs its checks."""
    check = Counting()
    registry = HealthRegistry()
    registry.add("migrations", check, groups=("startup",))
    before = await registry.evaluate("startup")
    assert (HealthStatus.DOWN, "starting", 0) == (before.status, before.reason, check.runs)
    registry.mark_started()
    after = await registry.evaluate("startup")
    assert (HealthStatus.UP, None, 1) == (after.status, after.reason, check.runs)
    assert registry.started


@pytest.mark.anyio
async def test_groups_select_checks() -> None:
    """A check contributes only to the groups it was registered in."""
    registry = HealthRegistry()
    registry.add("loop", up, groups=("live", "ready"))
    registry.add("db", down)
    assert ["loop"] == registry.names("live")
    assert ["loop", "db"] == registry.names("ready")
    assert HealthStatus.UP == (await registry.evaluate("live")).status
    registry.remove("db")
    assert HealthStatus.UP == (await registry.evaluate("ready")).status


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"groups": ("ready", "nope")}, "unknown health group"),
        ({"groups": ()}, "at least one group"),
        ({"timeout_s": 0}, "timeout_s"),
    ],
)
def test_invalid_registration_is_refused(kwargs: dict[str, object], fragment: str) -> None:
    """Unknown groups, no groups and non-positive timeouts raise ConfigurationError."""
    with pytest.raises(ConfigurationError, match=fragment):
        HealthRegistry().add("x", up, **kwargs)  # type: ignore[arg-type]


def test_duplicate_name_is_refused() -> None:
    """Two checks cannot share a name."""
    registry = HealthRegistry()
    registry.add("x", up)
    with pytest.raises(ConfigurationError, match="already registered"):
        registry.add("x", up)


@pytest.mark.parametrize(("default_timeout_s", "cache_s"), [(0, 1.0), (2.0, -1)])
def test_invalid_options_are_refused(default_timeout_s: float, cache_s: float) -> None:
    """A non-positive default timeout or a negative cache interval raise ConfigurationError."""
    with pytest.raises(ConfigurationError):
        HealthRegistry(default_timeout_s=default_timeout_s, cache_s=cache_s)


@pytest.mark.anyio
async def test_unknown_group_evaluation_is_refused() -> None:
    """Evaluating a group that does not exist raises ConfigurationError."""
    with pytest.raises(ConfigurationError):
        await HealthRegistry().evaluate("bogus")  # type: ignore[arg-type]


@pytest.mark.anyio
async def test_transitions_are_logged_once(
    manual_clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    """A check going DOWN is logged once, not on every probe, and its recovery once."""
    state = {"fail": True}

    async def flaky() -> bool:
        return not state["fail"]

    registry = HealthRegistry(clock=manual_clock, cache_s=0)
    registry.add("flaky", flaky)
    with caplog.at_level(logging.INFO, logger="bastion.health"):
        await registry.evaluate("ready")
        await registry.evaluate("ready")
        state["fail"] = False
        await registry.evaluate("ready")
    assert 2 == len(caplog.records)
    assert ["WARNING", "INFO"] == [record.levelname for record in caplog.records]
