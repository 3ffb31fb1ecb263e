"""OpenTelemetry tracing: one SERVER span per request, under bastion's own trace identity.

``Tracing`` is a ``RequestObserver``. Its span carries the trace id bastion already put in the
request context (from a strictly parsed ``traceparent``, or generated), has the caller's span as
its remote parent, and its span id *is* ``context.span_id``. So the ids in log lines, in outbound
``traceparent`` headers and in the exported spans are always the same ids.

FastAPI example::

    from bastion.observability.tracing import Tracing, build_tracer_provider, span

    provider = build_tracer_provider(settings.tracing, service_name="albums")
    tracing = Tracing(provider)  # the observer Bastion calls around every request


    @app.get("/albums/{album_id}")
    async def album(album_id: int) -> Album:
        with span("albums.load", album_id=album_id):  # a child of the request's span
            return await load(album_id)

OpenTelemetry is the ``otel`` extra. This module imports without it; building a provider or a
``Tracing`` then raises ``MissingDependencyError``. The SDK is imported on first use only: it
takes about half a second to import.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import re
import sys
from collections.abc import Callable
from contextvars import ContextVar
from importlib.metadata import version
from typing import TYPE_CHECKING, Any

import anyio
import anyio.to_thread

from bastion.events import Event, event_name
from bastion.exceptions import MissingDependencyError

if TYPE_CHECKING:
    from contextlib import AbstractContextManager

    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.id_generator import IdGenerator, RandomIdGenerator
    from opentelemetry.trace import Span, Tracer
    from opentelemetry.util.types import AttributeValue

    from bastion.context import RequestContext
    from bastion.events import Hooks
    from bastion.settings import TracingSettings
    from bastion.types import Scope

__all__ = ["Tracing", "build_tracer_provider", "parse_tracestate", "span"]

_logger = logging.getLogger("bastion.tracing")

# The HTTP methods OpenTelemetry's semantic conventions know; any other method is recorded as
# "_OTHER" so that a client cannot mint span names (and backend index entries) at will.
_KNOWN_METHODS = frozenset(
    ("CONNECT", "DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT", "QUERY", "TRACE")
)

# (trace id, span id) the next span must get, set only while ``Tracing`` starts a server span.
# A ContextVar, not an attribute: a root span started meanwhile on another thread (a sync
# handler in the thread pool) must get ids of its own.
_server_ids: ContextVar[tuple[int, int] | None] = ContextVar("bastion_span_ids", default=None)

# The tracer of the active ``Tracing``, read by ``span()``; None while tracing is off.
_tracer: Tracer | None = None
_NO_SPAN: contextlib.nullcontext[None] = contextlib.nullcontext()


def _require_otel() -> None:
    try:
        import opentelemetry.sdk.trace  # noqa: F401
    except ImportError as exc:
        raise MissingDependencyError("opentelemetry", "otel") from exc


def build_tracer_provider(settings: TracingSettings, *, service_name: str) -> TracerProvider:
    """A tracer provider configured from ``settings`` (``enabled`` is the caller's business).

    Sampling is ``ParentBased(TraceIdRatioBased(settings.sample_ratio))``: a new trace is
    recorded with probability ``sample_ratio``, a continued one whenever the caller sampled it.
    Spans are exported in batches from a background thread, to ``settings.otlp_endpoint`` over
    OTLP/HTTP (``exporter="otlp"``), to standard output (``"console"``) or nowhere (``"none"``).

    Args:
        settings: the ``tracing`` section of bastion's settings.
        service_name: ``service.name`` of the resource, which wins over ``OTEL_SERVICE_NAME``.

    Raises:
        MissingDependencyError: OpenTelemetry (the ``otel`` extra) is not installed.
    """
    _require_otel()
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    provider = TracerProvider(
        sampler=ParentBased(TraceIdRatioBased(settings.sample_ratio)),
        resource=Resource.create({SERVICE_NAME: service_name}),
    )
    if settings.exporter == "otlp":
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        except ImportError as exc:
            raise MissingDependencyError("opentelemetry.exporter.otlp.proto.http", "otel") from exc
        provider.add_span_processor(
            BatchSpanProcessor(OTLPSpanExporter(endpoint=settings.otlp_endpoint))
        )
    elif settings.exporter == "console":
        # sys.stdout as it is now, not as it was when the SDK was imported (its default).
        provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter(out=sys.stdout)))
    return provider


def _server_id_generator(fallback: IdGenerator) -> RandomIdGenerator:
    """``fallback``, except that the server span ``Tracing`` starts gets bastion's ids."""
    from opentelemetry.sdk.trace.id_generator import RandomIdGenerator

    # A RandomIdGenerator only in name: the SDK types TracerProvider.id_generator as one.
    class ServerIdGenerator(RandomIdGenerator):
        def generate_span_id(self) -> int:
            ids = _server_ids.get()
            return fallback.generate_span_id() if ids is None else ids[1]

        def generate_trace_id(self) -> int:
            ids = _server_ids.get()
            return fallback.generate_trace_id() if ids is None else ids[0]

        def is_trace_id_random(self) -> bool:
            # Bastion's trace ids are 128 bits from os.urandom, so ratio sampling may rely on
            # them; a request id from the client is never used as a trace id.
            return _server_ids.get() is not None or fallback.is_trace_id_random()

    return ServerIdGenerator()


def _is_cancellation(error: BaseException) -> bool:
    if isinstance(error, asyncio.CancelledError):
        return True
    try:
        cancelled = anyio.get_cancelled_exc_class()
    except Exception:  # no async library running: nothing else can be a cancellation
        return False
    return isinstance(error, cancelled)


def _type_name(error: BaseException) -> str:
    kind = type(error)
    module = kind.__module__
    return kind.__qualname__ if module == "builtins" else f"{module}.{kind.__qualname__}"


# W3C Trace Context, tracestate: a simple or a multi-tenant key, and a value.
_TRACESTATE_MEMBER = re.compile(
    r"([a-z0-9][_0-9a-z\-*/]{0,255}|[a-z0-9][_0-9a-z\-*/]{0,240}@[a-z][_0-9a-z\-*/]{0,13})"
    r"=([\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,255}[\x21-\x2b\x2d-\x3c\x3e-\x7e])"
)
_TRACESTATE_MAX_MEMBERS = 32


def parse_tracestate(headers: list[bytes]) -> list[tuple[str, str]] | None:
    """The members of incoming ``tracestate`` header lines, or ``None`` when any is invalid.

    An invalid header is dropped whole and silently, as the W3C spec allows: handing it to
    OpenTelemetry's parser would log a warning quoting client-controlled text on every request.
    """
    members: dict[str, str] = {}
    for header in headers:
        for raw in header.split(b","):
            member = raw.strip(b" \t")
            if not member:
                continue
            found = _TRACESTATE_MEMBER.fullmatch(member.decode("latin-1"))
            if found is None or found.group(1) in members:
                return None
            members[found.group(1)] = found.group(2)
    if len(members) > _TRACESTATE_MAX_MEMBERS:
        return None
    return list(members.items())


class Tracing:
    """Records one OpenTelemetry SERVER span per HTTP request: a ``RequestObserver``.

    The span is named ``"{method} {route}"`` (``"{method}"`` when no route matched) and carries
    the stable HTTP semantic-convention attributes. It is the current span while the app runs,
    so spans the app starts (with ``span()``, or any tracer of ``provider``) are its children.
    5xx responses and exceptions mark it ``ERROR``; 4xx do not (the client's fault, not the
    server's). A cancelled request (client gone, server stopping) ends with the attribute
    ``bastion.request.cancelled = true`` and no error status, like nginx's 499.

    Constructing it makes ``span()`` use its tracer. It never raises into a request: a failure
    of its own is logged (logger ``bastion.tracing``) and the request goes on without a span.

    Args:
        provider: the SDK tracer provider spans go to, e.g. from ``build_tracer_provider``.
            Its id generator is wrapped so that server spans get bastion's ids; every other
            span keeps the provider's own ids.
        set_global: also make ``provider`` OpenTelemetry's global provider, so that
            ``opentelemetry.trace.get_tracer()`` and library instrumentations record spans. Off
            by default: the global can be set once per process and may be the app's to set.

    Raises:
        MissingDependencyError: OpenTelemetry (the ``otel`` extra) is not installed.
    """

    __slots__ = (
        "_attach",
        "_closed",
        "_detach",
        "_error_code",
        "_non_recording_span",
        "_root",
        "_server",
        "_set_span_in_context",
        "_span_context",
        "_start_span",
        "_status",
        "_subscriptions",
        "_trace_flags",
        "_trace_state",
        "provider",
        "tracer",
    )

    def __init__(self, provider: TracerProvider, /, *, set_global: bool = False) -> None:
        _require_otel()
        from opentelemetry import context as otel_context
        from opentelemetry import trace

        self.provider = provider
        # Wrapped before the tracer is made: a tracer keeps the generator it was made with.
        provider.id_generator = _server_id_generator(provider.id_generator)
        self.tracer: Tracer = provider.get_tracer("bastion", version("bastion"))
        if set_global:
            trace.set_tracer_provider(provider)
        self._closed = False
        self._subscriptions: list[Callable[[], None]] = []
        self._root = otel_context.Context()
        self._attach = otel_context.attach
        self._detach = otel_context.detach
        self._start_span = self.tracer.start_span
        self._set_span_in_context = trace.set_span_in_context
        self._span_context = trace.SpanContext
        self._non_recording_span = trace.NonRecordingSpan
        self._trace_flags = trace.TraceFlags
        self._trace_state = trace.TraceState
        self._server = trace.SpanKind.SERVER
        self._status = trace.Status
        self._error_code = trace.StatusCode.ERROR
        global _tracer
        _tracer = self.tracer

    def follow_events(self, hooks: Hooks) -> None:
        """Record every event bastion publishes during a traced request on the current span.

        A decision (a cache hit, a rate-limit refusal, a shed or timed-out request, a failed
        authentication) becomes an OpenTelemetry span event named ``bastion.<event>``
        (``bastion.cache_hit``, ``bastion.rate_limited``) whose attributes are the event's fields
        (``bastion.route``, ``bastion.retry_after_s``). Events outside a recording span (a store
        going down, seen by a background probe) are not recorded. Stops at ``close()``.
        """
        self._subscriptions.append(hooks.subscribe(Event, _record_event))

    def request_started(self, context: RequestContext, scope: Scope) -> Any:
        """Start the request's span and make it current; returns what ``request_finished`` needs."""
        try:
            return self._start(context, scope)
        except Exception:  # telemetry must never fail a request
            _logger.exception("could not start the span of %s %s", context.method, context.path)
            return None

    def _start(self, context: RequestContext, scope: Scope) -> tuple[Span, object]:
        trace_id = int(context.trace_id, 16)
        parent_span_id = context.parent_span_id
        if parent_span_id is None:
            # An explicit empty context: the span is a root even if some outer code left a span
            # current, so its trace id is the one bastion logs.
            parent = self._root
        else:
            # bastion parsed traceparent strictly already; the OTel propagator is not needed
            # (and is laxer). tracestate counts only when traceparent was valid.
            states = [value for key, value in scope["headers"] if key == b"tracestate"]
            members = parse_tracestate(states) if states else None
            remote = self._span_context(
                trace_id,
                int(parent_span_id, 16),
                True,
                self._trace_flags(context.trace_flags),
                self._trace_state(members) if members else None,
            )
            parent = self._set_span_in_context(self._non_recording_span(remote), self._root)

        method = context.method
        known = method in _KNOWN_METHODS
        route = context.route
        name = method if known else "HTTP"
        if route is not None:
            name = f"{name} {route}"

        ids = _server_ids.set((trace_id, int(context.span_id, 16)))
        try:
            span = self._start_span(name, parent, self._server)
        finally:
            _server_ids.reset(ids)

        # The sampler may have decided against a new trace: outbound calls must say so too.
        span_context = span.get_span_context()
        sampled = span_context.trace_flags & 0x01
        if context.trace_flags & 0x01 != sampled and span_context.is_valid:
            context.trace_flags = (context.trace_flags & ~0x01) | sampled

        if span.is_recording():
            attributes: dict[str, AttributeValue] = {
                "http.request.method": method if known else "_OTHER",
                "url.path": context.path,
                "url.scheme": scope.get("scheme", "http"),
                "network.protocol.version": scope.get("http_version", "1.1"),
            }
            if not known:
                attributes["http.request.method_original"] = method
            if route is not None:
                attributes["http.route"] = route
            if context.client is not None:
                attributes["client.address"] = context.client
            server = scope.get("server")
            if server and server[1] is not None:  # (host, port); (path, None) on a unix socket
                attributes["server.address"] = server[0]
                attributes["server.port"] = server[1]
            for key, value in scope["headers"]:
                if key == b"user-agent":
                    attributes["user_agent.original"] = value.decode("latin-1")
                    break
            span.set_attributes(attributes)

        token = self._attach(self._set_span_in_context(span))
        return span, token

    def request_finished(
        self, context: RequestContext, scope: Scope, state: Any, error: BaseException | None
    ) -> None:
        """Record the outcome on the span, restore the previous context and end the span."""
        if state is None:
            return
        span: Span = state[0]
        try:
            if span.is_recording():
                self._finish(span, context.status, error)
        except Exception:  # telemetry must never fail a request
            _logger.exception("could not finish the span of %s %s", context.method, context.path)
        finally:
            try:
                self._detach(state[1])
            finally:
                span.end()

    def _finish(self, span: Span, status: int | None, error: BaseException | None) -> None:
        if status is not None:
            span.set_attribute("http.response.status_code", status)
        if error is not None:
            if _is_cancellation(error):
                span.set_attribute("bastion.request.cancelled", True)
            else:
                span.record_exception(error)
                span.set_attribute("error.type", _type_name(error))
                span.set_status(self._status(self._error_code, type(error).__name__))
                return
        if status is not None and status >= 500:
            span.set_attribute("error.type", str(status))
            span.set_status(self._status(self._error_code))

    async def close(self) -> None:
        """Export the spans still buffered, then shut the provider down (once; idempotent).

        Runs in a worker thread, so a slow collector does not stall the event loop. An
        unreachable collector is retried until the exporter's timeout
        (``OTEL_EXPORTER_OTLP_TRACES_TIMEOUT``, 10 s by default), then its spans are dropped.
        Afterwards ``span()`` is a no-op again.
        """
        global _tracer
        if self._closed:
            return
        self._closed = True
        for unsubscribe in self._subscriptions:
            unsubscribe()
        self._subscriptions.clear()
        if _tracer is self.tracer:
            _tracer = None
        provider = self.provider

        def flush_and_shut_down() -> None:
            provider.force_flush()
            provider.shutdown()

        await anyio.to_thread.run_sync(flush_and_shut_down)


def _record_event(event: Event) -> None:
    """Add ``event`` to the current span as a span event, if that span is recording."""
    from opentelemetry import trace

    current = trace.get_current_span()
    if not current.is_recording():
        return
    attributes: dict[str, AttributeValue] = {}
    for field in dataclasses.fields(event):
        value = getattr(event, field.name)
        if isinstance(value, (str, bool, int, float)):
            attributes[f"bastion.{field.name}"] = value
        elif isinstance(value, tuple) and all(isinstance(item, str) for item in value):
            attributes[f"bastion.{field.name}"] = list(value)
    current.add_event("bastion." + event_name(type(event)), attributes)


def span(name: str, **attributes: AttributeValue) -> AbstractContextManager[Span | None]:
    """A context manager for an INTERNAL span, the child of the current one.

    While a ``Tracing`` is active it yields the started span (ended on exit, exceptions
    recorded); otherwise it yields ``None`` and costs about as much as ``nullcontext()``.

    Args:
        name: the span's name: a low-cardinality operation name such as ``"cache.lookup"``.
        attributes: the span's attributes.
    """
    tracer = _tracer
    if tracer is None:
        return _NO_SPAN
    return tracer.start_as_current_span(name, attributes=attributes or None)
