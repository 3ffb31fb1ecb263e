"""Liveness, readiness and startup probes: concurrent, time-bounded, cached health checks.

::

    registry = HealthRegistry()
    registry.add("redis", store_check(store), groups=("ready",))
    for path, handler in health_endpoints(registry, admin_key=key).items():
        ops.add(path, handler)

See ``docs/health.md``.
"""

from __future__ import annotations

from bastion.health._checks import sqlalchemy_check, store_check
from bastion.health._endpoints import HEALTH_CONTENT_TYPE, health_body, health_endpoints
from bastion.health._model import (
    GROUPS,
    CheckOutcome,
    CheckResult,
    HealthCheck,
    HealthGroup,
    HealthReport,
    HealthStatus,
)
from bastion.health._registry import HealthRegistry

__all__ = [
    "CheckOutcome",
    "CheckResult",
    "GROUPS",
    "HEALTH_CONTENT_TYPE",
    "HealthCheck",
    "HealthGroup",
    "HealthRegistry",
    "HealthReport",
    "HealthStatus",
    "health_body",
    "health_endpoints",
    "sqlalchemy_check",
    "store_check",
]
