"""``StoreHealthGate``: the state machine, on a ``ManualClock``, without any backend."""

from __future__ import annotations

import pytest

from bastion._clock import ManualClock
from bastion.events import Event, Hooks, StoreDown, StoreUp
from bastion.exceptions import (
    ConfigurationError,
    StoreBusy,
    StoreDataError,
    StoreError,
    StoreTimeout,
    StoreUnavailable,
)
from bastion.stores import GateGuard, StoreHealthGate


class Backend:
    """A stand-in backend that counts calls and fails while ``down`` is set."""

    def __init__(self) -> None:
        self.calls = 0
        self.down = False

    def call(self) -> str:
        self.calls += 1
        if self.down:
            raise StoreUnavailable("connection refused")
        return "ok"


@pytest.fixture
def clock() -> ManualClock:
    """The gate's time, moved by the test."""
    return ManualClock()


@pytest.fixture
def events() -> list[Event]:
    """Every event the gate publishes, in order."""
    return []


@pytest.fixture
def gate(clock: ManualClock, events: list[Event]) -> StoreHealthGate:
    """Threshold 3, delays 1 s doubling up to 5 s, events recorded."""
    hooks = Hooks()
    hooks.subscribe(Event, events.append)
    return StoreHealthGate(
        failure_threshold=3,
        base_delay_s=1.0,
        max_delay_s=5.0,
        clock=clock,
        hooks=hooks,
        store_name="test",
    )


@pytest.fixture
def guard(gate: StoreHealthGate) -> GateGuard:
    """The gate's guard, without translation: the stand-in backend raises StoreErrors itself."""
    return gate.guard()


def run(guard: GateGuard, backend: Backend) -> str | None:
    """One operation through the gate; returns "ok", or None if it raised ``StoreUnavailable``."""
    try:
        with guard:
            return backend.call()
    except StoreUnavailable:
        return None


def fail(guard: GateGuard, times: int) -> None:
    """Run ``times`` operations against a backend that is down."""
    backend = Backend()
    backend.down = True
    for _ in range(times):
        run(guard, backend)


def test_starts_closed(gate: StoreHealthGate) -> None:
    """A new gate lets everything through."""
    assert ("closed", 0, 0.0) == (gate.state, gate.consecutive_failures, gate.retry_in_s)


def test_failures_below_the_threshold_keep_it_closed(
    gate: StoreHealthGate, guard: GateGuard
) -> None:
    """Two outages out of a threshold of three leave the gate closed."""
    fail(guard, 2)
    assert ("closed", 2) == (gate.state, gate.consecutive_failures)


def test_a_success_resets_the_count(gate: StoreHealthGate, guard: GateGuard) -> None:
    """Failures must be consecutive: one success in between starts the count again."""
    fail(guard, 2)
    run(guard, Backend())
    fail(guard, 2)
    assert ("closed", 2) == (gate.state, gate.consecutive_failures)


def test_threshold_failures_open_the_gate_and_publish_store_down(
    gate: StoreHealthGate, guard: GateGuard, events: list[Event]
) -> None:
    """The third consecutive outage opens the gate and publishes one StoreDown."""
    fail(guard, 3)
    assert "open" == gate.state
    assert [StoreDown(store="test", error="connection refused", retry_in_s=1.0)] == events


def test_an_open_gate_fails_fast_without_calling_the_backend(
    gate: StoreHealthGate, guard: GateGuard
) -> None:
    """While open, operations raise StoreUnavailable and the backend is never called."""
    fail(guard, 3)
    backend = Backend()
    with pytest.raises(StoreUnavailable, match=r"test is unavailable: .* retry in 1\.00s"), guard:
        backend.call()
    assert 0 == backend.calls


def test_the_refusal_names_the_last_error(gate: StoreHealthGate, guard: GateGuard) -> None:
    """The fail-fast message carries the error that keeps the gate open, for the logs."""
    fail(guard, 3)
    with pytest.raises(StoreUnavailable, match="last error: connection refused"):
        gate.admit()


def test_retry_in_counts_down(gate: StoreHealthGate, guard: GateGuard, clock: ManualClock) -> None:
    """retry_in_s says how long until the next probe."""
    fail(guard, 3)
    clock.advance(0.25)
    assert 0.75 == gate.retry_in_s


def test_after_the_delay_one_probe_goes_through(
    gate: StoreHealthGate, guard: GateGuard, clock: ManualClock
) -> None:
    """Once the delay passes, the next operation is admitted as the probe (half-open)."""
    fail(guard, 3)
    clock.advance(1.0)
    gate.admit()
    assert "half_open" == gate.state


def test_while_the_probe_runs_everyone_else_fails_fast(
    gate: StoreHealthGate, guard: GateGuard, clock: ManualClock
) -> None:
    """Half-open admits a single probe; concurrent callers are refused."""
    fail(guard, 3)
    clock.advance(1.0)
    gate.admit()
    with pytest.raises(StoreUnavailable, match="a probe is in flight"):
        gate.admit()


def test_a_successful_probe_closes_the_gate_and_publishes_store_up(
    gate: StoreHealthGate, guard: GateGuard, clock: ManualClock, events: list[Event]
) -> None:
    """The probe's success closes the gate; StoreUp reports how long the store was down."""
    fail(guard, 3)
    clock.advance(1.5)
    assert "ok" == run(guard, Backend())
    assert ("closed", 0) == (gate.state, gate.consecutive_failures)
    assert StoreUp(store="test", down_for_s=1.5) == events[-1]


def test_a_failed_probe_reopens_with_a_doubled_capped_delay(
    gate: StoreHealthGate, guard: GateGuard, clock: ManualClock
) -> None:
    """Each failed probe doubles the delay: 1, 2, 4, then capped at max_delay_s (5)."""
    fail(guard, 3)
    delays = []
    for _ in range(4):
        clock.advance(gate.retry_in_s)
        fail(guard, 1)
        delays.append(gate.retry_in_s)
    assert [2.0, 4.0, 5.0, 5.0] == delays


