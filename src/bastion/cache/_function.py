"""``@cached``: cache what an async function returns, by its arguments, in memory or Redis.

A call looks up its key (one Redis round trip); on a miss, concurrent calls for the same key run
the function once (single-flight, across workers too), and the result is stored with the
function's TTL and tags. With ``local_ttl=``, a small in-process cache sits in front of Redis and
is kept coherent by Redis pub/sub: every set, delete and purge tells the other processes to drop
their copies.

A store outage never fails a call: the function runs uncached, and ``CacheStoreFailure`` is
published. The store's health gate makes that cost nothing per call while the store is down, and
lets the cache resume by itself when it is back.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
from collections.abc import Awaitable, Callable, Collection, Sequence
from datetime import timedelta
from typing import Any, Generic, ParamSpec, TypedDict, TypeVar, Unpack, cast

from bastion._clock import SYSTEM_CLOCK, Clock
from bastion.cache._backend import (
    CacheBackend,
    Invalidation,
    TagSnapshot,
    default_backend,
    default_hooks,
)
from bastion.cache._flight import SingleFlight
from bastion.cache._keys import KeyBuilder
from bastion.cache._memory import MemoryCacheBackend
from bastion.cache._serialize import Serializer, serializer_for
from bastion.cache._tags import TagTemplates
from bastion.events import CacheStoreFailure, FunctionCacheHit, FunctionCacheMiss, Hooks
from bastion.exceptions import CacheValueError, ConfigurationError, StoreError

__all__ = ["CacheOptions", "CachedFunction", "cached", "purge"]

logger = logging.getLogger("bastion.cache")

P = ParamSpec("P")
R = TypeVar("R")

DEFAULT_LOCAL_MAX_BYTES = 8 * 1024 * 1024
"""The default byte bound of one function's local cache."""

_MISSING: Any = object()
_NOT_WATCHED = contextlib.nullcontext()


def _seconds(value: float | timedelta, option: str, function_name: str) -> float:
    seconds = value.total_seconds() if isinstance(value, timedelta) else float(value)
    if not 0 < seconds < float("inf"):
        raise ConfigurationError(
            f"@cached({function_name}): {option} must be positive and finite, not {value!r}"
        )
    return seconds


class _Outcome:
    """One run of the function, as shared with the calls waiting on it."""

    __slots__ = ("data", "error", "value")

    def __init__(
        self, value: Any = _MISSING, data: bytes | None = None, error: BaseException | None = None
    ) -> None:
        self.value = value
        self.data = data
        self.error = error


class _Fetch:
    """A fetch whose result may go into the local cache, unless invalidated meanwhile.

    Use it as ``with binding.watch(key, tags) as fetch:``; it is watched while the block runs.
    """

    __slots__ = ("fetches", "invalidated", "key", "tags")

    def __init__(self, fetches: set[_Fetch], key: str, tags: frozenset[str]) -> None:
        self.fetches = fetches
        self.key = key
        self.tags = tags
        self.invalidated = False

    def __enter__(self) -> _Fetch:
        self.fetches.add(self)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.fetches.discard(self)


class _Binding:
    """What a cached function keeps per backend: its single-flight and its local cache."""

    __slots__ = ("backend", "fetches", "flight", "local", "unsubscribe")

    def __init__(
        self, backend: CacheBackend, flight: SingleFlight, local: MemoryCacheBackend | None
    ) -> None:
        self.backend = backend
        self.flight = flight
        self.local = local
        self.unsubscribe: Callable[[], None] | None = None
        # Fetches from the backend in progress whose result is meant for the local cache. An
        # invalidation of their key or tags that arrives meanwhile marks them: the value they
        # bring back may be exactly what was invalidated, so it must not be kept locally.
        self.fetches: set[_Fetch] = set()

    def watch(self, key: str, tags: Collection[str]) -> _Fetch:
        """Watch ``key`` and ``tags`` for invalidations during a fetch (a context manager)."""
        return _Fetch(self.fetches, key, frozenset(tags))

    def invalidated(self, invalidation: Invalidation) -> None:
        """Apply an invalidation from the backend to the local cache."""
        for fetch in self.fetches:
            if (
                invalidation.everything
                or fetch.key in invalidation.keys
                or not fetch.tags.isdisjoint(invalidation.tags)
            ):
                fetch.invalidated = True
        local = self.local
        if local is None:
            return
        if invalidation.everything:
            local.clear()
            return
        for key in invalidation.keys:
            local.discard(key)
        if invalidation.tags:
            local.discard_tags(*invalidation.tags)

    def ready_local(self) -> MemoryCacheBackend | None:
        """The local cache, if invalidations are flowing now (otherwise it could serve stale)."""
        local = self.local
        if local is None or not getattr(self.backend, "subscribed", False):
            return None
        return local


