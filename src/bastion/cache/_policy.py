"""Per-route cache policies: declared with ``@cache(...)`` or by path pattern, compiled per route.

A policy says whether and how a route's responses are cached. It is recorded on the endpoint
function by the ``cache`` decorator (nothing else happens at decoration time), or comes from a
settings rule matching the route template. The middleware compiles the policy of each route
template once, on the first request to it, into a plan: everything that does not depend on the
request (durations, tag templates, the Vary header names) is computed there, so a request pays a
dict lookup.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from functools import lru_cache
from typing import Any, ParamSpec, TypeVar

from bastion._routes import compile_glob
from bastion.exceptions import ConfigurationError

__all__ = [
    "POLICY_ATTRIBUTE",
    "UNSAFE_METHODS",
    "CachePolicy",
    "CacheRule",
    "cache",
    "coalesce",
    "invalidates",
    "seconds",
]

POLICY_ATTRIBUTE = "__bastion_cache__"
"""Attribute of an endpoint function holding its ``CachePolicy``."""
INVALIDATES_ATTRIBUTE = "__bastion_cache_invalidates__"
"""Attribute of an endpoint function holding the tags its successful calls purge."""

UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})

P = ParamSpec("P")
R = TypeVar("R")


class _Declarations:
    """How many endpoints declared a policy: ``cache_layer`` installs nothing while it is 0."""

    __slots__ = ("count",)

    def __init__(self) -> None:
        self.count = 0


declarations = _Declarations()

_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)(?::[A-Za-z_]+)?\}")


def seconds(value: float | timedelta | None, name: str) -> float | None:
    """``value`` in seconds (``None`` stays ``None``).

    Raises:
        ConfigurationError: negative, not a number, or not finite.
    """
    if value is None:
        return None
    if isinstance(value, timedelta):
        value = value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigurationError(f"{name} must be seconds (a number or a timedelta), not {value!r}")
    if not 0 <= value < float("inf"):
        raise ConfigurationError(f"{name} must be a finite number of seconds >= 0, not {value!r}")
    return float(value)


@dataclass(frozen=True, slots=True, kw_only=True)
class CachePolicy:
    """How one route's responses are cached. Build it with ``cache(...)`` or ``CacheRule``.

    Durations are seconds. Tags may name path parameters, ``"album:{album_id}"``, filled from
    the request's path.
    """

    store: bool = True
    """Store responses; ``False`` for a route that only wants ETags or coalescing."""
    ttl_s: float | None = None
    """Freshness lifetime when the response sets none (``s-maxage``/``max-age`` win when the app
    sends them); ``None``: the middleware's ``default_ttl_s``."""
    stale_while_revalidate_s: float = 0.0
    """After expiry, serve the stale response this long while one refresh runs behind it."""
    stale_if_error_s: float = 0.0
    """After expiry, serve the stale response this long when the handler fails (raises, answers
    5xx, or runs past the request's deadline)."""
    tags: tuple[str, ...] = ()
    """Tags of the stored responses, for ``purge(tags)``; ``{name}`` is a path parameter."""
    vary: tuple[str, ...] = ()
    """Request headers the response depends on, known in advance, so the first lookup already
    uses them (a response's own ``Vary`` is always honoured, whether listed here or not)."""
    public: bool = False
    """Share one entry between every caller, credentials or not. **Security:** only for
    responses that never depend on who asks; by default a request carrying ``Authorization``,
    a cookie, or an authenticated principal gets entries of its own."""
    max_entry_bytes: int | None = None
    """Largest body stored; larger responses stream through; ``None``: the middleware's."""
    coalesce: bool = True
    """Concurrent requests for one key share one handler run (for a stored response: across
    workers too; without storing: within the process)."""
    invalidate_on: tuple[str, ...] = ()
    """Unsafe methods (``"POST"``, ``"PUT"``...) whose successful responses on the same route
    purge this policy's tags."""
    etag: bool = True
    """Add a strong ``ETag`` (a hash of the body) and answer ``If-None-Match`` with 304."""

    def __post_init__(self) -> None:
        for name in ("ttl_s", "stale_while_revalidate_s", "stale_if_error_s"):
            value = getattr(self, name)
            if value is not None:
                seconds(value, name)
        size: object = self.max_entry_bytes
        if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 0):
            raise ConfigurationError(f"max_entry_bytes must be an integer >= 0, not {size!r}")
        _strings(self.tags, "tags")
        if any(not name.strip() or name.strip() == "*" for name in _strings(self.vary, "vary")):
            raise ConfigurationError(
                f"vary must list header names (never '*': such a response is never cached), "
                f"not {self.vary!r}"
            )
        methods = {method.upper() for method in _strings(self.invalidate_on, "invalidate_on")}
        if not methods <= UNSAFE_METHODS:
            raise ConfigurationError(
                f"invalidate_on must list unsafe methods ({', '.join(sorted(UNSAFE_METHODS))}), "
                f"not {self.invalidate_on!r}"
            )


