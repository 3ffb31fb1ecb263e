"""Structured logs and the access log: formats, redaction, the non-blocking sink, configuration."""

from __future__ import annotations

import dataclasses
import io
import logging
import re
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest

from bastion._clock import ManualClock
from bastion.context import RequestContext, _current, new_id
from bastion.events import CacheMiss, RequestTimedOut, StoreDown
from bastion.exceptions import ConfigurationError
from bastion.observability.logs import (
    ACCESS_LOGGER,
    REDACTED,
    AccessLog,
    ConsoleFormatter,
    JsonFormatter,
    LoggingSetup,
    LogSink,
    Redactor,
    SinkHandler,
    configure_logging,
    note_decision,
)
from bastion.settings import LoggingSettings
from tests.asgi import http_scope

WATCHED_LOGGERS = ("", "bastion", ACCESS_LOGGER, "uvicorn", "uvicorn.error", "uvicorn.access")
RFC3339_MS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
SECRET = "s3cr3t-Value-42"


def logging_state() -> dict[str, tuple[Any, ...]]:
    """What a test could leave behind on the loggers bastion touches (pytest's own handlers,
    which it swaps for every test phase, aside)."""
    state = {}
    for name in WATCHED_LOGGERS:
        logger = logging.getLogger(name)
        handlers = [h for h in logger.handlers if not type(h).__module__.startswith("_pytest")]
        state[name] = (handlers, logger.level, logger.propagate, logger.disabled)
    return state


@pytest.fixture(autouse=True)
def _logging_left_as_found() -> Iterator[None]:
    """Every test leaves global logging exactly as it found it."""
    before = logging_state()
    yield
    assert before == logging_state()


@contextmanager
def configured(settings: LoggingSettings, stream: io.StringIO) -> Iterator[LoggingSetup]:
    """configure_logging for the duration of a block (closed even when the block fails)."""
    setup = configure_logging(settings, service_name="catalog", stream=stream)
    try:
        yield setup
    finally:
        setup.close()


@contextmanager
def in_request(context: RequestContext) -> Iterator[RequestContext]:
    """Run a block as if serving the request of ``context``."""
    token = _current.set(context)
    try:
        yield context
    finally:
        _current.reset(token)


@contextmanager
def logger_changed(name: str, **attributes: Any) -> Iterator[logging.Logger]:
    """Set attributes of a logger for the duration of a block."""
    logger = logging.getLogger(name)
    saved = {key: getattr(logger, key) for key in attributes}
    for key, value in attributes.items():
        setattr(logger, key, value)
    logger.manager._clear_cache()  # type: ignore[attr-defined]
    try:
        yield logger
    finally:
        for key, value in saved.items():
            setattr(logger, key, value)
        logger.manager._clear_cache()  # type: ignore[attr-defined]


def make_context(
    *, route: str | None = "/albums/{id}", status: int | None = 200, request_id: str | None = None
) -> RequestContext:
    """A request context as the pipeline builds it, the response already sent."""
    context = RequestContext(
        request_id or new_id(), new_id(), "GET", "/albums/7", route, "203.0.113.9"
    )
    context.status = status
    context.response_bytes = 512
    return context


def make_record(
    message: str = "hello world",
    *args: object,
    name: str = "app",
    level: int = logging.INFO,
    extra: dict[str, Any] | None = None,
    exc_info: Any = None,
) -> logging.LogRecord:
    """A record as ``logger.log(...)`` makes it."""
    return logging.getLogger(name).makeRecord(
        name, level, __file__, 1, message, args, exc_info, extra=extra
    )


def lines_of(text: str) -> list[dict[str, Any]]:
    """Every JSON line of ``text``, parsed."""
    return [orjson.loads(line) for line in text.splitlines()]


def started_sink(stream: io.StringIO, **options: Any) -> LogSink:
    """A running JSON sink on ``stream``."""
    sink = LogSink(JsonFormatter(service_name="catalog"), stream=stream, **options)
    sink.start()
    return sink


# --- formats ---------------------------------------------------------------------------------


def test_json_line_outside_a_request_has_the_core_fields_only() -> None:
    """Outside a request: time, level, logger, message and service, nothing else."""
    record = make_record()
    record.created = 1_700_000_000.125
    line = orjson.loads(JsonFormatter(service_name="catalog").format(record))
    assert {
        "time": "2023-11-14T22:13:20.125Z",
        "level": "INFO",
        "logger": "app",
        "message": "hello world",
        "service": "catalog",
    } == line
    assert ["time", "level", "logger", "message", "service"] == list(line)


