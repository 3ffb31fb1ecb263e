"""How ``@cached`` turns a function's result into bytes and back.

The default follows the function's return annotation. With one (``-> Album``,
``-> list[Track]``, ``-> dict[str, datetime]``), a pydantic ``TypeAdapter`` for that type writes
JSON and validates it back, so pydantic models, dataclasses, dates and tuples come back as what
the function returned. Without one (or ``-> Any``), plain orjson: JSON types come back as they
are, and other values come back in their JSON form (a tuple as a list, a datetime as a string).

Any object with ``dumps(value) -> bytes`` and ``loads(data) -> value`` can replace it. Pickle is
deliberately not offered: anyone who can write to a shared Redis could then run code in every
worker that reads from it.
"""

from __future__ import annotations

import typing
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

import orjson

__all__ = ["JsonSerializer", "Serializer", "TypedSerializer", "serializer_for"]


@runtime_checkable
class Serializer(Protocol):
    """Turns values into bytes and back. Both methods may raise on input they cannot handle."""

    def dumps(self, value: Any) -> bytes:
        """Encode ``value``."""
        ...

    def loads(self, data: bytes) -> Any:
        """Decode what ``dumps`` returned."""
        ...


def _json_default(value: object) -> object:
    model_dump = getattr(value, "model_dump", None)
    if callable(model_dump):  # a pydantic model without a return annotation to restore it
        return model_dump(mode="json")
    if isinstance(value, (set, frozenset)):
        return list(value)
    raise TypeError(f"Type is not JSON serializable: {type(value).__qualname__}")


class JsonSerializer:
    """orjson, for JSON-shaped results: fast, and the stored bytes are readable JSON."""

    __slots__ = ()

    def dumps(self, value: Any) -> bytes:
        """Encode ``value`` as JSON (dataclasses, dates, UUIDs and pydantic models included)."""
        return orjson.dumps(value, default=_json_default, option=orjson.OPT_NON_STR_KEYS)

    def loads(self, data: bytes) -> Any:
        """Decode JSON into dicts, lists, strings, numbers, booleans and ``None``."""
        return orjson.loads(data)


class TypedSerializer:
    """pydantic's ``TypeAdapter`` for one type: JSON out, validated back into that type.

    The adapter is built on first use, so decorating a function costs nothing at import time.

    Args:
        annotation: the type values have (a function's return annotation).
    """

    __slots__ = ("_adapter", "_annotation")

    def __init__(self, annotation: Any) -> None:
        self._annotation = annotation
        self._adapter: Any = None

    def _get_adapter(self) -> Any:
        if self._adapter is None:
            from pydantic import TypeAdapter

            self._adapter = TypeAdapter(self._annotation)
        return self._adapter

    def dumps(self, value: Any) -> bytes:
        """Encode ``value`` as JSON through the type's schema."""
        return bytes(self._get_adapter().dump_json(value))

    def loads(self, data: bytes) -> Any:
        """Validate JSON back into the type."""
        return self._get_adapter().validate_json(data)


def serializer_for(function: Callable[..., Any]) -> Serializer:
    """Pick the default serializer from ``function``'s return annotation.

    A resolvable annotation other than ``Any``/``object`` gives a ``TypedSerializer`` when
    pydantic can build a schema for it; anything else gives a ``JsonSerializer``.
    """
    try:
        annotation = typing.get_type_hints(function).get("return", Any)
    except Exception:  # the annotation names something not importable here
        return JsonSerializer()
    if annotation is Any or annotation is object:
        return JsonSerializer()
    try:
        from pydantic import TypeAdapter

        adapter = TypeAdapter(annotation)
    except Exception:  # pydantic has no schema for it: an arbitrary class
        return JsonSerializer()
    typed = TypedSerializer(annotation)
    typed._adapter = adapter
    return typed