def cache(
    ttl: float | timedelta | None = None,
    *,
    stale_while_revalidate: float | timedelta = 0,
    stale_if_error: float | timedelta = 0,
    tags: Iterable[str] = (),
    vary: Iterable[str] = (),
    public: bool = False,
    max_entry_bytes: int | None = None,
    coalesce: bool = True,
    invalidate_on: Iterable[str] = (),
    etag: bool = True,
    store: bool = True,
) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Declare how an endpoint's responses are cached; the endpoint itself is unchanged.

    ::

        @app.get("/albums/{album_id}")
        @cache(ttl=60, stale_while_revalidate=30, tags=["albums", "album:{album_id}"])
        async def album(album_id: int) -> Album: ...

    The order with the route decorator does not matter. ``Bastion.cache`` is the same function.
    See ``CachePolicy`` for the options (``ttl`` is ``ttl_s`` there).

    Raises:
        ConfigurationError: an option is invalid (at decoration time).
    """
    policy = CachePolicy(
        store=store,
        ttl_s=seconds(ttl, "ttl"),
        stale_while_revalidate_s=seconds(stale_while_revalidate, "stale_while_revalidate") or 0.0,
        stale_if_error_s=seconds(stale_if_error, "stale_if_error") or 0.0,
        tags=_strings(tags, "tags"),
        vary=_strings(vary, "vary"),
        public=public,
        max_entry_bytes=max_entry_bytes,
        coalesce=coalesce,
        invalidate_on=tuple(method.upper() for method in _strings(invalidate_on, "invalidate_on")),
        etag=etag,
    )

    def decorate(endpoint: Callable[P, R]) -> Callable[P, R]:
        setattr(endpoint, POLICY_ATTRIBUTE, policy)
        declarations.count += 1
        return endpoint

    return decorate


def coalesce(*, etag: bool = False) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Concurrent identical requests to the endpoint share one run; nothing is stored.

    Identical means the same cache key: method, route, path, normalized query, credentials.
    """
    return cache(store=False, coalesce=True, etag=etag)


def invalidates(*tags: str) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """A successful (2xx/3xx) call of the endpoint purges ``tags`` before its response is sent.

    ::

        @app.put("/albums/{album_id}")
        @invalidates("albums", "album:{album_id}")
        async def update_album(album_id: int, album: AlbumIn) -> Album: ...
    """
    checked = _strings(tags, "tags")
    if not checked:
        raise ConfigurationError("invalidates() needs at least one tag")

    def decorate(endpoint: Callable[P, R]) -> Callable[P, R]:
        setattr(endpoint, INVALIDATES_ATTRIBUTE, checked)
        declarations.count += 1
        return endpoint

    return decorate


def _strings(values: object, name: str) -> tuple[str, ...]:
    if isinstance(values, str) or not isinstance(values, Iterable):
        raise ConfigurationError(f"{name} must be a list of strings, not {values!r}")
    result = tuple(values)
    if not all(isinstance(value, str) and value for value in result):
        raise ConfigurationError(f"{name} must be non-empty strings: {result!r}")
    return result


