"""Rates, quotas and limits: what a rate limit *is*, parsed strictly and compiled once.

The rate grammar (case-insensitive, spaces allowed around the tokens)::

    RATES  := RATE ( ";" RATE )*
    RATE   := COUNT ( "/" | " per " ) [ N ] UNIT [ " burst " COUNT ]
    UNIT   := s | sec | second | seconds | m | min | minute | minutes
            | h | hr | hour | hours | d | day | days

``"100/minute"``, ``"10/second; 1000/hour"``, ``"5/10s"``, ``"5 per 10 seconds"`` and
``"10/second burst 50"`` (GCRA only) are rates. Windows are whole seconds, because the
``RateLimit-Policy`` header cannot express less.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from bastion.exceptions import ConfigurationError

__all__ = ["ALGORITHMS", "Algorithm", "Limit", "Quota", "parse_rates", "sf_string"]

Algorithm = Literal["fixed_window", "sliding_window", "gcra"]
"""``fixed_window``: a counter per calendar window. ``sliding_window``: the two-window weighted
counter (smooth, no double burst at window edges). ``gcra``: a token bucket (burst, then a
sustained rate) in one timestamp."""

ALGORITHMS: tuple[Algorithm, ...] = ("fixed_window", "sliding_window", "gcra")

# Codes shared with lua/ratelimit.lua; the memory backend uses the same ones.
ALGORITHM_CODES: dict[Algorithm, int] = {"fixed_window": 1, "sliding_window": 2, "gcra": 3}

_UNITS = {
    "s": 1, "sec": 1, "second": 1, "seconds": 1,
    "m": 60, "min": 60, "minute": 60, "minutes": 60,
    "h": 3600, "hr": 3600, "hour": 3600, "hours": 3600,
    "d": 86400, "day": 86400, "days": 86400,
}  # fmt: skip

_RATE = re.compile(
    r"\s*(?P<count>[0-9]+)\s*(?:/|\s+per\s+)\s*(?:(?P<n>[0-9]+)\s*)?(?P<unit>[a-z]+)"
    r"(?:\s+burst\s+(?P<burst>[0-9]+))?\s*",
    re.IGNORECASE,
)
_GRAMMAR = (
    "expected COUNT/[N]UNIT such as '100/minute', '5/10s' or '10/second burst 50' (GCRA), "
    "several joined by ';'; units: second, minute, hour, day (s, m, h, d)"
)
# Lua numbers are doubles: every count and every time in microseconds must stay exact.
_MAX_COUNT = 10**12
_MAX_PERIOD_S = 366 * 86400


def _positive(text: str, what: str, rate: str) -> int:
    if text.startswith("0"):
        raise ConfigurationError(f"invalid rate {rate!r}: {what} must be a positive integer")
    value = int(text)
    if value > _MAX_COUNT:
        raise ConfigurationError(f"invalid rate {rate!r}: {what} must be at most {_MAX_COUNT}")
    return value


def _format_window(period_s: int) -> str:
    for unit, seconds in (("d", 86400), ("h", 3600), ("m", 60)):
        if period_s % seconds == 0:
            return f"{period_s // seconds}{unit}"
    return f"{period_s}s"


@dataclass(frozen=True, slots=True)
class Quota:
    """One quota: at most ``limit`` units of cost per ``period_s`` seconds.

    For GCRA, ``burst`` is the bucket's capacity (what a client may spend at once, default
    ``limit``); ``limit / period_s`` is the sustained rate it refills at.
    """

    limit: int
    """Units of cost allowed per window (``q`` in ``RateLimit-Policy``)."""
    period_s: int
    """Length of the window in seconds (``w`` in ``RateLimit-Policy``)."""
    burst: int | None = None
    """GCRA only: the bucket's capacity; ``None`` means ``limit``."""

    def __post_init__(self) -> None:
        if not 0 < self.limit <= _MAX_COUNT:
            raise ConfigurationError(
                f"a quota's limit must be in 1..{_MAX_COUNT}, not {self.limit}"
            )
        if not 0 < self.period_s <= _MAX_PERIOD_S:
            raise ConfigurationError(
                f"a quota's period_s must be in 1..{_MAX_PERIOD_S}, not {self.period_s}"
            )
        if self.burst is not None and not 0 < self.burst <= _MAX_COUNT:
            raise ConfigurationError(
                f"a quota's burst must be in 1..{_MAX_COUNT}, not {self.burst}"
            )

    @property
    def window(self) -> str:
        """The window in short form: ``"1s"``, ``"10s"``, ``"1m"``, ``"1h"``, ``"1d"``."""
        return _format_window(self.period_s)

    def __str__(self) -> str:
        burst = f" burst {self.burst}" if self.burst is not None else ""
        return f"{self.limit}/{self.window}{burst}"