def test_json_line_inside_a_request_carries_its_context() -> None:
    """Inside a request, the ids, the route and the principal of its context are fields."""
    context = make_context()
    context.principal = "key:reporting"
    with in_request(context):
        line = orjson.loads(JsonFormatter().format(make_record()))
    assert context.request_id == line["request_id"]
    assert context.trace_id == line["trace_id"]
    assert context.span_id == line["span_id"]
    assert "/albums/{id}" == line["route"]
    assert "key:reporting" == line["principal"]
    assert "service" not in line


def test_extra_fields_follow_and_never_replace_the_core_fields() -> None:
    """extra= fields are written as given; one named like a core field is renamed."""
    record = make_record(extra={"album_id": 7, "tags": ["a", "b"], "level": "nope"})
    line = orjson.loads(JsonFormatter().format(record))
    assert 7 == line["album_id"]
    assert ["a", "b"] == line["tags"]
    assert "INFO" == line["level"]
    assert "nope" == line["extra_level"]


def test_exceptions_are_logged_with_their_type_and_traceback() -> None:
    """exc_info adds exc_type and the formatted traceback."""
    try:
        raise KeyError("album")
    except KeyError:
        record = make_record(level=logging.ERROR, exc_info=sys.exc_info())
    line = orjson.loads(JsonFormatter().format(record))
    assert "KeyError" == line["exc_type"]
    assert line["exc"].startswith("Traceback (most recent call last):")
    assert line["exc"].endswith("KeyError: 'album'")


@dataclasses.dataclass
class Credentials:
    """A dataclass holding a secret, logged by mistake."""

    user: str
    password: str


def test_values_json_cannot_hold_are_written_as_text() -> None:
    """Objects, huge integers, sets and non-string keys never cost the line."""

    class Album:
        def __str__(self) -> str:
            return "Album(7)"

    class Broken:
        def __str__(self) -> str:
            raise RuntimeError("no")

    record = make_record(
        extra={
            "album": Album(),
            "huge": 2**80,
            "ids": {3},
            "by_id": {7: "x"},
            "broken": Broken(),
            "credentials": Credentials("ann", SECRET),
        }
    )
    text = JsonFormatter().format(record)
    line = orjson.loads(text)
    assert "Album(7)" == line["album"]
    assert str(2**80) == line["huge"]
    assert [3] == line["ids"]
    assert {"7": "x"} == line["by_id"]
    assert "<unprintable Broken>" == line["broken"]
    assert {"user": "ann", "password": REDACTED} == line["credentials"]
    assert SECRET not in text


def test_cycles_and_deep_nesting_are_cut_short() -> None:
    """A self-referencing extra is written up to a depth, then as "[...]"."""
    looped: dict[str, Any] = {}
    looped["again"] = looped
    text = JsonFormatter().format(make_record(extra={"looped": looped}))
    assert '"[...]"' in text


def test_pydantic_models_are_written_as_objects_and_masked() -> None:
    """A pydantic model extra becomes its JSON dump, secret fields masked."""
    from pydantic import BaseModel

    class Login(BaseModel):
        user: str
        password: str

    text = JsonFormatter().format(make_record(extra={"login": Login(user="ann", password=SECRET)}))
    assert {"user": "ann", "password": REDACTED} == orjson.loads(text)["login"]


def test_stack_info_is_a_field() -> None:
    """stack_info=True adds the formatted stack as "stack"."""
    record = make_record()
    record.stack_info = "Stack (most recent call last):\n  File x"
    line = orjson.loads(JsonFormatter().format(record))
    assert "Stack (most recent call last):\n  File x" == line["stack"]


def test_without_names_nothing_is_masked_but_url_passwords() -> None:
    """An empty redaction list masks no field or parameter; URL passwords stay masked."""
    redactor = Redactor([])
    assert "token=abc" == redactor.redact_query("token=abc")
    assert "x?token=abc redis://:****@h" == redactor.redact_text("x?token=abc redis://:pw@h")
    assert not redactor.is_secret("password")


def test_console_line_is_aligned_and_readable() -> None:
    """Console: time, padded level and logger, message, then key=value pairs."""
    context = make_context()
    record = make_record(
        extra={"album_id": 7, "title": "Kind of Blue", "cached": True, "tracks": [1, 2]}
    )
    record.created = 1_700_000_000.0
    with in_request(context):
        line = ConsoleFormatter().format(record)
    assert (
        f"2023-11-14T22:13:20.000Z INFO     app              hello world  "
        f"request_id={context.request_id} route=/albums/{{id}} album_id=7 "
        'title="Kind of Blue" cached=true tracks=[1,2]'
    ) == line


def test_console_tracebacks_follow_on_indented_lines() -> None:
    """The traceback comes after the line, every line of it indented."""
    try:
        raise ValueError("bad")
    except ValueError:
        record = make_record(level=logging.ERROR, exc_info=sys.exc_info())
    first, *rest = ConsoleFormatter().format(record).splitlines()
    assert first.endswith("hello world")
    assert "    Traceback (most recent call last):" == rest[0]
    assert "    ValueError: bad" == rest[-1]
    assert all(line.startswith("    ") for line in rest)


