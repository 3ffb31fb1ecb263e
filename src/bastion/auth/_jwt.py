"""JWT bearer tokens: ``JwtVerifier`` and the ``JwksCache`` it takes public keys from.

Needs the ``auth`` extra (PyJWT with cryptography, httpx); this module is imported only when a
verifier is built. Decisions, each one a lesson from other libraries' bug trackers:

- The algorithm allow-list is checked against the token header before any key is looked at;
  ``none`` is never in it, and a verifier has either a JWKS (asymmetric algorithms only, so a
  public key can never be used as an HMAC secret) or a shared secret (HS only), never both.
- A JWK is used only for the algorithm family of its key type (and curve), and only for its own
  ``alg`` when it declares one; symmetric (``oct``) keys in a JWKS are ignored.
- ``iss`` and ``aud`` are required. Expiry, not-before and issued-at are checked against the
  injected clock with ``leeway_s``, not inside PyJWT, so tests move time instead of sleeping.
- The JWKS is fetched with httpx and cached for ``ttl_s``. An unknown ``kid`` triggers a fetch,
  but at most once per ``refetch_interval_s``, so a flood of random ``kid`` values costs the
  IdP nothing. When the IdP fails, the last good keys stay in use.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from bastion._clock import SYSTEM_CLOCK, Clock
from bastion.auth._principal import Principal
from bastion.exceptions import (
    AuthUnavailable,
    ConfigurationError,
    InvalidCredentials,
    MissingDependencyError,
)
from bastion.settings import JWT_ASYMMETRIC_ALGORITHMS, JWT_SYMMETRIC_ALGORITHMS

try:
    import httpx
    import jwt
    from jwt import PyJWK
except ImportError as exc:  # tested by hiding PyJWT
    raise MissingDependencyError(exc.name or "pyjwt", "auth") from exc

__all__ = ["JwksCache", "JwtVerifier"]

logger = logging.getLogger("bastion.auth")

_MAX_JWKS_BYTES = 1024 * 1024
_KEY_TYPES = {"RS": "RSA", "PS": "RSA", "ES": "EC", "Ed": "OKP"}
_CURVES = {"ES256": ("P-256",), "ES384": ("P-384",), "ES512": ("P-521",)}
_EDDSA_CURVES = ("Ed25519", "Ed448")
_INVALID = "The token is invalid."


def _compatible(jwk: Mapping[str, Any], algorithm: str) -> bool:
    """Whether ``jwk`` may verify a signature made with ``algorithm``."""
    declared = jwk.get("alg")
    if declared is not None and declared != algorithm:
        return False
    kty = jwk.get("kty")
    if kty != _KEY_TYPES.get(algorithm[:2]):
        return False
    if kty == "EC":
        return jwk.get("crv") in _CURVES.get(algorithm, ())
    if kty == "OKP":
        return jwk.get("crv") in _EDDSA_CURVES
    return True


class JwksCache:
    """The signing keys of an identity provider, fetched from its JWKS URL and cached.

    Args:
        url: the JWKS URL.
        ttl_s: how long fetched keys are used before fetching again.
        refetch_interval_s: least time between two fetches (unknown ``kid`` or failures).
        timeout_s: timeout of one fetch.
        client: an ``httpx.AsyncClient`` to borrow (never closed here); by default one is
            created on first use and closed by ``aclose``.
        clock: its ``monotonic()`` ages the keys.

    Raises:
        ConfigurationError: if an interval is not positive.
    """

    __slots__ = (
        "_attempted_at",
        "_client",
        "_clock",
        "_fetched_at",
        "_interval_s",
        "_keys",
        "_lock",
        "_owns_client",
        "_parsed",
        "_timeout_s",
        "_ttl_s",
        "fetches",
        "url",
    )

    def __init__(
        self,
        url: str,
        *,
        ttl_s: float = 300.0,
        refetch_interval_s: float = 10.0,
        timeout_s: float = 5.0,
        client: httpx.AsyncClient | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        if not (ttl_s > 0 and refetch_interval_s > 0 and timeout_s > 0):
            raise ConfigurationError("ttl_s, refetch_interval_s and timeout_s must be positive")
        self.url = url
        self._ttl_s = ttl_s
        self._interval_s = refetch_interval_s
        self._timeout_s = timeout_s
        self._client = client
        self._owns_client = client is None
        self._clock = clock
        self._keys: list[dict[str, Any]] = []
        self._parsed: dict[tuple[int, str], PyJWK] = {}
        self._fetched_at: float | None = None
        self._attempted_at: float | None = None
        self._lock = asyncio.Lock()
        self.fetches = 0
        """How many fetches were attempted (for tests and metrics)."""

    async def key(self, kid: str | None, algorithm: str) -> PyJWK:
        """The key that verifies a token with header ``kid`` and ``alg``.

        Raises:
            InvalidCredentials: ``unknown_kid``: no such key, even after a refetch allowed now.
            AuthUnavailable: ``jwks_unavailable``: no keys were ever fetched successfully.
        """
        now = self._clock.monotonic()
        fetched = self._fetched_at
        if fetched is None or now - fetched >= self._ttl_s:
            await self._refresh(now)
        found = self._select(kid, algorithm)
        if found is None and kid is not None and not self._known(kid):
            # A key the IdP may have published since: refetch, at most once per interval.
            await self._refresh(now)
            found = self._select(kid, algorithm)
        if found is not None:
            return found
        if self._fetched_at is None:
            raise AuthUnavailable("jwks_unavailable")
        reason = "unknown_kid" if kid is None or not self._known(kid) else "algorithm_not_allowed"
        raise InvalidCredentials(reason, _INVALID)

    async def aclose(self) -> None:
        """Close the HTTP client if this cache created it."""
        client, self._client = self._client, None
        if client is not None and self._owns_client:
            await client.aclose()

    def _known(self, kid: str) -> bool:
        return any(jwk.get("kid") == kid for jwk in self._keys)

    def _select(self, kid: str | None, algorithm: str) -> PyJWK | None:
        candidates = [
            (index, jwk)
            for index, jwk in enumerate(self._keys)
            if (kid is None or jwk.get("kid") == kid) and _compatible(jwk, algorithm)
        ]
        # Without a kid, a key is chosen only when exactly one fits: never try them in turn.
        if len(candidates) != 1:
            return None
        index, jwk = candidates[0]
        parsed = self._parsed.get((index, algorithm))
        if parsed is None:
            parsed = self._parsed[(index, algorithm)] = PyJWK(jwk, algorithm)
        return parsed

    def _may_fetch(self, now: float) -> bool:
        attempted = self._attempted_at
        return attempted is None or now - attempted >= self._interval_s

    async def _refresh(self, now: float) -> None:
        if not self._may_fetch(now):
            return
        async with self._lock:
            if not self._may_fetch(self._clock.monotonic()):
                return  # another request fetched while this one waited
            self._attempted_at = self._clock.monotonic()
            self.fetches += 1
            try:
                keys = await self._fetch()
            except Exception as exc:  # any failure of the IdP: keep the last good keys
                logger.warning(
                    "could not fetch the JWKS from %s (%s: %s); %s",
                    self.url,
                    type(exc).__name__,
                    exc,
                    "keeping the last good keys" if self._keys else "no keys yet",
                )
                return
            self._keys = keys
            self._parsed = {}
            self._fetched_at = self._clock.monotonic()

    async def _fetch(self) -> list[dict[str, Any]]:
        client = self._client
        if client is None:
            client = self._client = httpx.AsyncClient(timeout=self._timeout_s)
        response = await client.get(
            self.url, timeout=self._timeout_s, headers={"accept": "application/json"}
        )
        response.raise_for_status()
        if len(response.content) > _MAX_JWKS_BYTES:
            raise ValueError(f"JWKS larger than {_MAX_JWKS_BYTES} bytes")
        document = response.json()
        raw = document.get("keys") if isinstance(document, dict) else None
        if not isinstance(raw, list):
            raise ValueError("the JWKS has no 'keys' list")
        keys = []
        for jwk in raw:
            # Public signing keys only: a symmetric key published in a JWKS would let anyone
            # who read it sign tokens.
            if not isinstance(jwk, dict) or jwk.get("kty") not in ("RSA", "EC", "OKP"):
                continue
            if jwk.get("use", "sig") != "sig" or "d" in jwk:
                continue
            keys.append(jwk)
        if not keys:
            raise ValueError("the JWKS holds no usable public signing key")
        return keys


class JwtVerifier:
    """Verifies JWT bearer tokens and turns them into a ``Principal`` (``user:<sub>``).

    Example::

        verifier = JwtVerifier(
            jwks=JwksCache("https://idp.example/.well-known/jwks.json"),
            issuer="https://idp.example/",
            audience="catalog-api",
        )
        principal = await verifier.verify(token)

    Args:
        issuer: the required ``iss``.
        audience: accepted ``aud`` values; the token must name one.
        jwks: where public keys come from (a ``JwksCache``, or its URL).
        secret: a shared HMAC secret (at least 32 bytes), instead of ``jwks``.
        algorithms: accepted ``alg`` values; default ``RS256, ES256`` with a JWKS, ``HS256``
            with a secret.
        leeway_s: clock skew tolerated on ``exp``, ``nbf`` and ``iat``.
        required_claims: claims every token must carry (``iss``, ``aud`` always are).
        scope_claim: the claim holding scopes (a space-separated string or a list).
        subject_claim: the claim naming the user.
        clock: its ``time()`` decides expiry.

    Raises:
        ConfigurationError: no key source or both, an algorithm not allowed for the source, an
            empty issuer or audience, a short secret.
    """

    __slots__ = (
        "_algorithms",
        "_audience",
        "_clock",
        "_issuer",
        "_leeway_s",
        "_required",
        "_scope_claim",
        "_secret",
        "_subject_claim",
        "jwks",
    )

    def __init__(
        self,
        *,
        issuer: str,
        audience: str | Sequence[str],
        jwks: JwksCache | str | None = None,
        secret: str | bytes | None = None,
        algorithms: Iterable[str] | None = None,
        leeway_s: float = 30.0,
        required_claims: Iterable[str] = ("exp",),
        scope_claim: str = "scope",
        subject_claim: str = "sub",
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        if (jwks is None) == (secret is None):
            raise ConfigurationError("a JwtVerifier needs exactly one of jwks= or secret=")
        if not issuer:
            raise ConfigurationError("a JwtVerifier needs the issuer its tokens must name")
        audiences = [audience] if isinstance(audience, str) else list(audience)
        if not audiences or not all(audiences):
            raise ConfigurationError("a JwtVerifier needs the audience its tokens must name")
        if leeway_s < 0:
            raise ConfigurationError(f"leeway_s must not be negative, not {leeway_s}")
        allowed = JWT_ASYMMETRIC_ALGORITHMS if secret is None else JWT_SYMMETRIC_ALGORITHMS
        chosen: tuple[str, ...]
        if algorithms is None:
            chosen = ("RS256", "ES256") if secret is None else ("HS256",)
        else:
            chosen = tuple(algorithms)
        wrong = [algorithm for algorithm in chosen if algorithm not in allowed]
        if wrong or not chosen:
            source = "a JWKS" if secret is None else "a shared secret"
            raise ConfigurationError(
                f"algorithms {wrong or '(none)'} are not accepted with {source}; use some of "
                f"{', '.join(allowed)}"
            )
        if isinstance(secret, str):
            secret = secret.encode()
        if secret is not None and len(secret) < 32:
            raise ConfigurationError("a JWT secret must be at least 32 bytes (RFC 7518 §3.2)")
        self.jwks = JwksCache(jwks, clock=clock) if isinstance(jwks, str) else jwks
        self._secret = secret
        self._issuer = issuer
        self._audience = audiences
        self._algorithms = frozenset(chosen)
        self._leeway_s = leeway_s
        self._required = sorted({"iss", "aud", *required_claims})
        self._scope_claim = scope_claim
        self._subject_claim = subject_claim
        self._clock = clock

    async def verify(self, token: str) -> Principal:
        """The principal of a valid token.

        Raises:
            InvalidCredentials: malformed, bad signature, wrong issuer or audience, expired,
                not yet valid, missing claims, unknown key, algorithm not allowed.
            AuthUnavailable: the JWKS could never be fetched.
        """
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise InvalidCredentials("malformed", _INVALID) from None
        algorithm = header.get("alg")
        if not isinstance(algorithm, str) or algorithm not in self._algorithms:
            raise InvalidCredentials("algorithm_not_allowed", _INVALID)
        key: Any
        if self.jwks is not None:
            kid = header.get("kid")
            if kid is not None and not isinstance(kid, str):
                raise InvalidCredentials("malformed", _INVALID)
            key = (await self.jwks.key(kid, algorithm)).key
        else:
            key = self._secret
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=[algorithm],
                audience=self._audience,
                issuer=self._issuer,
                options={
                    "require": self._required,
                    "verify_exp": False,  # checked below against the injected clock
                    "verify_nbf": False,
                    "verify_iat": False,
                },
            )
        except jwt.PyJWTError as exc:
            raise InvalidCredentials(_reason(exc), _INVALID) from None
        self._check_times(claims)
        subject = claims.get(self._subject_claim)
        if not isinstance(subject, str) or not subject:
            raise InvalidCredentials("missing_claim", _INVALID)
        return Principal(
            id="user:" + subject,
            kind="jwt",
            subject=subject,
            scopes=_scopes(claims.get(self._scope_claim)),
            claims=claims,
        )

    async def aclose(self) -> None:
        """Close the JWKS cache's HTTP client, if it owns one."""
        if self.jwks is not None:
            await self.jwks.aclose()

    def _check_times(self, claims: Mapping[str, Any]) -> None:
        now = self._clock.time()
        leeway = self._leeway_s
        for claim in ("exp", "nbf", "iat"):
            value = claims.get(claim)
            if value is None:
                continue
            if not isinstance(value, int | float) or isinstance(value, bool):
                raise InvalidCredentials("malformed", _INVALID)
            if claim == "exp" and now >= value + leeway:
                raise InvalidCredentials("expired", "The token has expired.")
            if claim != "exp" and value > now + leeway:
                raise InvalidCredentials("not_yet_valid", _INVALID)


def _reason(exc: jwt.PyJWTError) -> str:
    # Subclasses before their bases: InvalidSignatureError is a DecodeError.
    for error_type, reason in (
        (jwt.InvalidSignatureError, "invalid_signature"),
        (jwt.InvalidAudienceError, "wrong_audience"),
        (jwt.InvalidIssuerError, "wrong_issuer"),
        (jwt.MissingRequiredClaimError, "missing_claim"),
        (jwt.InvalidAlgorithmError, "algorithm_not_allowed"),
        (jwt.InvalidKeyError, "algorithm_not_allowed"),
        (jwt.DecodeError, "malformed"),
    ):
        if isinstance(exc, error_type):
            return reason
    return "invalid_token"


def _scopes(value: Any) -> frozenset[str]:
    if isinstance(value, str):
        return frozenset(value.split())
    if isinstance(value, list):
        return frozenset(item for item in value if isinstance(item, str))
    return frozenset()
