"""Log lines: their formats, secret masking, and the access log's per-request half.

``logs`` holds the plumbing (the writer thread, the logging handler, ``configure_logging``) and
re-exports everything here. This module is what runs once per request or per line, so it is one
of the modules compiled with mypyc into wheels (see ``hatch_build.py``); the plumbing stays plain
Python.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import re
import threading
import time
import traceback
import zlib
from collections import deque
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote_plus

import orjson

from bastion._clock import SYSTEM_CLOCK, Clock
from bastion._urls import redact_url
from bastion.context import RequestContext, _current
from bastion.events import Event, event_name
from bastion.exceptions import ConfigurationError
from bastion.settings import DEFAULT_REDACTED
from bastion.types import Scope

if TYPE_CHECKING:
    from bastion.observability.logs import LogSink

__all__ = [
    "ACCESS_LOGGER",
    "AccessLog",
    "ConsoleFormatter",
    "JsonFormatter",
    "REDACTED",
    "Redactor",
    "StructuredFormatter",
    "chunk_lines",
    "note_decision",
    "render_lines",
]

REDACTED = "[REDACTED]"
"""What a secret value is replaced with."""

ACCESS_LOGGER = "bastion.access"
"""Name of the logger the access log is written to."""

# The attribute under which SinkHandler stores the request context fields on a record: captured
# on the thread that logs, because the writer thread cannot see the request's contextvars.
_CONTEXT_ATTR = "_bastion_context"
_UNSET: Any = object()
# Attributes every LogRecord has: the rest of a record's __dict__ are the ``extra=`` fields.
# uvicorn adds ``color_message`` (the message with ANSI colours) to some records; it repeats the
# message, so it is not a field either.
_RECORD_ATTRS = frozenset(
    [
        *logging.LogRecord("", 0, "", 0, "", None, None).__dict__,
        "message",
        "asctime",
        "taskName",
        "color_message",
        _CONTEXT_ATTR,
    ]
)
# Fields every line has, in this order; an ``extra=`` field of the same name is renamed.
_CORE_SET = frozenset(("time", "level", "logger", "message", "service"))
_TAIL = frozenset(("exc_type", "exc", "stack"))

_MAX_DEPTH = 12
_JSON_OPTIONS = orjson.OPT_NON_STR_KEYS | orjson.OPT_PASSTHROUGH_DATACLASS
# Anything URL-shaped in free text; each match goes through redact_url.
_URL_IN_TEXT = re.compile(r"\b[A-Za-z][A-Za-z0-9+.-]*://\S+")


def _normalize(name: str) -> str:
    return name.strip().lower().replace("-", "_")


class Redactor:
    """Masks values by name: in mappings, query strings and free text.

    A name is secret when, ignoring case and treating ``-`` and ``_`` alike, it equals one of the
    configured names or ends with one after a separator: with ``password`` configured,
    ``Password``, ``db_password`` and ``DB-PASSWORD`` are secret, ``passwords_checked`` is not.

    Args:
        names: the secret names (default ``bastion.settings.DEFAULT_REDACTED``).
    """

    __slots__ = ("_cache", "_names", "_needles", "_queries", "_suffixes", "_text_query")

    _CACHE_SIZE = 4096
    _MEMO_QUERY_CHARS = 256  # longer ones are rarely repeated, and would make the memo large

    def __init__(self, names: Iterable[str] = DEFAULT_REDACTED) -> None:
        normalized = sorted({_normalize(name) for name in names if name.strip()})
        self._names = frozenset(normalized)
        self._suffixes = tuple("_" + name for name in normalized)
        self._cache: dict[str, bool] = {}
        self._queries: dict[str, str] = {}
        # A secret parameter's name contains a secret name, so a query string that contains
        # none needs no parsing at all. Names inside other names (``token`` in ``id_token``)
        # add nothing to that test. Plain substring tests on the lower-cased query are several
        # times cheaper than one case-insensitive regex alternation, which tries every name
        # at every position; this runs for every access line with a query string.
        self._needles = tuple(
            name for name in normalized if not any(o != name and o in name for o in normalized)
        )
        if normalized:
            alternatives = "|".join(re.escape(name).replace("_", "[-_]") for name in normalized)
            # ``name=value`` pairs of the query strings of URLs (or paths) inside free text.
            self._text_query: re.Pattern[str] | None = re.compile(
                rf"(?i)([?&](?:[^\s&=?#]*[-_])?(?:{alternatives})=)[^&\s#]*"
            )
        else:
            self._text_query = None

    def is_secret(self, name: str) -> bool:
        """Whether values under ``name`` are masked."""
        cached = self._cache.get(name)
        if cached is not None:
            return cached
        normalized = _normalize(name)
        secret = normalized in self._names or normalized.endswith(self._suffixes)
        if len(self._cache) >= self._CACHE_SIZE:
            self._cache.clear()  # names come from code, so this only happens on odd input
        self._cache[name] = secret
        return secret

    def redact(self, value: Any) -> Any:
        """``value`` with secrets masked: mappings by key (recursively), strings as text.

        Mappings become dicts and other collections lists; other objects are returned as they are
        (the JSON formatter masks dataclasses and pydantic models by field name, and writes
        anything else as ``str(value)``).
        """
        return self._redact(value, 0)

    def _redact(self, value: Any, depth: int) -> Any:
        if isinstance(value, str):
            return self.redact_text(value)
        if isinstance(value, (int, float, bool)) or value is None:
            return value
        if depth >= _MAX_DEPTH:
            return "[...]"  # deeper than any sane log field, or a cycle
        if isinstance(value, Mapping):
            is_secret = self.is_secret
            return {
                key: REDACTED
                if isinstance(key, str) and is_secret(key)
                else self._redact(item, depth + 1)
                for key, item in value.items()
            }
        if isinstance(value, (list, tuple, set, frozenset)):
            return [self._redact(item, depth + 1) for item in value]
        return value

    def redact_query(self, query: str) -> str:
        """Mask the values of secret parameters in a query string (``token=abc&x=1``).

        Parameter names are percent-decoded before they are compared, so ``%74oken`` is caught.
        Short query strings repeat (pages, filters, searches): their answers are memoized.
        """
        if not query:
            return query
        known = self._queries.get(query)
        if known is not None:
            return known
        redacted = self._redact_query(query)
        if len(query) <= self._MEMO_QUERY_CHARS:
            if len(self._queries) >= self._CACHE_SIZE:
                self._queries.clear()  # distinct queries are unbounded: forget them all at once
            self._queries[query] = redacted
        return redacted

    def _redact_query(self, query: str) -> str:
        if not self._mentions_secret(query):
            return query
        parts = query.split("&")
        changed = False
        is_secret = self.is_secret
        for index, part in enumerate(parts):
            name, equals, _ = part.partition("=")
            if not equals:
                continue
            if "%" in name or "+" in name:
                name = unquote_plus(name)
            if is_secret(name):
                parts[index] = part[: part.index("=") + 1] + REDACTED
                changed = True
        return "&".join(parts) if changed else query

    def _mentions_secret(self, query: str) -> bool:
        """Whether ``query`` may hold a secret parameter (``%``/``+`` names need decoding)."""
        lowered = query.lower()
        if "%" in lowered or "+" in lowered:
            return True
        if "-" in lowered:
            lowered = lowered.replace("-", "_")
        for needle in self._needles:  # noqa: SIM110 - a loop beats any() with a generator here
            if needle in lowered:
                return True
        return False

    def redact_text(self, text: str) -> str:
        """Mask URL passwords (``redis://user:****@host``) and secret query parameters in text."""
        if "://" in text:
            text = _URL_IN_TEXT.sub(_redact_url_match, text)
        if "=" in text and self._text_query is not None:
            text = self._text_query.sub(r"\g<1>" + REDACTED, text)
        return text


def _redact_url_match(match: re.Match[str]) -> str:
    return redact_url(match.group(0))


def _context_fields(context: RequestContext | None) -> dict[str, Any] | None:
    if context is None:
        return None
    fields: dict[str, Any] = {
        "request_id": context.request_id,
        "trace_id": context.trace_id,
        "span_id": context.span_id,
    }
    if context.route is not None:
        fields["route"] = context.route
    if context.principal is not None:
        fields["principal"] = context.principal
    return fields


def _format_exception(exc_info: Any) -> str:
    return "".join(traceback.format_exception(*exc_info)).rstrip("\n")


class StructuredFormatter(logging.Formatter):
    """Base of bastion's formatters: a record becomes fields, the fields become one line.

    Usable as an ordinary ``logging.Formatter`` on a handler of your own, too: the request
    context is then read when the record is formatted.

    Args:
        service_name: written as ``service`` on every line (omitted when empty).
        redact: names whose values are masked (default ``DEFAULT_REDACTED``).
    """

    def __init__(self, *, service_name: str = "", redact: Iterable[str] = DEFAULT_REDACTED) -> None:
        super().__init__()
        self.service_name = service_name
        self.redactor = Redactor(redact)
        self._second: tuple[int, str] = (-1, "")
        self._millisecond: tuple[int, str] = (-1, "")

    def format(self, record: logging.LogRecord) -> str:
        """The record as one line (plus traceback lines, for the console)."""
        return self.render(self.fields(record))

    def fields(self, record: logging.LogRecord) -> dict[str, Any]:
        """The record as data: core fields, request context, extras, exception (redacted)."""
        redactor = self.redactor
        data: dict[str, Any] = {
            "time": record.created,
            "level": record.levelname,
            "logger": record.name,
            "message": redactor.redact_text(record.getMessage()),
        }
        attributes = record.__dict__
        context = attributes.get(_CONTEXT_ATTR, _UNSET)
        if context is _UNSET:
            context = _context_fields(_current.get())
        if context:
            data.update(context)
        is_secret = redactor.is_secret
        for key, value in attributes.items():
            if key in _RECORD_ATTRS:
                continue
            name = f"extra_{key}" if key in _CORE_SET else key
            data[name] = REDACTED if is_secret(key) else redactor.redact(value)
        exc_info = record.exc_info
        if exc_info and exc_info[0] is not None:
            data["exc_type"] = exc_info[0].__name__
            data["exc"] = redactor.redact_text(record.exc_text or _format_exception(exc_info))
        elif record.exc_text:
            data["exc"] = redactor.redact_text(record.exc_text)
        if record.stack_info:
            data["stack"] = self.formatStack(record.stack_info)
        return data

    def render(self, fields: Mapping[str, Any]) -> str:
        """One line for ``fields`` (``time`` in epoch seconds, ``level``, ``logger``, ...)."""
        raise NotImplementedError

    def render_access(self, entry: _AccessEntry) -> str:
        """One access line from what ``AccessLog.record`` queued."""
        return self.render(_access_fields(entry))

    def format_timestamp(self, timestamp: float) -> str:
        """RFC 3339 UTC with milliseconds: ``2026-11-22T18:30:00.125Z``."""
        milliseconds = int(timestamp * 1000)
        cached_ms, text = self._millisecond
        if cached_ms == milliseconds:  # under load, many lines share a millisecond
            return text
        seconds, fraction = divmod(milliseconds, 1000)
        cached_second, prefix = self._second
        if cached_second != seconds:
            prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
            self._second = (seconds, prefix)  # one tuple: consistent if two threads format
        text = f"{prefix}.{fraction:03d}Z"
        self._millisecond = (milliseconds, text)
        return text


class JsonFormatter(StructuredFormatter):
    """One JSON object per line (orjson): what log pipelines ingest.

    Fields, in order: ``time``, ``level``, ``logger``, ``message``, ``service``; inside a request
    ``request_id``, ``trace_id``, ``span_id``, and ``route`` and ``principal`` when known; then
    the record's ``extra=`` fields; then ``exc_type`` and ``exc`` (the traceback) for exceptions.
    Values JSON cannot hold are written as ``str(value)``; dataclasses and pydantic models as
    objects, masked by field name.
    """

    def render(self, fields: Mapping[str, Any]) -> str:
        # Placeholders fix the order of the core fields; update() keeps a key where it is.
        data: dict[str, Any] = (
            {"time": None, "level": None, "logger": None, "message": None, "service": service}
            if (service := self.service_name)
            else {"time": None}
        )
        data.update(fields)
        data["time"] = self.format_timestamp(fields["time"])
        try:
            return orjson.dumps(data, default=self._default, option=_JSON_OPTIONS).decode()
        except (TypeError, orjson.JSONEncodeError):
            # An integer beyond 64 bits, a cycle through an object: write each field that cannot
            # be encoded as text rather than lose the line.
            return orjson.dumps(
                {key: self._encodable(value) for key, value in data.items()},
                default=self._default,
                option=_JSON_OPTIONS,
            ).decode()

    def render_access(self, entry: _AccessEntry) -> str:
        """The access line built in one dict, in its final order: it is written per request,
        so it skips the generic path's placeholder dict and merge."""
        data = _access_fields(entry, self.format_timestamp(entry[0]), self.service_name)
        try:
            # Every key is a string: no OPT_NON_STR_KEYS, which costs a third of the encoding.
            return orjson.dumps(data).decode()
        except (TypeError, orjson.JSONEncodeError):  # a principal object JSON cannot hold
            return self.render(_access_fields(entry))

    def _default(self, value: Any) -> Any:
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return self.redactor.redact(
                {field.name: getattr(value, field.name) for field in dataclasses.fields(value)}
            )
        model_dump = getattr(value, "model_dump", None)
        if callable(model_dump) and not isinstance(value, type):
            with contextlib.suppress(Exception):  # not a pydantic model after all: str() below
                return self.redactor.redact(model_dump(mode="json"))
        try:
            return self.redactor.redact_text(str(value))
        except Exception:  # a broken __str__ must not cost the line
            return f"<unprintable {type(value).__name__}>"

    def _encodable(self, value: Any) -> Any:
        try:
            orjson.dumps(value, default=self._default, option=_JSON_OPTIONS)
        except (TypeError, orjson.JSONEncodeError):
            return self._default(value)
        return value


# Plain console values need no quotes; anything else is written as a JSON string.
_PLAIN_VALUE = re.compile(r"[^\s\"'=\\\x00-\x1f\x7f]+").fullmatch
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
# Context fields too long for a terminal, and access fields its message already shows.
_CONSOLE_HIDDEN = frozenset(("trace_id", "span_id", *_TAIL))
_CONSOLE_HIDDEN_ACCESS = _CONSOLE_HIDDEN | {"method", "route", "status", "user_agent"}


def _escape_control(match: re.Match[str]) -> str:
    return f"\\x{ord(match.group(0)):02x}"


class ConsoleFormatter(StructuredFormatter):
    """Readable, aligned lines for a terminal: time, level, logger, message, ``key=value`` pairs.

    ``request_id``, ``route``, ``principal`` and the ``extra=`` fields follow the message; a
    traceback follows on the next lines, indented. Continuation lines of a message are indented
    and control characters escaped, so no logged text can pass for a line of its own.
    """

    def render(self, fields: Mapping[str, Any]) -> str:
        message = str(fields["message"])
        if _CONTROL.search(message):
            message = _CONTROL.sub(_escape_control, message)
        if "\n" in message:
            message = message.replace("\n", "\n    ")
        logger = fields["logger"]
        hidden = _CONSOLE_HIDDEN_ACCESS if logger == ACCESS_LOGGER else _CONSOLE_HIDDEN
        pairs = [
            f"{key}={_console_value(value)}"
            for key, value in fields.items()
            if key not in _CORE_SET and key not in hidden and value is not None
        ]
        line = (
            f"{self.format_timestamp(fields['time'])} {fields['level']:<8} {logger:<16} {message}"
        )
        if pairs:
            line = f"{line}  {' '.join(pairs)}"
        for key in ("exc", "stack"):
            text = fields.get(key)
            if text:
                line += "\n    " + str(text).replace("\n", "\n    ")
        return line


def _console_value(value: Any) -> str:
    if isinstance(value, str):
        if _PLAIN_VALUE(value):
            return value
        return orjson.dumps(value).decode()
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    try:
        return orjson.dumps(value, default=str, option=_JSON_OPTIONS).decode()
    except (TypeError, orjson.JSONEncodeError):
        return orjson.dumps(str(value)).decode()


# An access line queued by AccessLog's fast path: (time, level, context, raw_path, query_string,
# headers, duration_s, redactor). Turned into fields by the writer thread, off the event loop.
_AccessEntry = tuple[float, str, RequestContext, Any, Any, Any, float, Redactor]


def _access_fields(entry: _AccessEntry, when: Any = None, service: str = "") -> dict[str, Any]:
    """The fields of an access line, in their final order: the one builder of access lines.

    ``when`` replaces the entry's epoch seconds (the JSON fast path passes the formatted time);
    ``service`` is included when not empty.
    """
    timestamp, level, context, raw_path, query, headers, duration_s, redactor = entry
    path = raw_path.decode("latin-1") if raw_path else context.path
    if "://" in path:  # a URL inside the path (a proxy route) may carry a password
        path = redactor.redact_text(path)
    status = context.status
    route = context.route
    user_agent = None
    for key, value in headers or ():
        if key == b"user-agent":
            user_agent = value.decode("latin-1")
            break
    data = {
        "time": timestamp if when is None else when,
        "level": level,
        "logger": ACCESS_LOGGER,
        "message": f"{context.method} {route or path} {status if status is not None else '-'}",
        "service": service,
        "request_id": context.request_id,
        "trace_id": context.trace_id,
        # Only a span that exists: minting an id here would cost a system call per request.
        "span_id": context._span_id,
        "route": route,
        "principal": context.principal,
        "method": context.method,
        "path": f"{path}?{redactor.redact_query(query.decode('latin-1'))}" if query else path,
        "status": status,
        # To the microsecond: round(x, 3) on a float costs a correctly rounded decimal
        # conversion, several times the rest of this dict.
        "duration_ms": int(duration_s * 1_000_000 + 0.5) / 1000,
        "bytes": context.response_bytes,
        "client": context.client,
        "user_agent": user_agent,
    }
    if not service:
        del data["service"]
    decisions = context.decisions
    if decisions is not None:
        data["decisions"] = decisions
    return data


def note_decision(event: Event) -> None:
    """Add ``event``'s name to the decisions of the request being served (a ``Hooks`` hook).

    Subscribed to every event while the access log is on, so that the access line of a request
    says what bastion decided for it (``"decisions": ["rate_limited"]``); events published outside
    a request are ignored.
    """
    context = _current.get()
    if context is None:
        return
    name = event_name(type(event))
    decisions = context.decisions
    if decisions is None:
        context.decisions = [name]
    elif name not in decisions:
        decisions.append(name)


class AccessLog:
    """One line per finished HTTP request, on the ``bastion.access`` logger.

    Fields: ``method``, ``route`` (the template, or ``null``), ``path`` (raw, with the query
    string, secret parameters masked), ``status`` (``null`` if no response was sent),
    ``duration_ms``, ``bytes`` (body bytes sent), ``client``, ``user_agent`` and the request's
    ``request_id``, ``trace_id``, ``span_id`` and ``principal``; ``decisions`` when bastion
    decided something for the request (``["rate_limited"]``, ``["cache_hit"]``, see
    ``note_decision``). No other header is logged.
    The level is ``INFO``, or ``WARNING`` for a 5xx or no response at all (the error itself is
    logged by the error boundary at ``ERROR``; the access line does not page twice).

    Sampling keeps ``sample_rate`` of the successful (status < 400) requests faster than
    ``slow_request_s``; errors, slow requests and requests without a response are always logged.
    The decision is a hash (CRC-32) of the request id, so every worker, and every service that
    shares the id, takes the same one.

    With a ``sink``, lines go straight to it, without a ``LogRecord``: the level and ``disabled``
    flag of the ``bastion.access`` logger are honoured, its handlers and filters are not. Without
    one, lines go through the ``bastion.access`` logger with the fields as ``extra=``.

    Args:
        sink: bastion's sink, when bastion configured logging.
        sample_rate: fraction of fast, successful requests logged (0 to 1).
        slow_request_s: requests at least this slow are always logged.
        redact: query parameter names whose values are masked.
        logger: the logger to check and, without a sink, to log to (default ``bastion.access``).
        clock: wall clock for the time of lines on the fast path.
    """

    __slots__ = (
        "_clock_time",
        "_logger",
        "_redactor",
        "_sampling",
        "_sink",
        "_threshold",
        "sample_rate",
        "slow_request_s",
    )

    def __init__(
        self,
        *,
        sink: LogSink | None = None,
        sample_rate: float = 1.0,
        slow_request_s: float = 1.0,
        redact: Iterable[str] = DEFAULT_REDACTED,
        logger: logging.Logger | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        if not 0.0 <= sample_rate <= 1.0:
            raise ConfigurationError(f"sample_rate must be between 0 and 1, not {sample_rate}")
        if slow_request_s <= 0:
            raise ConfigurationError(f"slow_request_s must be positive, not {slow_request_s}")
        self.sample_rate = sample_rate
        self.slow_request_s = slow_request_s
        self._sink = sink
        self._logger = logger if logger is not None else logging.getLogger(ACCESS_LOGGER)
        self._redactor = Redactor(redact)
        self._sampling = sample_rate < 1.0
        self._threshold = int(sample_rate * 2**32)
        self._clock_time = clock.time

    @property
    def sink(self) -> LogSink | None:
        """Where lines go directly, or ``None`` when they go through the stdlib logger."""
        return self._sink

    def sampled(self, request_id: str) -> bool:
        """Whether a fast, successful request with this id is kept at the sample rate."""
        return zlib.crc32(request_id.encode()) < self._threshold

    def record(self, context: RequestContext, scope: Scope, duration_s: float) -> None:
        """Log the finished request described by ``context`` (call once per request)."""
        status = context.status
        if status is None or status >= 500:
            level, level_name = logging.WARNING, "WARNING"
        else:
            level, level_name = logging.INFO, "INFO"
            if (
                self._sampling
                and status < 400
                and duration_s < self.slow_request_s
                and zlib.crc32(context.request_id.encode()) >= self._threshold
            ):
                return
        logger = self._logger
        if not logger.isEnabledFor(level):  # cached by the stdlib per level; checks `disabled`
            return
        # The path, headers and message are read by the writer thread on the fast path: the
        # request is over, so nothing changes them any more.
        entry = (
            self._clock_time(),
            level_name,
            context,
            scope.get("raw_path"),
            scope.get("query_string"),
            scope.get("headers"),
            duration_s,
            self._redactor,
        )
        sink = self._sink
        if sink is not None:
            # LogSink.put() inlined: this runs once per request.
            items = sink._items
            queued = len(items)
            if queued >= sink._capacity:
                sink._dropped += 1
            else:
                items.append(entry)
                if queued == sink._wake_at:
                    sink._wake.set()
            return
        fields = _access_fields(entry)
        message = fields.pop("message")
        del fields["time"], fields["level"], fields["logger"]
        logger.log(level, message, extra=fields)


def render_lines(
    items: deque[Any], formatter: StructuredFormatter, limit: int, markers: list[Any]
) -> tuple[list[str], int]:
    """Take up to ``limit`` lines' worth of queued items and render them: the writer's loop.

    Items are access entries (tuples), field dicts and ``LogRecord`` objects; ``Event`` markers
    (a ``flush()`` waiting) go to ``markers``, to be set once the lines before them are written.
    Returns the lines and how many items could not be rendered (lost, never the writer).
    """
    render_access, render, format_record = (
        formatter.render_access,
        formatter.render,
        formatter.format,
    )
    lines: list[str] = []
    lost = 0
    while items and len(lines) < limit:
        item = items.popleft()
        kind = type(item)
        try:
            if kind is tuple:
                lines.append(render_access(item))
            elif kind is dict:
                lines.append(render(item))
            elif kind is threading.Event:
                markers.append(item)
            else:
                lines.append(format_record(item))
        except Exception:  # a line that cannot be formatted is lost, never the writer
            lost += 1
    return lines, lost


def chunk_lines(lines: list[str], limit: int) -> list[tuple[str, int]]:
    """``lines`` as newline-terminated chunks of at most ``limit`` bytes (a longer line is a
    chunk of its own), each with its number of lines."""
    chunks: list[tuple[str, int]] = []
    chunk: list[str] = []
    size = 0
    for line in lines:
        length = (len(line) if line.isascii() else len(line.encode())) + 1
        if chunk and size + length > limit:
            chunks.append(("\n".join(chunk) + "\n", len(chunk)))
            chunk, size = [], 0
        chunk.append(line)
        size += length
    if chunk:
        chunks.append(("\n".join(chunk) + "\n", len(chunk)))
    return chunks
