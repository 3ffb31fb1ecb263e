"""``RateLimitMiddleware``: limits by route and path pattern, before the framework routes.

Each request is checked against at most two limits, in one atomic decision: the ``global_rate``
(one budget per client shared by every route), and its route limit: the first ``rules`` entry
whose pattern matches, else the default ``rate``. Allowed responses carry ``RateLimit-Policy`` and
``RateLimit``; refused ones are a problem+json 429 with ``Retry-After`` as well.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bastion._routes import (
    RoutePattern,
    RouteResolver,
    ScopeRoutes,
    compile_patterns,
    memoize_route,
    remember,
    route_endpoints,
)
from bastion.context import SCOPE_KEY, RequestContext
from bastion.exceptions import ConfigurationError
from bastion.ratelimit._declare import DeclaredLimit, declarations, declared_limits
from bastion.ratelimit._http import (
    DECISIONS_SCOPE_KEY,
    LIMITER_SCOPE_KEY,
    KeyFunc,
    client_key,
    decision_headers,
    send_refusal,
)
from bastion.ratelimit._limiter import (
    STATE_ITEM,
    RateLimiter,
    key_tail,
    state_field,
)
from bastion.ratelimit._rates import ALGORITHMS, Algorithm, CompiledQuota, Limit
from bastion.types import ASGIApp, Message, Receive, Scope, Send

if TYPE_CHECKING:
    from bastion._clock import Clock
    from bastion.events import Hooks
    from bastion.settings import RateLimitSettings
    from bastion.stores import Store

__all__ = ["RateLimitMiddleware", "Rule", "ratelimit_layer"]

_UNMATCHED = "*"

DecideOne = Callable[[str, CompiledQuota, int], list[float]]
"""A memory backend's synchronous single-quota decision (``RateLimiter.decide_one_now``)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Rule:
    """A limit for the requests whose route template (or path) matches a pattern.

    Example::

        Rule(path="/search/*", rate="10/second; 500/hour")
        Rule(path="POST,PUT /uploads/{id}", rate="5/minute", cost=2, name="uploads")
        Rule.parse("/reports/*=1/second burst 5")     # the settings shorthand

    Patterns match the route template (``/items/{id}``) when bastion's request context resolved
    one, else the raw path; ``*`` matches any characters, ``/`` included; an optional list of
    methods comes first.
    """

    path: str
    """``[METHODS ]PATTERN``, e.g. ``/search/*`` or ``GET,HEAD /items/{id}``."""
    rate: str
    """The quotas: ``"10/second; 1000/hour"`` (see ``parse_rates``)."""
    name: str | None = None
    """Policy name in the headers and in the counters' keys; defaults to the pattern."""
    algorithm: Algorithm | None = None
    """Counting algorithm; defaults to the middleware's."""
    per_route: bool = True
    """Count per route and method; ``False`` shares one budget by every route matched."""
    cost: int = 1
    """Units each matching request spends."""

    @classmethod
    def parse(cls, text: str) -> Rule:
        """Parse the shorthand ``"[METHODS ]PATTERN=RATES"``.

        Raises:
            ConfigurationError: if there is no ``=`` or a part is invalid.
        """
        path, separator, rate = text.partition("=")
        if not separator or not path.strip() or not rate.strip():
            raise ConfigurationError(
                f"invalid rule {text!r}: expected '[METHODS ]PATTERN=RATES' such as "
                "'/search/*=10/second' or 'POST /upload=5/minute'"
            )
        return cls(path=path.strip(), rate=rate.strip())

    @classmethod
    def from_value(cls, value: Rule | str | Mapping[str, Any]) -> Rule:
        """A rule from a ``Rule``, the shorthand string, or a mapping of its fields.

        Raises:
            ConfigurationError: if the value is none of those or a field is invalid.
        """
        if isinstance(value, Rule):
            return value
        if isinstance(value, str):
            return cls.parse(value)
        if isinstance(value, Mapping):
            try:
                return cls(**value)
            except TypeError as exc:
                raise ConfigurationError(
                    f"invalid rule {dict(value)!r}: {exc}; fields are path, rate, name, "
                    "algorithm, per_route and cost"
                ) from None
        raise ConfigurationError(f"invalid rule {value!r}: expected a string or a mapping")


