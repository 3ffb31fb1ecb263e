"""``Principal``: who is calling, as authentication established it."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from bastion.types import Scope

__all__ = ["PRINCIPAL_SCOPE_KEY", "Principal", "get_principal"]

PRINCIPAL_SCOPE_KEY = "bastion.principal"
"""Key of the authenticated ``Principal`` in the ASGI scope."""

CredentialKind = Literal["api_key", "jwt"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Principal:
    """An authenticated caller.

    ``id`` is what goes into ``RequestContext.principal``, so rate limits, idempotency, logs and
    metrics all key on the same string: ``key:<key id>`` for an API key, ``user:<sub>`` for a JWT.
    """

    id: str
    """``key:<key id>`` or ``user:<subject>``."""
    kind: CredentialKind
    """How the caller authenticated: ``"api_key"`` or ``"jwt"``."""
    subject: str
    """The API key's id, or the token's subject."""
    scopes: frozenset[str] = field(default_factory=frozenset)
    """What the caller may do."""
    name: str | None = None
    """The API key's name (``None`` for tokens)."""
    claims: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)
    """The token's verified claims (empty for API keys)."""

    def missing(self, required: Iterable[str]) -> tuple[str, ...]:
        """The scopes of ``required`` this principal lacks, in the order given."""
        scopes = self.scopes
        return tuple(scope for scope in required if scope not in scopes)


def get_principal(scope: Scope) -> Principal | None:
    """The principal authentication stored in ``scope``, or ``None``."""
    principal: Principal | None = scope.get(PRINCIPAL_SCOPE_KEY)
    return principal
