"""``Authenticator``: finds the credentials of a request and turns them into a ``Principal``.

Credentials are an API key in ``X-API-Key`` (configurable) or in ``Authorization: Bearer``, or a
JWT in ``Authorization: Bearer``. A bearer value that starts with the key prefix (``bst_``) is an
API key; anything else is a JWT. Other ``Authorization`` schemes (``Basic``) are not bastion's and
are left alone. Sending two credentials (a key header and a bearer token, or a header twice) is
refused as ambiguous (RFC 6750 §2: one method per request), so a proxy that adds a header can
never change who the request is.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Literal

from bastion._clock import SYSTEM_CLOCK, Clock
from bastion.auth._manager import ApiKeys
from bastion.auth._principal import PRINCIPAL_SCOPE_KEY, Principal
from bastion.context import SCOPE_KEY, RequestContext
from bastion.events import AuthenticationFailed, AuthenticationSucceeded
from bastion.exceptions import AuthError, ConfigurationError, InvalidCredentials

if TYPE_CHECKING:
    from bastion.auth._jwt import JwtVerifier
    from bastion.events import Hooks
    from bastion.settings import AuthSettings
    from bastion.stores import Store
    from bastion.types import Scope

__all__ = ["Authenticator", "Credential"]

CredentialKind = Literal["api_key", "jwt"]
Credential = tuple[CredentialKind, str]
"""What a request presented: its kind and the raw value."""

_AMBIGUOUS = "Send one credential: an API key header or an Authorization bearer token."


class Authenticator:
    """Authenticates requests with API keys and, when configured, JWT bearer tokens.

    Example::

        authenticator = Authenticator(api_keys=ApiKeys(store), jwt=JwtVerifier(...))
        principal = await authenticator.authenticate(scope)   # None: no credentials sent

    Args:
        api_keys: the API key manager; ``None`` refuses API keys.
        jwt: the JWT verifier; ``None`` refuses bearer tokens that are not API keys.
        api_key_header: the header carrying an API key.
        realm: the ``realm`` of ``WWW-Authenticate`` challenges.
        hooks: where ``AuthenticationFailed``/``AuthenticationSucceeded`` are published.

    Raises:
        ConfigurationError: for an invalid header name.
    """

    __slots__ = ("_header", "api_key_header", "api_keys", "hooks", "jwt", "realm")

    def __init__(
        self,
        *,
        api_keys: ApiKeys | None = None,
        jwt: JwtVerifier | None = None,
        api_key_header: str = "X-API-Key",
        realm: str = "api",
        hooks: Hooks | None = None,
    ) -> None:
        if not api_key_header or not all(c.isalnum() or c == "-" for c in api_key_header):
            raise ConfigurationError(f"invalid API key header name {api_key_header!r}")
        self.api_keys = api_keys
        self.jwt = jwt
        self.api_key_header = api_key_header
        self.realm = realm
        self.hooks = hooks
        self._header = api_key_header.lower().encode("latin-1")

    @classmethod
    def from_settings(
        cls,
        settings: AuthSettings,
        *,
        api_keys: ApiKeys | None = None,
        store: Store | None = None,
        hooks: Hooks | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> Authenticator:
        """The authenticator ``Settings.auth`` describes, keys in ``store``.

        Args:
            settings: ``Settings.auth``.
            api_keys: the key manager to use; by default ``ApiKeys.from_settings`` on ``store``.
            store: where keys live (when ``api_keys`` is not given).
            hooks: where events are published.
            clock: time source of the key cache and token checks.

        Raises:
            ConfigurationError: naming the ``BASTION_AUTH__*`` variable that is invalid.
            MissingDependencyError: JWT is configured and the ``auth`` extra is missing.
        """
        if api_keys is None:
            api_keys = ApiKeys.from_settings(settings, store=store, hooks=hooks, clock=clock)
        verifier = None
        if settings.jwt_jwks_url is not None or settings.jwt_secret is not None:
            from bastion.auth._jwt import JwksCache, JwtVerifier  # the auth extra, only if used

            jwks = None
            if settings.jwt_jwks_url is not None:
                jwks = JwksCache(
                    settings.jwt_jwks_url,
                    ttl_s=settings.jwks_cache_s,
                    refetch_interval_s=settings.jwks_refetch_interval_s,
                    timeout_s=settings.jwks_timeout_s,
                    clock=clock,
                )
            secret = settings.jwt_secret
            try:
                verifier = JwtVerifier(
                    issuer=settings.jwt_issuer or "",
                    audience=settings.jwt_audience,
                    jwks=jwks,
                    secret=secret.get_secret_value() if secret is not None else None,
                    algorithms=settings.jwt_algorithms,
                    leeway_s=settings.jwt_leeway_s,
                    required_claims=settings.jwt_required_claims,
                    scope_claim=settings.jwt_scope_claim,
                    subject_claim=settings.jwt_subject_claim,
                    clock=clock,
                )
            except ConfigurationError as exc:
                raise ConfigurationError(f"BASTION_AUTH__JWT_*: {exc}") from None
        return cls(
            api_keys=api_keys,
            jwt=verifier,
            api_key_header=settings.api_key_header,
            realm=settings.realm,
            hooks=hooks,
        )

    def credential(self, headers: Iterable[tuple[bytes, bytes]]) -> Credential | None:
        """The credential in ``headers``, or ``None`` when there is none.

        Raises:
            InvalidCredentials: ``ambiguous`` when more than one was sent.
        """
        key_header = self._header
        found: Credential | None = None
        for name, value in headers:
            if name == key_header:
                candidate: Credential = ("api_key", value.decode("latin-1").strip())
            elif name == b"authorization":
                scheme, _, token = value.decode("latin-1").strip().partition(" ")
                if scheme.lower() != "bearer":
                    continue  # Basic, Digest...: another layer's business
                token = token.strip()
                api_keys = self.api_keys
                kind: CredentialKind = (
                    "api_key" if api_keys is not None and api_keys.looks_like_key(token) else "jwt"
                )
                candidate = (kind, token)
            else:
                continue
            if found is not None:
                raise InvalidCredentials("ambiguous", _AMBIGUOUS)
            found = candidate
        return found

    def known_principal(self, scope: Scope) -> str | None:
        """The principal id of the request's API key if this worker already knows the key to be
        valid (``ApiKeys.cached_principal_id``), else ``None``; never waits, never refuses.

        For layers that run before authentication: load shedding orders its queue by it, so a
        paying key can go first without a store call before admission. JWTs give ``None``:
        checking a signature costs the CPU that shedding is there to save.
        """
        api_keys = self.api_keys
        if api_keys is None:
            return None
        try:
            credential = self.credential(scope["headers"])
        except AuthError:
            return None
        if credential is None or credential[0] != "api_key":
            return None
        return api_keys.cached_principal_id(credential[1])

    async def verify(self, credential: Credential) -> Principal:
        """The principal of a credential.

        Raises:
            InvalidCredentials: the credential is refused.
            AuthUnavailable: it cannot be checked now (key store or IdP down).
        """
        kind, value = credential
        if kind == "api_key":
            if self.api_keys is None:
                raise InvalidCredentials("unsupported_credential", "API keys are not accepted.")
            return await self.api_keys.verify(value)
        if self.jwt is None:
            raise InvalidCredentials("unsupported_credential", "Bearer tokens are not accepted.")
        return await self.jwt.verify(value)

    async def authenticate(self, scope: Scope) -> Principal | None:
        """Authenticate the request in ``scope``; ``None`` when it carries no credentials.

        On success the principal is stored in the scope (``get_principal``) and its id in the
        request context (``RequestContext.principal``), where rate limits and logs find it.

        Raises:
            AuthError: the credentials are refused (401) or cannot be checked (503); an
                ``AuthenticationFailed`` event was published.
        """
        existing: Principal | None = scope.get(PRINCIPAL_SCOPE_KEY)
        if existing is not None:
            return existing  # the middleware already did it; a dependency must not redo it
        try:
            credential = self.credential(scope["headers"])
        except AuthError as exc:
            self.failed(scope, exc, None)
            raise
        if credential is None:
            return None
        try:
            principal = await self.verify(credential)
        except AuthError as exc:
            self.failed(scope, exc, credential)
            raise
        scope[PRINCIPAL_SCOPE_KEY] = principal
        context: RequestContext | None = scope.get(SCOPE_KEY)
        if context is not None:
            context.principal = principal.id
        hooks = self.hooks
        if hooks is not None and hooks.wants(AuthenticationSucceeded):
            hooks.publish(
                AuthenticationSucceeded(
                    principal=principal.id,
                    credential=principal.kind,
                    method=scope.get("method", "WS"),
                    route=context.route if context is not None else None,
                )
            )
        return principal

    def failed(
        self,
        scope: Scope,
        error: AuthError,
        credential: Credential | None,
        principal: Principal | None = None,
    ) -> None:
        """Publish ``AuthenticationFailed`` for a refusal (no secret ever goes into it).

        ``principal`` is the caller a 403 refused, when authentication succeeded.
        """
        hooks = self.hooks
        if hooks is None or not hooks.wants(AuthenticationFailed):
            return
        context: RequestContext | None = scope.get(SCOPE_KEY)
        if context is not None:
            client = context.client
        else:
            peer = scope.get("client")
            client = peer[0] if peer else None
        key_id = None
        kind: CredentialKind | None = credential[0] if credential is not None else None
        if principal is not None:
            kind = principal.kind
            key_id = principal.subject if kind == "api_key" else None
        elif credential is not None and kind == "api_key" and self.api_keys is not None:
            key_id = self.api_keys.public_id(credential[1])
        hooks.publish(
            AuthenticationFailed(
                reason=error.reason,
                status=error.status,
                credential=kind,
                key_id=key_id,
                method=scope.get("method", "WS"),
                route=context.route if context is not None else None,
                client=client,
            )
        )

    async def aclose(self) -> None:
        """Close what the JWT verifier owns (its JWKS HTTP client)."""
        if self.jwt is not None:
            await self.jwt.aclose()