@dataclass(frozen=True, slots=True, kw_only=True)
class CacheRule:
    """A policy for the routes whose template (or path, when none matched) fits a pattern.

    ``*`` matches any characters, ``/`` included. Rules come from settings
    (``BASTION_CACHE__RULES``); a policy declared on the endpoint wins over any rule::

        CacheRule.from_value("/albums*=60")
        CacheRule.from_value({"path": "/tracks/{track_id}", "ttl": 30, "tags": ["tracks"]})
    """

    path: str
    """The pattern, starting with ``/``."""
    policy: CachePolicy = field(default_factory=CachePolicy)
    """What applies to matching routes."""

    def __post_init__(self) -> None:
        if not self.path.startswith("/"):
            raise ConfigurationError(f"cache rule pattern {self.path!r} must start with '/'")

    def matches(self, target: str) -> bool:
        """Whether the route template (or path) ``target`` fits the pattern."""
        return _pattern(self.path)(target) is not None

    @classmethod
    def from_value(cls, value: CacheRule | str | Mapping[str, Any]) -> CacheRule:
        """A rule from a ``CacheRule``, ``"PATTERN=TTL"``, or a mapping of ``cache()`` options
        plus ``path``.

        Raises:
            ConfigurationError: the value is none of those, or an option is invalid.
        """
        if isinstance(value, CacheRule):
            return value
        if isinstance(value, str):
            path, separator, ttl = value.partition("=")
            try:
                ttl_s = float(ttl)
            except ValueError:
                ttl_s = -1.0
            if not separator or not path.strip() or ttl_s < 0:
                raise ConfigurationError(
                    f"invalid cache rule {value!r}: expected 'PATTERN=TTL_SECONDS' such as "
                    "'/albums*=60', or an object with 'path' and cache options"
                )
            return cls(path=path.strip(), policy=CachePolicy(ttl_s=ttl_s))
        if isinstance(value, Mapping):
            options = dict(value)
            path = options.pop("path", None)
            if not isinstance(path, str):
                raise ConfigurationError(f"invalid cache rule {value!r}: 'path' is required")
            try:
                decorate = cache(**options)
            except TypeError as exc:
                raise ConfigurationError(
                    f"invalid cache rule {value!r}: {exc}; options are those of cache(): ttl, "
                    "stale_while_revalidate, stale_if_error, tags, vary, public, "
                    "max_entry_bytes, coalesce, invalidate_on, etag, store"
                ) from None

            def probe() -> None: ...

            policy: CachePolicy = getattr(decorate(probe), POLICY_ATTRIBUTE)
            return cls(path=path, policy=policy)
        raise ConfigurationError(f"invalid cache rule {value!r}: expected a string or a mapping")


@lru_cache(maxsize=256)
def _pattern(path: str) -> Callable[[str], re.Match[str] | None]:
    """The compiled ``fullmatch`` of a rule pattern: ``*`` is any characters, the rest literal."""
    return compile_glob(path)


def policy_of(endpoint: Any) -> CachePolicy | None:
    """The policy recorded on ``endpoint`` by ``cache()``, or ``None``."""
    policy = getattr(endpoint, POLICY_ATTRIBUTE, None)
    return policy if isinstance(policy, CachePolicy) else None


def invalidated_by(endpoint: Any) -> tuple[str, ...]:
    """The tags ``invalidates()`` recorded on ``endpoint``."""
    tags = getattr(endpoint, INVALIDATES_ATTRIBUTE, ())
    return tags if isinstance(tags, tuple) else ()


class TagTemplate:
    """A tag with ``{param}`` placeholders, filled from a path matched against its route."""

    __slots__ = ("_names", "_static", "text")

    def __init__(self, text: str) -> None:
        self.text = text
        self._names = tuple(_PLACEHOLDER.findall(text))
        self._static = not self._names

    def render(self, params: Mapping[str, str]) -> str | None:
        """The tag for ``params``; ``None`` when a placeholder has no value."""
        if self._static:
            return self.text
        try:
            return _PLACEHOLDER.sub(lambda found: params[found[1]], self.text)
        except KeyError:
            return None


def path_params(template: str) -> Callable[[str], dict[str, str]]:
    """A function extracting the path parameters of ``template`` (``/a/{id}``) from a path."""
    parts: list[str] = []
    position = 0
    for found in _PLACEHOLDER.finditer(template):
        parts.append(re.escape(template[position : found.start()]))
        converter = found[0].partition(":")[2].rstrip("}")
        parts.append(f"(?P<{found[1]}>{'.*' if converter == 'path' else '[^/]+'})")
        position = found.end()
    parts.append(re.escape(template[position:]))
    match = re.compile("".join(parts)).fullmatch

    def extract(path: str) -> dict[str, str]:
        found = match(path)
        return found.groupdict() if found is not None else {}

    return extract
