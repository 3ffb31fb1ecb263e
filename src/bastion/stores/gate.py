"""A health gate (circuit breaker) in front of a store backend.

When a backend is down, every operation that tries it waits for a connect or socket timeout. Under
load that turns into one timeout per request. The gate counts consecutive outages. After
``failure_threshold`` of them it *opens*, and operations fail fast with ``StoreUnavailable``
without touching the backend. Once a delay has passed, one operation goes through as a *probe*
while the others keep failing fast. If the probe succeeds, the gate closes. If it fails, the gate
reopens and the delay doubles, up to a cap::

    closed --(threshold outages)--> open --(delay elapsed)--> half-open (one probe in flight)
      ^                               ^                          |
      |                               +------(probe fails)-------+  delay doubles, capped
      +---------------------------(probe succeeds)---------------+

Only ``StoreUnavailable`` (and so ``StoreTimeout``) counts as an outage. A ``StoreDataError``
means the server answered, which proves it is up.

The gate knows nothing about any backend. A backend wraps each operation in the guard returned by
``gate.guard(translate)``, where ``translate`` maps the backend's exceptions to ``StoreError``.
``RedisStore`` does this; a PostgreSQL store can reuse the gate the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Literal

from bastion._clock import SYSTEM_CLOCK, Clock
from bastion.events import StoreDown, StoreUp
from bastion.exceptions import ConfigurationError, StoreBusy, StoreError, StoreUnavailable

if TYPE_CHECKING:
    from types import TracebackType

    from bastion.events import Hooks

__all__ = ["GateGuard", "GateState", "StoreHealthGate", "Translate"]

GateState = Literal["closed", "open", "half_open"]
"""``closed``: operations run. ``open``: they fail fast. ``half_open``: one probe is running."""

Translate = Callable[[BaseException], StoreError | None]
"""Maps a backend exception to a ``StoreError``, or ``None`` for one that is not the backend's."""


