"""JWT bearer tokens against a real JWKS endpoint: signatures, claims, times, keys, confusion."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from bastion._clock import ManualClock
from bastion.auth import JwksCache, JwtVerifier, Principal
from bastion.exceptions import (
    AuthUnavailable,
    ConfigurationError,
    InvalidCredentials,
    MissingDependencyError,
)
from tests.servers import serve

pytestmark = pytest.mark.anyio

ISSUER = "https://idp.test/"
AUDIENCE = "catalog-api"


class Idp:
    """The test's identity provider: signing keys, the JWKS file it publishes, its URL."""

    def __init__(self, directory: Path, url: str) -> None:
        self.file = directory / "jwks.json"
        self.url = url
        self.rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.ec = ec.generate_private_key(ec.SECP256R1())
        self.publish(("rsa-1", self.rsa, "RS256"), ("ec-1", self.ec, "ES256"))

    def publish(self, *keys: tuple[str, Any, str]) -> None:
        """Publish the public halves of ``(kid, private key, alg)``."""
        published = []
        for kid, private, alg in keys:
            algorithm = RSAAlgorithm if alg.startswith(("RS", "PS")) else ECAlgorithm
            jwk = json.loads(algorithm.to_jwk(private.public_key()))
            jwk.update(kid=kid, use="sig", alg=alg)
            published.append(jwk)
        self.file.write_text(json.dumps({"keys": published}))

    def down(self) -> None:
        """Make the JWKS endpoint answer 503."""
        self.file.unlink()

    def hits(self) -> int:
        """JWKS requests served so far."""
        return int(httpx.get(self.url.replace("/jwks.json", "/hits")).json()["hits"])


@pytest.fixture(scope="module")
def idp_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    """A real uvicorn serving tests/auth/jwks_app.py; its JWKS file's directory and URL."""
    directory = tmp_path_factory.mktemp("idp")
    env = {**os.environ, "JWKS_FILE": str(directory / "jwks.json")}
    with serve("tests.auth.jwks_app:app", env=env, ready_path="/health") as (url, _process):
        yield directory, f"{url}/jwks.json"


@pytest.fixture
def idp(idp_server: tuple[Path, str]) -> Idp:
    """Fresh keys published on the module's IdP server."""
    return Idp(*idp_server)


@pytest.fixture
def clock() -> ManualClock:
    """Wall clock at 1.7e9, as tokens are minted."""
    return ManualClock(1_000.0, wall_start=1_700_000_000.0)


@pytest.fixture
async def verifier(idp: Idp, clock: ManualClock) -> Any:
    """A verifier on the IdP's JWKS (RS256 and ES256), closed after the test."""
    verifier = JwtVerifier(
        jwks=JwksCache(idp.url, clock=clock, ttl_s=300, refetch_interval_s=10),
        issuer=ISSUER,
        audience=AUDIENCE,
        leeway_s=30,
        clock=clock,
    )
    yield verifier
    await verifier.aclose()


def claims(clock: ManualClock, **changes: Any) -> dict[str, Any]:
    """Valid claims for now, with ``changes`` applied (``None`` removes a claim)."""
    now = int(clock.time())
    values: dict[str, Any] = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "alice",
        "iat": now,
        "nbf": now,
        "exp": now + 300,
        "scope": "catalog:read catalog:write",
    }
    values.update(changes)
    return {name: value for name, value in values.items() if value is not None}


def token(
    idp: Idp, clock: ManualClock, kid: str = "rsa-1", alg: str = "RS256", **changes: Any
) -> str:
    """A token signed by the IdP's RSA (or, for ES256, EC) key."""
    key = idp.ec if alg.startswith("ES") else idp.rsa
    return jwt.encode(claims(clock, **changes), key, algorithm=alg, headers={"kid": kid})


async def refusal(verifier: JwtVerifier, value: str) -> str:
    """The reason ``verifier`` refuses ``value`` (failing if it accepts it)."""
    with pytest.raises(InvalidCredentials) as caught:
        await verifier.verify(value)
    return caught.value.reason


async def test_a_valid_rsa_token_is_the_user_with_its_scopes(
    verifier: JwtVerifier, idp: Idp, clock: ManualClock
) -> None:
    """RS256 from the JWKS: principal user:<sub>, scopes from the space-separated claim."""
    principal = await verifier.verify(token(idp, clock))
    assert ("user:alice", "jwt", frozenset({"catalog:read", "catalog:write"})) == (
        principal.id,
        principal.kind,
        principal.scopes,
    )
    assert isinstance(principal, Principal)
    assert "alice" == principal.claims["sub"]