def test_console_text_cannot_forge_a_line() -> None:
    """Message continuation lines are indented; control characters are escaped."""
    record = make_record("%s", "x\n2023-11-14T00:00:00.000Z ERROR fake\x1b[31m")
    first, second = ConsoleFormatter().format(record).splitlines()
    assert first.endswith(" x")
    assert "    2023-11-14T00:00:00.000Z ERROR fake\\x1b[31m" == second


# --- redaction -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "secret"),
    [
        ("password", True),
        ("Password", True),
        ("X-API-KEY", True),
        ("x_api_key", True),
        ("Authorization", True),
        ("db_password", True),
        ("stripe-api-key", True),
        ("passwords_checked", False),
        ("token_count", False),
        ("title", False),
    ],
)
def test_secret_names_ignore_case_and_dash_versus_underscore(name: str, secret: bool) -> None:
    """A name is secret if it is, or ends with, a configured name (case, - and _ aside)."""
    assert secret == Redactor().is_secret(name)


def test_extra_fields_are_redacted_recursively() -> None:
    """Secrets are masked at any depth of dicts and lists in extra= fields."""
    record = make_record(
        extra={
            "password": SECRET,
            "request": {"headers": {"Authorization": f"Bearer {SECRET}", "Accept": "*/*"}},
            "attempts": [{"api_key": SECRET, "ok": False}],
        }
    )
    text = JsonFormatter().format(record)
    line = orjson.loads(text)
    assert REDACTED == line["password"]
    assert {"Authorization": REDACTED, "Accept": "*/*"} == line["request"]["headers"]
    assert [{"api_key": REDACTED, "ok": False}] == line["attempts"]
    assert SECRET not in text


def test_the_redacted_names_are_configurable() -> None:
    """Only the configured names are masked."""
    record = make_record(extra={"ssn": "123", "password": "pw"})
    line = orjson.loads(JsonFormatter(redact=["SSN"]).format(record))
    assert REDACTED == line["ssn"]
    assert "pw" == line["password"]


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("token=abc&x=1", f"token={REDACTED}&x=1"),
        ("x=1&Access-Token=abc", f"x=1&Access-Token={REDACTED}"),
        ("%74oken=abc", f"%74oken={REDACTED}"),
        ("page=2&sort=title", "page=2&sort=title"),
        ("token", "token"),
        ("", ""),
    ],
)
def test_query_strings_are_redacted(query: str, expected: str) -> None:
    """Secret query parameters keep their name and lose their value."""
    assert expected == Redactor().redact_query(query)


def test_urls_with_credentials_are_masked_in_messages() -> None:
    """A password in a URL and secret query parameters never reach the line."""
    record = make_record(
        "connecting to %s, then %s",
        f"redis://cache:{SECRET}@redis:6379/0",
        f"GET /albums?access_token={SECRET}&page=2",
    )
    line = orjson.loads(JsonFormatter().format(record))
    assert (
        "connecting to redis://cache:****@redis:6379/0, then "
        f"GET /albums?access_token={REDACTED}&page=2"
    ) == line["message"]


def test_urls_in_tracebacks_and_string_fields_are_masked() -> None:
    """Exception text and string extras get the same treatment as the message."""
    try:
        raise ConnectionError(f"cannot reach postgresql://app:{SECRET}@db/app")
    except ConnectionError:
        record = make_record(
            exc_info=sys.exc_info(), extra={"dsn": f"postgresql://app:{SECRET}@db/app"}
        )
    text = JsonFormatter().format(record)
    assert SECRET not in text
    assert "postgresql://app:****@db/app" == orjson.loads(text)["dsn"]


# --- the access log --------------------------------------------------------------------------


def access_lines(access_log: AccessLog, sink: LogSink) -> list[dict[str, Any]]:
    """The lines the sink wrote."""
    assert sink.flush()
    stream = sink._stream
    assert isinstance(stream, io.StringIO)
    return lines_of(stream.getvalue())


@pytest.fixture
def access_logger_at_info() -> Iterator[None]:
    """bastion.access enabled at INFO, as configure_logging leaves it."""
    with logger_changed(ACCESS_LOGGER, level=logging.INFO):
        yield