def parse_rates(text: str) -> tuple[Quota, ...]:
    """Parse ``"10/second; 1000/hour"`` into quotas (see the module docstring for the grammar).

    Raises:
        ConfigurationError: if ``text`` does not follow the grammar; the message quotes it.
    """
    value: object = text  # settings and JSON may hand over anything
    if not isinstance(value, str) or not value.strip():
        raise ConfigurationError(f"invalid rate {text!r}: {_GRAMMAR}")
    quotas = []
    for part in text.split(";"):
        found = _RATE.fullmatch(part)
        if found is None:
            raise ConfigurationError(f"invalid rate {part.strip()!r} in {text!r}: {_GRAMMAR}")
        unit = _UNITS.get(found["unit"].lower())
        if unit is None:
            raise ConfigurationError(
                f"invalid rate {part.strip()!r}: unknown unit {found['unit']!r}; {_GRAMMAR}"
            )
        count = _positive(found["count"], "the count", text)
        multiplier = _positive(found["n"], "the window multiplier", text) if found["n"] else 1
        burst = _positive(found["burst"], "the burst", text) if found["burst"] else None
        quotas.append(Quota(count, multiplier * unit, burst))
    return tuple(quotas)


def sf_string(text: str) -> str:
    """Serialize ``text`` as a Structured Field String (RFC 9651 §3.3.3): quoted, escaped.

    Characters outside printable ASCII cannot appear in one; they become ``?``.
    """
    cleaned = "".join(char if " " <= char <= "~" else "?" for char in text)
    return '"' + cleaned.replace("\\", "\\\\").replace('"', '\\"') + '"'