async def test_a_valid_ec_token_verifies_too(
    verifier: JwtVerifier, idp: Idp, clock: ManualClock
) -> None:
    """ES256 with the EC key of the JWKS; a scp list works as the scope claim too."""
    value = token(idp, clock, kid="ec-1", alg="ES256", scope=None)
    assert "user:alice" == (await verifier.verify(value)).id


async def test_expiry_honours_the_leeway(
    verifier: JwtVerifier, idp: Idp, clock: ManualClock
) -> None:
    """exp is accepted up to 30 s (the leeway) late, refused from then on."""
    value = token(idp, clock)
    clock.advance(300 + 29)
    assert "user:alice" == (await verifier.verify(value)).id
    clock.advance(1)
    assert "expired" == await refusal(verifier, value)


async def test_a_token_from_the_future_is_refused(
    verifier: JwtVerifier, idp: Idp, clock: ManualClock
) -> None:
    """nbf (or iat) more than the leeway ahead is not_yet_valid."""
    now = int(clock.time())
    assert ("not_yet_valid", "not_yet_valid") == (
        await refusal(verifier, token(idp, clock, nbf=now + 31)),
        await refusal(verifier, token(idp, clock, iat=now + 31)),
    )


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"aud": "another-api"}, "wrong_audience"),
        ({"iss": "https://evil.test/"}, "wrong_issuer"),
        ({"exp": None}, "missing_claim"),
        ({"aud": None}, "missing_claim"),
        ({"iss": None}, "missing_claim"),
        ({"sub": None}, "missing_claim"),
        ({"exp": "tomorrow"}, "malformed"),
    ],
)
async def test_claims_are_checked(
    verifier: JwtVerifier, idp: Idp, clock: ManualClock, changes: dict[str, Any], reason: str
) -> None:
    """Wrong audience or issuer, missing required claims, non-numeric times: refused."""
    assert reason == await refusal(verifier, token(idp, clock, **changes))


async def test_a_tampered_token_is_refused(
    verifier: JwtVerifier, idp: Idp, clock: ManualClock
) -> None:
    """Changing the payload (sub=admin) or the signature breaks the signature check."""
    header, payload, signature = token(idp, clock).split(".")
    forged_payload = jwt.utils.base64url_encode(
        json.dumps(claims(clock, sub="admin")).encode()
    ).decode()
    flipped = signature[:-2] + ("AA" if signature[-2:] != "AA" else "BB")
    assert ("invalid_signature", "invalid_signature") == (
        await refusal(verifier, f"{header}.{forged_payload}.{signature}"),
        await refusal(verifier, f"{header}.{payload}.{flipped}"),
    )


async def test_a_token_signed_by_another_key_is_refused(
    verifier: JwtVerifier, clock: ManualClock
) -> None:
    """A key the IdP never published, claiming the published kid: invalid signature."""
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    value = jwt.encode(claims(clock), stranger, algorithm="RS256", headers={"kid": "rsa-1"})
    assert "invalid_signature" == await refusal(verifier, value)


async def test_alg_none_and_hs_confusion_are_refused(
    verifier: JwtVerifier, idp: Idp, clock: ManualClock
) -> None:
    """alg=none, and HS256 'signed' with the public RSA key as secret: algorithm not allowed."""
    unsigned = jwt.encode(claims(clock), "", algorithm="none", headers={"kid": "rsa-1"})
    public_pem = idp.rsa.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    header = jwt.utils.base64url_encode(b'{"alg":"HS256","typ":"JWT","kid":"rsa-1"}')
    body = jwt.utils.base64url_encode(json.dumps(claims(clock)).encode())
    import hashlib
    import hmac

    mac = hmac.new(public_pem, header + b"." + body, hashlib.sha256).digest()
    confused = b".".join([header, body, jwt.utils.base64url_encode(mac)]).decode()
    assert ("algorithm_not_allowed", "algorithm_not_allowed") == (
        await refusal(verifier, unsigned),
        await refusal(verifier, confused),
    )


async def test_a_key_is_used_only_for_its_own_algorithm(
    verifier: JwtVerifier, idp: Idp, clock: ManualClock
) -> None:
    """An ES256 token naming the RSA key's kid is refused without trying the RSA key."""
    value = token(idp, clock, kid="rsa-1", alg="ES256")
    assert "algorithm_not_allowed" == await refusal(verifier, value)


@pytest.mark.parametrize("value", ["", "abc", "a.b.c", "eyJhbGciOiJSUzI1NiJ9.e30"])
async def test_garbage_is_malformed(verifier: JwtVerifier, value: str) -> None:
    """Anything that is not a JWT is malformed, never an error."""
    assert "malformed" == await refusal(verifier, value)


