"""Parsing of Cache-Control (RFC 9111 §5.2), Vary, HTTP dates, and query normalization."""

from __future__ import annotations

import pytest

from bastion.cache._entry import Entry, decode_entry, decode_marker, encode_entry, encode_marker
from bastion.cache._http import (
    cache_status,
    http_date_seconds,
    normalize_query,
    parse_cache_control,
    parse_vary,
)
from bastion.exceptions import StoreDataError


def test_cache_control_directives_are_read() -> None:
    """Durations, flags and names in any case; unknown directives ignored."""
    control = parse_cache_control(
        b'Public, MAX-AGE=60, s-maxage="120", stale-while-revalidate=30, x-ext=1, '
        b"stale-if-error=600, must-revalidate"
    )

    assert (60, 120, 30, 600, True, True, False) == (
        control.max_age,
        control.s_maxage,
        control.stale_while_revalidate,
        control.stale_if_error,
        control.public,
        control.must_revalidate,
        control.no_store,
    )


def test_field_lists_of_no_cache_and_private_count_as_the_bare_directive() -> None:
    """``no-cache="set-cookie"`` and ``private="x"`` are treated as unqualified (stricter)."""
    control = parse_cache_control(b'no-cache="set-cookie", private="x-user"')

    assert (True, True) == (control.no_cache, control.private)


@pytest.mark.parametrize(
    ("value", "max_age"),
    [(b"max-age=abc", 0), (b"max-age=-5", 0), (b"max-age=10, max-age=3", 3), (b"max-age", 0)],
)
def test_invalid_or_repeated_durations_are_read_safely(value: bytes, max_age: int) -> None:
    """Invalid is stale (0); the smaller of two wins."""
    assert max_age == parse_cache_control(value).max_age


def test_request_directives_are_read() -> None:
    """``no-store``, ``min-fresh``, ``only-if-cached``, and proxy-revalidate as must-revalidate."""
    control = parse_cache_control(b"no-store, min-fresh=5, only-if-cached, proxy-revalidate")

    assert (True, 5, True, True) == (
        control.no_store,
        control.min_fresh,
        control.only_if_cached,
        control.must_revalidate,
    )


def test_garbage_between_directives_does_not_hide_the_others() -> None:
    """A malformed element is skipped up to the next comma."""
    assert 30 == parse_cache_control(b'"oops, max-age=30').max_age


def test_vary_names_are_lowercased_sorted_and_unique() -> None:
    """``Vary: Accept-Language, accept-encoding, Accept-Language``."""
    assert (b"accept-encoding", b"accept-language") == parse_vary(
        b"Accept-Language, accept-encoding,Accept-Language"
    )


def test_vary_star_means_never() -> None:
    """``*`` anywhere in the list."""
    assert None is parse_vary(b"accept, *")


@pytest.mark.parametrize(
    ("query", "normalized"),
    [
        (b"", b""),
        (b"b=2&a=1", b"a=1&b=2"),
        (b"a=%31&b=2", b"a=1&b=2"),
        (b"q=a+b", b"q=a%20b"),
        (b"q=a%20b", b"q=a%20b"),
        (b"a=2&a=1", b"a=2&a=1"),
        (b"flag&x=", b"flag=&x="),
        (b"n=%C3%A9", b"n=%C3%A9"),
        (b"n=%c3%a9", b"n=%C3%A9"),
    ],
)
def test_queries_are_normalized(query: bytes, normalized: bytes) -> None:
    """Sorted by name, decoded once, re-encoded one way; repeated values keep their order."""
    assert normalized == normalize_query(query)


def test_http_dates_are_read_and_garbage_is_none() -> None:
    """RFC 9110 IMF-fixdate; anything else is ``None``."""
    assert (784111777.0, None) == (
        http_date_seconds(b"Sun, 06 Nov 1994 08:49:37 GMT"),
        http_date_seconds(b"tomorrow"),
    )


def test_cache_status_values_follow_rfc_9211() -> None:
    """``bastion; param; ...``, with empty parameters left out."""
    assert b"bastion; fwd=miss; stored" == cache_status("fwd=miss", None, "stored")


def test_an_entry_survives_encoding() -> None:
    """Status, headers in order, body and every duration come back."""
    entry = Entry(
        203,
        [(b"content-type", b"text/plain"), (b"etag", b'"x"'), (b"x-empty", b"")],
        b"body\0with nul",
        1_700_000_000.5,
        60.0,
        30.0,
        300.0,
    )

    decoded = decode_entry(encode_entry(entry))

    assert (203, entry.headers, b"body\0with nul", 1_700_000_000.5, 60.0, 30.0, 300.0, b'"x"') == (
        decoded.status,
        decoded.headers,
        decoded.body,
        decoded.stored_at,
        decoded.fresh_s,
        decoded.stale_while_revalidate_s,
        decoded.stale_if_error_s,
        decoded.etag,
    )


@pytest.mark.parametrize("data", [b"", b"BC1\x00", b"XX" * 40, encode_marker((b"accept",))])
def test_what_is_not_an_entry_is_refused(data: bytes) -> None:
    """Truncated, foreign or marker values raise ``StoreDataError``."""
    with pytest.raises(StoreDataError):
        decode_entry(data)


def test_a_vary_marker_round_trips() -> None:
    """The names come back; an entry is not a marker."""
    entry = encode_entry(Entry(200, [], b"", 0.0, 1.0))

    assert ((b"accept", b"accept-language"), None) == (
        decode_marker(encode_marker((b"accept", b"accept-language"))),
        decode_marker(entry),
    )
