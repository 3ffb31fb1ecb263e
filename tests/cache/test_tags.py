"""Tag templates of ``@cached``: fixed tags, placeholders filled per call, checked early."""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Callable, Sequence
from typing import Any

import pytest

from bastion.cache._tags import TagTemplates
from bastion.exceptions import ConfigurationError


@dataclasses.dataclass
class User:
    """An argument whose attribute a tag reads."""

    id: int


def render(
    tags: Sequence[str] | Callable[..., Sequence[str]], *args: Any, **kwargs: Any
) -> tuple[str, ...]:
    """The tags of one call of ``f(user, when, page=1)``."""
    templates = TagTemplates(tags, parameters=("user", "when", "page"), function_name="f")
    arguments = {"user": args[0], "when": args[1], "page": kwargs.get("page", 1)}
    return templates.render(arguments, args, kwargs)


def test_fixed_tags_come_first_then_rendered_ones() -> None:
    """Fixed tags are kept as they are; placeholders read arguments, attributes and formats."""
    tags = ["users", "user:{user.id}", "day:{when:%Y-%m-%d}", "page:{page}", "users"]
    rendered = render(tags, User(7), datetime.date(2024, 5, 1), page=3)
    assert ("users", "user:7", "day:2024-05-01", "page:3") == rendered


def test_a_callable_gives_the_tags_of_each_call() -> None:
    """tags= may compute the tags from the call's arguments."""
    rendered = render(lambda user, when, page=1: [f"user:{user.id}"], User(3), None)
    assert ("user:3",) == rendered


def test_a_callable_returning_a_string_is_refused() -> None:
    """A callable that returns one string (not a list) would make a tag per character."""
    with pytest.raises(TypeError, match="list of tags"):
        render(lambda user, when, page=1: "users", User(3), None)


@pytest.mark.parametrize(
    ("tags", "message"),
    [
        (["album:{album_id}"], "album_id"),
        (["album:{"], "not a valid template"),
        ([""], "must not be empty"),
        ("albums", "list of tags"),
    ],
)
def test_bad_tags_fail_when_decorating(tags: Any, message: str) -> None:
    """Unknown parameters, broken templates, empty tags and bare strings are refused early."""
    with pytest.raises(ConfigurationError, match=message):
        TagTemplates(tags, parameters=("user",), function_name="f")