async def test_unknown_kids_refetch_at_most_once_per_interval(
    verifier: JwtVerifier, idp: Idp, clock: ManualClock
) -> None:
    """50 tokens with random kids cost the IdP at most one fetch per 10 s interval, not 50."""
    await verifier.verify(token(idp, clock))
    before = idp.hits()

    async def flood() -> set[str]:
        kids = [uuid.uuid4().hex for _ in range(50)]
        return {await refusal(verifier, token(idp, clock, kid=kid)) for kid in kids}

    right_after_the_first_fetch = await flood()
    fetched_then = idp.hits() - before
    clock.advance(10)
    after_the_interval = await flood()
    fetched_after = idp.hits() - before
    clock.advance(5)
    await flood()
    assert ({"unknown_kid"}, {"unknown_kid"}) == (right_after_the_first_fetch, after_the_interval)
    assert (0, 1, 1) == (fetched_then, fetched_after, idp.hits() - before)


async def test_a_rotated_in_key_is_picked_up_by_its_kid(
    verifier: JwtVerifier, idp: Idp, clock: ManualClock
) -> None:
    """The IdP publishes a new key; a token with its kid triggers a refetch and verifies."""
    await verifier.verify(token(idp, clock))
    idp.rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    idp.publish(("rsa-2", idp.rsa, "RS256"))
    clock.advance(10)
    assert "user:alice" == (await verifier.verify(token(idp, clock, kid="rsa-2"))).id


async def test_the_last_good_keys_serve_while_the_idp_is_down(
    verifier: JwtVerifier, idp: Idp, clock: ManualClock
) -> None:
    """Past the cache TTL with the IdP answering 503, tokens still verify with the old keys."""
    await verifier.verify(token(idp, clock))
    idp.down()
    clock.advance(600)
    before = idp.hits()
    assert "user:alice" == (await verifier.verify(token(idp, clock))).id
    assert "user:alice" == (await verifier.verify(token(idp, clock))).id
    assert 1 == idp.hits() - before  # one failed fetch, then the interval holds


async def test_no_keys_ever_fetched_is_unavailable_not_invalid(
    idp: Idp, clock: ManualClock
) -> None:
    """With the IdP down from the start, verification is a 503 (AuthUnavailable)."""
    value = token(idp, clock)
    idp.down()
    verifier = JwtVerifier(jwks=JwksCache(idp.url, clock=clock), issuer=ISSUER, audience=AUDIENCE)
    try:
        with pytest.raises(AuthUnavailable):
            await verifier.verify(value)
    finally:
        await verifier.aclose()


async def test_a_shared_secret_verifies_hs256_only(clock: ManualClock) -> None:
    """With a secret, HS256 tokens verify; RS256 tokens are refused by the allow-list."""
    secret = "s" * 32
    verifier = JwtVerifier(secret=secret, issuer=ISSUER, audience=[AUDIENCE, "x"], clock=clock)
    good = jwt.encode(claims(clock), secret, algorithm="HS256")
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    other = jwt.encode(claims(clock), rsa_key, algorithm="RS256")
    assert "user:alice" == (await verifier.verify(good)).id
    assert "algorithm_not_allowed" == await refusal(verifier, other)


@pytest.mark.parametrize(
    "options",
    [
        {"issuer": ISSUER, "audience": AUDIENCE},
        {"issuer": ISSUER, "audience": AUDIENCE, "secret": "s" * 32, "jwks": "https://x/j"},
        {"issuer": "", "audience": AUDIENCE, "secret": "s" * 32},
        {"issuer": ISSUER, "audience": [], "secret": "s" * 32},
        {"issuer": ISSUER, "audience": AUDIENCE, "secret": "short"},
        {"issuer": ISSUER, "audience": AUDIENCE, "secret": "s" * 32, "algorithms": ["RS256"]},
        {"issuer": ISSUER, "audience": AUDIENCE, "jwks": "https://x/j", "algorithms": ["HS256"]},
        {"issuer": ISSUER, "audience": AUDIENCE, "jwks": "https://x/j", "algorithms": ["none"]},
    ],
)
def test_unsafe_verifier_options_are_refused(options: dict[str, Any]) -> None:
    """No key source or two, no issuer or audience, short secrets, crossed algorithm families."""
    with pytest.raises(ConfigurationError):
        JwtVerifier(**options)


def test_without_the_auth_extra_the_verifier_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """With PyJWT missing, importing the JWT support raises MissingDependencyError for 'auth'."""
    import importlib
    import sys

    monkeypatch.setitem(sys.modules, "jwt", None)
    monkeypatch.delitem(sys.modules, "bastion.auth._jwt")
    with pytest.raises(MissingDependencyError) as caught:
        importlib.import_module("bastion.auth._jwt")
    assert ("auth", "pip install 'bastion[auth]'") == (
        caught.value.extra,
        str(caught.value).rpartition("with: ")[2],
    )
