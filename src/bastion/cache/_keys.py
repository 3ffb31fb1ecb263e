"""Cache keys for function calls: stable across processes and restarts, never Python ``hash()``.

A call's arguments are bound to the function's signature (so ``f(1)``, ``f(x=1)`` and ``f(1, y=2)``
with a default ``y=2`` are one call), reduced to a canonical JSON form with a type tag on
everything JSON cannot tell apart (tuple from list, ``1.5`` from ``"1.5"``, ``b"x"`` from
``"x"``, a set in any order), and hashed with BLAKE2b. ``hash()`` differs between processes for
strings (``PYTHONHASHSEED``), so it can never name a shared entry.

Parameters that hold per-request objects (the request, the response, a database session) are left
out of the key: they differ on every call but do not change the result. They are found by type,
once, when the function is decorated. Other ``Depends`` parameters stay in the key (the current
user is a dependency too); one whose value has no stable encoding is an error that says to
``exclude=`` it.
"""

from __future__ import annotations

import dataclasses
import datetime
import enum
import inspect
import math
import re
import types
import typing
import uuid
from collections.abc import Callable, Iterable, Mapping
from decimal import Decimal
from hashlib import blake2b
from pathlib import PurePath
from typing import Any

import orjson

from bastion.exceptions import CacheKeyError, ConfigurationError

__all__ = ["KeyBuilder", "canonical", "dependency_parameters", "injected_parameters"]

_INJECTED_TYPES = frozenset(
    {
        "starlette.requests.HTTPConnection",
        "starlette.requests.Request",
        "starlette.websockets.WebSocket",
        "starlette.responses.Response",
        "starlette.background.BackgroundTasks",
        "fastapi.security.oauth2.SecurityScopes",
        "sqlalchemy.orm.session.Session",
        "sqlalchemy.ext.asyncio.session.AsyncSession",
        "sqlalchemy.engine.base.Connection",
        "sqlalchemy.ext.asyncio.engine.AsyncConnection",
    }
)
"""Classes whose instances are injected per request; subclasses count too (checked by MRO, so
none of these libraries is imported to find them)."""

_INJECTED_NAMES = frozenset(name.rpartition(".")[2] for name in _INJECTED_TYPES)
_IDENTIFIER = re.compile(r"[A-Za-z_][\w.]*")
_INT64 = (-(2**63), 2**63 - 1)


class _UnencodableError(TypeError):
    def __init__(self, value: object) -> None:
        super().__init__(type(value))
        self.value = value


