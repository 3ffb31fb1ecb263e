"""Every knob bastion has, read from the environment (prefix ``BASTION_``) and ``.env``.

One section per capability; nested fields use ``__``::

    BASTION_REDIS_URL=redis://localhost:6379/0          # shared state moves to Redis
    BASTION_CONTEXT__TRUSTED_PROXIES=10.0.0.0/8,127.0.0.1
    BASTION_STORES__MEMORY_MAX_BYTES=134217728
    BASTION_OPS__PREFIX=/_ops

``load_settings()`` is what ``Bastion`` and the CLI call: it turns validation errors into one
``ConfigurationError`` whose lines name the environment variable, the rejected value and what is
accepted, and it rejects unknown ``BASTION_*`` variables (a typo must not silently fall back to a
default). Secrets are ``SecretStr``, and credentials inside URLs are masked in ``repr`` and in
``masked()``, so printing settings never leaks them.
"""

from __future__ import annotations

import difflib
import itertools
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from bastion._urls import redact_url
from bastion.exceptions import ConfigurationError

__all__ = [
    "AuthSettings",
    "CacheSettings",
    "CompressionSettings",
    "ContextSettings",
    "DeadlineSettings",
    "GuardSettings",
    "HealthSettings",
    "LoggingSettings",
    "MetricsSettings",
    "OpsSettings",
    "RateLimitSettings",
    "Settings",
    "SheddingSettings",
    "ShutdownSettings",
    "StatsSettings",
    "StoreSettings",
    "TracingSettings",
    "env_name",
    "load_settings",
]

ENV_PREFIX = "BASTION_"
# Variables with our prefix that are not settings: the test suite's own switches, and the key
# ``bastion demo`` hands its workers.
_NOT_SETTINGS = ("BASTION_TEST_", "BASTION_REQUIRE_SERVICES", "BASTION_DEMO_API_KEY")

_REDIS_SCHEMES = ("redis", "rediss", "unix")
_DATABASE_SCHEMES = (
    "sqlite",
    "sqlite+aiosqlite",
    "postgresql",
    "postgresql+asyncpg",
    "postgresql+psycopg",
)


def _split_commas(value: Any) -> Any:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


def _json_list(value: Any, example: str) -> Any:
    """Parse a JSON list given as an environment string; other values pass through."""
    if not isinstance(value, str):
        return value
    import json

    try:
        return json.loads(value) if value.strip() else []
    except ValueError:
        raise ValueError(f"must be a JSON list such as {example}") from None


def _check_networks(value: list[str], example: str = "203.0.113.0/24") -> list[str]:
    """Check that every item is an IP address or a CIDR network."""
    import ipaddress

    for item in value:
        try:
            ipaddress.ip_network(item, strict=False)
        except ValueError:
            raise ValueError(
                f"{item!r} is not an IP address or CIDR network (e.g. {example})"
            ) from None
    return value


class _Section(BaseModel):
    model_config = {"extra": "forbid", "frozen": True}


class ContextSettings(_Section):
    """Request context: ids, trace context, client address (``BASTION_CONTEXT__*``)."""

    request_id_header: str = "X-Request-ID"
    """Header read for an incoming request id and echoed on every response."""
    trust_incoming_request_id: bool = True
    """Honour a valid incoming request id; if false, every request gets a fresh one."""
    trusted_proxies: Annotated[list[str], NoDecode] = Field(default_factory=list)
    """Proxy addresses or CIDR networks whose ``forwarded_header`` is believed, comma-separated.
    Security: empty by default, so ``X-Forwarded-For`` is ignored and nobody can spoof an IP."""
    forwarded_header: str = "X-Forwarded-For"
    """Header in which trusted proxies pass the client address along."""

    _split = field_validator("trusted_proxies", mode="before")(_split_commas)

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        return _check_networks(value, "10.0.0.0/8")


class StoreSettings(_Section):
    """Shared-state stores (``BASTION_STORES__*``)."""

    key_prefix: str = "bastion"
    """Prefix of every Redis key bastion writes, so several apps can share one Redis."""
    memory_max_entries: int = Field(10_000, gt=0)
    """Most entries the in-process store holds before evicting the least recently used."""
    memory_max_bytes: int = Field(64 * 1024 * 1024, gt=0)
    """Most bytes (keys and values) the in-process store holds before evicting."""
    redis_socket_timeout_s: float = Field(0.5, gt=0)
    """Seconds a Redis command may take before it counts as a failure."""
    redis_connect_timeout_s: float = Field(0.5, gt=0)
    """Seconds to establish a Redis connection before it counts as a failure."""
    redis_max_connections: int = Field(64, gt=0)
    """Connections per worker process in the Redis pool."""
    gate_failure_threshold: int = Field(3, gt=0)
    """Consecutive failures after which the store is treated as down (fail fast, no timeout)."""
    gate_base_delay_s: float = Field(0.5, gt=0)
    """First interval the store is treated as down; it doubles while probes keep failing."""
    gate_max_delay_s: float = Field(30.0, gt=0)
    """Longest interval between probes of a store that is down."""
    required_at_startup: bool = False
    """Refuse to start when the configured store does not answer. By default the app starts
    degraded and each feature applies its outage policy until the store comes back."""


class OpsSettings(_Section):
    """Operations endpoints: health, metrics, dashboard (``BASTION_OPS__*``)."""

    enabled: bool = True
    """Serve the ops endpoints."""
    prefix: str = "/_bastion"
    """Path under which the ops endpoints are mounted."""
    admin_key: SecretStr | None = None
    """Key that unlocks details and actions (``Authorization: Bearer <key>``). Never logged."""

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        if not value.startswith("/") or (value != "/" and value.endswith("/")) or value == "/":
            raise ValueError("must start with '/', not end with '/', and not be '/' (e.g. /_ops)")
        return value


