"""The request body limit: per route by pattern, checked on ``Content-Length`` and while reading.

A declared ``Content-Length`` over the limit is refused before a byte is read (and before the
server sends ``100 Continue``). A body without one (chunked, HTTP/2) is counted as the app reads
it: ``receive`` raises ``RequestBodyTooLarge`` from the message that crosses the limit, so a
client can never make the app buffer more than the limit plus one message.

Patterns are bastion's ``[METHODS ]PATTERN`` rules (``bastion._routes.RouteTable``), matched on
the route template, else the raw path, first match wins.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from bastion._routes import RouteTable
from bastion.exceptions import ConfigurationError

__all__ = ["BodyLimits"]


class BodyLimits:
    """The body limit of each request: the first matching rule's, else the default.

    Args:
        default: bytes allowed when no rule matches; ``None`` or ``0`` for no limit.
        rules: ``{"[METHODS ]PATTERN": bytes}``; ``None`` or ``0`` means no limit.

    Raises:
        ConfigurationError: for a negative limit or an invalid pattern.
    """

    __slots__ = ("_limited", "_table")

    def __init__(
        self,
        default: int | None,
        rules: Mapping[str, int | None] | Iterable[tuple[str, int | None]],
    ) -> None:
        items = list(rules.items() if isinstance(rules, Mapping) else rules)
        limits = [(pattern, _limit(limit, f"body_limits[{pattern!r}]")) for pattern, limit in items]
        fallback = _limit(default, "max_body_bytes")
        self._table = RouteTable(limits, fallback)
        self._limited = fallback is not None or any(limit is not None for _, limit in limits)

    def __bool__(self) -> bool:
        return self._limited

    def limit_for(self, method: str, route: str | None, path: str) -> int | None:
        """Bytes allowed for a request (``None``: unlimited), matched on the route template
        when there is one, else on the raw path."""
        return self._table.lookup(method, route, path)


def _limit(value: object, option: str) -> int | None:
    if value is None or value == 0:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ConfigurationError(f"{option} must be a number of bytes >= 0, not {value!r}")
    return value
