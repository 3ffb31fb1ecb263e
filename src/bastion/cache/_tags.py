"""Tags of ``@cached`` entries: fixed names, or templates filled from each call's arguments.

``tags=["albums", "album:{album_id}"]`` tags a call ``get_album(album_id=42)`` with ``albums`` and
``album:42``, so a write to album 42 purges only what depends on it. Placeholders name the
function's parameters and are checked when the function is decorated.
"""

from __future__ import annotations

import string
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

from bastion.exceptions import ConfigurationError

__all__ = ["TagTemplates"]

_FORMATTER = string.Formatter()


class TagTemplates:
    """The tags of a cached function, rendered per call.

    Args:
        tags: tag names, each maybe with ``{parameter}`` placeholders (format specs allowed,
            ``{when:%Y}``); or a callable that takes the call's arguments and returns the tags.
        parameters: the function's parameter names, to check placeholders against.
        function_name: the function's name, for error messages.

    Raises:
        ConfigurationError: a tag is empty or names a parameter the function does not have.
    """

    __slots__ = ("_callable", "_fixed", "_templates")

    def __init__(
        self,
        tags: Sequence[str] | Callable[..., Sequence[str]],
        *,
        parameters: Collection[str],
        function_name: str,
    ) -> None:
        self._callable: Callable[..., Sequence[str]] | None = None
        self._fixed: tuple[str, ...] = ()
        self._templates: tuple[str, ...] = ()
        if callable(tags):
            self._callable = tags
            return
        if isinstance(tags, str):
            raise ConfigurationError(
                f"@cached({function_name}): tags must be a list of tags, not the string {tags!r}"
            )
        fixed: list[str] = []
        templates: list[str] = []
        for tag in dict.fromkeys(tags):
            if not tag:
                raise ConfigurationError(f"@cached({function_name}): a tag must not be empty")
            try:
                fields = [field for _, field, _, _ in _FORMATTER.parse(tag) if field is not None]
            except ValueError as exc:
                raise ConfigurationError(
                    f"@cached({function_name}): tag {tag!r} is not a valid template: {exc}"
                ) from None
            names = {field.split(".")[0].split("[")[0] for field in fields}
            unknown = sorted(name for name in names if name not in parameters)
            if unknown:
                raise ConfigurationError(
                    f"@cached({function_name}): tag {tag!r} names parameters the function does "
                    f"not have: {', '.join(unknown)}"
                )
            (templates if fields else fixed).append(tag)
        self._fixed = tuple(fixed)
        self._templates = tuple(templates)

    @property
    def fixed(self) -> tuple[str, ...]:
        """The tags that do not depend on the arguments."""
        return self._fixed

    def render(
        self, arguments: Mapping[str, Any], args: tuple[Any, ...], kwargs: Mapping[str, Any]
    ) -> tuple[str, ...]:
        """Return the tags of one call."""
        if self._callable is not None:
            tags = self._callable(*args, **kwargs)
            if isinstance(tags, str):
                raise TypeError(f"tags= returned the string {tags!r}; return a list of tags")
            return tuple(tags)
        if not self._templates:
            return self._fixed
        return self._fixed + tuple(template.format_map(arguments) for template in self._templates)