class _CompiledRule:
    __slots__ = ("cost", "limit", "pattern")

    def __init__(self, rule: Rule, default_algorithm: Algorithm) -> None:
        self.pattern = RoutePattern(rule.path)
        algorithm = rule.algorithm if rule.algorithm is not None else default_algorithm
        cost: object = rule.cost  # rules from JSON may hold anything
        if not isinstance(cost, int) or isinstance(cost, bool) or cost < 0:
            raise ConfigurationError(f"rule {rule.path!r}: cost must be an integer >= 0")
        self.cost = rule.cost
        self.limit = Limit(
            rule.rate,
            name=rule.name or rule.path.strip(),
            algorithm=algorithm,
            per_route=rule.per_route,
        )


class _Plan:
    """What applies to one (method, route): the limits, and everything about them that does not
    depend on the client, computed once per route: key tails, quotas, costs, the policy value."""

    __slots__ = ("costs", "limits", "one", "policy", "policy_field", "quotas", "tails")

    def __init__(
        self,
        limits: tuple[tuple[Limit, int], ...],
        scope_name: str = "",
        decide_one: DecideOne | None = None,
    ) -> None:
        self.limits = limits
        self.policy = ", ".join(limit.policy_header for limit, _ in limits).encode("latin-1")
        self.policy_field = (b"ratelimit-policy", self.policy)
        self.tails: list[str] = []
        self.quotas: list[CompiledQuota] = []
        self.costs: list[int] = []
        for limit, cost in limits:
            tail = key_tail(limit, scope_name if limit.per_route else "")
            for quota in limit.compiled:
                self.tails.append(tail + quota.suffix)
                self.quotas.append(quota)
                self.costs.append(cost)
        # The common case, one quota decided in memory, as (decide_one, tail, quota, cost): the
        # middleware's fast path. ``decide_one`` is the limiter's ``decide_one_now``.
        self.one: tuple[DecideOne, str, CompiledQuota, int] | None = None
        if decide_one is not None and len(self.quotas) == 1:
            self.one = (decide_one, self.tails[0], self.quotas[0], self.costs[0])


_NOTHING = _Plan(())
_NO_HEADERS: list[tuple[bytes, bytes]] = []
"""Shared, never mutated: ``own + ...`` and unpacking make new lists."""


