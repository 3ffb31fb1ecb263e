"""Key format and hashing: recognisable, high-entropy, parsed strictly, stored only as a digest."""

from __future__ import annotations

import re

import pytest

from bastion.auth import ApiKeyRecord, digest, generate_key, parse_key
from bastion.exceptions import ConfigurationError, InvalidCredentials


def test_a_generated_key_has_prefix_id_and_a_256_bit_secret() -> None:
    """bst_<16 hex>_<43 base64url chars>, and the id returned is the one inside the key."""
    key, key_id = generate_key()
    found = re.fullmatch(r"bst_([0-9a-f]{16})_([A-Za-z0-9_-]{43})", key)
    assert found is not None
    assert key_id == found.group(1)
    assert key_id == parse_key(key)


def test_generated_keys_never_repeat() -> None:
    """A thousand keys: a thousand distinct ids and secrets."""
    generated = [generate_key() for _ in range(1000)]
    assert 1000 == len({key for key, _ in generated})
    assert 1000 == len({key_id for _, key_id in generated})


def test_a_custom_prefix_is_used_and_required() -> None:
    """A key made with prefix 'acme' parses with it and not with the default."""
    key, key_id = generate_key("acme")
    assert key.startswith("acme_")
    assert key_id == parse_key(key, "acme")
    with pytest.raises(InvalidCredentials):
        parse_key(key)


@pytest.mark.parametrize("prefix", ["", "a", "Bst", "b_st", "x" * 17, "1ab"])
def test_an_invalid_prefix_is_a_configuration_error(prefix: str) -> None:
    """Prefixes are 2-16 lower-case letters or digits starting with a letter."""
    with pytest.raises(ConfigurationError):
        generate_key(prefix)


@pytest.mark.parametrize(
    "mangled",
    [
        "",
        "bst_",
        "bst_0123456789abcdef",
        "bst_0123456789abcdef_short",
        "bst_0123456789ABCDEF_" + "a" * 43,
        "bst_0123456789abcdef_" + "a" * 44,
        "bst_0123456789abcdef_" + "a" * 42 + "!",
        "xyz_0123456789abcdef_" + "a" * 43,
        " bst_0123456789abcdef_" + "a" * 43,
    ],
)
def test_malformed_keys_are_refused_before_any_lookup(mangled: str) -> None:
    """Anything but prefix, 16 lower-case hex digits and 43 base64url characters is malformed."""
    with pytest.raises(InvalidCredentials) as caught:
        parse_key(mangled)
    assert "malformed" == caught.value.reason


def test_the_digest_is_hmac_sha256_hex_and_never_the_key() -> None:
    """64 hex digits, deterministic, different for a one-character change, free of the key."""
    key, _ = generate_key()
    other = key[:-1] + ("A" if key[-1] != "A" else "B")
    value = digest(key)
    assert re.fullmatch(r"[0-9a-f]{64}", value) is not None
    assert value == digest(key)
    assert value != digest(other)
    assert key.split("_", 2)[2] not in value


def test_a_record_survives_its_field_encoding() -> None:
    """to_fields/from_fields round-trip every attribute, None included."""
    record = ApiKeyRecord(
        id="0123456789abcdef",
        name="ci",
        scopes=frozenset({"b:write", "a:read"}),
        digest="d" * 64,
        created=1_700_000_000.25,
        expires=1_700_086_400.5,
        revoked=None,
        last_used=1_700_000_100.0,
        replaced_by="fedcba9876543210",
    )
    fields = record.to_fields()
    assert "a:read b:write" == fields["scopes"]
    assert "" == fields["revoked"]
    assert record == ApiKeyRecord.from_fields(record.id, fields)


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({}, "active"),
        ({"replaced_by": "x"}, "rotating"),
        ({"expires": 100.0}, "expired"),
        ({"revoked": 50.0, "expires": 100.0}, "revoked"),
    ],
)
def test_status_at_a_time(changes: dict[str, object], expected: str) -> None:
    """Revoked beats expired beats rotating beats active; expiry is inclusive."""
    record = ApiKeyRecord(id="0" * 16, name="n", digest="d", created=0.0).with_changes(**changes)
    assert expected == record.status(100.0)
