"""Structured logs and the access log, written by a background thread.

Every log line is one JSON object (or one aligned line for a terminal) carrying the request's ids,
taken from the request context of the task that logged it. Lines are queued by the thread that
logs and written by a writer thread, so a slow disk or a full pipe never blocks the event loop:
when the queue is full, lines are dropped and counted, and the count is logged once there is room.
Secrets are masked by name before a line is written: in ``extra=`` fields, in query strings and in
URLs with credentials.

FastAPI example, without ``Bastion`` (which does this in its lifespan)::

    from bastion.observability.logs import configure_logging
    from bastion.settings import LoggingSettings

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        setup = configure_logging(LoggingSettings(format="json"), service_name="catalog")
        try:
            yield
        finally:
            setup.close()  # writes what is queued, puts the previous logging setup back

The module is called ``logs`` so that it never shadows the standard library's ``logging``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import re
import stat
import sys
import threading
import time
import traceback
import zlib
from collections import deque
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import IO, Any, TextIO
from urllib.parse import unquote_plus

import orjson

from bastion._clock import SYSTEM_CLOCK, Clock
from bastion._urls import redact_url
from bastion.context import RequestContext, _current
from bastion.events import Event, event_name
from bastion.exceptions import ConfigurationError
from bastion.settings import DEFAULT_REDACTED, LoggingSettings
from bastion.types import Scope

__all__ = [
    "ACCESS_LOGGER",
    "AccessLog",
    "ConsoleFormatter",
    "JsonFormatter",
    "LogSink",
    "LoggingSetup",
    "REDACTED",
    "Redactor",
    "SinkHandler",
    "StructuredFormatter",
    "configure_logging",
]

REDACTED = "[REDACTED]"
"""What a secret value is replaced with."""

ACCESS_LOGGER = "bastion.access"
"""Name of the logger the access log is written to."""

_SINK_LOGGER = "bastion.logs"
_UVICORN_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access")

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
_PIPE_BUF = 4096  # POSIX: writes up to this size to a pipe are never interleaved
_FILE_CHUNK = 64 * 1024
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

    __slots__ = ("_cache", "_names", "_needles", "_suffixes", "_text_query")

    _CACHE_SIZE = 4096

    def __init__(self, names: Iterable[str] = DEFAULT_REDACTED) -> None:
        normalized = sorted({_normalize(name) for name in names if name.strip()})
        self._names = frozenset(normalized)
        self._suffixes = tuple("_" + name for name in normalized)
        self._cache: dict[str, bool] = {}
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
        """
        if not query or not self._mentions_secret(query):
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
        timestamp, level, context, raw_path, query, headers, duration_s, redactor = entry
        path = raw_path.decode("latin-1") if raw_path else context.path
        if "://" in path:  # a URL inside the path (a proxy route) may carry a password
            path = redactor.redact_text(path)
        if query:
            path = f"{path}?{redactor.redact_query(query.decode('latin-1'))}"
        status, route = context.status, context.route
        user_agent = None
        for key, value in headers or ():
            if key == b"user-agent":
                user_agent = value.decode("latin-1")
                break
        data = {
            "time": self.format_timestamp(timestamp),
            "level": level,
            "logger": ACCESS_LOGGER,
            "message": f"{context.method} {route or path} {status if status is not None else '-'}",
            "service": self.service_name,
            "request_id": context.request_id,
            "trace_id": context.trace_id,
            "span_id": context._span_id,
            "route": route,
            "principal": context.principal,
            "method": context.method,
            "path": path,
            "status": status,
            # To the microsecond: round(x, 3) on a float costs a correctly rounded decimal
            # conversion, several times the rest of this dict.
            "duration_ms": int(duration_s * 1_000_000 + 0.5) / 1000,
            "bytes": context.response_bytes,
            "client": context.client,
            "user_agent": user_agent,
        }
        if not self.service_name:
            del data["service"]
        decisions = context.decisions
        if decisions is not None:
            data["decisions"] = decisions
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