class RateLimitMiddleware:
    """Rate limits by client, route and path pattern, with the IETF ``RateLimit`` headers.

    Example::

        app.add_middleware(RateLimitMiddleware, rate="100/minute")
        app.add_middleware(
            RateLimitMiddleware,
            limiter=RateLimiter(RedisStore.from_url(url), on_store_error="local_fallback"),
            global_rate="5000/hour",
            rules=[Rule(path="/search*", rate="10/second; 300/hour")],
        )

    The middleware puts its limiter in the scope (``scope["bastion.ratelimiter"]``), where the
    ``limit()`` FastAPI dependency finds it, and adds the dependencies' ``RateLimit`` headers to
    the response, even when the endpoint returns a ``Response`` of its own.

    Args:
        app: the ASGI app to wrap.
        rate: the default limit per client and route, for requests no rule matches.
        global_rate: a limit per client shared by every route, checked on every request.
        rules: limits by pattern (``Rule``, ``"PATTERN=RATES"`` or a mapping); the first match
            applies instead of ``rate``.
        limiter: where and how decisions are made; a process-local memory limiter by default.
        algorithm: the algorithm of ``rate``, ``global_rate`` and rules that name none.
        key: whose budget a request spends; default: the principal, else the client address
            (``client_key``). Return ``None`` to leave a request unlimited.
        exclude: requests never limited here: patterns as in ``Rule.path``, or a predicate.
        headers: add ``RateLimit-Policy`` and ``RateLimit`` to responses.
        route_resolver: finds route templates when no ``RequestContext`` is present (bastion's
            context middleware resolves them otherwise). By default, read from the Starlette or
            FastAPI app in ``scope["app"]``. Without a template, every route shares one budget
            per rule: limits by raw path could be dodged by varying an id.

    Raises:
        ConfigurationError: for an invalid rate, rule, pattern or algorithm.
    """

    __slots__ = (
        "_declared",
        "_exclude",
        "_exclude_patterns",
        "_global",
        "_headers",
        "_key",
        "_memo",
        "_paths",
        "_rate",
        "_routes",
        "_rules",
        "app",
        "limiter",
    )

    def __init__(
        self,
        app: ASGIApp,
        /,
        *,
        rate: str | Limit | None = None,
        global_rate: str | Limit | None = None,
        rules: Iterable[Rule | str | Mapping[str, Any]] = (),
        limiter: RateLimiter | None = None,
        algorithm: Algorithm = "sliding_window",
        key: KeyFunc | None = None,
        exclude: Iterable[str] | Callable[[Scope], bool] = (),
        headers: bool = True,
        route_resolver: RouteResolver | None = None,
    ) -> None:
        if algorithm not in ALGORITHMS:
            raise ConfigurationError(
                f"unknown rate-limit algorithm {algorithm!r}; use one of {', '.join(ALGORITHMS)}"
            )
        self.app = app
        self.limiter = limiter if limiter is not None else RateLimiter()
        self._rate = _limit(rate, "default", algorithm, per_route=True)
        self._global = _limit(global_rate, "global", algorithm, per_route=False)
        self._rules = tuple(_CompiledRule(Rule.from_value(rule), algorithm) for rule in rules)
        self._key = key  # None: client_key, partly inlined in __call__
        if callable(exclude):
            self._exclude: Callable[[Scope], bool] | None = exclude
            self._exclude_patterns: tuple[RoutePattern, ...] = ()
        else:
            self._exclude = None
            self._exclude_patterns = compile_patterns(exclude)
        self._headers = headers
        self._routes = ScopeRoutes(route_resolver)
        self._memo: dict[tuple[str, str], _Plan] = {}
        # (method, raw path) -> (plan, route template), for requests without a context. One
        # middleware sits at one place in one app, so its requests share one root path.
        self._paths: dict[tuple[str, str], tuple[_Plan, str | None]] = {}
        # Route template -> (methods, limits) its endpoints declared with @rate_limit; read
        # from the app's route table on the first request that needs a plan (None until then).
        self._declared: (
            dict[str, list[tuple[frozenset[str] | None, tuple[DeclaredLimit, ...]]]] | None
        ) = None

    @staticmethod
    def options_from_settings(
        settings: RateLimitSettings,
        *,
        store: Store | None = None,
        hooks: Hooks | None = None,
        clock: Clock | None = None,
    ) -> dict[str, Any]:
        """Keyword arguments for this middleware from ``Settings.ratelimit``.

        ``app.add_middleware(RateLimitMiddleware, **options)`` installs it; the limiter is
        ``options["limiter"]``.

        Raises:
            ConfigurationError: naming the ``BASTION_RATELIMIT__*`` variable that is invalid.
        """
        limiter = RateLimiter(
            store,
            on_store_error=settings.on_store_error,
            expected_workers=settings.expected_workers,
            hooks=hooks,
            clock=clock,
            memory_max_keys=settings.memory_max_keys,
        )
        options: dict[str, Any] = {
            "limiter": limiter,
            "algorithm": settings.algorithm,
            "headers": settings.headers,
        }
        for field, variable, build in (
            ("rate", "BASTION_RATELIMIT__RATE", _limit_or_none),
            ("global_rate", "BASTION_RATELIMIT__GLOBAL_RATE", _limit_or_none),
        ):
            value = getattr(settings, field)
            try:
                options[field] = build(value, settings.algorithm, field == "rate")
            except ConfigurationError as exc:
                raise ConfigurationError(f"{variable}={value!r}: {exc}") from None
        rules = []
        for index, value in enumerate(settings.rules):
            try:
                rule = Rule.from_value(value)
                _CompiledRule(rule, settings.algorithm)
            except ConfigurationError as exc:
                raise ConfigurationError(f"BASTION_RATELIMIT__RULES[{index}]: {exc}") from None
            rules.append(rule)
        options["rules"] = rules
        exclude = list(settings.exclude)
        compile_patterns(exclude, "BASTION_RATELIMIT__EXCLUDE")
        options["exclude"] = exclude
        return options

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Decide, then answer 429/503 or call the app with the headers added to its response."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        scope[LIMITER_SCOPE_KEY] = self.limiter
        headers = self._headers
        if not headers:
            scope[DECISIONS_SCOPE_KEY] = None  # tells ``limit()`` dependencies: no headers

        context: RequestContext | None = scope.get(SCOPE_KEY)
        plan: _Plan | None
        if context is None:
            # No request context: plans are memoized by raw path too, so a path seen before
            # costs one lookup rather than a template resolution and then a plan lookup.
            method, principal = scope["method"], None
            known = self._paths.get((method, scope["path"]))
            if known is None:
                known = self._learn_path(scope, method)
            plan, route = known
        else:
            method, route, principal = context.method, context.route, context.principal
            target = route if route is not None else scope["path"]
            plan = self._memo.get((method, target))
            if plan is None:
                plan = self._plan(method, target, route, scope)
        own: list[tuple[bytes, bytes]] = _NO_HEADERS
        if plan.limits and (self._exclude is None or not self._exclude(scope)):
            head: str | None
            if self._key is None and context is None:
                # ``client_key`` inlined for its commonest case, the socket peer, with the
                # key's opening ``{`` (see ``key_base``).
                peer = scope.get("client")
                head = "{ip:" + peer[0] if peer else "{ip:unknown"
            else:
                partition = (self._key or client_key)(scope)
                head = None if partition is None else "{" + partition
            if head is not None:
                one = plan.one
                values = None
                if one is not None:  # one quota, decided in memory: no coroutine, no Decision
                    decide, tail, quota, cost = one
                    values = decide(head + tail, quota, cost)
                    if values[0] and headers:
                        # ``state_field`` of one quota, inlined (memory's values are integers).
                        state = STATE_ITEM % (
                            quota.quoted_bytes,
                            values[1],
                            -(-values[2] // 1_000_000),
                        )
                        own = [plan.policy_field, (b"ratelimit", state)]
                if values is None or not values[0]:
                    decided = await self._decide(
                        scope, send, plan, head, method, route, principal, values
                    )
                    if decided is None:
                        return  # refused, and answered
                    own = decided

        if not headers:
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                # Dependencies' decisions follow as separate field lines of the same lists.
                decisions = scope.get(DECISIONS_SCOPE_KEY)
                extra = own + decision_headers(decisions) if decisions else own
                if extra:
                    # The framework may own the header list; never mutate it.
                    message["headers"] = [*message.get("headers", ()), *extra]
            await send(message)

        await self.app(scope, receive, send_with_headers)

    async def _decide(
        self,
        scope: Scope,
        send: Send,
        plan: _Plan,
        head: str,
        method: str,
        route: str | None,
        principal: str | None,
        values: list[float] | None,
    ) -> list[tuple[bytes, bytes]] | None:
        """Every decision but an admitted single quota in memory (``__call__`` makes those).

        ``head`` is ``"{" + partition``; ``values`` is the memory backend's refusal of a single
        quota, if that is what happened. Returns the response's ``RateLimit`` headers (none
        without ``headers``), or ``None`` once a refusal is answered.
        """
        limiter = self.limiter
        partition = head[1:]
        quotas = plan.quotas
        if values is None and limiter.decide_now is not None:
            values = limiter.decide_now([head + tail for tail in plan.tails], quotas, plan.costs)
        if values is not None:
            if values[0]:
                if not self._headers:
                    return _NO_HEADERS
                return [plan.policy_field, (b"ratelimit", state_field(quotas, values))]
            decision = limiter.settle(
                values, quotas, plan.costs, partition, method, route, principal
            )
        else:  # a store that needs I/O: the keys as a list, one round trip
            decision = await limiter.decide_keys(
                [head + tail for tail in plan.tails],
                quotas,
                plan.costs,
                partition,
                method,
                route,
                principal,
            )
        if not decision.allowed:
            await send_refusal(scope, send, decision, headers=self._headers)
            return None
        if not self._headers:
            return _NO_HEADERS
        if decision.degraded:  # fail-open has no quotas; local fallback has its own, scaled ones
            return decision_headers((decision,))
        return [plan.policy_field, (b"ratelimit", decision.state_header.encode("latin-1"))]

    def _learn_path(self, scope: Scope, method: str) -> tuple[_Plan, str | None]:
        """Resolve the route of a raw path not seen yet, and memoize its plan by that path."""
        route = self._routes.resolve(scope, method)
        target = route if route is not None else scope["path"]
        plan = self._memo.get((method, target))
        if plan is None:
            plan = self._plan(method, target, route, scope)
        known = (plan, route)
        remember(self._paths, (method, scope["path"]), known)
        return known

    def _plan(self, method: str, target: str, route: str | None, scope: Scope) -> _Plan:
        """Choose and memoize the plan of a (method, route or path) not seen yet."""
        plan = self._choose(method, target, route, self._declared_by(scope, method, route))
        memoize_route(self._memo, (method, target), plan, template=route is not None)
        return plan

    def _declared_by(
        self, scope: Scope, method: str, route: str | None
    ) -> tuple[DeclaredLimit, ...]:
        """What the endpoint of ``method`` and ``route`` declared with ``@rate_limit``."""
        if route is None or not declarations.count:
            return ()
        declared = self._declared
        if declared is None:
            app = scope.get("app")
            if app is None:
                return ()
            declared = self._declared = {}
            for found in route_endpoints(app):
                limits = declared_limits(found.endpoint)
                if limits:
                    declared.setdefault(found.template, []).append((found.methods, limits))
        for methods, limits in declared.get(route, ()):
            if methods is None or method in methods:
                return limits
        return ()

    def _choose(
        self,
        method: str,
        target: str,
        route: str | None,
        declared: tuple[DeclaredLimit, ...] = (),
    ) -> _Plan:
        """The limits for a route template (or path), exclusions applied: run once per route.

        Limits the route's endpoint declared replace the rules and the default rate."""
        if any(pattern.matches(method, target) for pattern in self._exclude_patterns):
            return _NOTHING
        chosen: list[tuple[Limit, int]] = []
        if self._global is not None:
            chosen.append((self._global, 1))
        if declared:
            for item in declared:
                limit = item.limit if item.named else item.limit.renamed(f"{method} {route}")
                chosen.append((limit, item.cost))
            return _Plan(tuple(chosen), f"{method} {route}", self.limiter.decide_one_now)
        for rule in self._rules:
            if rule.pattern.matches(method, target):
                chosen.append((rule.limit, rule.cost))
                break
        else:
            if self._rate is not None:
                chosen.append((self._rate, 1))
        if not chosen:
            return _NOTHING
        scope_name = f"{method} {route if route is not None else _UNMATCHED}"
        return _Plan(tuple(chosen), scope_name, self.limiter.decide_one_now)


def _limit(
    value: str | Limit | None, name: str, algorithm: Algorithm, *, per_route: bool
) -> Limit | None:
    if value is None:
        return None
    if isinstance(value, Limit):
        return value
    return Limit(value, name=name, algorithm=algorithm, per_route=per_route)


def _limit_or_none(value: str | None, algorithm: Algorithm, per_route: bool) -> Limit | None:
    if value is None or not value.strip():
        return None
    return _limit(value, "default" if per_route else "global", algorithm, per_route=per_route)


def ratelimit_layer(app: ASGIApp, /, **options: Any) -> ASGIApp:
    """``RateLimitMiddleware`` around ``app`` when anything is limited, else ``app`` itself.

    Anything: a ``rate``, ``global_rate`` or ``rules`` in ``options``, or an endpoint that
    declared a limit with ``@rate_limit``. Starlette builds its middleware stack when the app
    first runs, after the routes and their declarations exist, so an app that limits nothing
    pays nothing. Arguments as for ``RateLimitMiddleware``.
    """
    limited = options.get("rate") or options.get("global_rate") or options.get("rules")
    if not limited and not declarations.count:
        return app
    return RateLimitMiddleware(app, **options)