class CompiledQuota:
    """A quota ready for the backends: integers in microseconds, header fragments pre-encoded."""

    __slots__ = (
        "algorithm",
        "burst",
        "code",
        "limit",
        "period_s",
        "period_us",
        "policy",
        "policy_item",
        "quota",
        "quoted",
        "quoted_bytes",
        "spec",
        "suffix",
    )

    def __init__(self, quota: Quota, algorithm: Algorithm, policy: str) -> None:
        self.quota = quota
        self.algorithm = algorithm
        self.code = ALGORITHM_CODES[algorithm]
        self.limit = quota.limit
        self.burst = quota.burst if quota.burst is not None else quota.limit
        self.period_s = quota.period_s
        self.period_us = quota.period_s * 1_000_000
        self.policy = policy
        self.quoted = sf_string(policy)
        self.quoted_bytes = self.quoted.encode("latin-1")
        self.policy_item = f"{self.quoted};q={quota.limit};w={quota.period_s}"
        # The algorithm is part of the key: state written by one algorithm is never read by another.
        self.suffix = f"{self.code}:{quota.period_s}"
        # What the Redis script reads of the quota, as one argument: "algorithm limit period burst"
        self.spec = f"{self.code} {self.limit} {self.period_us} {self.burst}".encode()

    def scaled(self, workers: int) -> CompiledQuota:
        """This quota divided among ``workers`` processes (at least 1 each), same policy name."""
        if workers == 1:
            return self
        burst = None if self.quota.burst is None else max(1, self.quota.burst // workers)
        return CompiledQuota(
            Quota(max(1, self.limit // workers), self.period_s, burst), self.algorithm, self.policy
        )


class Limit:
    """A named set of quotas, checked together with one algorithm.

    Example::

        search = Limit("10/second; 1000/hour", name="search")
        burst = Limit("5/second burst 20", algorithm="gcra", name="uploads")

    The name identifies the limit's counters (two limits with the same name on the same route
    and client share them) and names the policies in the ``RateLimit`` headers: the limit's name
    when it has one quota, ``"{name}-{window}"`` (``"search-1s"``, ``"search-1h"``) otherwise.

    Args:
        rates: a rate string, a ``Quota``, or a sequence of them.
        name: the limit's name; printable ASCII.
        algorithm: how the quotas are counted.
        per_route: count per route and method (the default); ``False`` shares one budget across
            every route the limit applies to.

    Raises:
        ConfigurationError: for an invalid rate, two quotas with the same window, a burst
            without GCRA, or an empty name.
    """

    __slots__ = ("algorithm", "compiled", "name", "per_route", "policy_header", "quotas")

    def __init__(
        self,
        rates: str | Quota | Sequence[str | Quota],
        *,
        name: str = "default",
        algorithm: Algorithm = "sliding_window",
        per_route: bool = True,
    ) -> None:
        if algorithm not in ALGORITHMS:
            raise ConfigurationError(
                f"unknown rate-limit algorithm {algorithm!r}; use one of {', '.join(ALGORITHMS)}"
            )
        if not name or not name.strip():
            raise ConfigurationError("a rate limit's name must not be empty")
        quotas = _quotas(rates)
        windows = [quota.period_s for quota in quotas]
        if len(set(windows)) != len(windows):
            raise ConfigurationError(
                f"limit {name!r} has two quotas with the same window; keep the stricter one"
            )
        if algorithm != "gcra" and any(quota.burst is not None for quota in quotas):
            raise ConfigurationError(
                f"limit {name!r}: a burst needs algorithm='gcra' (windows have no burst)"
            )
        self.name = name
        self.algorithm: Algorithm = algorithm
        self.per_route = per_route
        self.quotas = quotas
        single = len(quotas) == 1
        self.compiled = tuple(
            CompiledQuota(quota, algorithm, name if single else f"{name}-{quota.window}")
            for quota in quotas
        )
        self.policy_header = ", ".join(quota.policy_item for quota in self.compiled)

    def renamed(self, name: str) -> Limit:
        """The same limit under another name."""
        return Limit(self.quotas, name=name, algorithm=self.algorithm, per_route=self.per_route)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Limit):
            return NotImplemented
        return (self.name, self.algorithm, self.per_route, self.quotas) == (
            other.name,
            other.algorithm,
            other.per_route,
            other.quotas,
        )

    def __hash__(self) -> int:
        return hash((self.name, self.algorithm, self.per_route, self.quotas))

    def __repr__(self) -> str:
        rates = "; ".join(str(quota) for quota in self.quotas)
        return (
            f"Limit({rates!r}, name={self.name!r}, algorithm={self.algorithm!r}, "
            f"per_route={self.per_route})"
        )


def _quotas(rates: str | Quota | Sequence[str | Quota]) -> tuple[Quota, ...]:
    if isinstance(rates, str):
        return parse_rates(rates)
    if isinstance(rates, Quota):
        return (rates,)
    if not isinstance(rates, list | tuple):
        raise ConfigurationError(f"invalid rates {rates!r}: expected a string such as '100/minute'")
    items: Iterable[str | Quota] = rates
    quotas: list[Quota] = []
    for item in items:
        quotas.extend(_quotas(item))
    if not quotas:
        raise ConfigurationError("a rate limit needs at least one quota")
    return tuple(quotas)
