"""Cache keys of function calls: canonical, stable across processes, blind to injected objects."""

from __future__ import annotations

import dataclasses
import datetime
import enum
import os
import subprocess
import sys
import uuid
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, NamedTuple

import orjson
import pytest
from fastapi import BackgroundTasks, Depends, Request, Response, WebSocket
from pydantic import BaseModel
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session
from starlette.requests import HTTPConnection

from bastion.cache._keys import (
    KeyBuilder,
    canonical,
    dependency_parameters,
    injected_parameters,
)
from bastion.exceptions import CacheKeyError, ConfigurationError

ROOT = Path(__file__).resolve().parents[2]


class Color(enum.Enum):
    """An enum argument."""

    RED = "red"


@dataclasses.dataclass
class Point:
    """A dataclass argument."""

    x: int
    y: int


class Query(BaseModel):
    """A pydantic model argument."""

    text: str
    limit: int = 10


class Pair(NamedTuple):
    """A named tuple argument."""

    left: int
    right: int


def database() -> None:
    """A dependency."""


def key_of(function: Callable[..., Any], *args: Any, **kwargs: Any) -> str:
    """The cache key of one call."""
    builder = KeyBuilder(function, name="f")
    return builder.key(builder.bind(args, kwargs), args, kwargs)


@pytest.mark.parametrize(
    ("left", "right"),
    [
        (1, 1.0),
        (1, "1"),
        (1, True),
        (0, None),
        ([1, 2], (1, 2)),
        (b"x", "x"),
        ({"a": 1}, [["a", 1]]),
        ({1}, frozenset({1})),
        (float("nan"), None),
        (Color.RED, "red"),
        (
            datetime.datetime(2024, 1, 1, 1, tzinfo=datetime.timezone(datetime.timedelta(hours=1))),
            datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC),
        ),
        (Pair(1, 2), (1, 2)),
    ],
)
def test_values_of_different_types_never_share_an_encoding(left: object, right: object) -> None:
    """Values JSON would confuse (or that differ in type) encode differently."""
    assert orjson.dumps(canonical(left)) != orjson.dumps(canonical(right))


@pytest.mark.parametrize(
    ("left", "right"),
    [
        ({"a": 1, "b": 2}, {"b": 2, "a": 1}),
        ({3, 1, 2}, {2, 3, 1}),
        ({1: "x", "1": "y"}, {"1": "y", 1: "x"}),
        (Point(1, 2), Point(1, 2)),
        (Query(text="x"), Query(text="x", limit=10)),
        (uuid.UUID(int=5), uuid.UUID(int=5)),
        (Decimal("1.10"), Decimal("1.10")),
    ],
)
def test_equal_values_encode_alike(left: object, right: object) -> None:
    """Order of dicts and sets does not matter; equal objects of one type encode alike."""
    assert orjson.dumps(canonical(left)) == orjson.dumps(canonical(right))


def test_large_integers_and_special_floats_are_encoded() -> None:
    """Integers beyond 64 bits and non-finite floats have encodings of their own."""
    assert [{"i": str(2**70)}, {"f": "inf"}, {"f": "-inf"}] == [
        canonical(2**70),
        canonical(float("inf")),
        canonical(float("-inf")),
    ]


def test_an_object_without_a_value_is_refused() -> None:
    """An arbitrary object has no stable encoding."""
    with pytest.raises(TypeError):
        canonical(object())


def test_keyword_positional_and_default_spellings_are_one_call() -> None:
    """f(1), f(x=1) and f(1, y=2) with y defaulting to 2 share a key."""

    async def f(x: int, y: int = 2) -> int:
        return x + y

    keys = {key_of(f, 1), key_of(f, x=1), key_of(f, 1, y=2), key_of(f, y=2, x=1)}
    assert 1 == len(keys)


def test_different_arguments_give_different_keys() -> None:
    """Each argument value has its own key."""

    async def f(x: object) -> None:
        return None

    keys = {key_of(f, value) for value in (1, 2, "1", (1,), [1], None, {"a": 1}, {"a": 2})}
    assert 8 == len(keys)


def test_keys_name_the_function() -> None:
    """Two functions with the same arguments never share a key."""

    async def f(x: int) -> None:
        return None

    one = KeyBuilder(f, name="one")
    two = KeyBuilder(f, name="two")
    arguments = one.bind((1,), {})
    assert one.key(arguments, (1,), {}) != two.key(arguments, (1,), {})
    assert one.key(arguments, (1,), {}).startswith("fn:one:")


def test_keys_are_stable_across_processes() -> None:
    """A key does not depend on the process: no hash(), whatever PYTHONHASHSEED is."""
    script = (
        "from bastion.cache._keys import KeyBuilder\n"
        "async def f(x, y): ...\n"
        "b = KeyBuilder(f, name='f')\n"
        "args = ('text', {'set': {'a', 'b', 'c'}, 'n': 1.5})\n"
        "print(b.key(b.bind(args, {}), args, {}))\n"
    )
    keys = set()
    for seed in ("1", "2", "3"):
        environment = {**os.environ, "PYTHONHASHSEED": seed}
        output = subprocess.run(
            [sys.executable, "-c", script],
            capture_output=True,
            check=True,
            cwd=ROOT,
            env=environment,
            text=True,
        )
        keys.add(output.stdout.strip())
    assert 1 == len(keys)


