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
import logging
import os
import stat
import sys
import threading
from collections import deque
from pathlib import Path
from typing import IO, Any, TextIO

from bastion._clock import SYSTEM_CLOCK, Clock
from bastion.context import _current
from bastion.exceptions import ConfigurationError
from bastion.observability._lines import (
    _CONTEXT_ATTR,
    ACCESS_LOGGER,
    REDACTED,
    AccessLog,
    ConsoleFormatter,
    JsonFormatter,
    Redactor,
    StructuredFormatter,
    _AccessEntry,
    _context_fields,
    _format_exception,
    chunk_lines,
    note_decision,
    render_lines,
)
from bastion.settings import LoggingSettings

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
    "note_decision",
]

_SINK_LOGGER = "bastion.logs"
_UVICORN_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access")

_PIPE_BUF = 4096  # POSIX: writes up to this size to a pipe are never interleaved
_FILE_CHUNK = 64 * 1024


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
        markers: list[threading.Event] = []
        while items:  # more may arrive while a batch is written: they are written too
            lines, lost = render_lines(items, formatter, self._BATCH, markers)
            self._lost += lost
            self._write(lines)
        self._report_drops(formatter.render)
        for marker in markers:
            marker.set()

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
        self._write_chunk(render(warning) + "\n", 1, count=False)

    def _write(self, lines: list[str]) -> None:
        # Whole lines, at most PIPE_BUF bytes per write, each flushed: the workers of one server
        # often share a pipe (their stderr), and only writes that small are atomic on a pipe, so
        # larger ones could interleave two processes' lines mid-line.
        for text, count in chunk_lines(lines, self._chunk_bytes):
            self._write_chunk(text, count)

    def _write_chunk(self, text: str, lines: int, *, count: bool = True) -> None:
        stream = self._stream
        try:
            stream.write(text)  # type: ignore[union-attr]
            stream.flush()  # type: ignore[union-attr]
        except Exception:  # a closed or broken stream: count the lines, keep the writer alive
            if count:
                self._lost += lines


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
