"""Security response headers, encoded once and added only where the application set none."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from bastion.exceptions import ConfigurationError
from bastion.settings import REFERRER_POLICIES

__all__ = ["SecurityHeaders"]

Header = tuple[bytes, bytes]


@dataclass(frozen=True, slots=True, kw_only=True)
class SecurityHeaders:
    """Which security headers the guard adds to responses.

    A header the application already set on a response is never replaced, so a route can opt
    out (``X-Frame-Options: SAMEORIGIN`` on the one page meant to be framed) by setting its own.

    Example::

        SecurityHeaders(hsts_max_age_s=31_536_000, content_security_policy="default-src 'self'")
    """

    content_type_options: bool = True
    """``X-Content-Type-Options: nosniff``: browsers must not guess a type other than the
    declared one (a JSON response sniffed as HTML is an XSS)."""
    frame_options: Literal["DENY", "SAMEORIGIN"] | None = "DENY"
    """``X-Frame-Options``: clickjacking protection for browsers that ignore CSP
    ``frame-ancestors``. ``None`` sends none."""
    referrer_policy: str | None = "strict-origin-when-cross-origin"
    """``Referrer-Policy``: what other origins learn of the page's URL. ``None`` sends none."""
    content_security_policy: str | None = None
    """``Content-Security-Policy``; none by default, because a policy must fit the pages served
    (``default-src 'none'; frame-ancestors 'none'`` suits a pure JSON API)."""
    hsts_max_age_s: int = 0
    """``Strict-Transport-Security: max-age=...``, sent only on requests that arrived over TLS
    (``scope["scheme"] == "https"``). ``0`` sends none. Security: browsers refuse plain HTTP to
    the host for that long, so enable it only once HTTPS works for every name it covers."""
    hsts_include_subdomains: bool = False
    """Add ``includeSubDomains``: the HSTS policy covers every subdomain too."""
    hsts_preload: bool = False
    """Add ``preload``, for domains submitted to the browsers' HSTS preload list."""
    extra: Mapping[str, str] = field(default_factory=dict)
    """Further headers to add the same way (``Permissions-Policy``,
    ``Cross-Origin-Opener-Policy``, ...)."""

    def encoded(self) -> tuple[tuple[Header, ...], Header | None]:
        """The headers for every response, and the HSTS header for HTTPS ones (or ``None``).

        Raises:
            ConfigurationError: for an invalid value.
        """
        headers: list[Header] = []
        if self.content_type_options:
            headers.append((b"x-content-type-options", b"nosniff"))
        if self.frame_options is not None:
            if self.frame_options not in ("DENY", "SAMEORIGIN"):
                raise ConfigurationError(
                    "frame_options must be 'DENY', 'SAMEORIGIN' or None, "
                    f"not {self.frame_options!r}"
                )
            headers.append((b"x-frame-options", self.frame_options.encode()))
        if self.referrer_policy:
            tokens = [part.strip() for part in self.referrer_policy.split(",") if part.strip()]
            unknown = [token for token in tokens if token not in REFERRER_POLICIES]
            if unknown:
                raise ConfigurationError(
                    f"referrer_policy {unknown[0]!r} is not one of {', '.join(REFERRER_POLICIES)}"
                )
            headers.append((b"referrer-policy", ", ".join(tokens).encode()))
        if self.content_security_policy:
            headers.append((b"content-security-policy", _value(self.content_security_policy)))
        for name, value in self.extra.items():
            headers.append((_name(name), _value(value)))
        names = [name for name, _ in headers]
        if len(set(names)) != len(names):
            raise ConfigurationError("a security header is configured twice (check extra=)")
        if self.hsts_max_age_s < 0:
            raise ConfigurationError(f"hsts_max_age_s must be >= 0, not {self.hsts_max_age_s}")
        hsts = None
        if self.hsts_max_age_s:
            value = f"max-age={self.hsts_max_age_s}"
            if self.hsts_include_subdomains:
                value += "; includeSubDomains"
            if self.hsts_preload:
                value += "; preload"
            hsts = (b"strict-transport-security", value.encode())
        return tuple(headers), hsts


def _name(name: str) -> bytes:
    encoded = name.strip().lower().encode("latin-1", "replace")
    if not encoded or not all(33 <= byte < 127 and byte != ord(":") for byte in encoded):
        raise ConfigurationError(f"{name!r} is not a valid header name")
    return encoded


def _value(value: str) -> bytes:
    if "\r" in value or "\n" in value or "\x00" in value:
        raise ConfigurationError(f"header value {value!r} contains a line break or NUL")
    try:
        return value.strip().encode("latin-1")
    except UnicodeEncodeError:
        raise ConfigurationError(f"header value {value!r} is not latin-1 text") from None