def test_one_outage_publishes_one_down_and_one_up(
    gate: StoreHealthGate, guard: GateGuard, clock: ManualClock, events: list[Event]
) -> None:
    """Failed probes publish nothing: a long outage is one StoreDown, then one StoreUp."""
    fail(guard, 3)
    for _ in range(3):
        clock.advance(gate.retry_in_s)
        fail(guard, 1)
    clock.advance(gate.retry_in_s)
    run(guard, Backend())
    assert [StoreDown, StoreUp] == [type(event) for event in events]
    assert StoreUp(store="test", down_for_s=1.0 + 2.0 + 4.0 + 5.0) == events[-1]


def test_the_delay_starts_over_after_recovery(
    gate: StoreHealthGate, guard: GateGuard, clock: ManualClock
) -> None:
    """A new outage after a recovery waits the base delay again, not the last one."""
    fail(guard, 3)
    clock.advance(1.0)
    fail(guard, 1)
    clock.advance(2.0)
    run(guard, Backend())
    fail(guard, 3)
    assert 1.0 == gate.retry_in_s


def test_data_errors_do_not_count_as_outages(gate: StoreHealthGate, guard: GateGuard) -> None:
    """StoreDataError means the server answered: it resets the count instead of adding to it."""
    fail(guard, 2)
    with pytest.raises(StoreDataError), guard:
        raise StoreDataError("WRONGTYPE")
    fail(guard, 2)
    assert ("closed", 2) == (gate.state, gate.consecutive_failures)


def test_a_probe_answered_with_a_data_error_closes_the_gate(
    gate: StoreHealthGate, guard: GateGuard, clock: ManualClock
) -> None:
    """A probe that gets any answer from the server proves it is back."""
    fail(guard, 3)
    clock.advance(1.0)
    with pytest.raises(StoreDataError), guard:
        raise StoreDataError("WRONGTYPE")
    assert "closed" == gate.state


def test_timeouts_count_as_outages(gate: StoreHealthGate, guard: GateGuard) -> None:
    """StoreTimeout is an outage: a server that does not answer in time is down for callers."""
    for _ in range(3):
        with pytest.raises(StoreTimeout), guard:
            raise StoreTimeout("read timed out")
    assert "open" == gate.state


@pytest.mark.parametrize("abandon", [KeyboardInterrupt, ValueError])
def test_an_abandoned_probe_frees_the_slot(
    gate: StoreHealthGate,
    guard: GateGuard,
    clock: ManualClock,
    abandon: type[BaseException],
) -> None:
    """A probe that is cancelled or fails without a verdict lets the next caller probe."""
    fail(guard, 3)
    clock.advance(1.0)
    with pytest.raises(abandon), guard:
        raise abandon
    assert ("open", "ok") == (gate.state, run(guard, Backend()))


def test_the_guard_translates_backend_errors(gate: StoreHealthGate) -> None:
    """The translate hook turns a backend exception into a StoreError raised from it."""
    original = ConnectionRefusedError("refused")

    def translate(exc: BaseException) -> StoreError | None:
        return StoreUnavailable(f"backend: {exc}") if isinstance(exc, OSError) else None

    with pytest.raises(StoreUnavailable) as caught, gate.guard(translate):
        raise original
    assert ("backend: refused", original, 1) == (
        str(caught.value),
        caught.value.__cause__,
        gate.consecutive_failures,
    )


def test_the_guard_lets_foreign_errors_through_unchanged(gate: StoreHealthGate) -> None:
    """An exception the translator does not claim propagates as is and counts as nothing."""
    with pytest.raises(KeyError), gate.guard(lambda exc: None):
        raise KeyError("bug")
    assert 0 == gate.consecutive_failures


def test_the_guard_passes_store_errors_through_as_they_are(gate: StoreHealthGate) -> None:
    """A StoreError raised inside the guard is not wrapped again."""
    error = StoreUnavailable("down")
    with pytest.raises(StoreUnavailable) as caught, gate.guard():
        raise error
    assert error is caught.value


def test_no_hooks_means_no_events(clock: ManualClock) -> None:
    """A gate without hooks opens and closes silently."""
    gate = StoreHealthGate(failure_threshold=1, clock=clock)
    fail(gate.guard(), 1)
    clock.advance(gate.retry_in_s)
    run(gate.guard(), Backend())
    assert "closed" == gate.state


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"failure_threshold": 0}, "failure_threshold"),
        ({"base_delay_s": 0}, "base_delay_s"),
        ({"base_delay_s": 2.0, "max_delay_s": 1.0}, "max_delay_s"),
    ],
)
def test_options_are_validated(options: dict[str, float], message: str) -> None:
    """Out-of-range options are configuration errors naming the option."""
    with pytest.raises(ConfigurationError, match=message):
        StoreHealthGate(**options)  # type: ignore[arg-type]


def test_repr_shows_state(gate: StoreHealthGate, guard: GateGuard) -> None:
    """The repr shows the store, the state and the failure count."""
    fail(guard, 3)
    assert "StoreHealthGate(store_name='test', state='open', failures=3)" == repr(gate)


def test_an_exhausted_pool_is_no_verdict_on_the_store(
    gate: StoreHealthGate, guard: GateGuard
) -> None:
    """StoreBusy (no pooled connection came free) never counts towards opening the gate."""
    for _ in range(10):
        with pytest.raises(StoreBusy), guard:
            raise StoreBusy("no redis connection came free in time")

    assert ("closed", 0) == (gate.state, gate.consecutive_failures)
