"""URL helpers shared by the core: never let a credential reach a log line or an error message."""

from __future__ import annotations

import re

__all__ = ["redact_url"]

_MASK = "****"
# Query parameters that carry secrets in the URL schemes bastion accepts (redis-py reads
# ``?password=`` and ``?ssl_password=``; libpq reads ``?password=`` and ``?sslpassword=``).
_SECRET_QUERY = re.compile(r"(?i)([?&](?:ssl_?)?password=)[^&#]*")


def redact_url(url: str) -> str:
    """Return ``url`` with its password masked, for logs and error messages.

    The user name, host, port, path and the rest of the query are kept, so the result still says
    *which* server is meant::

        >>> redact_url("redis://:hunter2@cache:6379/0")
        'redis://:****@cache:6379/0'
        >>> redact_url("postgresql://app:hunter2@db/app?sslmode=require")
        'postgresql://app:****@db/app?sslmode=require'

    The URL is not validated: malformed input is masked as well as it can be, never echoed whole.

    Args:
        url: a URL that may carry credentials.

    Returns:
        The URL with every password replaced by ``****``.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        # Not URL-shaped (a key=value DSN, or a secret pasted by mistake): show nothing of it.
        return _MASK if url else url
    # User info ends at the *last* "@": a password may hold an unescaped "@", "/" or "?", so
    # cutting at the first delimiter, as URL parsers do, could leak part of it. Over-masking an
    # odd URL is harmless.
    userinfo, at, hostinfo = rest.rpartition("@")
    if at:
        user, colon, _password = userinfo.partition(":")
        if colon:
            rest = f"{user}:{_MASK}@{hostinfo}"
    rest = _SECRET_QUERY.sub(r"\g<1>" + _MASK, rest)
    return f"{scheme}://{rest}"