@pytest.mark.usefixtures("access_logger_at_info")
def test_access_line_has_the_documented_fields() -> None:
    """One JSON object with the request's fields, in a stable order."""
    stream = io.StringIO()
    sink = started_sink(stream)
    access_log = AccessLog(sink=sink, clock=ManualClock(wall_start=1_700_000_000.0))
    context = make_context()
    scope = http_scope(
        "/albums/7", query_string=b"page=2", headers=[(b"user-agent", b"curl/8.5.0")]
    )
    access_log.record(context, scope, 0.0123456)
    [line] = access_lines(access_log, sink)
    sink.close()
    assert {
        "time": "2023-11-14T22:13:20.000Z",
        "level": "INFO",
        "logger": "bastion.access",
        "message": "GET /albums/{id} 200",
        "service": "catalog",
        "request_id": context.request_id,
        "trace_id": context.trace_id,
        "span_id": None,  # no span exists for this request, and none is made up for the log
        "route": "/albums/{id}",
        "principal": None,
        "method": "GET",
        "path": "/albums/7?page=2",
        "status": 200,
        "duration_ms": 12.346,
        "bytes": 512,
        "client": "203.0.113.9",
        "user_agent": "curl/8.5.0",
    } == line
    assert list(line)[:5] == ["time", "level", "logger", "message", "service"]


@pytest.mark.usefixtures("access_logger_at_info")
def test_access_line_without_route_or_response() -> None:
    """No route: the raw path names the request; no response: status null, WARNING."""
    stream = io.StringIO()
    sink = started_sink(stream)
    access_log = AccessLog(sink=sink)
    context = make_context(route=None, status=None)
    access_log.record(context, http_scope("/nowhere"), 0.002)
    [line] = access_lines(access_log, sink)
    sink.close()
    assert "GET /nowhere -" == line["message"]
    assert "WARNING" == line["level"]
    assert line["route"] is None
    assert line["status"] is None


@pytest.mark.usefixtures("access_logger_at_info")
@pytest.mark.parametrize(("status", "level"), [(200, "INFO"), (404, "INFO"), (503, "WARNING")])
def test_access_line_level_follows_the_status(status: int, level: str) -> None:
    """INFO up to 4xx, WARNING for 5xx."""
    stream = io.StringIO()
    sink = started_sink(stream)
    AccessLog(sink=sink).record(make_context(status=status), http_scope(), 0.001)
    [line] = access_lines(AccessLog(sink=sink), sink)
    sink.close()
    assert level == line["level"]


@pytest.mark.parametrize("log_format", ["json", "console"])
def test_a_secret_header_never_reaches_any_line(log_format: str) -> None:
    """Authorization, Cookie and API-key values appear in no line, whatever is logged."""
    stream = io.StringIO()
    headers = [
        (b"authorization", f"Bearer {SECRET}".encode()),
        (b"cookie", f"session={SECRET}".encode()),
        (b"x-api-key", SECRET.encode()),
        (b"user-agent", b"curl/8.5.0"),
    ]
    scope = http_scope("/albums/7", headers=headers, query_string=f"token={SECRET}".encode())
    settings = LoggingSettings(format=log_format)
    with configured(settings, stream) as setup:
        context = make_context()
        with in_request(context):
            logging.getLogger("app").warning(
                "request headers", extra={"headers": {k.decode(): v.decode() for k, v in headers}}
            )
        assert setup.access_log is not None
        setup.access_log.record(context, scope, 0.01)
        assert setup.flush()
    output = stream.getvalue()
    assert 2 == len([line for line in output.splitlines() if "request_id" in line])
    assert SECRET not in output
    assert "curl/8.5.0" in output


@pytest.mark.usefixtures("access_logger_at_info")
def test_a_url_inside_the_path_loses_its_password() -> None:
    """A proxy-style path carrying a URL with credentials is masked like any URL."""
    stream = io.StringIO()
    sink = started_sink(stream)
    scope = http_scope("/fetch/http://ann:pw@example.com/x")
    AccessLog(sink=sink).record(make_context(route=None), scope, 0.001)
    [line] = access_lines(AccessLog(sink=sink), sink)
    sink.close()
    assert "/fetch/http://ann:****@example.com/x" == line["path"]


def test_sampling_is_deterministic_and_respects_the_rate() -> None:
    """Rate 0.25 logs about a quarter of fast successes, the same ones in every worker."""
    ids = [new_id() for _ in range(4000)]
    worker_a = AccessLog(sample_rate=0.25)
    worker_b = AccessLog(sample_rate=0.25)
    decisions = [worker_a.sampled(request_id) for request_id in ids]
    assert decisions == [worker_b.sampled(request_id) for request_id in ids]
    assert 0.22 < sum(decisions) / len(ids) < 0.28

    sink = LogSink(JsonFormatter(), stream=io.StringIO(), queue_size=10_000)  # not started
    access_log = AccessLog(sink=sink, sample_rate=0.25)
    with logger_changed(ACCESS_LOGGER, level=logging.INFO):
        for request_id in ids:
            access_log.record(make_context(request_id=request_id), http_scope(), 0.01)
    assert sum(decisions) == sink.pending
    sink.close()


