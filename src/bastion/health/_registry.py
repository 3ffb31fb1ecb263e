"""The registry of health checks: concurrent runs, per-check timeouts, caching, single-flight."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, get_args

import anyio

from bastion._clock import SYSTEM_CLOCK, Clock
from bastion.exceptions import ConfigurationError
from bastion.health._model import (
    GROUPS,
    CheckOutcome,
    CheckResult,
    HealthCheck,
    HealthGroup,
    HealthReport,
    HealthStatus,
)

__all__ = ["HealthRegistry"]

logger = logging.getLogger("bastion.health")

DRAINING = "draining"
STARTING = "starting"

_NO_DETAILS: Mapping[str, Any] = MappingProxyType({})


class _Flight:
    """One run of a check that concurrent evaluations wait on instead of starting their own."""

    __slots__ = ("done", "outcome")

    def __init__(self) -> None:
        self.done = anyio.Event()
        self.outcome: CheckOutcome | None = None


@dataclass(slots=True, kw_only=True)
class _Registration:
    name: str
    check: HealthCheck
    groups: frozenset[HealthGroup]
    critical: bool
    timeout_s: float
    last: CheckOutcome | None = None
    last_at: float = -math.inf
    flight: _Flight | None = field(default=None)


def _positive(name: str, value: float) -> None:
    if not (math.isfinite(value) and value > 0):
        raise ConfigurationError(f"{name} must be a positive number of seconds, got {value!r}")


def _check_group(group: str) -> HealthGroup:
    if group not in get_args(HealthGroup):
        raise ConfigurationError(f"unknown health group {group!r}; use one of {list(GROUPS)}")
    return group  # type: ignore[return-value]


class HealthRegistry:
    """Health checks by group, evaluated for the liveness, readiness and startup probes.

    A group's checks run concurrently, each bounded by its timeout. Each check's outcome is
    cached for ``cache_s``, and evaluations that arrive while a check runs wait for that run
    instead of starting their own, so a flood of probes costs at most one run per check per
    interval.

    Args:
        clock: time source for the cache and the measured durations.
        default_timeout_s: timeout of checks registered without ``timeout_s``.
        cache_s: how long an outcome is reused; ``0`` runs checks on every evaluation (still
            single-flight).

    Raises:
        ConfigurationError: an option is out of range.
    """

    __slots__ = ("_cache_s", "_checks", "_clock", "_default_timeout_s", "_draining", "_started")

    def __init__(
        self,
        *,
        clock: Clock = SYSTEM_CLOCK,
        default_timeout_s: float = 2.0,
        cache_s: float = 1.0,
    ) -> None:
        _positive("default_timeout_s", default_timeout_s)
        if not (math.isfinite(cache_s) and cache_s >= 0):
            raise ConfigurationError(f"cache_s must be >= 0 seconds, got {cache_s!r}")
        self._clock = clock
        self._default_timeout_s = float(default_timeout_s)
        self._cache_s = float(cache_s)
        self._checks: dict[str, _Registration] = {}
        self._draining = False
        self._started = False

    def add(
        self,
        name: str,
        check: HealthCheck,
        *,
        groups: tuple[HealthGroup, ...] = ("ready",),
        critical: bool = True,
        timeout_s: float | None = None,
    ) -> None:
        """Register ``check`` under ``name`` in ``groups``.

        Checks in ``live`` must be process-local (event loop, memory, a deadlock detector):
        a failing liveness probe restarts the process, so a database outage there would restart
        every healthy worker at once. bastion registers no ``live`` check of its own.

        Args:
            name: unique name, shown in the admin view and logs.
            check: the async callable (see ``HealthCheck``).
            groups: the probes it contributes to.
            critical: whether DOWN here makes the group DOWN (503); otherwise DEGRADED (200).
            timeout_s: how long a run may take before it counts as DOWN; defaults to the
                registry's ``default_timeout_s``.

        Raises:
            ConfigurationError: the name is taken or empty, a group is unknown, ``groups`` is
                empty, or ``timeout_s`` is not positive.
        """
        if not name:
            raise ConfigurationError("a health check needs a non-empty name")
        if name in self._checks:
            raise ConfigurationError(f"a health check named {name!r} is already registered")
        if not groups:
            raise ConfigurationError(f"health check {name!r} needs at least one group")
        checked = frozenset(_check_group(group) for group in groups)
        if timeout_s is not None:
            _positive("timeout_s", timeout_s)
        self._checks[name] = _Registration(
            name=name,
            check=check,
            groups=checked,
            critical=critical,
            timeout_s=self._default_timeout_s if timeout_s is None else float(timeout_s),
        )

    def remove(self, name: str) -> None:
        """Unregister the check ``name``.

        Raises:
            KeyError: no check has that name.
        """
        del self._checks[name]

    def names(self, group: HealthGroup) -> list[str]:
        """The names of ``group``'s checks, in registration order."""
        _check_group(group)
        return [reg.name for reg in self._checks.values() if group in reg.groups]

    @property
    def draining(self) -> bool:
        """Whether ``set_draining()`` was called: readiness is DOWN from then on."""
        return self._draining

    def set_draining(self) -> None:
        """Report ``ready`` DOWN (reason ``"draining"``) from now on, without running checks.

        Graceful shutdown calls it first, so load balancers stop sending traffic while in-flight
        requests finish. It cannot be undone: a draining process is on its way out.
        """
        self._draining = True

    @property
    def started(self) -> bool:
        """Whether ``mark_started()`` was called."""
        return self._started

    def mark_started(self) -> None:
        """Declare startup finished: ``startup`` evaluates its checks from now on.

        Until then the ``startup`` group is DOWN (reason ``"starting"``), so a Kubernetes
        startup probe holds back the liveness and readiness probes.
        """
        self._started = True

    async def evaluate(self, group: HealthGroup) -> HealthReport:
        """Run ``group``'s checks concurrently (or reuse fresh outcomes) and aggregate them.

        Raises:
            ConfigurationError: ``group`` is not ``live``, ``ready`` or ``startup``.
        """
        _check_group(group)
        if group == "ready" and self._draining:
            return HealthReport(group=group, status=HealthStatus.DOWN, reason=DRAINING)
        if group == "startup" and not self._started:
            return HealthReport(group=group, status=HealthStatus.DOWN, reason=STARTING)
        registrations = [reg for reg in self._checks.values() if group in reg.groups]
        outcomes: list[CheckOutcome | None] = [None] * len(registrations)

        async def run(index: int, reg: _Registration) -> None:
            outcomes[index] = await self._outcome(reg)

        if len(registrations) == 1:
            await run(0, registrations[0])
        elif registrations:
            async with anyio.create_task_group() as tg:
                for index, reg in enumerate(registrations):
                    tg.start_soon(run, index, reg)
        done = tuple(outcome for outcome in outcomes if outcome is not None)
        return HealthReport(group=group, status=_aggregate(done), checks=done)

    async def _outcome(self, reg: _Registration) -> CheckOutcome:
        """A fresh cached outcome, the outcome of the run in progress, or a new run's."""
        while True:
            if reg.last is not None and self._clock.monotonic() - reg.last_at < self._cache_s:
                return reg.last
            flight = reg.flight
            if flight is None:
                break
            await flight.done.wait()
            if flight.outcome is not None:
                return flight.outcome
            # The run was cancelled with its caller (a probe that disconnected): start another.
        flight = reg.flight = _Flight()
        try:
            outcome = await self._run(reg)
            previous, reg.last, reg.last_at = reg.last, outcome, self._clock.monotonic()
            flight.outcome = outcome
        finally:
            reg.flight = None
            flight.done.set()
        _log_transition(previous, outcome)
        return outcome

    async def _run(self, reg: _Registration) -> CheckOutcome:
        """Run the check once under its timeout and turn whatever happens into an outcome."""
        started = self._clock.monotonic()
        status = HealthStatus.DOWN
        error: str | None = None
        message: str | None = None
        details: Mapping[str, Any] = _NO_DETAILS
        # Typed as object: a user check may return anything at runtime, whatever it declares.
        result: object = None
        try:
            with anyio.move_on_after(reg.timeout_s) as scope:
                result = await reg.check()
        except Exception as exc:  # any failure of a user's check means DOWN, never a 500
            error, message = type(exc).__qualname__, str(exc)
        else:
            if scope.cancelled_caught:
                error, message = "timeout", f"timed out after {reg.timeout_s:g}s"
            elif result is None or result is True:
                status = HealthStatus.UP
            elif result is False:
                error = "down"
            elif isinstance(result, CheckResult):
                status, details = HealthStatus(result.status), result.details
            else:
                error = "invalid result"
                message = (
                    f"a check returns None, a bool or a CheckResult, not {type(result).__name__}"
                )
        return CheckOutcome(
            name=reg.name,
            status=status,
            critical=reg.critical,
            duration_ms=round((self._clock.monotonic() - started) * 1000, 3),
            time=self._clock.time(),
            error=error,
            message=message,
            details=details,
        )


def _aggregate(outcomes: tuple[CheckOutcome, ...]) -> HealthStatus:
    status = HealthStatus.UP
    for outcome in outcomes:
        if outcome.status is HealthStatus.DOWN and outcome.critical:
            return HealthStatus.DOWN
        if outcome.status is not HealthStatus.UP:
            status = HealthStatus.DEGRADED
    return status


def _log_transition(previous: CheckOutcome | None, outcome: CheckOutcome) -> None:
    # Log changes, not every run: a probe every second during an outage must not flood the log.
    # The message goes to the log (the operator's place), never to an unauthenticated client.
    if previous is None and outcome.status is HealthStatus.UP:
        return
    if previous is not None and previous.status is outcome.status:
        return
    if outcome.status is HealthStatus.UP:
        logger.info("health check %r is UP again", outcome.name)
    else:
        logger.warning(
            "health check %r is %s: %s%s",
            outcome.name,
            outcome.status,
            outcome.error or "degraded",
            f" ({outcome.message})" if outcome.message else "",
        )
