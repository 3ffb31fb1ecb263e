"""What is sent to every app, and which ratios the report checks.

A ``Scenario`` is one request, described once and turned into an ASGI scope (in-process mode) and
a wrk command line (HTTP mode), so both modes send the same thing. A ``Budget`` is a performance
promise from DESIGN §9 that the report checks explicitly (PASS/FAIL); a ``Comparison`` is a ratio
the report prints without judging it.

To add a scenario or a budget, add an entry to ``SCENARIOS`` or ``BUDGETS``; ``run.py`` picks
them up by name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = [
    "BASELINE",
    "BUDGETS",
    "COMPARISONS",
    "SCENARIOS",
    "Budget",
    "Comparison",
    "Scenario",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class Scenario:
    """One HTTP request, sent identically in both modes."""

    name: str
    """Short identifier (``--scenario``)."""
    description: str
    """One line for the report."""
    method: str = "GET"
    """HTTP method."""
    path: str
    """Request path, without the query string."""
    query_string: str = ""
    """Raw query string, without ``?``."""
    headers: tuple[tuple[str, str], ...] = ()
    """Request headers besides ``Host`` (lower-case names), as a typical client sends them."""
    body: bytes = b""
    """Request body."""
    expected_status: int = 200
    """Status every response must have; any other status fails the run."""
    expected_json: Any = None
    """Decoded JSON body the first response of every app must equal (``None``: not checked)."""

    @property
    def target(self) -> str:
        """Path and query string, as on the request line."""
        return f"{self.path}?{self.query_string}" if self.query_string else self.path


@dataclass(frozen=True, slots=True, kw_only=True)
class Comparison:
    """A ratio between two apps that the report prints (time of ``subject`` / ``reference``)."""

    subject: str
    """App whose cost is compared."""
    reference: str
    """App it is compared with."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Budget:
    """A performance promise checked by the report: ``subject`` µs / ``reference`` µs."""

    statement: str
    """The promise in words, printed next to the verdict."""
    subject: str
    """App whose cost is bounded."""
    reference: str
    """App it is measured against."""
    max_ratio: float
    """Largest acceptable ratio of median in-process µs/request (1.10 means at most 10 % more)."""


# Typical client headers: a browser or an HTTP library sends about this much. Accept-Encoding
# matters: GZipMiddleware takes a different path when the client accepts gzip.
_CLIENT_HEADERS = (
    ("user-agent", "bastion-bench/1.0"),
    ("accept", "application/json"),
    ("accept-encoding", "gzip, deflate"),
)

SCENARIOS: dict[str, Scenario] = {
    scenario.name: scenario
    for scenario in (
        Scenario(
            name="item",
            description="GET /items/{item_id}?q=... returning a small JSON object",
            path="/items/42",
            query_string="q=widget",
            headers=_CLIENT_HEADERS,
            expected_json={
                "item_id": 42,
                "q": "widget",
                "name": "Widget",
                "price": 9.99,
                "tags": ["tools", "small"],
            },
        ),
    )
}
"""Every scenario, by name."""

BASELINE = "fastapi"
"""The app every other one is compared with."""

COMPARISONS: tuple[Comparison, ...] = (
    Comparison(subject="bastion", reference="assembled"),
    Comparison(subject="bastion", reference="assembled-observability"),
    Comparison(subject="bastion-ratelimit", reference="bastion-foundation"),
    Comparison(subject="bastion-ratelimit", reference="fastapi"),
    Comparison(subject="bastion-cache", reference="fastapi-cache2"),
)
"""Extra ratios printed below the tables."""

BUDGETS: tuple[Budget, ...] = (
    Budget(
        statement="Bastion with the foundation layers costs at most 10 % over bare FastAPI "
        "in-process",
        subject="bastion-foundation",
        reference="fastapi",
        max_ratio=1.10,
    ),
    Budget(
        statement="Bastion's full observability stack (request id, JSON access log to a file, "
        "metrics, no tracing exporter) costs at most 15 % over bare FastAPI in-process",
        subject="bastion",
        reference="fastapi",
        max_ratio=1.15,
    ),
    Budget(
        statement="Bastion's full observability stack is at least 2.5x faster in-process than "
        "the assembled observability stack (asgi-correlation-id, "
        "prometheus-fastapi-instrumentator, a logging middleware)",
        subject="bastion",
        reference="assembled-observability",
        max_ratio=0.40,
    ),
    Budget(
        statement="Bastion's rate-limit middleware on the memory backend costs at most 10 % over "
        "bare FastAPI in-process",
        subject="ratelimit-middleware",
        reference="fastapi",
        max_ratio=1.10,
    ),
    Budget(
        statement="A hit of bastion's response cache alone in front of FastAPI (memory backend) "
        "is at least 5x faster in-process than a fastapi-cache2 InMemoryBackend hit",
        subject="cache-layer",
        reference="fastapi-cache2",
        max_ratio=0.20,
    ),
    Budget(
        statement="A response-cache hit with Bastion's full default stack is at least 2x faster "
        "in-process than the bare, uncached FastAPI endpoint",
        subject="bastion-cache",
        reference="fastapi",
        max_ratio=0.50,
    ),
    Budget(
        statement="Bastion's full default stack keeps at least 85 % of bare FastAPI's throughput "
        "in-process (DESIGN §9: time per request at most 1/0.85 of bare FastAPI's)",
        subject="bastion-defaults",
        reference="fastapi",
        max_ratio=1 / 0.85,
    ),
)
"""Budgets checked when both of their apps were measured."""
