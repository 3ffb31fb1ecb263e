"""What a health check returns and what an evaluation reports."""

from __future__ import annotations

from collections.abc import Awaitable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import Any, Literal, Protocol

__all__ = [
    "GROUPS",
    "CheckOutcome",
    "CheckResult",
    "HealthCheck",
    "HealthGroup",
    "HealthReport",
    "HealthStatus",
]

HealthGroup = Literal["live", "ready", "startup"]
"""A probe's group: ``live`` (restart me if failing), ``ready`` (send me traffic), ``startup``
(I finished starting)."""

GROUPS: tuple[HealthGroup, ...] = ("live", "ready", "startup")

_EMPTY: Mapping[str, Any] = MappingProxyType({})


def _no_details() -> Mapping[str, Any]:
    # A shared read-only mapping: dataclasses refuse an unhashable default, not a factory.
    return _EMPTY


class HealthStatus(StrEnum):
    """The state of one check or of a whole group, ordered from best to worst."""

    UP = "UP"
    """Everything works."""
    DEGRADED = "DEGRADED"
    """Serving, but a non-critical dependency is down (HTTP 200, draft status ``warn``)."""
    DOWN = "DOWN"
    """Not serving: a critical check failed (HTTP 503, draft status ``fail``)."""

    @property
    def http_status(self) -> int:
        """200 for ``UP`` and ``DEGRADED``, 503 for ``DOWN`` (the Spring and ASP.NET mapping)."""
        return 503 if self is HealthStatus.DOWN else 200

    @property
    def draft_status(self) -> str:
        """The draft-inadarei-api-health-check status: ``pass``, ``warn`` or ``fail``."""
        return _DRAFT_STATUS[self]


_DRAFT_STATUS = {
    HealthStatus.UP: "pass",
    HealthStatus.DEGRADED: "warn",
    HealthStatus.DOWN: "fail",
}


@dataclass(frozen=True, slots=True)
class CheckResult:
    """What a check may return to report a status with details.

    Args:
        status: the check's status. ``DEGRADED`` makes the group at most ``DEGRADED`` even when
            the check is critical.
        details: JSON-serializable facts for the admin view (pool usage, lag, version). Never
            put secrets here; they are shown to whoever holds the admin key.
    """

    status: HealthStatus
    details: Mapping[str, Any] = field(default_factory=_no_details)


class HealthCheck(Protocol):
    """A health check: an async callable without arguments.

    It returns ``None`` or ``True`` (UP), ``False`` (DOWN) or a ``CheckResult``; raising an
    exception means DOWN. It runs under its registration's timeout, so it need not bound itself.
    """

    def __call__(self) -> Awaitable[CheckResult | bool | None]:
        """Run the check once."""
        ...


@dataclass(frozen=True, slots=True, kw_only=True)
class CheckOutcome:
    """The result of running one registered check once."""

    name: str
    """The name the check was registered under."""
    status: HealthStatus
    """UP, DEGRADED or DOWN."""
    critical: bool
    """Whether a DOWN here makes the group DOWN (otherwise DEGRADED)."""
    duration_ms: float
    """How long the run took, by the registry's clock."""
    time: float
    """When the run finished, wall-clock seconds since the epoch."""
    error: str | None = None
    """Why it is DOWN, safe to log anywhere: the exception type name, ``"timeout"`` or
    ``"invalid result"``."""
    message: str | None = None
    """The exception's message or the timeout text. It may contain secrets (connection strings),
    so it is only shown in the admin view."""
    details: Mapping[str, Any] = field(default_factory=_no_details)
    """The details the check returned in its ``CheckResult``."""


@dataclass(frozen=True, slots=True, kw_only=True)
class HealthReport:
    """The result of evaluating one group."""

    group: HealthGroup
    """The group evaluated."""
    status: HealthStatus
    """The aggregate: DOWN if a critical check is down, DEGRADED if any other is, else UP."""
    checks: tuple[CheckOutcome, ...] = ()
    """Each check's outcome, in registration order (empty when ``reason`` short-circuited)."""
    reason: str | None = None
    """Why the group is DOWN without running its checks: ``"draining"`` or ``"starting"``."""

    @property
    def http_status(self) -> int:
        """The HTTP status a probe gets: 200 for UP and DEGRADED, 503 for DOWN."""
        return self.status.http_status