class HealthSettings(_Section):
    """Health endpoints: liveness, readiness, startup (``BASTION_HEALTH__*``)."""

    check_timeout_s: float = Field(2.0, gt=0)
    """Longest a single check may run before it counts as DOWN (checks run concurrently)."""
    cache_s: float = Field(1.0, ge=0)
    """How long a check result is reused, so probes from many load balancers cost one run."""
    loop_lag_degraded_s: float = Field(1.0, gt=0)
    """Readiness is DEGRADED while the event loop ran a timer later than this since the last
    check: something blocks the loop (CPU-bound work, a synchronous call)."""


class ShutdownSettings(_Section):
    """Graceful shutdown and draining (``BASTION_SHUTDOWN__*``)."""

    pre_stop_delay_s: float = Field(0.0, ge=0)
    """After SIGTERM, readiness reports 503 at once while requests are still served for this
    long, so load balancers stop routing before connections are refused (a preStop delay)."""
    drain_timeout_s: float = Field(25.0, gt=0)
    """At shutdown, the longest bastion waits for in-flight requests before closing resources."""


# Names whose values never reach a log line, as fields, headers or query parameters. Matching is
# case-insensitive and ignores "-" versus "_", so "X-Api-Key" and "x_api_key" are both caught.
DEFAULT_REDACTED = (
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
    "x-api-key",
    "api_key",
    "apikey",
    "access_token",
    "refresh_token",
    "id_token",
    "token",
    "password",
    "passwd",
    "secret",
    "client_secret",
    "signature",
    "sig",
)


class LoggingSettings(_Section):
    """Structured logs and the access log (``BASTION_LOGGING__*``)."""

    configure: bool = True
    """Let bastion configure Python logging at startup (root handler, formatter, uvicorn's
    loggers). Turn off to keep a logging setup of your own; the access log still goes to the
    ``bastion.access`` logger."""
    format: Literal["json", "console"] = "json"
    """``json``: one JSON object per line, for log pipelines. ``console``: aligned, readable
    lines for a terminal (``bastion demo`` uses it)."""
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    """Level of the root logger."""
    file: Path | None = None
    """Write log lines to this file (appending) instead of standard error."""
    access_log: bool = True
    """Log one line per request: method, route, path, status, duration, bytes, client."""
    access_sample_rate: float = Field(1.0, ge=0.0, le=1.0)
    """Fraction of successful (status < 400), fast requests that get an access line. Errors and
    slow requests are always logged. Sampling is by request id, so it is the same decision in
    every worker and a sampled request is logged whole."""
    slow_request_s: float = Field(1.0, gt=0)
    """Requests slower than this are always logged, whatever the sample rate."""
    redact: Annotated[list[str], NoDecode] = Field(default_factory=lambda: list(DEFAULT_REDACTED))
    """Field, header and query-parameter names whose values are replaced by ``[REDACTED]``,
    comma-separated. Security: the default covers credentials; extend it, do not shrink it."""
    queue_size: int = Field(10_000, gt=0)
    """Lines buffered for the writer thread. Logging never blocks the event loop: when the queue
    is full (the disk or pipe cannot keep up), lines are dropped and counted."""

    _split = field_validator("redact", mode="before")(_split_commas)


# OpenTelemetry's advised boundaries for http.server.request.duration, in seconds.
OTEL_DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10)


class MetricsSettings(_Section):
    """Prometheus metrics (``BASTION_METRICS__*``)."""

    enabled: bool = True
    """Record metrics and serve them at ``{ops prefix}/metrics``."""
    directory: Path | None = None
    """Directory where the worker processes of one server share their metrics, so a scrape of
    any worker returns the totals of all. By default a directory under the system temporary
    directory named after the parent process (the server's supervisor) is used, which is right
    for ``uvicorn --workers N`` and gunicorn. Set it when workers are started some other way."""
    port: int | None = Field(None, ge=0, le=65535)
    """Also serve ``/metrics`` on this port (every worker binds it with ``SO_REUSEPORT``; each
    one answers with the same merged totals), e.g. to keep metrics off the public port."""
    host: str = "127.0.0.1"
    """Address the metrics ``port`` listens on. Security: loopback by default; set
    ``0.0.0.0`` for a Prometheus on another host."""
    duration_buckets: Annotated[list[float], NoDecode] = Field(
        default_factory=lambda: list(OTEL_DURATION_BUCKETS)
    )
    """Upper bounds of the request duration histogram, in seconds, comma-separated."""
    max_series: int = Field(2_000, gt=0)
    """Most label combinations a metric holds; further ones are counted under one overflow
    series (labels ``"other"``) so a bug or an attack cannot blow up the scrape."""

    _split = field_validator("duration_buckets", mode="before")(_split_commas)

    @field_validator("duration_buckets")
    @classmethod
    def _ascending(cls, value: list[float]) -> list[float]:
        if not value or any(b <= a for a, b in itertools.pairwise(value)):
            raise ValueError("must be a non-empty, strictly increasing list of seconds")
        if value[0] <= 0:
            raise ValueError("bucket bounds must be positive")
        return value


