"""The ``exclude=`` option every bastion middleware takes, compiled once into a predicate.

Candidate for ``bastion._asgi`` as soon as a second middleware takes ``exclude=``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

from bastion._asgi import scope_path
from bastion.exceptions import ConfigurationError
from bastion.types import Scope

__all__ = ["Exclude", "compile_exclude"]

Exclude = str | Sequence[str] | Callable[[Scope], bool] | None
"""What ``exclude=`` accepts: regular expression(s) matched at the start of the routed path
(``"/_bastion"`` excludes everything under it, ``"/health$"`` only that path), or a predicate
over the ASGI scope."""


def compile_exclude(exclude: Exclude) -> Callable[[Scope], bool] | None:
    """Compile an ``exclude=`` option into a predicate (``None`` when nothing is excluded).

    Raises:
        ConfigurationError: a pattern does not compile, or the option has the wrong type.
    """
    if exclude is None:
        return None
    if callable(exclude):
        return exclude
    patterns = [exclude] if isinstance(exclude, str) else list(exclude)
    if not patterns:
        return None
    if not all(isinstance(pattern, str) for pattern in patterns):
        raise ConfigurationError(
            f"exclude must be a regex, a list of regexes or a predicate, not {exclude!r}"
        )
    try:
        combined = re.compile("|".join(f"(?:{pattern})" for pattern in patterns))
    except re.error as exc:
        raise ConfigurationError(
            f"exclude pattern {patterns!r} is not a valid regex: {exc}"
        ) from exc
    match = combined.match

    def is_excluded(scope: Scope) -> bool:
        return match(scope_path(scope)) is not None

    return is_excluded
