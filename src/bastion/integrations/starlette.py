"""Problem+json for the errors Starlette and FastAPI answer themselves.

The framework turns ``HTTPException`` (404, 405, your own ``raise HTTPException(403)``) and
FastAPI's request validation errors into responses before the error boundary sees them. These
handlers give those responses the same RFC 9457 shape and request id as every other bastion
error. They replace only the framework's *default* handlers: a handler you registered stays.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from bastion.context import get_context
from bastion.problem import PROBLEM_CONTENT_TYPE, problem_body

if TYPE_CHECKING:
    from starlette.requests import Request
    from starlette.responses import Response

__all__ = ["install_problem_handlers"]

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
    answers first, with problem+json, so that layer only costs time. It is dropped when the
    stack is built, unless the app registered its own 500/``Exception`` handler or runs with
    ``debug=True`` (then Starlette's layer stays, exactly as it was).
    """
    from starlette.middleware.errors import ServerErrorMiddleware

    build = app.build_middleware_stack

    def build_without_server_errors() -> Any:
        stack = build()
        handlers = app.exception_handlers
        keep = app.debug or 500 in handlers or Exception in handlers
        if isinstance(stack, ServerErrorMiddleware) and not keep:
            return stack.app
        return stack

    app.build_middleware_stack = build_without_server_errors
