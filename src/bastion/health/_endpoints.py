"""The probe endpoints: ``application/health+json`` answers for the live, ready and startup groups.

The body follows draft-inadarei-api-health-check: ``status`` is ``pass``, ``warn`` or ``fail``.
bastion adds ``health`` with its own ``UP``/``DEGRADED``/``DOWN`` and, when the group was
short-circuited, ``output`` with the reason (``draining``, ``starting``)::

    {"status": "fail", "health": "DOWN", "output": "draining"}

Per-check results (``checks``) are shown only to requests carrying
``Authorization: Bearer <admin_key>``: check names, timings and error messages describe the
infrastructure, and messages can contain connection strings.
"""

from __future__ import annotations

import hmac
from datetime import UTC, datetime
from typing import Any

import orjson

from bastion._asgi import get_header, send_body
from bastion._ops import OpsEndpoint
from bastion.health._model import CheckOutcome, HealthGroup, HealthReport
from bastion.health._registry import HealthRegistry
from bastion.types import Receive, Scope, Send

__all__ = ["HEALTH_CONTENT_TYPE", "health_body", "health_endpoints"]

HEALTH_CONTENT_TYPE = "application/health+json"

_CONTENT_TYPE = HEALTH_CONTENT_TYPE.encode()
_BEARER = b"bearer "
_NO_STORE = ((b"cache-control", b"no-store"),)


def health_body(report: HealthReport, *, details: bool) -> dict[str, Any]:
    """The JSON body for ``report``; per-check entries only when ``details`` is true.

    Args:
        report: the evaluated group.
        details: whether the caller is allowed to see each check (the admin view).
    """
    body: dict[str, Any] = {"status": report.status.draft_status, "health": str(report.status)}
    if report.reason is not None:
        body["output"] = report.reason
    if details:
        # The draft keys checks by component and holds a list of measurements for each.
        body["checks"] = {outcome.name: [_check_entry(outcome)] for outcome in report.checks}
    return body


def _check_entry(outcome: CheckOutcome) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "status": outcome.status.draft_status,
        "health": str(outcome.status),
        "critical": outcome.critical,
        "duration_ms": outcome.duration_ms,
        "observedValue": outcome.duration_ms,
        "observedUnit": "ms",
        "time": datetime.fromtimestamp(outcome.time, UTC).isoformat(),
    }
    if outcome.error is not None:
        entry["error"] = outcome.error
        entry["output"] = (
            f"{outcome.error}: {outcome.message}" if outcome.message else outcome.error
        )
    if outcome.details:
        entry["details"] = dict(outcome.details)
    return entry


def health_endpoints(
    registry: HealthRegistry, *, admin_key: str | None = None
) -> dict[str, OpsEndpoint]:
    """Raw ASGI handlers for ``/health/live``, ``/health/ready`` and ``/health/startup``.

    Register each with ``OpsRoutes.add(path, handler)``; GET and HEAD are answered alike (HEAD
    without a body). Responses are ``application/health+json`` with ``Cache-Control: no-store``
    and status 200 (UP, DEGRADED) or 503 (DOWN).

    Args:
        registry: the checks to evaluate.
        admin_key: the bearer token that unlocks per-check details; ``None`` never shows them.
    """
    expected = None if not admin_key else _BEARER + admin_key.encode()

    def is_admin(scope: Scope) -> bool:
        if expected is None:
            return False
        header = get_header(scope.get("headers", ()), b"authorization")
        if header is None or len(header) <= len(_BEARER):
            return False
        # The scheme is case-insensitive (RFC 9110 §11.1); the token is compared in constant time.
        presented = header[: len(_BEARER)].lower() + header[len(_BEARER) :].strip()
        return hmac.compare_digest(expected, presented)

    def endpoint(group: HealthGroup) -> OpsEndpoint:
        async def probe(scope: Scope, receive: Receive, send: Send) -> None:
            report = await registry.evaluate(group)
            await send_body(
                send,
                orjson.dumps(health_body(report, details=is_admin(scope))),
                status=report.http_status,
                content_type=_CONTENT_TYPE,
                headers=_NO_STORE,
                head=scope.get("method") == "HEAD",
            )

        return probe

    return {f"/health/{group}": endpoint(group) for group in ("live", "ready", "startup")}
