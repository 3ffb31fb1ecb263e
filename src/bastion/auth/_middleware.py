"""``AuthMiddleware``: authenticates every request that carries credentials (pipeline layer 8).

It runs outside rate limiting, so limits key on the principal it sets. A request with invalid
credentials is refused with 401 even on a public route: a client sending a revoked or expired
key learns so at once instead of being served as anonymous. ``require`` rules make routes need
authentication (and scopes) without touching their code.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bastion._asgi import scope_path
from bastion._routes import RoutePattern, RouteResolver, ScopeRoutes, compile_patterns
from bastion.auth._authenticator import Authenticator
from bastion.auth._http import send_failure
from bastion.context import SCOPE_KEY, RequestContext
from bastion.exceptions import AuthError, ConfigurationError, InsufficientScope, MissingCredentials

if TYPE_CHECKING:
    from bastion._clock import Clock
    from bastion.auth._principal import Principal
    from bastion.events import Hooks
    from bastion.settings import AuthSettings
    from bastion.stores import Store
    from bastion.types import ASGIApp, Receive, Scope, Send

__all__ = ["AUTHENTICATOR_SCOPE_KEY", "AuthMiddleware", "RequireRule"]

AUTHENTICATOR_SCOPE_KEY = "bastion.authenticator"
"""Key of the middleware's ``Authenticator`` in the scope, where ``require()`` finds it."""

_POLICY_VIOLATION = 1008  # WebSocket close code: the handshake is refused (servers answer 403)


@dataclass(frozen=True, slots=True, kw_only=True)
class RequireRule:
    """Requests whose route template or path matches ``path`` need authentication and scopes.

    Example::

        RequireRule(path="/admin/*", scopes=("admin",))
        RequireRule.parse("POST,PUT,DELETE /items*=items:write")   # the settings shorthand
    """

    path: str
    """``[METHODS ]PATTERN``; ``*`` matches anything. Matched against the route template and
    the raw path: either one matching is enough, so a rule cannot be dodged by spelling."""
    scopes: tuple[str, ...] = ()
    """Scopes the principal must all have."""

    @classmethod
    def parse(cls, text: str) -> RequireRule:
        """Parse ``"[METHODS ]PATTERN[=SCOPE SCOPE ...]"``.

        Raises:
            ConfigurationError: if the pattern is empty or invalid.
        """
        path, _, scopes = text.partition("=")
        if not path.strip():
            raise ConfigurationError(
                f"invalid rule {text!r}: expected '[METHODS ]PATTERN[=SCOPE ...]' such as "
                "'/admin/*=admin' or 'POST /items=items:write'"
            )
        rule = cls(path=path.strip(), scopes=tuple(scopes.split()))
        RoutePattern(rule.path)
        return rule

    @classmethod
    def from_value(cls, value: RequireRule | str | Mapping[str, Any]) -> RequireRule:
        """A rule from a ``RequireRule``, the shorthand, or a mapping with ``path``/``scopes``.

        Raises:
            ConfigurationError: if the value is none of those or is invalid.
        """
        if isinstance(value, RequireRule):
            rule = value
        elif isinstance(value, str):
            return cls.parse(value)
        elif isinstance(value, Mapping):
            try:
                rule = cls(path=value["path"], scopes=tuple(value.get("scopes", ())))
            except (KeyError, TypeError) as exc:
                raise ConfigurationError(
                    f"invalid rule {dict(value)!r}: {exc}; fields are path and scopes"
                ) from None
        else:
            raise ConfigurationError(f"invalid rule {value!r}: expected a string or a mapping")
        RoutePattern(rule.path)
        return rule


