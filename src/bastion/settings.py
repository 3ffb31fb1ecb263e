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
    "CompressionSettings",
    "ContextSettings",
    "HealthSettings",
    "LoggingSettings",
    "MetricsSettings",
    "OpsSettings",
    "RateLimitSettings",
    "Settings",
    "ShutdownSettings",
    "StatsSettings",
    "StoreSettings",
    "TracingSettings",
    "env_name",
    "load_settings",
]

ENV_PREFIX = "BASTION_"
# Variables with our prefix that are not settings: the test suite's own switches.
_NOT_SETTINGS = ("BASTION_TEST_", "BASTION_REQUIRE_SERVICES")

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
        import ipaddress

        for item in value:
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise ValueError(
                    f"{item!r} is not an IP address or CIDR network (e.g. 10.0.0.0/8)"
                ) from None
        return value


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
        if not isinstance(value, str):
            return value
        import json

        try:
            return json.loads(value) if value.strip() else []
        except ValueError:
            raise ValueError(
                'must be a JSON list such as ["/search/*=10/second", '
                '{"path": "POST /upload", "rate": "5/minute"}]'
            ) from None


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
    compression: CompressionSettings = Field(default_factory=CompressionSettings)

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