class StatsSettings(_Section):
    """Per-route analytics at ``{ops prefix}/stats`` (``BASTION_STATS__*``)."""

    window_s: float = Field(300.0, gt=0)
    """How far back rates, error rates and latency percentiles look."""
    interval_s: float = Field(10.0, gt=0)
    """How often the metrics are sampled for the window (the resolution of the stats)."""
    top_routes: int = Field(10, gt=0)
    """How many routes the ``top`` list holds."""

    @model_validator(mode="after")
    def _interval_fits(self) -> StatsSettings:
        if self.interval_s > self.window_s:
            raise ValueError(
                f"BASTION_STATS__INTERVAL_S ({self.interval_s:g}) must not exceed "
                f"BASTION_STATS__WINDOW_S ({self.window_s:g})"
            )
        return self


class TracingSettings(_Section):
    """OpenTelemetry tracing, with the ``otel`` extra (``BASTION_TRACING__*``)."""

    enabled: bool = False
    """Record one server span per request. Needs ``pip install 'bastion[otel]'``; without it
    (or when off), trace ids are still read from ``traceparent``, logged and propagated."""
    exporter: Literal["otlp", "console", "none"] = "otlp"
    """Where spans go: an OTLP/HTTP collector, standard output, or nowhere (spans are still
    created, e.g. for an exporter you add yourself)."""
    otlp_endpoint: str = "http://127.0.0.1:4318/v1/traces"
    """OTLP/HTTP traces endpoint of the collector."""
    sample_ratio: float = Field(1.0, ge=0.0, le=1.0)
    """Fraction of new traces recorded; an incoming ``traceparent``'s sampled flag is honoured."""
    global_provider: bool = True
    """Install bastion's tracer provider as OpenTelemetry's global one, so library
    instrumentations (httpx, SQLAlchemy) and ``trace.get_tracer()`` export through it."""


class CompressionSettings(_Section):
    """Response compression: br, zstd, gzip (``BASTION_COMPRESSION__*``)."""

    enabled: bool = True
    """Compress responses for clients that accept it (see docs/compression.md for BREACH)."""
    minimum_size: int = Field(1024, ge=0)
    """Bodies smaller than this many bytes are sent uncompressed."""
    encodings: Annotated[list[Literal["br", "zstd", "gzip"]] | None, NoDecode] = None
    """Codings to offer, most preferred first, comma-separated. Unset: br, zstd and gzip, each
    if its library is installed; a coding listed here must be installed."""
    gzip_level: int = Field(6, ge=1, le=9)
    """gzip level, 1 (fast) to 9 (small)."""
    brotli_level: int = Field(4, ge=0, le=11)
    """Brotli quality, 0 to 11; above 6 it gets much slower for little gain on the fly."""
    zstd_level: int = Field(3, ge=1, le=19)
    """Zstandard level, 1 to 19 (higher would exceed the 8 MB window browsers accept)."""
    exclude: Annotated[list[str], NoDecode] = Field(default_factory=list)
    """Regular expressions matched at the start of the path; matching requests are never
    compressed, comma-separated. Security: list routes that mix secrets and user input."""
    thread_minimum_size: int = Field(128 * 1024, gt=0)
    """Bodies or chunks of at least this many bytes are compressed in a worker thread."""
    compress_cross_site: bool = True
    """Compress responses to requests a browser marks ``Sec-Fetch-Site: cross-site``.
    Security: false denies BREACH its usual attack path, at some cost (see the docs)."""

    _split = field_validator("encodings", "exclude", mode="before")(_split_commas)

    @field_validator("encodings")
    @classmethod
    def _distinct(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and (not value or len(set(value)) != len(value)):
            raise ValueError("must list br, zstd or gzip, each at most once")
        return value

    @field_validator("exclude")
    @classmethod
    def _patterns(cls, value: list[str]) -> list[str]:
        import re

        for pattern in value:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"{pattern!r} is not a valid regular expression: {exc}") from None
        return value


class RateLimitSettings(_Section):
    """Rate limiting by client and route (``BASTION_RATELIMIT__*``); see docs/ratelimit.md.

    Rates read ``COUNT/[N]UNIT``, several joined by ``;``: ``100/minute``, ``5/10s``,
    ``10/second;1000/hour``, ``10/second burst 50`` (GCRA). They are checked when ``Bastion``
    starts; an invalid one fails it with the variable's name.
    """

    enabled: bool = True
    """Install the rate-limit middleware (``limit()`` dependencies work either way)."""
    rate: str | None = None
    """Default limit per client and route, for requests that no rule matches. Unset: none."""
    global_rate: str | None = None
    """Limit per client shared by all routes, checked on every request on top of the others."""
    rules: Annotated[list[str | dict[str, Any]], NoDecode] = Field(default_factory=list)
    """Limits by route template or path pattern, a JSON list; the first match replaces
    ``rate``: ``["/search/*=10/second", {"path": "POST /upload", "rate": "5/minute",
    "cost": 2, "name": "upload", "per_route": false, "algorithm": "gcra"}]``."""
    exclude: Annotated[list[str], NoDecode] = Field(default_factory=list)
    """Route templates or path patterns never limited by the middleware, comma-separated
    (``*`` matches anything: ``/docs*,/static/*``)."""
    algorithm: Literal["fixed_window", "sliding_window", "gcra"] = "sliding_window"
    """How quotas are counted: ``sliding_window`` (smooth; the default), ``fixed_window``
    (calendar windows; bursts of up to twice the quota across an edge) or ``gcra`` (token
    bucket: a burst, then a sustained rate)."""
    on_store_error: Literal["fail_open", "fail_closed", "local_fallback"] = "fail_open"
    """When Redis fails: admit requests (``fail_open``, logged once per outage), refuse them with
    503 (``fail_closed``), or count in each process with quotas divided by
    ``expected_workers`` (``local_fallback``)."""
    expected_workers: int = Field(1, gt=0)
    """How many processes share the limits through Redis (all hosts together); used by
    ``local_fallback`` only."""
    headers: bool = True
    """Send ``RateLimit-Policy`` and ``RateLimit`` on responses (``Retry-After`` always goes
    with a refusal)."""
    memory_max_keys: int = Field(100_000, gt=0)
    """Most (client, quota) counters the in-process backend holds before evicting the least
    recently used."""

    _split = field_validator("exclude", mode="before")(_split_commas)

    @field_validator("rules", mode="before")
    @classmethod
    def _json_rules(cls, value: Any) -> Any:
        return _json_list(
            value, '["/search/*=10/second", {"path": "POST /upload", "rate": "5/minute"}]'
        )