class AuthMiddleware:
    """Authenticates requests that carry credentials; enforces ``require`` rules.

    Example::

        keys = ApiKeys(RedisStore.from_url("redis://localhost:6379/0"))
        app.add_middleware(
            AuthMiddleware,
            authenticator=Authenticator(api_keys=keys),
            require=["/admin/*=admin", "POST,PUT,DELETE /items*=items:write"],
        )

    Without credentials a request passes as anonymous unless a rule requires authentication
    (401 with ``WWW-Authenticate: Bearer realm=...``). Invalid credentials are a 401 with
    ``error="invalid_token"``; a principal without a required scope gets 403
    ``insufficient_scope``; a key store outage under ``fail_closed`` gets 503. WebSocket
    handshakes are refused with close code 1008 instead.

    Args:
        app: the ASGI app to wrap.
        authenticator: how credentials are checked; by default API keys in process memory.
        require: rules (``RequireRule``, the shorthand, or mappings); the first match applies.
        exclude: requests never authenticated here: patterns as in ``RequireRule.path``, or a
            predicate on the scope.
        route_resolver: finds route templates when no ``RequestContext`` carries one; by
            default read from the Starlette or FastAPI app in ``scope["app"]``.

    Raises:
        ConfigurationError: for an invalid rule or pattern.
    """

    __slots__ = ("_exclude", "_exclude_patterns", "_routes", "_rules", "app", "authenticator")

    def __init__(
        self,
        app: ASGIApp,
        /,
        *,
        authenticator: Authenticator | None = None,
        require: Iterable[RequireRule | str | Mapping[str, Any]] = (),
        exclude: Iterable[str] | Callable[[Scope], bool] = (),
        route_resolver: RouteResolver | None = None,
    ) -> None:
        if authenticator is None:
            from bastion.auth._manager import ApiKeys

            authenticator = Authenticator(api_keys=ApiKeys())
        self.app = app
        self.authenticator = authenticator
        self._routes = ScopeRoutes(route_resolver)
        self._rules = tuple(
            (RoutePattern(rule.path), rule)
            for rule in (RequireRule.from_value(value) for value in require)
        )
        if callable(exclude):
            self._exclude: Callable[[Scope], bool] | None = exclude
            self._exclude_patterns: tuple[RoutePattern, ...] = ()
        else:
            self._exclude = None
            self._exclude_patterns = compile_patterns(exclude)

    @staticmethod
    def options_from_settings(
        settings: AuthSettings,
        *,
        authenticator: Authenticator | None = None,
        store: Store | None = None,
        hooks: Hooks | None = None,
        clock: Clock | None = None,
    ) -> dict[str, Any]:
        """Keyword arguments for this middleware from ``Settings.auth``.

        Raises:
            ConfigurationError: naming the ``BASTION_AUTH__*`` variable that is invalid.
        """
        if authenticator is None:
            from bastion._clock import SYSTEM_CLOCK

            authenticator = Authenticator.from_settings(
                settings, store=store, hooks=hooks, clock=clock or SYSTEM_CLOCK
            )
        rules = []
        for index, value in enumerate(settings.require):
            try:
                rules.append(RequireRule.from_value(value))
            except ConfigurationError as exc:
                raise ConfigurationError(f"BASTION_AUTH__REQUIRE[{index}]: {exc}") from None
        compile_patterns(settings.exclude, "BASTION_AUTH__EXCLUDE")
        return {"authenticator": authenticator, "require": rules, "exclude": list(settings.exclude)}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Authenticate, apply the rules, then call the app (or answer the refusal)."""
        scope_type = scope["type"]
        if scope_type != "http" and scope_type != "websocket":
            await self.app(scope, receive, send)
            return
        authenticator = self.authenticator
        scope[AUTHENTICATOR_SCOPE_KEY] = authenticator
        targets: tuple[str, ...] | None = None
        exclude = self._exclude
        if exclude is not None:
            if exclude(scope):
                await self.app(scope, receive, send)
                return
        elif self._exclude_patterns:
            targets = self._targets(scope)
            method = scope.get("method", "GET")
            if any(pattern.matches_any(method, targets) for pattern in self._exclude_patterns):
                await self.app(scope, receive, send)
                return
        try:
            principal = await authenticator.authenticate(scope)
            if self._rules:
                self._enforce(scope, principal, targets or self._targets(scope))
        except AuthError as error:
            if scope_type == "websocket":
                await send({"type": "websocket.close", "code": _POLICY_VIOLATION})
            else:
                await send_failure(scope, send, error, authenticator.realm)
            return
        await self.app(scope, receive, send)

    def _targets(self, scope: Scope) -> tuple[str, ...]:
        """What rules match: the route template (when known) and the path the app routes on."""
        path = scope_path(scope)
        context: RequestContext | None = scope.get(SCOPE_KEY)
        route = context.route if context is not None else None
        if route is None:
            route = self._routes.resolve(scope, scope.get("method", "GET"), path)
        return (path,) if route is None or route == path else (route, path)

    def _enforce(self, scope: Scope, principal: Principal | None, targets: tuple[str, ...]) -> None:
        method = scope.get("method", "GET")
        rules = self._rules
        rule = next((rule for pattern, rule in rules if pattern.matches_any(method, targets)), None)
        if rule is None:
            return
        error: AuthError
        if principal is None:
            error = MissingCredentials("missing")
        else:
            missing = principal.missing(rule.scopes)
            if not missing:
                return
            error = InsufficientScope("insufficient_scope", required=rule.scopes)
        self.authenticator.failed(scope, error, None, principal)
        raise error