@pytest.mark.usefixtures("access_logger_at_info")
@pytest.mark.parametrize(
    ("status", "duration_s"), [(404, 0.01), (500, 0.01), (None, 0.01), (200, 1.0), (200, 7.5)]
)
def test_errors_slow_requests_and_missing_responses_are_always_logged(
    status: int | None, duration_s: float
) -> None:
    """Even at rate 0: 4xx, 5xx, no response, and requests at least slow_request_s long."""
    sink = LogSink(JsonFormatter(), stream=io.StringIO())  # not started: count what is queued
    access_log = AccessLog(sink=sink, sample_rate=0.0, slow_request_s=1.0)
    access_log.record(make_context(status=status), http_scope(), duration_s)
    access_log.record(make_context(status=200), http_scope(), 0.01)
    assert 1 == sink.pending
    sink.close()


@pytest.mark.parametrize(
    ("attributes", "expected"),
    [
        ({"level": logging.INFO}, 2),
        ({"level": logging.WARNING}, 1),
        ({"level": logging.INFO, "disabled": True}, 0),
    ],
)
def test_the_access_logger_level_and_disabled_flag_are_honoured(
    attributes: dict[str, Any], expected: int
) -> None:
    """The fast path checks bastion.access like the stdlib would."""
    sink = LogSink(JsonFormatter(), stream=io.StringIO())
    access_log = AccessLog(sink=sink)
    with logger_changed(ACCESS_LOGGER, **attributes):
        access_log.record(make_context(status=200), http_scope(), 0.01)
        access_log.record(make_context(status=500), http_scope(), 0.01)
    assert expected == sink.pending
    sink.close()


def test_invalid_access_log_options_are_refused() -> None:
    """A rate outside [0, 1] or a non-positive slow threshold is a ConfigurationError."""
    with pytest.raises(ConfigurationError, match="sample_rate"):
        AccessLog(sample_rate=1.5)
    with pytest.raises(ConfigurationError, match="slow_request_s"):
        AccessLog(slow_request_s=0)


# --- the sink --------------------------------------------------------------------------------


class BlockingStream(io.StringIO):
    """A stream whose writes wait until released: a disk or pipe that cannot keep up."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = threading.Event()
        self.release = threading.Event()

    def write(self, text: str) -> int:
        self.entered.set()
        assert self.release.wait(10), "never released"
        return super().write(text)


def test_a_full_queue_drops_lines_instead_of_blocking() -> None:
    """While the writer is stuck, put() returns at once; drops are counted, then reported."""
    stream = BlockingStream()
    sink = LogSink(
        JsonFormatter(), stream=stream, queue_size=4, flush_interval_s=0.01, clock=ManualClock()
    )
    sink.start()
    assert sink.put(make_record("first"))
    assert stream.entered.wait(5)  # the writer is now blocked inside write()
    accepted = [sink.put(make_record("line %d", n)) for n in range(14)]
    assert [True] * 4 + [False] * 10 == accepted
    assert 10 == sink.dropped

    stream.release.set()
    assert sink.flush()
    lines = lines_of(stream.getvalue())
    assert ["first", "line 0", "line 1", "line 2", "line 3"] == [x["message"] for x in lines[:5]]
    assert {
        "time": "2023-11-14T22:13:20.000Z",
        "level": "WARNING",
        "logger": "bastion.logs",
        "message": "dropped 10 log lines: the log queue was full or writing failed",
        "dropped": 10,
    } == lines[5]
    assert 6 == len(lines)
    sink.close()


def test_close_writes_everything_queued_and_is_idempotent() -> None:
    """Nothing queued before close() is lost; a second close() does nothing."""
    stream = io.StringIO()
    sink = started_sink(stream, flush_interval_s=60.0, queue_size=5_000)
    for n in range(2_000):
        assert sink.put(make_record("line %d", n))
    sink.close()
    sink.close()
    messages = [x["message"] for x in lines_of(stream.getvalue())]
    assert [f"line {n}" for n in range(2_000)] == messages
    assert not sink.put(make_record())
    assert sink.closed


class RecordingStream(io.StringIO):
    """A stream that remembers each write and signals the first one."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[str] = []
        self.written = threading.Event()

    def write(self, text: str) -> int:
        self.writes.append(text)
        self.written.set()
        return super().write(text)


class FailingStream(io.StringIO):
    """A stream whose every write fails, like a closed pipe."""

    def write(self, text: str) -> int:
        raise BrokenPipeError("closed")


def test_a_failing_stream_costs_lines_not_the_writer() -> None:
    """Lines that cannot be written are counted as dropped; the writer keeps running."""
    sink = LogSink(JsonFormatter(), stream=FailingStream())
    sink.start()
    for _ in range(3):
        sink.put(make_record())
    assert sink.flush()
    assert sink.flush()
    assert 3 == sink.dropped
    sink.close()