def _qualified(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _is_depends(value: object) -> bool:
    cls = type(value)
    return cls.__module__.startswith("fastapi") and cls.__name__ in ("Depends", "Security")


def _is_injected(annotation: object) -> bool:
    """Whether an annotation names a per-request object (request, session, ...), never data."""
    if isinstance(annotation, str):
        # An annotation that could not be resolved: judge by the names it mentions.
        names = (word.rpartition(".")[2] for word in _IDENTIFIER.findall(annotation))
        return any(name in _INJECTED_NAMES for name in names)
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _is_injected(typing.get_args(annotation)[0])
    if origin is typing.Union or origin is types.UnionType:
        return any(_is_injected(argument) for argument in typing.get_args(annotation))
    if isinstance(annotation, type):
        return any(_qualified(cls) in _INJECTED_TYPES for cls in annotation.__mro__)
    return False


def _declares_dependency(annotation: object, default: object) -> bool:
    if _is_depends(default):
        return True
    if isinstance(annotation, str):
        return "Depends(" in annotation or "Security(" in annotation
    if typing.get_origin(annotation) is typing.Annotated:
        return any(_is_depends(item) for item in typing.get_args(annotation)[1:])
    return False


def _parameter_annotations(function: Callable[..., Any]) -> dict[str, tuple[object, object]]:
    try:
        hints = typing.get_type_hints(function, include_extras=True)
    except Exception:  # an annotation names something not importable here: judge the strings
        hints = {}
    return {
        name: (hints.get(name, parameter.annotation), parameter.default)
        for name, parameter in inspect.signature(function).parameters.items()
    }


def injected_parameters(function: Callable[..., Any]) -> frozenset[str]:
    """Names of the parameters that hold per-request objects, which a cache key must ignore.

    They are found by type: (subclasses of) Starlette/FastAPI's ``Request``, ``HTTPConnection``,
    ``WebSocket``, ``Response``, ``BackgroundTasks`` and ``SecurityScopes``, and SQLAlchemy's
    ``Session``, ``AsyncSession``, ``Connection`` and ``AsyncConnection``, however they are
    declared (plainly, ``Optional``, ``Annotated[..., Depends(...)]``).

    Other ``Depends(...)`` parameters are not ignored: a dependency is often who the caller is
    (the current user, the tenant), and leaving it out of the key would serve one user's result
    to another. They are part of the key when their value has a stable encoding, and raise
    ``CacheKeyError`` otherwise (see ``dependency_parameters``).
    """
    return frozenset(
        name
        for name, (annotation, _) in _parameter_annotations(function).items()
        if _is_injected(annotation)
    )


def dependency_parameters(function: Callable[..., Any]) -> frozenset[str]:
    """Names of the parameters declared with ``Depends(...)``/``Security(...)``."""
    return frozenset(
        name
        for name, (annotation, default) in _parameter_annotations(function).items()
        if _declares_dependency(annotation, default)
    )


def _sort_key(encoded: object) -> bytes:
    return orjson.dumps(encoded)


def canonical(value: object) -> object:
    """Reduce ``value`` to plain JSON data: equal for equal values of the same types.

    Values of different types never encode alike (``1`` and ``1.0``, ``[1]`` and ``(1,)`` are
    different keys), which at worst costs a second entry, never a wrong hit.

    JSON scalars stay as they are; everything else becomes a one-key object naming its type:
    ``{"l": [...]}`` list, ``{"t": [...]}`` tuple, ``{"d": [[k, v], ...]}`` dict (sorted),
    ``{"s": [...]}`` set (sorted), ``{"b": hex}`` bytes, and ``{"o": "module.Class", "v": ...}``
    for enums, dates and times, UUIDs, decimals, paths, dataclasses, pydantic models and
    subclasses of builtins.

    Raises:
        TypeError: for an object with no stable value (a socket, a lock, an arbitrary class).
    """
    cls = type(value)
    if cls is str or cls is bool or value is None:
        return value
    if cls is int:
        number = typing.cast("int", value)
        return number if _INT64[0] <= number <= _INT64[1] else {"i": str(number)}
    if cls is float:
        real = typing.cast("float", value)
        return real if math.isfinite(real) else {"f": repr(real)}
    if cls is bytes:
        return {"b": typing.cast("bytes", value).hex()}
    if cls is list:
        return {"l": [canonical(item) for item in typing.cast("list[object]", value)]}
    if cls is tuple:
        return {"t": [canonical(item) for item in typing.cast("tuple[object, ...]", value)]}
    if cls is dict:
        return {"d": _canonical_items(typing.cast("dict[object, object]", value).items())}
    if cls is set or cls is frozenset:
        items = [canonical(item) for item in typing.cast("set[object]", value)]
        return {"s" if cls is set else "fs": sorted(items, key=_sort_key)}
    return {"o": _qualified(cls), "v": _canonical_object(value)}


def _canonical_items(items: Iterable[tuple[object, object]]) -> list[list[object]]:
    pairs = [[canonical(key), canonical(item)] for key, item in items]
    pairs.sort(key=lambda pair: _sort_key(pair[0]))
    return pairs


def _canonical_object(value: object) -> object:
    if isinstance(value, enum.Enum):
        return canonical(value.value)
    if isinstance(value, (datetime.date, datetime.time)):  # datetime is a date
        return value.isoformat()
    if isinstance(value, (uuid.UUID, Decimal, PurePath)):
        return str(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return [
            [field.name, canonical(getattr(value, field.name))]
            for field in dataclasses.fields(value)
        ]
    model_dump = getattr(value, "model_dump", None)
    if callable(model_dump) and hasattr(type(value), "model_fields"):  # a pydantic model
        return canonical(model_dump(mode="python"))
    # Subclasses of builtins (str enums are handled above, named tuples here) by their value.
    for base, convert in _BUILTIN_BASES:
        if isinstance(value, base):
            return canonical(convert(value))
    raise _UnencodableError(value)


_BUILTIN_BASES: tuple[tuple[type, Callable[[Any], object]], ...] = (
    (str, str),
    (int, int),
    (float, float),
    (bytes, bytes),
    (tuple, tuple),
    (list, list),
    (dict, dict),
    (frozenset, frozenset),
    (set, set),
)


class KeyBuilder:
    """Turns a call of one function into its cache key, and its bound arguments.

    Args:
        function: the function being cached.
        name: the function's name in keys (its ``module.qualname`` by default).
        exclude: more parameters to leave out of the key, on top of the injected ones.
        key: a callable taking the function's arguments and returning what identifies the call
            (any value ``canonical`` accepts); replaces the arguments in the key.

    Raises:
        ConfigurationError: if ``exclude`` names a parameter the function does not have.
    """

    __slots__ = ("_custom", "_dependencies", "_excluded", "_name", "_prefix", "_signature")

    def __init__(
        self,
        function: Callable[..., Any],
        *,
        name: str,
        exclude: Iterable[str] = (),
        key: Callable[..., object] | None = None,
    ) -> None:
        self._signature = inspect.signature(function)
        unknown = sorted(set(exclude) - set(self._signature.parameters))
        if unknown:
            raise ConfigurationError(
                f"@cached({name}): exclude= names parameters the function does not have: "
                f"{', '.join(unknown)}"
            )
        self._excluded = injected_parameters(function) | frozenset(exclude)
        self._dependencies = dependency_parameters(function) - self._excluded
        self._custom = key
        self._name = name
        self._prefix = f"fn:{name}:"

    @property
    def excluded(self) -> frozenset[str]:
        """Parameters left out of keys: the injected ones and those given in ``exclude``."""
        return self._excluded

    def bind(self, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> Mapping[str, Any]:
        """Bind a call's arguments to the signature, defaults applied.

        Raises:
            TypeError: the arguments do not fit the signature (as calling the function would).
        """
        bound = self._signature.bind(*args, **kwargs)
        bound.apply_defaults()
        return bound.arguments

    def key(
        self, arguments: Mapping[str, Any], args: tuple[Any, ...], kwargs: Mapping[str, Any]
    ) -> str:
        """Return the cache key of a call: ``fn:<name>:<32 hex digits>``.

        Raises:
            CacheKeyError: an argument (or what ``key=`` returned) has no stable encoding.
        """
        if self._custom is not None:
            identity = self._custom(*args, **kwargs)
            try:
                encoded = canonical(identity)
            except _UnencodableError as exc:
                raise CacheKeyError(
                    f"@cached({self._name}): key= returned {_describe(exc.value)}, which has no "
                    "stable encoding; return a str, number, tuple or other plain value"
                ) from None
        else:
            excluded = self._excluded
            encoded_arguments = []
            for parameter, value in arguments.items():
                if parameter in excluded:
                    continue
                try:
                    encoded_arguments.append([parameter, canonical(value)])
                except _UnencodableError as exc:
                    declared = " (declared with Depends)" if parameter in self._dependencies else ""
                    raise CacheKeyError(
                        f"@cached({self._name}): argument {parameter!r}{declared} contains "
                        f"{_describe(exc.value)}, which has no stable encoding for a cache key; "
                        f"pass exclude=[{parameter!r}] if it does not change the result (a "
                        "client, a connection), or key=... to say what identifies the call"
                    ) from None
            encoded = encoded_arguments
        digest = blake2b(orjson.dumps(encoded), digest_size=16).hexdigest()
        return self._prefix + digest


def _describe(value: object) -> str:
    return f"a {_qualified(type(value))}"
