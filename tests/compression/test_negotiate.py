"""Accept-Encoding negotiation by q-value (RFC 9110 §12.5.3)."""

from __future__ import annotations

import pytest

from bastion.compression import negotiate, parse_accept_encoding

ALL = ("br", "zstd", "gzip")


@pytest.mark.parametrize(
    ("accept_encoding", "expected"),
    [
        # What browsers and tools send.
        (b"gzip, deflate, br, zstd", "br"),
        (b"gzip, deflate", "gzip"),
        (b"gzip, deflate, br", "br"),
        (b"zstd", "zstd"),
        (b"br;q=1.0, gzip;q=0.8, *;q=0.1", "br"),
        # Higher q wins over server preference.
        (b"br;q=0.5, gzip", "gzip"),
        (b"br;q=0.5, zstd;q=0.6, gzip;q=0.7", "gzip"),
        (b"gzip;q=0.001, br;q=0", "gzip"),
        # Equal q: the server's preference breaks the tie.
        (b"gzip, zstd", "zstd"),
        (b"gzip;q=0.8, br;q=0.8", "br"),
        # q=0 refuses a coding.
        (b"br;q=0, gzip", "gzip"),
        (b"br;q=0, zstd;q=0, gzip;q=0", None),
        (b"gzip;q=0.000", None),
        # The wildcard covers every coding not listed by name.
        (b"*", "br"),
        (b"*;q=0.5, gzip", "gzip"),
        (b"br;q=0, *", "zstd"),
        (b"*;q=0", None),
        (b"gzip, *;q=0", "gzip"),
        # identity: chosen only when the client explicitly prefers it.
        (b"identity", None),
        (b"gzip, identity;q=0.5", "gzip"),
        (b"gzip;q=0.5, identity", None),
        (b"gzip;q=0.5, identity;q=0.5", "gzip"),
        (b"identity;q=0, gzip", "gzip"),
        # Unknown codings, case, whitespace, empty elements, aliases.
        (b"deflate, compress", None),
        (b"GZIP", "gzip"),
        (b"Br ; Q=0.9 ,\tgzip;q=0.8", "br"),
        (b",, gzip ,", "gzip"),
        (b"x-gzip", "gzip"),
        (b"", None),
        (b"  ", None),
        # Malformed: no compression, never an error.
        (b"gzip;q=2", None),
        (b"gzip;q=0.5000", None),
        (b"gzip;q=-1", None),
        (b"gzip;q=abc", None),
        (b"gzip;q", None),
        (b"gzip;level=1", None),
        (b"gzip;q=0.5;q=0.6", None),
        (b"gzip q=0.5", None),
        (b";q=0.5", None),
        (b"br, g\xc3\xa9zip", None),
        (b"gzip;q= 0.5", None),
    ],
)
def test_negotiation_table(accept_encoding: bytes, expected: str | None) -> None:
    """Each Accept-Encoding value selects the coding the RFC rules give."""
    assert expected == negotiate(accept_encoding, ALL)


def test_without_the_header_nothing_is_compressed() -> None:
    """No Accept-Encoding means identity, as nginx and Starlette do."""
    assert None is negotiate(None, ALL)


@pytest.mark.parametrize(
    ("available", "expected"),
    [(("gzip",), "gzip"), (("zstd", "br"), "zstd"), ((), None)],
)
def test_only_available_codings_are_chosen(
    available: tuple[str, ...], expected: str | None
) -> None:
    """The server's list decides what can be chosen and in which order of preference."""
    assert expected == negotiate(b"br, zstd, gzip", available)


def test_a_text_header_value_is_accepted() -> None:
    """A str value negotiates like its bytes; a non-ASCII one compresses nothing."""
    assert "gzip" == negotiate("gzip;q=0.9, br;q=0.1", ALL)
    assert None is negotiate("gzïp", ALL)


def test_parse_keeps_the_first_of_duplicate_entries() -> None:
    """A coding listed twice keeps its first weight; x-gzip is read as gzip."""
    assert {"gzip": 0.0, "br": 1.0} == parse_accept_encoding(b"x-gzip;q=0, br, gzip")


def test_parse_reports_malformed_values_as_none() -> None:
    """Malformed values parse to None, which callers treat as no compression."""
    assert None is parse_accept_encoding(b"gzip;q=1.5")