class StoreHealthGate:
    """Fail fast while a store is down; let one probe through after a growing delay.

    ``StoreDown`` is published when the gate opens and ``StoreUp`` when it closes; failed probes
    publish nothing, so one outage yields exactly one pair of events.

    One gate guards one backend: every namespaced view of a store shares it. The gate is meant for
    one event loop (like the client it guards); its state changes are plain attribute updates with
    no ``await`` between them, so they are atomic on the loop.

    Args:
        failure_threshold: consecutive outages that open the gate.
        base_delay_s: how long the gate stays open the first time before letting a probe through.
        max_delay_s: the cap for the delay, which doubles after each failed probe.
        clock: time source (inject a ``ManualClock`` in tests).
        hooks: where ``StoreDown`` and ``StoreUp`` are published; ``None`` publishes nothing.
        store_name: the backend's name in events and error messages.

    Raises:
        ConfigurationError: if an option is out of range.
    """

    __slots__ = (
        "_base_delay_s",
        "_clock",
        "_delay_s",
        "_failures",
        "_hooks",
        "_last_error",
        "_max_delay_s",
        "_open_until",
        "_opened_at",
        "_probing",
        "_store_name",
        "_threshold",
    )

    def __init__(
        self,
        *,
        failure_threshold: int = 3,
        base_delay_s: float = 0.5,
        max_delay_s: float = 30.0,
        clock: Clock = SYSTEM_CLOCK,
        hooks: Hooks | None = None,
        store_name: str = "redis",
    ) -> None:
        if failure_threshold < 1:
            raise ConfigurationError(
                f"failure_threshold must be at least 1, not {failure_threshold}"
            )
        if not base_delay_s > 0:
            raise ConfigurationError(f"base_delay_s must be positive, not {base_delay_s}")
        if not max_delay_s >= base_delay_s:
            raise ConfigurationError(
                f"max_delay_s ({max_delay_s}) must be at least base_delay_s ({base_delay_s})"
            )
        self._threshold = failure_threshold
        self._base_delay_s = float(base_delay_s)
        self._max_delay_s = float(max_delay_s)
        self._clock = clock
        self._hooks = hooks
        self._store_name = store_name
        self._failures = 0
        # ``None`` while closed. Operations check only this on their fast path.
        self._open_until: float | None = None
        self._opened_at = 0.0
        self._delay_s = self._base_delay_s
        self._probing = False
        self._last_error = ""

    @property
    def store_name(self) -> str:
        """The guarded backend's name, as used in events and messages."""
        return self._store_name

    @property
    def state(self) -> GateState:
        """``"closed"``, ``"open"`` or ``"half_open"`` (a probe is in flight)."""
        if self._open_until is None:
            return "closed"
        return "half_open" if self._probing else "open"

    @property
    def consecutive_failures(self) -> int:
        """Outages since the last success."""
        return self._failures

    @property
    def retry_in_s(self) -> float:
        """Seconds until the next probe is allowed; ``0.0`` while closed or probing."""
        if self._open_until is None or self._probing:
            return 0.0
        return max(0.0, self._open_until - self._clock.monotonic())

    def guard(self, translate: Translate | None = None) -> GateGuard:
        """Return a reusable context manager that runs one store operation through the gate.

        Args:
            translate: maps the backend's exceptions to ``StoreError``. Exceptions that are
                already ``StoreError`` pass through as they are.
        """
        return GateGuard(self, translate)

    def admit(self) -> None:
        """Let an operation through, or raise ``StoreUnavailable`` while the gate is open.

        Once the delay has passed, the first caller becomes the probe. Until the probe reports
        back, everyone else is refused.
        """
        if self._open_until is None:
            return
        open_until = self._open_until
        now = self._clock.monotonic()
        if self._probing or now < open_until:
            raise StoreUnavailable(self._refusal(open_until - now))
        self._probing = True

    def record_success(self) -> None:
        """Report that the backend answered. This closes an open gate."""
        if self._open_until is None:
            self._failures = 0
            return
        now = self._clock.monotonic()
        down_for_s = now - self._opened_at
        self._failures = 0
        self._open_until = None
        self._probing = False
        self._delay_s = self._base_delay_s
        if self._hooks is not None:
            self._hooks.publish(StoreUp(store=self._store_name, down_for_s=down_for_s))

    def record_failure(self, error: StoreError) -> None:
        """Report a failed operation. Only ``StoreUnavailable`` counts as an outage.

        Any other ``StoreError`` means the backend answered, so it counts as a success.
        ``StoreBusy`` (this process ran out of pooled connections) is no verdict on the store:
        counting it would let a burst of requests open the gate and fail everyone fast.
        """
        if isinstance(error, StoreBusy):
            self.record_abandoned()
            return
        if not isinstance(error, StoreUnavailable):
            self.record_success()
            return
        now = self._clock.monotonic()
        if self._open_until is None:
            self._failures += 1
            self._last_error = str(error)
            if self._failures >= self._threshold:
                self._opened_at = now
                self._delay_s = self._base_delay_s
                self._open_until = now + self._delay_s
                if self._hooks is not None:
                    self._hooks.publish(
                        StoreDown(
                            store=self._store_name, error=self._last_error, retry_in_s=self._delay_s
                        )
                    )
            return
        self._failures += 1
        if self._probing:
            self._probing = False
            self._last_error = str(error)
            self._delay_s = min(self._delay_s * 2, self._max_delay_s)
            self._open_until = now + self._delay_s
        # Otherwise the call started before the gate opened, and it only confirms the outage.

    def record_abandoned(self) -> None:
        """Report an operation that ended without a verdict (cancelled, or a foreign error).

        A probe that is abandoned frees its slot, so the next caller can probe instead of the gate
        staying half-open forever.
        """
        self._probing = False

    def _refusal(self, remaining_s: float) -> str:
        wait = "a probe is in flight" if self._probing else f"retry in {remaining_s:.2f}s"
        return (
            f"{self._store_name} is unavailable: health gate open after {self._failures} "
            f"consecutive failures, {wait} (last error: {self._last_error})"
        )

    def __repr__(self) -> str:
        return (
            f"StoreHealthGate(store_name={self._store_name!r}, state={self.state!r}, "
            f"failures={self._failures})"
        )


class GateGuard:
    """Runs store operations through a gate and translates backend errors. Reusable and shared.

    Use it as ``with guard: await backend_call()``. On entry, the gate admits the operation or
    raises ``StoreUnavailable``. On exit, a backend exception becomes ``StoreError`` (raised
    ``from`` the original), and the outcome goes to the gate.

    The guard keeps no state per call, so one instance serves every concurrent operation. The
    price is that a call which started before the gate opened, and ends while a probe is in
    flight, reports as if it were the probe. Both outcomes are true facts about the backend, so the
    gate only reacts one call sooner than it would have.
    """

    __slots__ = ("_gate", "_translate")

    def __init__(self, gate: StoreHealthGate, translate: Translate | None = None) -> None:
        self._gate = gate
        self._translate = translate

    def __enter__(self) -> None:
        gate = self._gate
        if gate._open_until is not None:
            gate.admit()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        gate = self._gate
        if exc is None:
            # The common case costs two attribute reads: nothing to reset when all is well.
            if gate._failures or gate._open_until is not None:
                gate.record_success()
            return
        if isinstance(exc, StoreError):
            error: StoreError | None = exc
        elif self._translate is not None:
            error = self._translate(exc)
        else:
            error = None
        if error is None:
            # Cancellation or a programming error: no verdict on the backend; let it propagate.
            gate.record_abandoned()
            return
        gate.record_failure(error)
        if error is not exc:
            raise error from exc