def test_dicts_of_fields_are_written_as_given() -> None:
    """put() also takes ready-made fields: time in epoch seconds, level, logger, message."""
    stream = io.StringIO()
    sink = LogSink(JsonFormatter(), stream=stream)
    fields = {"time": 1_700_000_000.0, "level": "INFO", "logger": "jobs", "message": "done"}
    sink.put({**fields, "job": 7})
    sink.close()
    [line] = lines_of(stream.getvalue())
    assert {**fields, "time": "2023-11-14T22:13:20.000Z", "job": 7} == line


def test_a_lone_line_is_written_without_a_flush() -> None:
    """The writer's timer writes a line within flush_interval_s, with no flush() asked for."""
    stream = RecordingStream()
    sink = started_sink(stream, flush_interval_s=0.05)
    sink.put(make_record())
    assert stream.written.wait(5)
    assert ["hello world"] == [x["message"] for x in lines_of(stream.getvalue())]
    sink.close()


def test_writes_are_whole_lines_of_at_most_pipe_buf_bytes() -> None:
    """Every write ends a line and stays within 4 KiB, so workers sharing a pipe never
    interleave mid-line."""
    stream = RecordingStream()
    sink = LogSink(JsonFormatter(), stream=stream)
    for n in range(300):
        sink.put(make_record("line %d %s", n, "é" * (n % 7) * 20))
    sink.close()
    assert 300 == len(stream.getvalue().splitlines())
    assert len(stream.writes) > 1
    assert all(text.endswith("\n") for text in stream.writes)
    assert all(len(text.encode()) <= 4096 for text in stream.writes)


def test_the_handler_flush_writes_what_is_queued() -> None:
    """SinkHandler.flush(), which logging.shutdown() calls at exit, waits for the writer."""
    stream = io.StringIO()
    sink = started_sink(stream, flush_interval_s=60.0)
    handler = SinkHandler(sink)
    handler.handle(make_record())
    handler.flush()
    assert ["hello world"] == [x["message"] for x in lines_of(stream.getvalue())]
    handler.close()
    sink.close()


def test_a_sink_never_started_writes_its_queue_on_close() -> None:
    """close() without start() still writes what was queued."""
    stream = io.StringIO()
    sink = LogSink(JsonFormatter(), stream=stream)
    sink.put(make_record())
    sink.close()
    assert ["hello world"] == [x["message"] for x in lines_of(stream.getvalue())]


def test_a_line_that_cannot_be_formatted_is_counted_not_fatal() -> None:
    """A broken record is lost and counted; the writer goes on with the next line."""
    stream = io.StringIO()
    sink = started_sink(stream, clock=ManualClock())
    broken = make_record()
    broken.created = "not a time"  # type: ignore[assignment]
    sink.put(broken)
    sink.put(make_record("%s", "after"))
    assert sink.flush()
    sink.close()
    messages = [x["message"] for x in lines_of(stream.getvalue())]
    assert "after" == messages[0]
    assert messages[1].startswith("dropped 1 log lines")


def test_lines_go_to_a_file_appended_to(tmp_path: Path) -> None:
    """With a path, lines are appended to the file, which close() closes."""
    path = tmp_path / "app.log"
    path.write_text("kept\n")
    sink = LogSink(JsonFormatter(), path=path)
    sink.start()
    sink.put(make_record())
    sink.close()
    first, second = path.read_text().splitlines()
    assert "kept" == first
    assert "hello world" == orjson.loads(second)["message"]


def test_an_unwritable_file_is_a_configuration_error(tmp_path: Path) -> None:
    """A log file that cannot be opened fails at start, naming the file."""
    sink = LogSink(JsonFormatter(), path=tmp_path / "missing" / "app.log")
    with pytest.raises(ConfigurationError, match=r"app\.log"):
        sink.start()
    sink.close()


def test_invalid_sink_options_are_refused() -> None:
    """A non-positive queue or interval, or a stream and a path at once, are refused."""
    with pytest.raises(ConfigurationError, match="queue_size"):
        LogSink(JsonFormatter(), queue_size=0)
    with pytest.raises(ConfigurationError, match="flush_interval_s"):
        LogSink(JsonFormatter(), flush_interval_s=0)
    with pytest.raises(ConfigurationError, match="not both"):
        LogSink(JsonFormatter(), stream=io.StringIO(), path="app.log")


def test_the_handler_captures_the_request_on_the_logging_thread() -> None:
    """Context, message and arguments are fixed when logging, not when the writer runs."""
    stream = io.StringIO()
    sink = LogSink(JsonFormatter(), stream=stream)  # not started: the writer runs after
    handler = SinkHandler(sink)
    titles = ["Blue Train"]
    context = make_context()
    with in_request(context):
        handler.handle(make_record("titles: %s", titles))
        try:
            raise LookupError("gone")
        except LookupError:
            handler.handle(make_record("failed", level=logging.ERROR, exc_info=sys.exc_info()))
    titles.append("Giant Steps")
    sink.close()
    line, failure = lines_of(stream.getvalue())
    assert "titles: ['Blue Train']" == line["message"]
    assert context.request_id == line["request_id"]
    assert "LookupError" == failure["exc_type"]
    assert failure["exc"].endswith("LookupError: gone")


