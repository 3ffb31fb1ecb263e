"""``require()``: authentication and scopes declared on a FastAPI route, as a dependency.

This module needs Starlette; ``require()`` itself needs FastAPI.

::

    @app.post("/items", dependencies=[require(scopes=["items:write"])])
    async def create(item: Item): ...

    @app.get("/me")
    async def me(principal: Principal = require()): ...

The dependency uses the principal ``AuthMiddleware`` already set; without the middleware it
authenticates the request itself, with the ``authenticator=`` argument, else the one
``Bastion`` put on ``app.state.bastion_authenticator``. Refusals raise ``AuthRefused`` (a
Starlette ``HTTPException`` carrying ``WWW-Authenticate``), so any ``HTTPException`` handler keeps
the challenge; ``auth_problem`` renders it as an RFC 9457 problem.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from bastion.auth._authenticator import Authenticator
from bastion.auth._http import failure_headers, failure_members
from bastion.auth._middleware import AUTHENTICATOR_SCOPE_KEY
from bastion.auth._principal import Principal, get_principal
from bastion.context import get_context
from bastion.exceptions import (
    AuthError,
    ConfigurationError,
    InsufficientScope,
    MissingCredentials,
)
from bastion.problem import PROBLEM_CONTENT_TYPE, problem_body

__all__ = ["APP_STATE_ATTRIBUTE", "AuthRefused", "auth_problem", "require"]

APP_STATE_ATTRIBUTE = "bastion_authenticator"
"""``app.state`` attribute where ``require()`` looks for an authenticator."""


class AuthRefused(HTTPException):
    """A ``require()`` dependency refused the request: 401, 403 or 503.

    Args:
        error: why (``error.reason`` for logs; ``error.detail`` is what the client reads).
        realm: the challenge's realm.
    """

    def __init__(self, error: AuthError, realm: str = "api") -> None:
        super().__init__(
            error.status,
            detail=error.detail,
            headers={
                name.decode("latin-1"): value.decode("latin-1")
                for name, value in failure_headers(error, realm)
            },
        )
        self.error = error


async def auth_problem(request: Request, exc: Exception) -> Response:
    """Exception handler rendering ``AuthRefused`` as an RFC 9457 problem with its challenge.

    Register it with ``app.add_exception_handler(AuthRefused, auth_problem)`` (``Bastion``
    does); a 403 lists the ``required_scopes``.
    """
    if not isinstance(exc, AuthRefused):
        raise TypeError(f"expected an AuthRefused, got {type(exc).__name__}")
    members = failure_members(exc.error)
    context = get_context(request.scope)
    if context is not None:
        members["request_id"] = context.request_id
    body = problem_body(exc.status_code, detail=exc.detail, extensions=members)
    headers = dict(exc.headers or {})
    headers["cache-control"] = "no-store"
    return Response(body, exc.status_code, headers=headers, media_type=PROBLEM_CONTENT_TYPE)


def require(
    scopes: Iterable[str] = (),
    *,
    authenticator: Authenticator | None = None,
    api_key_header: str | None = None,
) -> Any:
    """A FastAPI dependency: the route needs an authenticated caller with every one of ``scopes``.

    Use it in ``dependencies=[require(scopes=["items:write"])]``, or as a parameter default to
    receive the ``Principal``. Put it before ``limit(...)`` in a dependency list, so the limit
    keys on the principal. The route shows the API key and bearer schemes in OpenAPI.

    Args:
        scopes: scopes the caller must all have (403 ``insufficient_scope`` otherwise).
        authenticator: the authenticator to use (see the module docstring for the default).
        api_key_header: the API key header shown in OpenAPI (default: the authenticator's,
            else ``X-API-Key``).

    Raises:
        ValueError: a scope is empty or holds spaces.
    """
    required = tuple(scopes)
    if any(not scope or any(char.isspace() for char in scope) for scope in required):
        raise ValueError(f"scopes must be non-empty and without spaces: {list(required)}")
    explicit = authenticator
    header = api_key_header or (
        authenticator.api_key_header if authenticator is not None else "X-API-Key"
    )

    from fastapi import Depends, Security  # the fastapi extra; the rest needs Starlette only
    from fastapi.security import APIKeyHeader, HTTPBearer

    # Declared only so OpenAPI (and the docs' Authorize button) shows the schemes; the values
    # are read from the raw headers by the authenticator, which also refuses ambiguity.
    api_key_scheme = APIKeyHeader(name=header, auto_error=False, scheme_name="ApiKey")
    bearer_scheme = HTTPBearer(auto_error=False, scheme_name="Bearer")

    api_key_value, bearer_value = Security(api_key_scheme), Security(bearer_scheme)

    async def authenticated(
        request: Request, _api_key: Any = api_key_value, _bearer: Any = bearer_value
    ) -> Principal:
        scope = request.scope
        found = _authenticator(explicit, request)
        principal = get_principal(scope)
        try:
            if principal is None:
                principal = await found.authenticate(scope)
            if principal is None:
                error: AuthError = MissingCredentials("missing")
                found.failed(scope, error, None)
                raise error
            if required and principal.missing(required):
                error = InsufficientScope("insufficient_scope", required=required)
                found.failed(scope, error, None, principal)
                raise error
        except AuthError as exc:
            raise AuthRefused(exc, found.realm) from None
        return principal

    return Depends(authenticated)


def _authenticator(explicit: Authenticator | None, request: Request) -> Authenticator:
    if explicit is not None:
        return explicit
    found: Authenticator | None = request.scope.get(AUTHENTICATOR_SCOPE_KEY)
    if found is None:
        found = getattr(request.app.state, APP_STATE_ATTRIBUTE, None)
    if found is None:
        raise ConfigurationError(
            "require() found no authenticator: pass authenticator=..., install AuthMiddleware, "
            "or use Bastion(app) and bastion.require(...)"
        )
    return found
