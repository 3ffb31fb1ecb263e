"""Problem+json for the errors Starlette and FastAPI answer themselves.

The framework turns ``HTTPException`` (404, 405, your own ``raise HTTPException(403)``) and
FastAPI's request validation errors into responses before the error boundary sees them. These
handlers give those responses the same RFC 9457 shape and request id as every other bastion
error. They replace only the framework's *default* handlers: a handler you registered stays.
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any

from bastion.context import get_context
from bastion.problem import PROBLEM_CONTENT_TYPE, problem_body

if TYPE_CHECKING:
    from starlette.requests import Request
    from starlette.responses import Response

__all__ = ["app_error_responder", "install_problem_handlers", "replace_server_error_middleware"]

# Statuses whose responses must not have a body (RFC 9110 §6.4.1).
_NO_BODY = frozenset({204, 205, 304})


def _members(request: Request) -> dict[str, Any]:
    context = get_context(request.scope)
    return {"request_id": context.request_id} if context is not None else {}


async def http_exception_problem(request: Request, exc: Exception) -> Response:
    """Render a Starlette/FastAPI ``HTTPException`` as problem+json, keeping its headers."""
    from starlette.exceptions import HTTPException
    from starlette.responses import Response

    if not isinstance(exc, HTTPException):  # registered for HTTPException only
        raise TypeError(f"expected an HTTPException, got {type(exc).__name__}")
    headers = dict(exc.headers or {})
    if exc.status_code in _NO_BODY:
        return Response(status_code=exc.status_code, headers=headers)
    members = _members(request)
    # Starlette types detail as str; FastAPI's HTTPException accepts any JSON value.
    raw_detail: Any = exc.detail
    detail: str | None = None
    if isinstance(raw_detail, str):
        detail = raw_detail
    elif raw_detail is not None:
        members["details"] = raw_detail  # structured details stay available, under their own name
    body = problem_body(exc.status_code, detail=detail, extensions=members)
    return Response(body, exc.status_code, headers=headers, media_type=PROBLEM_CONTENT_TYPE)


async def validation_problem(request: Request, exc: Exception) -> Response:
    """Render FastAPI's ``RequestValidationError`` as a 422 problem listing what is wrong.

    Each error keeps ``loc``, ``msg`` and ``type`` and drops ``input``: echoing the rejected
    input back can reflect secrets (a password field) or markup into the response.
    """
    from starlette.responses import Response

    raw: Any = getattr(exc, "errors", list)()
    errors = [
        {"loc": list(error.get("loc", ())), "msg": error.get("msg", ""), "type": error.get("type")}
        for error in raw
    ]
    members = _members(request)
    members["errors"] = errors
    body = problem_body(422, detail="The request is invalid.", extensions=members)
    return Response(body, 422, media_type=PROBLEM_CONTENT_TYPE)


def install_problem_handlers(app: Any) -> None:
    """Register the problem handlers on a Starlette or FastAPI ``app`` where defaults are in use."""
    from starlette.exceptions import HTTPException

    handlers: dict[Any, Any] = app.exception_handlers
    defaults: list[Any] = []
    validation_error: Any = None
    try:
        from fastapi import exception_handlers as fastapi_defaults
        from fastapi.exceptions import RequestValidationError
    except ImportError:
        pass
    else:
        defaults = [
            fastapi_defaults.http_exception_handler,
            fastapi_defaults.request_validation_exception_handler,
        ]
        validation_error = RequestValidationError

    if handlers.get(HTTPException) in (None, *defaults):
        app.add_exception_handler(HTTPException, http_exception_problem)
    if validation_error is not None and handlers.get(validation_error) in defaults:
        app.add_exception_handler(validation_error, validation_problem)


def replace_server_error_middleware(app: Any) -> None:
    """Let bastion's error boundary stand in for Starlette's ``ServerErrorMiddleware``.

    Starlette always wraps the whole app in ``ServerErrorMiddleware``, which wraps ``send`` on
    every request so that it can answer a plain-text 500. Under bastion the error boundary
    answers first, with problem+json or through the app's own 500 handler
    (``app_error_responder``), so that layer only costs time. It is dropped when the stack is
    built, unless the app runs with ``debug=True`` (then it stays, exactly as it was).
    """
    from starlette.middleware.errors import ServerErrorMiddleware

    build = app.build_middleware_stack

    def build_without_server_errors() -> Any:
        stack = build()
        if isinstance(stack, ServerErrorMiddleware) and not app.debug:
            return stack.app
        return stack

    app.build_middleware_stack = build_without_server_errors


def leave_server_spans_to_bastion(app: Any) -> bool:
    """Turn off FastAPI's own request spans; return whether there were any to turn off.

    Recent FastAPI versions trace every request natively (``FastAPI(telemetry={...})``) as soon
    as OpenTelemetry has a configured tracer provider, which bastion's tracing installs. Both
    would then record a SERVER span per request, in two different traces. With bastion's tracing
    on, its span is the one that shares its ids with the logs, so FastAPI's request spans (and
    the operation spans that FastAPI ties to them) are switched off, as
    ``FastAPI(telemetry={"tracing": False})`` would. FastAPI's metrics and logs settings are left
    as they are.
    """
    config = getattr(app, "_telemetry", None)
    if isinstance(config, dict) and config.get("tracing"):
        config["tracing"] = False
        return True
    return False


def app_error_responder(app: Any) -> Any:
    """An ``UnhandledResponder`` that answers with the app's own 500/``Exception`` handler.

    Starlette calls such a handler from ``ServerErrorMiddleware``, which bastion's boundary
    precedes; this keeps the handler working (a custom 500 page, reporting to an error tracker).
    The handler is looked up per error, so one registered after ``Bastion(app)`` counts too.
    """
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import Request

    async def respond(scope: Any, receive: Any, send: Any, exc: Exception) -> bool:
        handlers = app.exception_handlers
        handler = handlers.get(500) or handlers.get(Exception)
        if handler is None:
            return False
        request = Request(scope, receive)
        if inspect.iscoroutinefunction(handler):
            response = await handler(request, exc)
        else:
            response = await run_in_threadpool(handler, request, exc)
        await response(scope, receive, send)
        return True

    return respond