# --- configure_logging -----------------------------------------------------------------------


def test_configure_routes_all_logging_through_one_handler() -> None:
    """Root gets one SinkHandler at the configured level; app lines come out as JSON."""
    stream = io.StringIO()
    with configured(LoggingSettings(level="DEBUG"), stream) as setup:
        root = logging.getLogger()
        ours = [h for h in root.handlers if not type(h).__module__.startswith("_pytest")]
        assert 1 == len(ours)
        assert isinstance(ours[0], SinkHandler)
        assert logging.DEBUG == root.level
        logging.getLogger("app.db").debug("pool %s", "ready")
        assert setup.flush()
    [line] = lines_of(stream.getvalue())
    assert "pool ready" == line["message"]
    assert "catalog" == line["service"]
    assert RFC3339_MS.fullmatch(line["time"])


@pytest.mark.anyio
async def test_lines_logged_from_a_worker_thread_carry_the_request() -> None:
    """anyio.to_thread.run_sync copies the context, so its lines have the request's ids."""
    stream = io.StringIO()
    with configured(LoggingSettings(), stream) as setup:
        context = make_context()
        with in_request(context):
            await anyio.to_thread.run_sync(logging.getLogger("app").warning, "from a thread")
        assert setup.flush()
    [line] = lines_of(stream.getvalue())
    assert context.request_id == line["request_id"]


def test_a_level_set_on_the_access_logger_is_kept() -> None:
    """bastion.access at WARNING before startup: only failed requests get a line."""
    stream = io.StringIO()
    with (
        logger_changed(ACCESS_LOGGER, level=logging.WARNING),
        configured(LoggingSettings(), stream) as setup,
    ):
        assert setup.access_log is not None
        setup.access_log.record(make_context(status=200), http_scope(), 0.01)
        setup.access_log.record(make_context(status=502), http_scope(), 0.01)
        assert setup.flush()
    assert ["GET /albums/{id} 502"] == [x["message"] for x in lines_of(stream.getvalue())]


def test_configured_access_lines_bypass_handlers_of_the_access_logger() -> None:
    """With bastion's logging, access lines go straight to its sink, not to other handlers."""
    stream, other = io.StringIO(), io.StringIO()
    handler = logging.StreamHandler(other)
    with configured(LoggingSettings(), stream) as setup:
        logging.getLogger(ACCESS_LOGGER).addHandler(handler)
        try:
            assert setup.access_log is not None
            setup.access_log.record(make_context(), http_scope(), 0.01)
            assert setup.flush()
        finally:
            logging.getLogger(ACCESS_LOGGER).removeHandler(handler)
    assert 1 == len(stream.getvalue().splitlines())
    assert "" == other.getvalue()


@contextmanager
def uvicorn_logging() -> Iterator[io.StringIO]:
    """uvicorn's loggers as its LOGGING_CONFIG leaves them: own handlers, no propagation."""
    uvicorn_stream = io.StringIO()
    names = ("uvicorn", "uvicorn.access")
    loggers = [logging.getLogger(name) for name in names]
    handlers = [logging.StreamHandler(uvicorn_stream) for _ in names]
    saved = [(x.level, x.propagate) for x in loggers]
    for logger, handler in zip(loggers, handlers, strict=True):
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    try:
        yield uvicorn_stream
    finally:
        for logger, handler, (level, propagate) in zip(loggers, handlers, saved, strict=True):
            logger.removeHandler(handler)
            logger.setLevel(level)
            logger.propagate = propagate


def test_uvicorn_logs_are_taken_over_and_its_access_log_silenced() -> None:
    """uvicorn's lines use bastion's format; uvicorn.access is off; close() restores both."""
    stream = io.StringIO()
    with uvicorn_logging() as uvicorn_stream:
        uvicorn, access = logging.getLogger("uvicorn"), logging.getLogger("uvicorn.access")
        before = [(x.handlers[:], x.propagate) for x in (uvicorn, access)]
        with configured(LoggingSettings(), stream) as setup:
            assert [] == uvicorn.handlers
            assert uvicorn.propagate
            assert not access.hasHandlers()  # uvicorn then skips its access line entirely
            logging.getLogger("uvicorn.error").info(
                "Started server process [%d]", 42, extra={"color_message": "\x1b[1m42"}
            )
            access.info('%s - "%s %s HTTP/%s" %d', "1.2.3.4:5", "GET", "/", "1.1", 200)
            assert setup.flush()
        assert before == [(x.handlers[:], x.propagate) for x in (uvicorn, access)]
        assert "" == uvicorn_stream.getvalue()
    [line] = lines_of(stream.getvalue())
    assert {"uvicorn.error", "Started server process [42]"} == {line["logger"], line["message"]}
    assert "color_message" not in line