class CachedFunction(Generic[P, R]):
    """An async function whose results are cached, made by ``@cached``.

    Calling it has the function's signature. It also offers ``invalidate`` (drop one call's
    entry) and ``key`` (the cache key of a call). ``cached`` documents the options.
    """

    __slots__ = (
        "__dict__",  # functools.update_wrapper: __name__, __doc__, __wrapped__, ...
        "_backend",
        "_binding",
        "_clock",
        "_function",
        "_hooks",
        "_keys",
        "_local_max_bytes",
        "_local_ttl_s",
        "_lock_ttl_s",
        "_name",
        "_serializer",
        "_tags",
        "_ttl_s",
        "_wait_s",
    )

    __name__: str
    __qualname__: str
    __wrapped__: Callable[P, Awaitable[R]]

    def __init__(
        self,
        function: Callable[P, Awaitable[R]],
        *,
        ttl: float | timedelta,
        tags: Sequence[str] | Callable[..., Sequence[str]] = (),
        key: Callable[..., object] | None = None,
        exclude: Sequence[str] = (),
        name: str | None = None,
        backend: CacheBackend | None = None,
        serializer: Serializer | None = None,
        local_ttl: float | timedelta | None = None,
        local_max_bytes: int = DEFAULT_LOCAL_MAX_BYTES,
        lock_ttl_s: float = 10.0,
        wait_s: float = 10.0,
        hooks: Hooks | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        if not inspect.iscoroutinefunction(function):
            raise TypeError(
                f"@cached needs an async function (async def), not {function!r}; wrap a "
                "synchronous function in one that runs it with asyncio.to_thread"
            )
        self._name = name or f"{function.__module__}.{function.__qualname__}"
        self._ttl_s = _seconds(ttl, "ttl", self._name)
        self._local_ttl_s = (
            None if local_ttl is None else _seconds(local_ttl, "local_ttl", self._name)
        )
        if local_max_bytes < 1:
            raise ConfigurationError(
                f"@cached({self._name}): local_max_bytes must be at least 1, not {local_max_bytes}"
            )
        self._local_max_bytes = local_max_bytes
        for option, value in (("lock_ttl_s", lock_ttl_s), ("wait_s", wait_s)):
            _seconds(value, option, self._name)
        self._lock_ttl_s = lock_ttl_s
        self._wait_s = wait_s
        self._function = function
        self._keys = KeyBuilder(function, name=self._name, exclude=exclude, key=key)
        self._tags = TagTemplates(
            tags,
            parameters=tuple(inspect.signature(function).parameters),
            function_name=self._name,
        )
        self._backend = backend
        self._serializer = serializer
        self._hooks = hooks
        self._clock = clock
        self._binding: _Binding | None = None
        functools.update_wrapper(self, function)

    @property
    def name(self) -> str:
        """The function's name in keys and events."""
        return self._name

    @property
    def ttl_s(self) -> float:
        """How long results are kept, in seconds."""
        return self._ttl_s

    @property
    def excluded(self) -> frozenset[str]:
        """Parameters left out of the key: FastAPI-injected ones and those given in exclude=."""
        return self._keys.excluded

    def key(self, *args: P.args, **kwargs: P.kwargs) -> str:
        """Return the cache key of a call with these arguments.

        Raises:
            CacheKeyError: an argument has no stable encoding.
        """
        return self._keys.key(self._keys.bind(args, kwargs), args, kwargs)

    def __get__(self, instance: object, owner: type | None = None) -> Any:
        # Decorating a method: bind the instance like a function would.
        if instance is None:
            return self
        return _BoundCachedMethod(self, instance)

    async def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Return the cached result of the call, running the function only on a miss."""
        clock = self._clock
        started = clock.monotonic()
        keys = self._keys
        arguments = keys.bind(args, kwargs)
        key = keys.key(arguments, args, kwargs)
        binding = self._bind()
        backend = binding.backend
        local = binding.ready_local()
        if local is not None:
            data = await local.get(key)
            if data is not None:
                value = self._decode(data)
                if value is not _MISSING:
                    self._hit("local", started)
                    return cast("R", value)
        # Tags are needed before the lookup only to watch them for a local fill.
        tags = None if local is None else self._tags.render(arguments, args, kwargs)
        fetch = None if tags is None else binding.watch(key, tags)
        try:
            with fetch or _NOT_WATCHED:
                data = await backend.get(key)
        except StoreError as exc:
            self._store_failed(backend, "get", exc)
            data = None
        if data is not None:
            value = self._decode(data)
            if value is not _MISSING:
                if local is not None and fetch is not None and not fetch.invalidated:
                    await self._fill_local(local, key, data, fetch.tags)
                self._hit(backend.name, started)
                return cast("R", value)
        if tags is None:
            tags = self._tags.render(arguments, args, kwargs)

        async def produce() -> _Outcome:
            return await self._produce(binding, key, tags, args, kwargs)

        async def load() -> _Outcome | None:
            stored = await backend.get(key)
            return None if stored is None else _Outcome(data=stored)

        outcome, led = await binding.flight.run(key, produce, load=load)
        if outcome is None:
            # This process's leader failed or was cancelled: run our own.
            outcome, led = await produce(), True
        if outcome.error is not None:
            raise outcome.error
        if led or outcome.data is None:
            value = outcome.value
        else:
            # Every caller gets its own object, as on a hit: never one shared mutable result.
            value = self._decode(outcome.data)
            if value is _MISSING:
                outcome = await produce()
                if outcome.error is not None:
                    raise outcome.error
                value = outcome.value
        self._miss(not led, started)
        return cast("R", value)

    async def _produce(
        self,
        binding: _Binding,
        key: str,
        tags: tuple[str, ...],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> _Outcome:
        backend = binding.backend
        with binding.watch(key, tags) as fetch:
            snapshot: Sequence[str] | TagSnapshot = tags
            if tags:
                try:
                    snapshot = await backend.tag_snapshot(tags)
                except StoreError as exc:
                    self._store_failed(backend, "get", exc)
            try:
                value = await self._function(*args, **kwargs)
            except Exception as exc:  # shared with this process's waiters, raised in each
                return _Outcome(error=exc)
            try:
                data = self._get_serializer().dumps(value)
            except Exception as exc:
                error = CacheValueError(
                    f"@cached({self._name}): the result, a {type(value).__module__}."
                    f"{type(value).__qualname__}, cannot be serialized ({exc}); annotate the "
                    "function's return type or pass serializer=..."
                )
                error.__cause__ = exc
                return _Outcome(error=error)
            try:
                stored = await backend.set(key, data, ttl_s=self._ttl_s, tags=snapshot)
            except StoreError as exc:
                self._store_failed(backend, "set", exc)
                stored = False
            local = binding.ready_local()
            if stored and local is not None and not fetch.invalidated:
                await self._fill_local(local, key, data, tags)
            return _Outcome(value=value, data=data)

    async def _fill_local(
        self, local: MemoryCacheBackend, key: str, data: bytes, tags: Collection[str]
    ) -> None:
        # The local cache's max_ttl_s is local_ttl, so this keeps the shorter of the two.
        await local.set(key, data, ttl_s=self._ttl_s, tags=tuple(tags))

    async def invalidate(self, *args: P.args, **kwargs: P.kwargs) -> bool:
        """Drop the stored result of the call with these arguments, everywhere.

        With a local cache, other processes drop their copies too (by pub/sub).

        Returns:
            Whether a stored result was there.

        Raises:
            StoreError: the store could not be reached; the entry may still be there.
        """
        key = self.key(*args, **kwargs)
        binding = self._bind()
        if binding.local is not None:
            binding.local.discard(key)
        return await binding.backend.delete(key)

    def _bind(self) -> _Binding:
        backend = self._backend or default_backend()
        binding = self._binding
        if binding is not None and binding.backend is backend:
            return binding
        if binding is not None and binding.unsubscribe is not None:
            binding.unsubscribe()
        flight = SingleFlight(
            backend,
            lock_ttl_s=self._lock_ttl_s,
            wait_s=self._wait_s,
            clock=self._clock,
            hooks=self._hooks or default_hooks(),
        )
        local: MemoryCacheBackend | None = None
        subscribe = getattr(backend, "subscribe", None)
        # A local cache only pays in front of a shared backend that announces invalidations;
        # in front of the memory backend it would be a second copy of the same thing.
        if self._local_ttl_s is not None and callable(subscribe):
            local = MemoryCacheBackend(
                max_bytes=self._local_max_bytes, max_ttl_s=self._local_ttl_s, clock=self._clock
            )
        binding = _Binding(backend, flight, local)
        if local is not None and callable(subscribe):
            binding.unsubscribe = subscribe(binding.invalidated)
        self._binding = binding
        return binding

    def _get_serializer(self) -> Serializer:
        serializer = self._serializer
        if serializer is None:
            serializer = self._serializer = serializer_for(self._function)
        return serializer

    def _decode(self, data: bytes) -> Any:
        try:
            return self._get_serializer().loads(data)
        except Exception as exc:  # written by an older version of the function, or corrupt
            logger.warning(
                "@cached(%s): ignoring an entry that does not decode: %s", self._name, exc
            )
            return _MISSING

    def _hit(self, level: str, started: float) -> None:
        hooks = self._hooks or default_hooks()
        if hooks is not None:
            duration_s = self._clock.monotonic() - started
            hooks.publish(FunctionCacheHit(function=self._name, level=level, duration_s=duration_s))

    def _miss(self, shared: bool, started: float) -> None:
        hooks = self._hooks or default_hooks()
        if hooks is not None:
            duration_s = self._clock.monotonic() - started
            hooks.publish(
                FunctionCacheMiss(function=self._name, shared=shared, duration_s=duration_s)
            )

    def _store_failed(self, backend: CacheBackend, operation: str, error: StoreError) -> None:
        hooks = self._hooks or default_hooks()
        if hooks is not None:
            hooks.publish(
                CacheStoreFailure(backend=backend.name, operation=operation, error=str(error))
            )

    def __repr__(self) -> str:
        return f"<cached {self._name} ttl={self._ttl_s}s>"


class _BoundCachedMethod:
    """A cached method bound to an instance: ``obj.method(x)``, ``obj.method.invalidate(x)``."""

    __slots__ = ("_cached", "_instance")

    def __init__(self, cached: CachedFunction[..., Any], instance: object) -> None:
        self._cached = cached
        self._instance = instance

    def __call__(self, *args: Any, **kwargs: Any) -> Awaitable[Any]:
        return self._cached(self._instance, *args, **kwargs)

    async def invalidate(self, *args: Any, **kwargs: Any) -> bool:
        """Drop the stored result of this call of the method (see ``CachedFunction``)."""
        return await self._cached.invalidate(self._instance, *args, **kwargs)

    def key(self, *args: Any, **kwargs: Any) -> str:
        """The cache key of this call of the method."""
        return self._cached.key(self._instance, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._cached, name)


class CacheOptions(TypedDict, total=False):
    """The options of ``cached`` besides ``ttl``; see its docstring."""

    tags: Sequence[str] | Callable[..., Sequence[str]]
    key: Callable[..., object] | None
    exclude: Sequence[str]
    name: str | None
    backend: CacheBackend | None
    serializer: Serializer | None
    local_ttl: float | timedelta | None
    local_max_bytes: int
    lock_ttl_s: float
    wait_s: float
    hooks: Hooks | None
    clock: Clock


def cached(
    *, ttl: float | timedelta, **options: Unpack[CacheOptions]
) -> Callable[[Callable[P, Awaitable[R]]], CachedFunction[P, R]]:
    """Cache an async function's results by its arguments.

    Example::

        @cached(ttl=300, tags=["albums", "album:{album_id}"])
        async def album(album_id: int, session: AsyncSession = Depends(db)) -> Album:
            ...

        await album(42)              # runs, stores under a key derived from album_id only
        await album.invalidate(42)   # drops that entry
        await purge("album:42")      # drops every entry tagged album:42

    Args:
        ttl: how long a result is kept (seconds or a ``timedelta``).
        tags: tags of every entry, with ``{parameter}`` placeholders filled per call; or a
            callable taking the call's arguments and returning its tags.
        key: a callable taking the call's arguments and returning what identifies the call;
            replaces the arguments in the key (for arguments that cannot be encoded).
        exclude: parameters to leave out of the key, besides those FastAPI injects.
        name: the function's name in keys and events (``module.qualname`` by default). Change
            it (``"album:v2"``) when the result's shape changes, to leave old entries behind.
        backend: where entries live; by default the one ``Bastion`` configured (its store), or
            a process-wide memory backend without ``Bastion``.
        serializer: turns results into bytes and back; by default pydantic for the return
            annotation, or orjson without one.
        local_ttl: keep results in this process too, for at most this long, in front of a Redis
            backend; other processes' writes and purges reach it by pub/sub.
        local_max_bytes: the local cache's byte bound.
        lock_ttl_s: how long a worker's single-flight lock lasts (above the function's usual
            run time).
        wait_s: the longest a call waits for another worker's run before running itself.
        hooks: where events go; by default the ones ``Bastion`` configured.
        clock: time source for latencies and the local cache.

    Raises:
        ConfigurationError: an option is out of range, or a tag or ``exclude`` names a parameter
            the function does not have (when decorating).
        TypeError: the function is not ``async def`` (when decorating).
    """

    def decorate(function: Callable[P, Awaitable[R]]) -> CachedFunction[P, R]:
        return CachedFunction(function, ttl=ttl, **options)

    return decorate


async def purge(*tags: str, backend: CacheBackend | None = None) -> None:
    """Invalidate every cached entry carrying any of ``tags``, in every process.

    Args:
        tags: the tags to purge.
        backend: the backend to purge in; by default the one ``Bastion`` configured.

    Raises:
        StoreError: the store could not be reached; the entries may still be served.
    """
    await (backend or default_backend()).purge(*tags)