JWT_ASYMMETRIC_ALGORITHMS = (
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA",
)  # fmt: skip
"""Signature algorithms accepted with keys from a JWKS (public keys only)."""
JWT_SYMMETRIC_ALGORITHMS = ("HS256", "HS384", "HS512")
"""Signature algorithms accepted with a shared secret (``BASTION_AUTH__JWT_SECRET``)."""
_LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")


class AuthSettings(_Section):
    """Authentication: API keys and JWT bearer tokens (``BASTION_AUTH__*``); see docs/auth.md.

    API keys need no configuration: they live in bastion's store (Redis when
    ``BASTION_REDIS_URL`` is set) and are managed with ``bastion keys``. JWT bearer tokens are
    checked when a JWKS URL or a shared secret is set, which needs ``pip install 'bastion[auth]'``.
    """

    enabled: bool = False
    """Install the authentication middleware: requests that carry credentials are authenticated
    (invalid ones get 401) and ``require`` rules apply. Off by default, because an app with an
    ``Authorization`` scheme of its own would see its tokens refused. ``bastion.require(...)``
    route dependencies work either way."""
    api_key_header: str = Field("X-API-Key", pattern=r"^[A-Za-z0-9-]+$")
    """Header that carries an API key (``Authorization: Bearer <key>`` works as well)."""
    api_key_prefix: str = Field("bst", pattern=r"^[a-z][a-z0-9]{1,15}$")
    """First part of every new key (``bst_<id>_<secret>``): lets secret scanners and people
    recognise a leaked key. Keys with another prefix are refused."""
    last_used_interval_s: float = Field(60.0, gt=0)
    """A key's last-used time is written at most once per this many seconds per worker, so a
    busy key does not cost a store write per request."""
    cache_s: float = Field(1.0, ge=0, le=1)
    """How long a worker reuses a key record it read from the store. At most 1 second, so a
    revoked key is refused by every worker within a second."""
    on_store_error: Literal["fail_closed", "serve_stale"] = "fail_closed"
    """When the store cannot be read: refuse with 503 (``fail_closed``), or accept keys this
    worker verified within ``stale_s`` (``serve_stale``; a key revoked during the outage stays
    usable on that worker until the store answers or ``stale_s`` passes)."""
    stale_s: float = Field(300.0, gt=0)
    """Oldest record ``serve_stale`` uses during a store outage."""
    require: Annotated[list[str], NoDecode] = Field(default_factory=list)
    """Routes that need authentication, a JSON list of ``"[METHODS ]PATTERN[=SCOPE ...]"``:
    ``["/admin/*=admin", "POST,PUT,DELETE /items*=items:write", "/me"]``. Patterns match the
    route template (else the path); ``*`` matches anything. The first matching rule applies."""
    exclude: Annotated[list[str], NoDecode] = Field(default_factory=list)
    """Route templates or path patterns the middleware never authenticates, comma-separated."""
    realm: str = Field("api", pattern=r'^[^"\\]*$')
    """The ``realm`` of ``WWW-Authenticate`` challenges."""
    jwt_jwks_url: str | None = None
    """URL of the identity provider's JWKS (``https://idp.example/.well-known/jwks.json``).
    Security: https, except for a loopback host."""
    jwt_secret: SecretStr | None = None
    """Shared secret for HS256/384/512 tokens (at least 32 bytes), instead of a JWKS."""
    jwt_issuer: str | None = None
    """The ``iss`` every token must carry. Required with a JWKS URL or secret."""
    jwt_audience: Annotated[list[str], NoDecode] = Field(default_factory=list)
    """Accepted ``aud`` values, comma-separated; a token must name one. Required with a JWKS URL
    or secret: without it, a token minted by the same IdP for another service would pass."""
    jwt_algorithms: Annotated[list[str] | None, NoDecode] = None
    """Accepted ``alg`` values, comma-separated. Default ``RS256,ES256`` with a JWKS,
    ``HS256`` with a secret. ``none`` is never accepted, and a JWKS never gets HS algorithms."""
    jwt_leeway_s: float = Field(30.0, ge=0, le=300)
    """Clock skew tolerated on ``exp``, ``nbf`` and ``iat``."""
    jwt_required_claims: Annotated[list[str], NoDecode] = Field(default_factory=lambda: ["exp"])
    """Claims every token must carry, comma-separated (``iss`` and ``aud`` always are)."""
    jwt_scope_claim: str = "scope"
    """Claim holding the token's scopes: a space-separated string or a list (``scp``)."""
    jwt_subject_claim: str = "sub"
    """Claim naming the user; the principal is ``user:<value>``."""
    jwks_cache_s: float = Field(300.0, gt=0)
    """How long fetched JWKS keys are used before they are fetched again. When the IdP does not
    answer, the last good keys stay in use."""
    jwks_refetch_interval_s: float = Field(10.0, gt=0)
    """Least time between two JWKS fetches: a token with an unknown ``kid`` triggers a fetch at
    most this often, so a flood of random ``kid`` values cannot hammer the IdP."""
    jwks_timeout_s: float = Field(5.0, gt=0)
    """Timeout of one JWKS fetch."""

    _split = field_validator(
        "exclude", "jwt_audience", "jwt_algorithms", "jwt_required_claims", mode="before"
    )(_split_commas)

    @field_validator("require", mode="before")
    @classmethod
    def _json_require(cls, value: Any) -> Any:
        return _json_list(value, '["/admin/*=admin", "POST /items=items:write"]')

    @field_validator("jwt_jwks_url")
    @classmethod
    def _jwks_url(cls, value: str | None) -> str | None:
        if not value:
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http(s) URL such as https://idp.example/jwks.json")
        if parts.scheme == "http" and parts.hostname not in _LOOPBACK_HOSTS:
            raise ValueError(
                "must use https (http is accepted for a loopback host only): over plain http "
                "anyone on the path could replace the keys"
            )
        return value

    @model_validator(mode="after")
    def _jwt_consistent(self) -> AuthSettings:
        jwks, secret = self.jwt_jwks_url is not None, self.jwt_secret is not None
        # Checked here, not in a field validator, whose error would quote the rejected secret.
        if self.jwt_secret is not None and len(self.jwt_secret.get_secret_value().encode()) < 32:
            raise ValueError("BASTION_AUTH__JWT_SECRET must be at least 32 bytes (RFC 7518 §3.2)")
        if jwks and secret:
            raise ValueError(
                "set BASTION_AUTH__JWT_JWKS_URL or BASTION_AUTH__JWT_SECRET, not both: one "
                "verifier per app keeps asymmetric and shared-secret keys apart"
            )
        if self.require and not self.enabled:
            raise ValueError(
                "BASTION_AUTH__REQUIRE needs BASTION_AUTH__ENABLED=true (the middleware applies it)"
            )
        if not (jwks or secret):
            return self
        if not self.jwt_issuer:
            raise ValueError("BASTION_AUTH__JWT_ISSUER must be set to check JWT bearer tokens")
        if not self.jwt_audience:
            raise ValueError("BASTION_AUTH__JWT_AUDIENCE must be set to check JWT bearer tokens")
        allowed = JWT_ASYMMETRIC_ALGORITHMS if jwks else JWT_SYMMETRIC_ALGORITHMS
        for algorithm in self.jwt_algorithms or ():
            if algorithm not in allowed:
                source = "a JWKS" if jwks else "a shared secret"
                raise ValueError(
                    f"BASTION_AUTH__JWT_ALGORITHMS: {algorithm!r} is not accepted with {source}; "
                    f"use some of {', '.join(allowed)}"
                )
        if self.jwt_algorithms == []:
            raise ValueError("BASTION_AUTH__JWT_ALGORITHMS must not be empty")
        return self