def test_with_the_access_log_off_uvicorn_access_lines_are_kept_and_redacted() -> None:
    """access_log=false: uvicorn's access lines go through bastion's format, query masked."""
    stream = io.StringIO()
    with uvicorn_logging(), configured(LoggingSettings(access_log=False), stream) as setup:
        assert setup.access_log is None
        logging.getLogger("uvicorn.access").info(
            '%s - "%s %s HTTP/%s" %d', "1.2.3.4:5", "GET", f"/?token={SECRET}", "1.1", 200
        )
        assert setup.flush()
    [line] = lines_of(stream.getvalue())
    assert f'1.2.3.4:5 - "GET /?token={REDACTED} HTTP/1.1" 200' == line["message"]


def test_configuring_twice_keeps_one_handler() -> None:
    """A second configure_logging replaces the first; closing both restores the original."""
    first_stream, second_stream = io.StringIO(), io.StringIO()
    first = configure_logging(LoggingSettings(), service_name="a", stream=first_stream)
    second = configure_logging(LoggingSettings(), service_name="b", stream=second_stream)
    try:
        sinks = [h for h in logging.getLogger().handlers if isinstance(h, SinkHandler)]
        assert [second.sink] == [h.sink for h in sinks]
        assert first.sink is not None
        assert first.sink.closed
        logging.getLogger("app").warning("once")
        assert second.flush()
    finally:
        second.close()
        first.close()
    assert "" == first_stream.getvalue()
    assert ["once"] == [x["message"] for x in lines_of(second_stream.getvalue())]


def test_the_access_log_does_not_depend_on_the_root_level() -> None:
    """With root at WARNING, access lines are still written (bastion.access is set to INFO)."""
    stream = io.StringIO()
    with configured(LoggingSettings(level="WARNING"), stream) as setup:
        assert setup.access_log is not None
        setup.access_log.record(make_context(), http_scope(), 0.01)
        logging.getLogger("app").info("not at WARNING")
        assert setup.flush()
    assert ["GET /albums/{id} 200"] == [x["message"] for x in lines_of(stream.getvalue())]


def test_configure_writes_to_the_configured_file(tmp_path: Path) -> None:
    """BASTION_LOGGING__FILE: lines go to the file, not the stream."""
    stream = io.StringIO()
    path = tmp_path / "app.log"
    with configured(LoggingSettings(file=path, format="console"), stream):
        logging.getLogger("app").warning("to the file")
    assert "" == stream.getvalue()
    assert path.read_text().rstrip("\n").endswith("to the file")


def test_configure_false_leaves_logging_alone(caplog: pytest.LogCaptureFixture) -> None:
    """configure=false: no handler, no level change; access lines go to the stdlib logger."""
    caplog.set_level(logging.INFO, logger=ACCESS_LOGGER)
    before = logging_state()
    setup = configure_logging(
        LoggingSettings(configure=False), service_name="catalog", stream=io.StringIO()
    )
    assert before == logging_state()
    assert setup.sink is None
    assert not setup.configured
    assert setup.access_log is not None
    context = make_context()
    scope = http_scope(
        "/albums/7",
        headers=[(b"authorization", SECRET.encode())],
        query_string=f"token={SECRET}".encode(),
    )
    setup.access_log.record(context, scope, 0.25)
    setup.close()
    [record] = caplog.records
    fields = vars(record)
    assert ACCESS_LOGGER == record.name
    assert "GET /albums/{id} 200" == record.getMessage()
    assert context.request_id == fields["request_id"]
    assert 200 == fields["status"]
    assert 250.0 == fields["duration_ms"]
    assert f"/albums/7?token={REDACTED}" == fields["path"]
    assert SECRET not in repr(fields)


def test_decisions_are_noted_once_each_in_order_and_only_inside_a_request() -> None:
    """note_decision records event names on the current request's context, deduplicated;
    with no request being served it does nothing."""
    context = RequestContext("req-1", "a" * 32, "GET", "/albums/7", "/albums/{album_id}")
    note_decision(StoreDown(store="redis", error="refused", retry_in_s=1.0))  # outside: ignored
    token = _current.set(context)
    try:
        for event in (
            CacheMiss(route="/albums/{album_id}", method="GET", reason="miss", stored=True),
            RequestTimedOut(
                method="GET", route="/albums/{album_id}", timeout_s=1.0, response_started=False
            ),
            CacheMiss(route="/albums/{album_id}", method="GET", reason="stale", stored=False),
        ):
            note_decision(event)
    finally:
        _current.reset(token)
    assert ["cache_miss", "request_timed_out"] == context.decisions
