"""API keys: their format, their hash, and the record a store keeps for each.

A key reads ``bst_<id>_<secret>``: a recognisable prefix (secret scanners and people spot a
leaked key), a public 16-hex-digit id (the record is looked up by it, never scanned for), and
256 random bits encoded base64url. Only an HMAC-SHA256 digest of the key is ever stored.

Why not bcrypt or argon2: those slow hashes protect *low-entropy* secrets (passwords) from
offline guessing. A 256-bit random secret cannot be guessed however fast the hash, so a slow hash
would only cost every request milliseconds of CPU. SHA-256 is what GitHub, Stripe and PyPI do
for their tokens.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass, field, replace
from typing import Literal

from bastion.exceptions import ConfigurationError, InvalidCredentials

__all__ = [
    "DEFAULT_PREFIX",
    "ApiKeyRecord",
    "KeyStatus",
    "digest",
    "generate_key",
    "parse_key",
]

DEFAULT_PREFIX = "bst"
"""The prefix of keys unless ``api_key_prefix`` says otherwise."""

_ID_HEX = 16  # 64 bits: ids are public, they only need to be unique (creation checks that)
_SECRET_BYTES = 32  # 256 bits of entropy
_SECRET_CHARS = 43  # base64url of 32 bytes, unpadded
_PREFIX = re.compile(r"[a-z][a-z0-9]{1,15}")
# Domain separation: the digest of a key can never collide with any other HMAC bastion computes.
_HASH_KEY = b"bastion api key v1"

KeyStatus = Literal["active", "rotating", "expired", "revoked"]
"""``rotating``: still valid, but replaced by a newer key and due to expire."""


def _check_prefix(prefix: str) -> None:
    if not _PREFIX.fullmatch(prefix):
        raise ConfigurationError(
            f"API key prefix {prefix!r} must be 2-16 lower-case letters or digits, "
            "starting with a letter"
        )


def generate_key(prefix: str = DEFAULT_PREFIX) -> tuple[str, str]:
    """A new key and its id: ``("bst_<id>_<secret>", "<id>")``, from ``secrets``.

    Raises:
        ConfigurationError: if ``prefix`` is not 2-16 lower-case letters or digits.
    """
    _check_prefix(prefix)
    key_id = secrets.token_hex(_ID_HEX // 2)
    secret = base64.urlsafe_b64encode(secrets.token_bytes(_SECRET_BYTES)).rstrip(b"=").decode()
    return f"{prefix}_{key_id}_{secret}", key_id


def _pattern(prefix: str) -> re.Pattern[str]:
    return re.compile(
        re.escape(prefix) + rf"_([0-9a-f]{{{_ID_HEX}}})_([A-Za-z0-9_-]{{{_SECRET_CHARS}}})"
    )


class KeyParser:
    """Splits presented keys of one prefix into their id, refusing anything malformed."""

    __slots__ = ("_match", "prefix")

    def __init__(self, prefix: str = DEFAULT_PREFIX) -> None:
        _check_prefix(prefix)
        self.prefix = prefix
        self._match = _pattern(prefix).fullmatch

    def looks_like_key(self, value: str) -> bool:
        """Whether ``value`` starts like one of our keys (to tell keys from JWTs)."""
        return value.startswith(self.prefix + "_")

    def key_id(self, key: str) -> str:
        """The id of a well-formed key.

        Raises:
            InvalidCredentials: ``malformed``, for anything that is not a key of this prefix.
        """
        found = self._match(key)
        if found is None:
            raise InvalidCredentials("malformed", "The API key is malformed.")
        return found.group(1)


def parse_key(key: str, prefix: str = DEFAULT_PREFIX) -> str:
    """The id of ``key``; raises ``InvalidCredentials`` if it is not a well-formed key."""
    return KeyParser(prefix).key_id(key)


def digest(key: str) -> str:
    """The hex HMAC-SHA256 digest stored for ``key`` (the whole key, so the id is bound in)."""
    return hmac.new(_HASH_KEY, key.encode(), hashlib.sha256).hexdigest()


@dataclass(frozen=True, slots=True, kw_only=True)
class ApiKeyRecord:
    """What the store keeps for one key. It holds no secret: ``digest`` is a one-way hash.

    Times are wall-clock seconds since the epoch.
    """

    id: str
    """The key's public id (the second part of the key)."""
    name: str
    """Who or what the key is for; rotation keeps it."""
    scopes: frozenset[str] = field(default_factory=frozenset)
    """What the key may do (``catalog:write``)."""
    digest: str
    """HMAC-SHA256 of the key, hex."""
    created: float
    """When the key was created."""
    expires: float | None = None
    """When the key stops working, or ``None`` for never."""
    revoked: float | None = None
    """When the key was revoked, or ``None``."""
    last_used: float | None = None
    """When the key last authenticated a request (written at most once per interval)."""
    replaced_by: str | None = None
    """Id of the key that rotation created to replace this one."""

    def status(self, now: float) -> KeyStatus:
        """The key's state at wall-clock time ``now``."""
        if self.revoked is not None:
            return "revoked"
        if self.expires is not None and now >= self.expires:
            return "expired"
        return "rotating" if self.replaced_by is not None else "active"

    def with_changes(self, **changes: object) -> ApiKeyRecord:
        """A copy with ``changes`` applied."""
        return replace(self, **changes)  # type: ignore[arg-type]

    def to_fields(self) -> dict[str, str]:
        """The record as string fields (a Redis hash; ``""`` for ``None``)."""
        return {
            "name": self.name,
            "scopes": " ".join(sorted(self.scopes)),
            "digest": self.digest,
            "created": repr(self.created),
            "expires": _number(self.expires),
            "revoked": _number(self.revoked),
            "last_used": _number(self.last_used),
            "replaced_by": self.replaced_by or "",
        }

    @classmethod
    def from_fields(cls, key_id: str, fields: dict[str, str]) -> ApiKeyRecord:
        """The record from ``to_fields`` output.

        Raises:
            ValueError: if a field is missing or not a number where one is expected.
        """
        return cls(
            id=key_id,
            name=fields["name"],
            scopes=frozenset(fields["scopes"].split()),
            digest=fields["digest"],
            created=float(fields["created"]),
            expires=_optional(fields.get("expires", "")),
            revoked=_optional(fields.get("revoked", "")),
            last_used=_optional(fields.get("last_used", "")),
            replaced_by=fields.get("replaced_by") or None,
        )


def _number(value: float | None) -> str:
    return "" if value is None else repr(value)


def _optional(value: str) -> float | None:
    return float(value) if value else None