def test_injected_parameters_are_found_by_type() -> None:
    """Requests, responses, sockets, background tasks and sessions are left out, however typed."""

    async def endpoint(
        album_id: int,
        request: Request,
        response: Response,
        websocket: WebSocket,
        tasks: BackgroundTasks,
        connection: HTTPConnection,
        session: AsyncSession,
        sync_session: Session,
        maybe: Request | None,
        annotated: Annotated[AsyncSession, Depends(database)],
        user: Annotated[Query, Depends(database)],
        db: None = Depends(database),
        limit: int = 10,
    ) -> None:
        return None

    expected = {
        "request",
        "response",
        "websocket",
        "tasks",
        "connection",
        "session",
        "sync_session",
        "maybe",
        "annotated",
    }
    assert expected == set(injected_parameters(endpoint))
    assert {"annotated", "user", "db"} == set(dependency_parameters(endpoint))


def test_other_dependencies_stay_in_the_key() -> None:
    """A dependency such as the current user is part of the key: users never share entries."""

    async def orders(user: Annotated[Query, Depends(database)], page: int = 1) -> None:
        return None

    alice, bob = Query(text="alice"), Query(text="bob")
    assert key_of(orders, alice) != key_of(orders, bob)
    assert key_of(orders, alice) == key_of(orders, Query(text="alice"))


def test_an_unencodable_dependency_says_to_exclude_it() -> None:
    """A dependency with no stable encoding is an error naming it, never silently dropped."""

    async def albums(client: Annotated[object, Depends(database)]) -> None:
        return None

    with pytest.raises(CacheKeyError, match=r"'client' \(declared with Depends\).*exclude="):
        key_of(albums, object())


def test_unresolvable_annotations_are_judged_by_name() -> None:
    """An annotation naming a class not importable here still marks a request as injected."""
    namespace: dict[str, Any] = {}
    exec(  # a function whose annotations cannot be resolved
        "from __future__ import annotations\n"
        "async def f(x: int, request: Request, session: 'db.AsyncSession', other: Missing): ...",
        namespace,
    )
    assert {"request", "session"} == set(injected_parameters(namespace["f"]))


def test_injected_arguments_do_not_change_the_key() -> None:
    """Two calls that differ only in injected objects share a key."""

    async def f(album_id: int, request: Request, session: AsyncSession) -> None:
        return None

    first = key_of(f, 1, Request({"type": "http"}), object())
    second = key_of(f, 1, Request({"type": "http", "path": "/"}), object())
    assert first == second


def test_exclude_leaves_parameters_out() -> None:
    """exclude= drops a parameter that does not change the result."""

    async def f(x: int, trace: object) -> None:
        return None

    builder = KeyBuilder(f, name="f", exclude=["trace"])
    args_one, args_two = (1, object()), (1, object())
    assert builder.key(builder.bind(args_one, {}), args_one, {}) == builder.key(
        builder.bind(args_two, {}), args_two, {}
    )


def test_exclude_of_an_unknown_parameter_is_refused() -> None:
    """A misspelt exclude= fails when decorating, naming the parameter."""

    async def f(x: int) -> None:
        return None

    with pytest.raises(ConfigurationError, match="trcae"):
        KeyBuilder(f, name="f", exclude=["trcae"])


def test_unencodable_argument_names_the_parameter() -> None:
    """An argument with no stable value raises CacheKeyError naming the parameter and type."""

    async def f(x: int, client: object) -> None:
        return None

    with pytest.raises(CacheKeyError, match=r"argument 'client' contains a builtins\.object"):
        key_of(f, 1, object())


def test_key_callable_replaces_the_arguments() -> None:
    """key= decides what identifies a call."""

    async def f(user: object, page: int) -> None:
        return None

    class User:
        def __init__(self, user_id: int) -> None:
            self.user_id = user_id

    builder = KeyBuilder(f, name="f", key=lambda user, page: (user.user_id, page))
    calls = [((User(1), 1), {}), ((User(1),), {"page": 1}), ((User(2), 1), {})]
    keys = [builder.key(builder.bind(args, kwargs), args, kwargs) for args, kwargs in calls]
    assert (keys[0], 3) == (keys[1], len(set(keys)) + 1)


def test_key_callable_must_return_an_encodable_value() -> None:
    """A key= that returns an arbitrary object is reported as such."""

    async def f(x: int) -> None:
        return None

    builder = KeyBuilder(f, name="f", key=lambda x: object())
    with pytest.raises(CacheKeyError, match="key= returned"):
        builder.key(builder.bind((1,), {}), (1,), {})