REFERRER_POLICIES = (
    "no-referrer",
    "no-referrer-when-downgrade",
    "origin",
    "origin-when-cross-origin",
    "same-origin",
    "strict-origin",
    "strict-origin-when-cross-origin",
    "unsafe-url",
)
"""The values ``Referrer-Policy`` accepts (W3C Referrer Policy §3)."""


class GuardSettings(_Section):
    """Abuse guard: bans, IP lists, path checks, body limit, security headers
    (``BASTION_GUARD__*``); see docs/protection.md."""

    enabled: bool = True
    """Install the guard layer (DESIGN §4 layer 5)."""
    check_paths: bool = True
    """Refuse (400) paths with a NUL byte, a ``..`` segment (also %-encoded, double-encoded or
    with backslashes) or invalid UTF-8."""
    max_body_bytes: int = Field(10 * 1024 * 1024, ge=0)
    """Largest request body accepted, in bytes (413 beyond it, counted while streaming);
    ``0`` for no limit. The default is 10 MiB."""
    body_limits: Annotated[list[str], NoDecode] = Field(default_factory=list)
    """Per-route limits as ``[METHODS ]PATTERN=BYTES`` entries, comma-separated, or a JSON object
    ``{"POST /uploads/*": 104857600}``; matched against the route template (``*`` matches
    anything), the first match wins, ``0`` means no limit."""
    allow: Annotated[list[str], NoDecode] = Field(default_factory=list)
    """IP addresses or CIDR networks that are never denied or banned, comma-separated."""
    deny: Annotated[list[str], NoDecode] = Field(default_factory=list)
    """IP addresses or CIDR networks refused with 403, comma-separated (``allow`` wins)."""
    bans: bool = True
    """Ban clients that produce bursts of auth failures or client errors."""
    auth_failures: int = Field(20, ge=0)
    """Auth failures (401, 403) within ``window_s`` that ban a client; ``0`` disables."""
    client_errors: int = Field(200, ge=0)
    """Client errors (4xx but ``ignored_statuses``) within ``window_s`` that ban a client;
    ``0`` disables."""
    window_s: float = Field(60.0, gt=0)
    """The sliding window the offences are counted in, in seconds."""
    ban_s: float = Field(60.0, gt=0)
    """Length of a first ban; each further ban within ``memory_s`` doubles it."""
    max_ban_s: float = Field(3600.0, gt=0)
    """The longest a ban grows to."""
    memory_s: float = Field(86_400.0, gt=0)
    """How long a client's past bans count towards the length of its next one."""
    ignored_statuses: Annotated[list[int], NoDecode] = Field(default_factory=lambda: [429])
    """4xx statuses that are not offences, comma-separated (by default 429: the rate limiter
    answers those, and counting them would turn a rate limit into a ban)."""
    ban_private_networks: bool = False
    """Also ban loopback, private and link-local addresses. Off by default: behind a proxy
    that is not in ``BASTION_CONTEXT__TRUSTED_PROXIES``, every client appears as the proxy's
    private address, and one abuser would ban everybody."""
    ipv6_prefix: int = Field(64, ge=32, le=128)
    """IPv6 clients are banned by network of this prefix length: one host controls a /64."""
    on_store_error: Literal["fail_open", "local_fallback"] = "fail_open"
    """When Redis fails: count nothing and ban nobody (``fail_open``), or count and ban in
    each process until it answers (``local_fallback``)."""
    security_headers: bool = True
    """Add the security headers below to responses that do not set them already."""
    content_type_options: bool = True
    """Send ``X-Content-Type-Options: nosniff``."""
    frame_options: Literal["DENY", "SAMEORIGIN", "off"] = "DENY"
    """``X-Frame-Options``: who may frame the pages (``off`` sends none)."""
    referrer_policy: str = "strict-origin-when-cross-origin"
    """``Referrer-Policy`` value (empty sends none)."""
    content_security_policy: str = ""
    """``Content-Security-Policy`` value (empty sends none; ``default-src 'none';
    frame-ancestors 'none'`` suits a pure JSON API, but breaks the interactive docs)."""
    hsts_max_age_s: int = Field(0, ge=0)
    """``Strict-Transport-Security`` max-age, sent on HTTPS requests only; ``0`` sends none.
    Security: browsers remember it for that long, so turn it on once HTTPS works everywhere."""
    hsts_include_subdomains: bool = False
    """Add ``includeSubDomains`` to HSTS."""
    hsts_preload: bool = False
    """Add ``preload`` to HSTS (only for domains submitted to the browsers' preload list)."""

    _split = field_validator("allow", "deny", "ignored_statuses", mode="before")(_split_commas)
    _nets = field_validator("allow", "deny")(_check_networks)

    @field_validator("ignored_statuses")
    @classmethod
    def _client_errors(cls, value: list[int]) -> list[int]:
        for status in value:
            if not 400 <= status <= 499:
                raise ValueError(f"{status} is not a 4xx status")
        return value

    @field_validator("referrer_policy")
    @classmethod
    def _referrer(cls, value: str) -> str:
        for token in filter(None, (part.strip() for part in value.split(","))):
            if token not in REFERRER_POLICIES:
                raise ValueError(f"{token!r} is not one of {', '.join(REFERRER_POLICIES)}")
        return value

    @field_validator("body_limits", mode="before")
    @classmethod
    def _limit_entries(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("{"):
                import json

                try:
                    value = json.loads(text)
                except ValueError:
                    raise ValueError(
                        'must be a JSON object such as {"POST /uploads/*": 1048576}'
                    ) from None
            else:
                # Entries end in "=BYTES"; a comma inside a method list ("GET,POST /x=5") is
                # glued back to the entry it belongs to.
                value, pending = [], ""
                for part in text.split(","):
                    pending = f"{pending},{part}" if pending else part
                    if "=" in part:
                        value.append(pending.strip())
                        pending = ""
                if pending.strip():
                    value.append(pending.strip())
        if isinstance(value, dict):
            return [f"{pattern}={limit}" for pattern, limit in value.items()]
        return value

    @field_validator("body_limits")
    @classmethod
    def _limits(cls, value: list[str]) -> list[str]:
        for entry in value:
            pattern, _, limit = entry.rpartition("=")
            if not pattern.strip() or not limit.strip().isdigit():
                raise ValueError(
                    f"{entry!r} is not '[METHODS ]PATTERN=BYTES' with BYTES >= 0 "
                    "(e.g. 'POST /uploads/*=104857600')"
                )
        return value

    @model_validator(mode="after")
    def _ban_lengths(self) -> GuardSettings:
        if self.max_ban_s < self.ban_s:
            raise ValueError(
                f"BASTION_GUARD__MAX_BAN_S ({self.max_ban_s:g}) must not be less than "
                f"BASTION_GUARD__BAN_S ({self.ban_s:g})"
            )
        return self


class SheddingSettings(_Section):
    """Load shedding: concurrency limit, priority queue, adaptive limit
    (``BASTION_SHEDDING__*``); see docs/shedding.md. Process-local: each worker has its own."""

    max_concurrent: int | None = Field(None, gt=0)
    """Most requests each worker runs at once (the starting point when ``adaptive``); unset:
    no load shedding. Ops endpoints (health, metrics) are never limited."""
    queue_size: int = Field(100, ge=0)
    """Most requests waiting for a permit per worker; beyond it, requests of the lowest
    priority are shed (503). ``0`` sheds at once everything beyond the limit."""
    queue_timeout_s: float = Field(1.0, gt=0)
    """Longest a request waits in the queue before it is shed."""
    queue_order: Literal["fifo", "lifo"] = "fifo"
    """Among waiters of equal priority: oldest first, or newest first (``lifo`` keeps latency
    low for the requests served during a long overload, at the expense of fairness)."""
    retry_after_s: int = Field(1, gt=0)
    """``Retry-After`` of a shed response is drawn from [this, twice this] seconds."""
    priorities: Annotated[list[str | dict[str, Any]], NoDecode] = Field(default_factory=list)
    """Priority by route template or path pattern, a JSON list; the first match is added to
    the request's priority (higher is served first):
    ``["GET /health*=100", {"path": "/exports/*", "priority": -10}]``."""
    principal_priorities: dict[str, int] = Field(default_factory=dict)
    """Priority added per principal, a JSON object: ``{"key:partner1": 10}``. Applies to
    principals known before admission (see docs/shedding.md)."""
    exclude: Annotated[list[str], NoDecode] = Field(default_factory=list)
    """Route templates or path patterns never limited, comma-separated (long-lived streams)."""
    adaptive: Literal["off", "gradient2", "aimd"] = "off"
    """Move the limit from measured latency: ``gradient2`` (Netflix's default) or ``aimd``."""
    min_limit: int = Field(5, gt=0)
    """Lowest limit the adaptive algorithm may choose."""
    max_limit: int = Field(1000, gt=0)
    """Highest limit the adaptive algorithm may choose."""
    smoothing: float = Field(0.2, gt=0, le=1)
    """Gradient2: weight of each new estimate (lower reacts more slowly)."""
    latency_threshold_s: float = Field(1.0, gt=0)
    """AIMD: a window whose average latency exceeds this shrinks the limit."""
    window_s: float = Field(1.0, gt=0)
    """Adaptive: length of a sampling window, in seconds."""
    window_min_samples: int = Field(10, gt=0)
    """Adaptive: requests a window needs before it moves the limit."""

    _split = field_validator("exclude", mode="before")(_split_commas)

    @field_validator("priorities", mode="before")
    @classmethod
    def _json_priorities(cls, value: Any) -> Any:
        return _json_list(value, '["GET /health*=100", {"path": "/exports/*", "priority": -10}]')

    @model_validator(mode="after")
    def _bounds(self) -> SheddingSettings:
        if self.adaptive == "off" or self.max_concurrent is None:
            return self
        if not self.min_limit <= self.max_concurrent <= self.max_limit:
            raise ValueError(
                f"BASTION_SHEDDING__MAX_CONCURRENT ({self.max_concurrent}) must lie between "
                f"BASTION_SHEDDING__MIN_LIMIT ({self.min_limit}) and "
                f"BASTION_SHEDDING__MAX_LIMIT ({self.max_limit}) when adaptive"
            )
        return self


class DeadlineSettings(_Section):
    """Request deadlines: timeouts by route (``BASTION_DEADLINE__*``); see docs/shedding.md."""

    enabled: bool = True
    """Install the deadline layer when a timeout is configured or declared on a route."""
    default_s: float | None = Field(None, gt=0)
    """Timeout of every request no rule or route declaration covers; unset: none."""
    rules: Annotated[list[str | dict[str, Any]], NoDecode] = Field(default_factory=list)
    """Timeouts by route template or path pattern, a JSON list; the first match replaces the
    default: ``["/reports/*=30", {"path": "GET /search", "timeout_s": 2.5}]``."""
    exclude: Annotated[list[str], NoDecode] = Field(default_factory=list)
    """Route templates or path patterns without a timeout from these settings, comma-separated
    (long-lived streams); a route's own ``timeout()`` still applies."""

    _split = field_validator("exclude", mode="before")(_split_commas)

    @field_validator("rules", mode="before")
    @classmethod
    def _json_rules(cls, value: Any) -> Any:
        return _json_list(value, '["/reports/*=30", {"path": "GET /search", "timeout_s": 2.5}]')


class CacheSettings(_Section):
    """The HTTP response cache (``BASTION_CACHE__*``); see docs/cache.md.

    Routes are cached when they declare it (``@bastion.cache(ttl=60)``) or when a rule here
    matches them. Entries live in Redis when ``BASTION_REDIS_URL`` is set (every worker shares
    them), else in a memory backend of ``memory_max_bytes`` per process.
    """

    enabled: bool = True
    """Install the response cache layer (routes with no policy pay one dict lookup)."""
    default_ttl_s: float = Field(60.0, gt=0)
    """Freshness lifetime of a response whose policy and ``Cache-Control`` set none."""
    max_entry_bytes: int = Field(1024 * 1024, ge=0)
    """Largest body stored; larger responses stream through uncached."""
    memory_max_bytes: int = Field(64 * 1024 * 1024, gt=0)
    """Bytes the in-process backend holds before evicting the least recently used entries
    (without Redis)."""
    rules: Annotated[list[str | dict[str, Any]], NoDecode] = Field(default_factory=list)
    """Policies by route template or path pattern, a JSON list; the first match applies to
    routes that declare none: ``["/albums*=60", {"path": "/tracks/{track_id}", "ttl": 30,
    "tags": ["tracks"], "stale_while_revalidate": 30}]``."""
    honor_request_cache_control: bool = True
    """Obey the client's ``Cache-Control: no-cache / no-store / max-age`` (RFC 9111). Turn it
    off to stop any client from making the handler run on demand, as CDNs usually do."""
    private_headers: Annotated[list[str], NoDecode] = Field(default_factory=list)
    """Request headers that identify the caller besides ``Authorization`` and ``Cookie``
    (``X-API-Key``), comma-separated: requests carrying one get entries of their own."""
    lock_ttl_s: float = Field(10.0, gt=0)
    """Life of the cross-worker lock a miss takes: the longest a crashed worker delays others."""
    wait_s: float = Field(10.0, gt=0)
    """The longest a request waits for another worker's miss before running the handler."""
    max_ttl_s: float = Field(86_400.0, gt=0, allow_inf_nan=False)
    """The longest any entry lives (responses and ``@cached`` values); longer TTLs are shortened
    to it. A purged tag's version is remembered this long in Redis."""
    compress_min_bytes: int = Field(1024, ge=0)
    """Entries of at least this size are stored compressed in Redis (zstd, else zlib) when that
    makes them smaller; the memory backend keeps them as they are."""

    _split = field_validator("private_headers", mode="before")(_split_commas)

    @field_validator("rules", mode="before")
    @classmethod
    def _json_rules(cls, value: Any) -> Any:
        return _json_list(value, '["/albums*=60", {"path": "/tracks/{track_id}", "ttl": 30}]')


class Settings(BaseSettings):
    """All of bastion's settings. Build with ``load_settings()`` to get readable errors."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        frozen=True,
    )

    redis_url: str | None = None
    """``redis://``, ``rediss://`` or ``unix://`` URL; when set, shared state lives in Redis
    (cluster scope); when unset, in process memory (process scope)."""
    database_url: str | None = None
    """SQLAlchemy URL of the application database (``sqlite+aiosqlite:///app.db``,
    ``postgresql+asyncpg://...``); checked by ``bastion doctor`` and used by the demo."""
    service_name: str = "bastion"
    """Name of the service in logs, metrics and traces."""
    environment: Literal["development", "test", "production"] = "production"
    """Deployment environment; ``development`` relaxes nothing security-relevant."""
    context: ContextSettings = Field(default_factory=ContextSettings)
    stores: StoreSettings = Field(default_factory=StoreSettings)
    ops: OpsSettings = Field(default_factory=OpsSettings)
    health: HealthSettings = Field(default_factory=HealthSettings)
    shutdown: ShutdownSettings = Field(default_factory=ShutdownSettings)
    logging: LoggingSettings = Field(default_factory=LoggingSettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    stats: StatsSettings = Field(default_factory=StatsSettings)
    tracing: TracingSettings = Field(default_factory=TracingSettings)
    ratelimit: RateLimitSettings = Field(default_factory=RateLimitSettings)
    auth: AuthSettings = Field(default_factory=AuthSettings)
    compression: CompressionSettings = Field(default_factory=CompressionSettings)
    guard: GuardSettings = Field(default_factory=GuardSettings)
    shedding: SheddingSettings = Field(default_factory=SheddingSettings)
    deadline: DeadlineSettings = Field(default_factory=DeadlineSettings)
    cache: CacheSettings = Field(default_factory=CacheSettings)

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        parts = urlsplit(value)
        if parts.scheme not in _REDIS_SCHEMES:
            raise ValueError(
                "must be a redis://host:port/db, rediss://host:port/db or unix:///path URL"
            )
        if parts.scheme != "unix" and not parts.hostname:
            raise ValueError("has no host (expected redis://host:port/db)")
        try:
            _ = parts.port
        except ValueError:
            raise ValueError("has an invalid port") from None
        return value

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        scheme = urlsplit(value).scheme
        if scheme not in _DATABASE_SCHEMES:
            raise ValueError(f"scheme {scheme!r} is not one of {', '.join(_DATABASE_SCHEMES)}")
        return value

    def __repr_args__(self) -> Any:
        for name, value in super().__repr_args__():
            if name in ("redis_url", "database_url") and isinstance(value, str):
                yield name, redact_url(value)
            else:
                yield name, value

    def masked(self) -> dict[str, Any]:
        """The settings as plain data, with secrets and URL credentials masked, for printing."""
        data = self.model_dump(mode="json")  # SecretStr dumps as "**********"
        for name in ("redis_url", "database_url"):
            if data.get(name):
                data[name] = redact_url(data[name])
        return data


def env_name(location: tuple[int | str, ...]) -> str:
    """The environment variable that sets the field at ``location`` (a pydantic error ``loc``)."""
    return ENV_PREFIX + "__".join(str(part) for part in location).upper()


def _describe(error: Mapping[str, Any]) -> str:
    variable = env_name(tuple(error["loc"]))
    message = str(error["msg"]).removeprefix("Value error, ")
    value = error.get("input")
    if isinstance(value, str):
        shown = redact_url(value) if "://" in value else value
        return f"{variable}={shown!r}: {message}"
    return f"{variable}: {message}"


def _unknown_variables(environ: Mapping[str, str]) -> list[str]:
    known = {ENV_PREFIX + name.upper() for name in Settings.model_fields}
    nested = {
        f"{ENV_PREFIX}{section.upper()}__{field.upper()}"
        for section, info in Settings.model_fields.items()
        if isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel)
        for field in info.annotation.model_fields
    }
    problems = []
    for variable in sorted(environ):
        if not variable.startswith(ENV_PREFIX) or variable.startswith(_NOT_SETTINGS):
            continue
        if variable in known or variable in nested:
            continue
        hint = difflib.get_close_matches(variable, sorted(known | nested), n=1)
        suffix = f" (did you mean {hint[0]}?)" if hint else ""
        problems.append(f"{variable}: not a bastion setting{suffix}")
    return problems


def _dotenv_names() -> dict[str, str]:
    """The variables the ``.env`` file defines, so a typo there is caught like one in the env."""
    path = Path(str(Settings.model_config.get("env_file") or ".env"))
    if not path.is_file():
        return {}
    from dotenv import dotenv_values

    return {name: value or "" for name, value in dotenv_values(path).items()}


def load_settings(environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
    """Read settings from the environment and ``.env``, failing with a readable error.

    Args:
        environ: variables to check for unknown ``BASTION_*`` names (default ``os.environ``).
        overrides: field values that take precedence over the environment.

    Raises:
        ConfigurationError: one line per invalid or unknown variable.
    """
    names = dict(os.environ if environ is None else environ)
    names.update(_dotenv_names())
    problems = _unknown_variables(names)
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        problems.extend(_describe(error) for error in exc.errors())
        settings = None
    if problems or settings is None:
        raise ConfigurationError("invalid bastion settings:\n  " + "\n  ".join(problems))
    return settings
