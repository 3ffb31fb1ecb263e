"""Authentication: API keys hashed at rest, JWT bearer tokens with JWKS, one principal.

FastAPI::

    from bastion.auth import ApiKeys, Authenticator, AuthMiddleware, require

    keys = ApiKeys(store)                                 # bastion's store: Redis or memory
    app.add_middleware(AuthMiddleware, authenticator=Authenticator(api_keys=keys))

    @app.post("/items", dependencies=[require(scopes=["items:write"])])
    async def create(item: Item): ...

- ``ApiKeys`` creates, verifies, rotates and revokes keys (``bst_<id>_<secret>``); the store
  holds only an HMAC-SHA256 digest; records are cached for at most a second.
- ``JwtVerifier`` checks bearer tokens against an algorithm allow-list, issuer, audience and
  times, with keys from a cached ``JwksCache`` (needs the ``auth`` extra; imported when used).
- ``Authenticator`` finds the request's credentials and produces one ``Principal``, whose id
  (``key:<id>``, ``user:<sub>``) lands in ``RequestContext.principal``.
- ``AuthMiddleware`` and ``require()`` answer 401 (with ``WWW-Authenticate``), 403
  (``insufficient_scope``) or 503 (store down) as problem+json.

See ``docs/auth.md``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from bastion.auth._authenticator import Authenticator, Credential
from bastion.auth._keys import ApiKeyRecord, KeyStatus, digest, generate_key, parse_key
from bastion.auth._manager import ApiKeys, KeyOnStoreError, NewApiKey
from bastion.auth._middleware import AUTHENTICATOR_SCOPE_KEY, AuthMiddleware, RequireRule
from bastion.auth._principal import PRINCIPAL_SCOPE_KEY, Principal, get_principal
from bastion.auth._records import KeyRecords, MemoryKeyRecords, key_records_for

if TYPE_CHECKING:
    from bastion.auth._fastapi import AuthRefused, auth_problem, require
    from bastion.auth._jwt import JwksCache, JwtVerifier
    from bastion.auth._redis import RedisKeyRecords

__all__ = [
    "AUTHENTICATOR_SCOPE_KEY",
    "ApiKeyRecord",
    "ApiKeys",
    "AuthMiddleware",
    "AuthRefused",
    "Authenticator",
    "Credential",
    "JwksCache",
    "JwtVerifier",
    "KeyOnStoreError",
    "KeyRecords",
    "KeyStatus",
    "MemoryKeyRecords",
    "NewApiKey",
    "PRINCIPAL_SCOPE_KEY",
    "Principal",
    "RedisKeyRecords",
    "RequireRule",
    "auth_problem",
    "digest",
    "generate_key",
    "get_principal",
    "key_records_for",
    "parse_key",
    "require",
]

# Imported on first use: FastAPI/Starlette, the auth extra (PyJWT, httpx) and redis.
_LAZY = {
    "AuthRefused": "bastion.auth._fastapi",
    "auth_problem": "bastion.auth._fastapi",
    "require": "bastion.auth._fastapi",
    "JwksCache": "bastion.auth._jwt",
    "JwtVerifier": "bastion.auth._jwt",
    "RedisKeyRecords": "bastion.auth._redis",
}


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