class LogSink:
    """A bounded queue of log lines and the thread that writes them.

    The thread that logs only appends to a ``deque``: no lock, no formatting, no I/O. The writer
    thread wakes every ``flush_interval_s`` (or as soon as a backlog builds up), formats what is
    queued and writes it in flushed writes of whole lines, at most 4 KiB each (``PIPE_BUF``: the
    size up to which writes of several processes to one pipe never interleave). When
    ``queue_size`` lines are waiting, further lines are dropped, never waited for; ``dropped``
    counts them, and once the writer has caught up it writes a warning line saying how many were
    lost.

    Args:
        formatter: turns queued records and field dicts into lines.
        stream: a text stream to write to (default ``sys.stderr``); never closed by the sink.
        path: a file to append to instead (opened by ``start()``, closed by ``close()``).
        queue_size: most lines waiting to be written.
        flush_interval_s: longest a line waits before it is written.
        clock: wall clock for the time of the sink's own warning lines.
    """

    __slots__ = (
        "_capacity",
        "_chunk_bytes",
        "_closed",
        "_dropped",
        "_interval",
        "_items",
        "_lost",
        "_owns_stream",
        "_path",
        "_reported",
        "_stream",
        "_wake",
        "_wake_at",
        "_writer",
        "clock",
        "formatter",
        "queue_size",
    )

    _BATCH = 512

    def __init__(
        self,
        formatter: StructuredFormatter,
        *,
        stream: IO[str] | None = None,
        path: str | Path | None = None,
        queue_size: int = 10_000,
        flush_interval_s: float = 0.1,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        if queue_size <= 0:
            raise ConfigurationError(f"queue_size must be positive, not {queue_size}")
        if flush_interval_s <= 0:
            raise ConfigurationError(f"flush_interval_s must be positive, not {flush_interval_s}")
        if stream is not None and path is not None:
            raise ConfigurationError("a log sink writes to a stream or to a file, not both")
        self.formatter = formatter
        self.queue_size = queue_size
        self.clock = clock
        self._capacity = queue_size
        # A burst that fills a quarter of the queue wakes the writer early, so bursts are written
        # while there is still room; otherwise the writer's timer is the only wake-up, which keeps
        # the caller's cost at one deque append.
        self._wake_at = min(queue_size // 4, 256)
        self._interval = flush_interval_s
        self._items: deque[logging.LogRecord | dict[str, Any] | _AccessEntry | threading.Event]
        self._items = deque()
        self._wake = threading.Event()
        self._writer: threading.Thread | None = None
        self._stream: IO[str] | None = stream
        self._path = Path(path) if path is not None else None
        self._owns_stream = False
        self._closed = False
        self._dropped = 0  # incremented by logging threads only
        self._lost = 0  # incremented by the writer only (lines it could not format or write)
        self._reported = 0  # written by the writer only
        self._chunk_bytes = _PIPE_BUF

    @property
    def dropped(self) -> int:
        """Lines lost so far: dropped because the queue was full, or failed to format or write."""
        return self._dropped + self._lost

    @property
    def pending(self) -> int:
        """Lines queued and not yet written."""
        return len(self._items)

    @property
    def closed(self) -> bool:
        """Whether ``close()`` was called; lines put afterwards are dropped."""
        return self._closed

    def start(self) -> None:
        """Open the file (if any) and start the writer thread. Idempotent.

        Raises:
            ConfigurationError: the log file cannot be opened for appending.
        """
        if self._writer is not None or self._closed:
            return
        self._open()
        self._writer = threading.Thread(target=self._run, name="bastion-log-writer", daemon=True)
        self._writer.start()

    def put(self, item: logging.LogRecord | dict[str, Any]) -> bool:
        """Queue a record or a dict of fields; ``False`` (and counted) when the queue is full.

        Never blocks. A record must already carry what the writer thread cannot know: use
        ``SinkHandler``, which captures the request context before queueing.
        """
        items = self._items
        queued = len(items)
        if queued >= self._capacity:
            self._dropped += 1
            return False
        items.append(item)
        if queued == self._wake_at:
            self._wake.set()
        return True

    def flush(self, timeout_s: float = 5.0) -> bool:
        """Wait until every line queued so far is written and the stream flushed.

        Returns ``False`` if that did not happen within ``timeout_s`` (or the sink is not running).
        """
        thread = self._writer
        if thread is None or not thread.is_alive() or self._closed:
            return False
        done = threading.Event()
        self._items.append(done)  # beyond the capacity on purpose: a marker is not a line
        self._wake.set()
        return done.wait(timeout_s)

    def close(self, timeout_s: float = 5.0) -> None:
        """Write everything queued, stop the writer thread, close the file it opened. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._capacity = 0  # from now on put() drops
        thread = self._writer
        if thread is not None:
            self._wake.set()
            thread.join(timeout_s)
        else:
            # Never started: write what was queued from here, so nothing is silently lost.
            with contextlib.suppress(ConfigurationError):
                self._open()
                self._drain()
            self._finish()

    def _open(self) -> None:
        if self._path is not None:
            if self._stream is None:
                try:
                    self._stream = self._path.open("a", encoding="utf-8")
                except OSError as exc:
                    raise ConfigurationError(
                        f"cannot open the log file {str(self._path)!r}: {exc}"
                    ) from exc
                self._owns_stream = True
        elif self._stream is None:
            self._stream = sys.stderr
        self._chunk_bytes = _chunk_bytes(self._stream)

    def _run(self) -> None:
        wake, items, interval = self._wake, self._items, self._interval
        while True:
            wake.wait(interval)
            wake.clear()
            self._drain()
            if self._closed and not items:
                break
        self._finish()

    def _finish(self) -> None:
        stream = self._stream
        if stream is None:
            return
        if self._owns_stream:
            with contextlib.suppress(OSError):
                stream.close()
        else:
            with contextlib.suppress(Exception):  # a broken stream must not break shutdown
                stream.flush()

    def _drain(self) -> None:
        items, formatter = self._items, self.formatter
        render, format_record = formatter.render, formatter.format
        render_access = formatter.render_access
        while True:
            lines: list[str] = []
            markers: list[threading.Event] = []
            while items:
                item = items.popleft()
                kind = type(item)
                if kind is threading.Event:
                    markers.append(item)  # type: ignore[arg-type]
                    continue
                try:
                    if kind is tuple:
                        line = render_access(item)  # type: ignore[arg-type]
                    elif kind is dict:
                        line = render(item)  # type: ignore[arg-type]
                    else:
                        line = format_record(item)  # type: ignore[arg-type]
                except Exception:  # a line that cannot be formatted is lost, never the writer
                    self._lost += 1
                    continue
                lines.append(line)
                if len(lines) >= self._BATCH:
                    self._write(lines)
                    lines = []
            self._write(lines)
            caught_up = not items  # else more lines came in while these were written
            if caught_up:
                self._report_drops(render)
            for marker in markers:
                marker.set()
            if caught_up:
                return

    def _report_drops(self, render: Any) -> None:
        # Once the queue is empty again, say how many lines were lost since the last report.
        missed = self._dropped + self._lost - self._reported
        if missed <= 0:
            return
        self._reported += missed
        warning = {
            "time": self.clock.time(),
            "level": "WARNING",
            "logger": _SINK_LOGGER,
            "message": f"dropped {missed} log lines: the log queue was full or writing failed",
            "dropped": missed,
        }
        # Not counted if it fails too: a broken stream would otherwise add one lost line per
        # interval forever.
        self._write_chunk([render(warning)], count=False)

    def _write(self, lines: list[str]) -> None:
        # Whole lines, at most PIPE_BUF bytes per write, each flushed: the workers of one server
        # often share a pipe (their stderr), and only writes that small are atomic on a pipe, so
        # larger ones could interleave two processes' lines mid-line.
        chunk: list[str] = []
        size, limit = 0, self._chunk_bytes
        for line in lines:
            length = (len(line) if line.isascii() else len(line.encode())) + 1
            if chunk and size + length > limit:
                self._write_chunk(chunk)
                chunk, size = [], 0
            chunk.append(line)
            size += length
        if chunk:
            self._write_chunk(chunk)

    def _write_chunk(self, lines: list[str], *, count: bool = True) -> None:
        stream = self._stream
        try:
            stream.write("\n".join(lines) + "\n")  # type: ignore[union-attr]
            stream.flush()  # type: ignore[union-attr]
        except Exception:  # a closed or broken stream: count the lines, keep the writer alive
            if count:
                self._lost += len(lines)


def _chunk_bytes(stream: IO[str]) -> int:
    """Most bytes the sink writes at once to ``stream``.

    ``PIPE_BUF`` for pipes, terminals and anything unknown: the workers of one server often share
    their stderr pipe, and only writes that small never interleave. A regular file takes larger
    writes (appends to a file opened for appending land whole on Linux), and fewer writes cost
    less per line.
    """
    try:
        mode = os.fstat(stream.fileno()).st_mode
    except (AttributeError, OSError, ValueError):  # no descriptor: a StringIO, pytest's capture
        return _PIPE_BUF
    return _FILE_CHUNK if stat.S_ISREG(mode) else _PIPE_BUF


class SinkHandler(logging.Handler):
    """A logging handler that queues records on a ``LogSink``.

    ``emit`` runs on the thread that logs and does what only that thread can: it captures the
    request context (contextvars are invisible to the writer thread), merges the message with its
    arguments and renders the traceback (so the writer never calls into live application
    objects). Formatting and I/O happen on the writer thread.

    Args:
        sink: where records go; the handler does not own it (closing the handler keeps it open).
        level: the handler's level.
    """

    def __init__(self, sink: LogSink, level: int = logging.NOTSET) -> None:
        super().__init__(level)
        self.sink = sink
        self.setFormatter(sink.formatter)

    def emit(self, record: logging.LogRecord) -> None:
        """Capture what the writer cannot see, then queue the record (never blocks)."""
        try:
            attributes = record.__dict__
            if _CONTEXT_ATTR not in attributes:
                attributes[_CONTEXT_ATTR] = _context_fields(_current.get())
            if record.args or not isinstance(record.msg, str):
                record.msg = record.getMessage()
                record.args = None
            if record.exc_info and not record.exc_text:
                record.exc_text = _format_exception(record.exc_info)
            self.sink.put(record)
        except Exception:  # the stdlib contract: a handler reports its own errors, never raises
            self.handleError(record)

    def flush(self) -> None:
        """Wait until what is queued is written (``logging.shutdown`` calls this at exit)."""
        self.sink.flush()


def _access_fields(entry: _AccessEntry) -> dict[str, Any]:
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
    return {
        "time": timestamp,
        "level": level,
        "logger": ACCESS_LOGGER,
        "message": f"{context.method} {route or path} {status if status is not None else '-'}",
        "request_id": context.request_id,
        "trace_id": context.trace_id,
        # Only a span that exists: minting an id here would cost a system call per request.
        "span_id": context._span_id,
        "route": route,
        "principal": context.principal,
        "method": context.method,
        "path": f"{path}?{redactor.redact_query(query.decode('latin-1'))}" if query else path,
        "status": status,
        "duration_ms": int(duration_s * 1_000_000 + 0.5) / 1000,
        "bytes": context.response_bytes,
        "client": context.client,
        "user_agent": user_agent,
        **({"decisions": context.decisions} if context.decisions is not None else {}),
    }


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


class _LoggerState:
    """What configure_logging changes on one logger, to put back on close."""

    __slots__ = ("disabled", "handlers", "level", "logger", "propagate")

    def __init__(self, logger: logging.Logger) -> None:
        self.logger = logger
        self.handlers = list(logger.handlers)
        self.level = logger.level
        self.propagate = logger.propagate
        self.disabled = logger.disabled

    def restore(self, *, ours: logging.Handler | None = None) -> None:
        logger = self.logger
        for handler in list(logger.handlers):
            if handler is ours or handler not in self.handlers:
                logger.removeHandler(handler)
        for handler in self.handlers:
            logger.addHandler(handler)  # a no-op for a handler still in place
        logger.setLevel(self.level)
        logger.propagate = self.propagate
        logger.disabled = self.disabled


class LoggingSetup:
    """What ``configure_logging`` set up; ``close()`` undoes it.

    Attributes:
        sink: the writer of every line, or ``None`` when logging was left to you
            (``configure=False``).
        access_log: the access log to call once per finished request, or ``None`` when the
            access log is off.
        formatter: the formatter lines are written with, or ``None`` with ``configure=False``.
    """

    __slots__ = ("_closed", "_handler", "_saved", "access_log", "formatter", "sink")

    def __init__(
        self,
        *,
        sink: LogSink | None,
        access_log: AccessLog | None,
        formatter: StructuredFormatter | None = None,
        handler: SinkHandler | None = None,
        saved: list[_LoggerState] | None = None,
    ) -> None:
        self.sink = sink
        self.access_log = access_log
        self.formatter = formatter
        self._handler = handler
        self._saved = saved or []
        self._closed = False

    @property
    def configured(self) -> bool:
        """Whether bastion configured Python logging (and ``close()`` will restore it)."""
        return self.sink is not None

    def flush(self, timeout_s: float = 5.0) -> bool:
        """Wait until every line queued so far is written; ``False`` on timeout."""
        return self.sink.flush(timeout_s) if self.sink is not None else True

    def close(self) -> None:
        """Write what is queued, then restore the loggers as they were. Idempotent."""
        global _active
        if self._closed:
            return
        self._closed = True
        with _configure_lock:
            for state in reversed(self._saved):
                state.restore(ours=self._handler)
            if _active is self:
                _active = None
        if self.sink is not None:
            self.sink.close()
        if self._handler is not None:
            self._handler.close()


_active: LoggingSetup | None = None
_configure_lock = threading.Lock()


def _writes_to_console(handler: logging.Handler) -> bool:
    stream = getattr(handler, "stream", None)
    return isinstance(handler, logging.StreamHandler) and stream in (
        sys.stderr,
        sys.stdout,
        sys.__stderr__,
        sys.__stdout__,
    )


def configure_logging(
    settings: LoggingSettings, *, service_name: str, stream: TextIO | None = None
) -> LoggingSetup:
    """Route all Python logging, uvicorn's included, through one non-blocking sink.

    Installs a ``SinkHandler`` on the root logger in place of the handlers that write to the
    console (``basicConfig``'s, which would print every line twice, differently formatted);
    handlers that write elsewhere (a file, Sentry, pytest's ``caplog``) are kept. It sets the
    root level, and makes uvicorn's loggers propagate to it. With the access log
    on, ``uvicorn.access`` is silenced: bastion writes its own access line, so uvicorn's would
    repeat it. Calling it again first closes the previous setup, so there is only ever one
    handler. Call it from the app's lifespan startup: uvicorn applies its own logging
    configuration when the server starts, before the lifespan runs.

    With ``settings.configure`` off, nothing global changes: the returned setup has no sink and
    its access log writes through the ``bastion.access`` logger, to your handlers.

    Args:
        settings: the logging settings.
        service_name: written as ``service`` on every line.
        stream: where lines go when ``settings.file`` is not set (default ``sys.stderr``).

    Raises:
        ConfigurationError: the log file cannot be opened.
    """
    global _active
    if not settings.configure:
        access_log = None
        if settings.access_log:
            access_log = AccessLog(
                sample_rate=settings.access_sample_rate,
                slow_request_s=settings.slow_request_s,
                redact=settings.redact,
            )
        return LoggingSetup(sink=None, access_log=access_log)

    formatter_type = JsonFormatter if settings.format == "json" else ConsoleFormatter
    formatter = formatter_type(service_name=service_name, redact=settings.redact)
    if settings.file is not None:
        sink = LogSink(formatter, path=settings.file, queue_size=settings.queue_size)
    else:
        sink = LogSink(
            formatter,
            stream=stream if stream is not None else sys.stderr,
            queue_size=settings.queue_size,
        )
    sink.start()
    handler = SinkHandler(sink)
    access_log = None
    if settings.access_log:
        access_log = AccessLog(
            sink=sink,
            sample_rate=settings.access_sample_rate,
            slow_request_s=settings.slow_request_s,
            redact=settings.redact,
        )

    previous = _active
    if previous is not None:
        previous.close()
    with _configure_lock:
        root = logging.getLogger()
        access_logger = logging.getLogger(ACCESS_LOGGER)
        uvicorn_loggers = [logging.getLogger(name) for name in _UVICORN_LOGGERS]
        saved = [_LoggerState(logger) for logger in (root, access_logger, *uvicorn_loggers)]

        for existing in list(root.handlers):
            if _writes_to_console(existing):
                root.removeHandler(existing)
        root.addHandler(handler)
        root.setLevel(settings.level)
        if settings.access_log and access_logger.level == logging.NOTSET:
            # The access log has its own switch: a WARNING root level must not turn it off. A
            # level you set on bastion.access yourself is kept.
            access_logger.setLevel(logging.INFO)
        for logger in uvicorn_loggers:
            for existing in list(logger.handlers):
                logger.removeHandler(existing)
            logger.propagate = True
        if settings.access_log:
            # No handler anywhere up the chain: uvicorn sees hasHandlers() is false and skips
            # formatting its access line at all.
            uvicorn_loggers[-1].propagate = False
        setup = LoggingSetup(
            sink=sink, access_log=access_log, formatter=formatter, handler=handler, saved=saved
        )
        _active = setup
    return setup
