"""The rate grammar, quotas and limits: strict parsing and clear configuration errors."""

from __future__ import annotations

import pytest

from bastion.exceptions import ConfigurationError
from bastion.ratelimit import Limit, Quota, parse_rates
from bastion.ratelimit._rates import sf_string


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("100/minute", (Quota(100, 60),)),
        ("10/second", (Quota(10, 1),)),
        ("1000/hour", (Quota(1000, 3600),)),
        ("5/10s", (Quota(5, 10),)),
        ("5/10 seconds", (Quota(5, 10),)),
        ("5 per 10 seconds", (Quota(5, 10),)),
        ("20/2m", (Quota(20, 120),)),
        ("1/day", (Quota(1, 86400),)),
        ("3/D", (Quota(3, 86400),)),
        ("  7 / Minute  ", (Quota(7, 60),)),
        ("10/second burst 50", (Quota(10, 1, 50),)),
        ("10/second; 1000/hour", (Quota(10, 1), Quota(1000, 3600))),
        ("1/s;2/m;3/h;4/d", (Quota(1, 1), Quota(2, 60), Quota(3, 3600), Quota(4, 86400))),
    ],
)
def test_rates_parse_into_quotas(text: str, expected: tuple[Quota, ...]) -> None:
    """The grammar accepts counts per (multiples of) seconds, minutes, hours and days."""
    assert expected == parse_rates(text)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "expected COUNT/[N]UNIT"),
        ("100", "expected COUNT/[N]UNIT"),
        ("100/fortnight", "unknown unit 'fortnight'"),
        ("0/minute", "positive integer"),
        ("010/minute", "positive integer"),
        ("-1/minute", "expected COUNT/[N]UNIT"),
        ("1.5/minute", "expected COUNT/[N]UNIT"),
        ("10/0s", "positive integer"),
        ("10/minute burst 0", "positive integer"),
        ("10/minute;", "expected COUNT/[N]UNIT"),
        ("10/minute, 100/hour", "expected COUNT/[N]UNIT"),
        ("10000000000000/second", "at most"),
        ("1/400d", "period_s must be in"),
    ],
)
def test_invalid_rates_are_configuration_errors_that_quote_the_rate(
    text: str, fragment: str
) -> None:
    """A rate that does not follow the grammar fails with the rate and what is accepted."""
    with pytest.raises(ConfigurationError, match=r"invalid rate|period_s") as caught:
        parse_rates(text)
    assert fragment in str(caught.value)


def test_quota_windows_have_a_short_form() -> None:
    """Windows print as 1s, 10s, 1m, 90s, 1h, 1d; quotas print back in the grammar."""
    windows = [Quota(1, seconds).window for seconds in (1, 10, 60, 90, 3600, 86400, 7200)]
    assert ["1s", "10s", "1m", "90s", "1h", "1d", "2h"] == windows
    assert "10/1s burst 50" == str(Quota(10, 1, 50))


def test_one_quota_takes_the_limit_name_and_several_add_their_window() -> None:
    """A single quota is named like its limit; several are named name-window."""
    assert ["search"] == [quota.policy for quota in Limit("10/s", name="search").compiled]
    assert ["api-1s", "api-1h"] == [
        quota.policy for quota in Limit("10/s; 1000/h", name="api").compiled
    ]


def test_policy_header_lists_quota_and_window_per_quota() -> None:
    """The RateLimit-Policy value follows the draft: "name";q=QUOTA;w=WINDOW, comma-separated."""
    limit = Limit("50/minute; 1000/hour", name="api")
    assert '"api-1m";q=50;w=60, "api-1h";q=1000;w=3600' == limit.policy_header


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"rates": "1/s; 2/s"}, "same window"),
        ({"rates": "1/s burst 5"}, "needs algorithm='gcra'"),
        ({"rates": "1/s", "algorithm": "leaky"}, "unknown rate-limit algorithm"),
        ({"rates": "1/s", "name": " "}, "must not be empty"),
        ({"rates": []}, "at least one quota"),
        ({"rates": 10}, "expected a string"),
    ],
)
def test_invalid_limits_are_configuration_errors(kwargs: dict[str, object], fragment: str) -> None:
    """Duplicate windows, a burst outside GCRA, unknown algorithms and empty names are refused."""
    rates = kwargs.pop("rates")
    with pytest.raises(ConfigurationError) as caught:
        Limit(rates, **kwargs)  # type: ignore[arg-type]
    assert fragment in str(caught.value)


def test_limits_accept_quotas_and_lists() -> None:
    """A Limit takes a rate string, a Quota, or a list mixing both."""
    mixed = Limit([Quota(10, 1), "100/minute"], name="x")
    assert (Quota(10, 1), Quota(100, 60)) == mixed.quotas
    assert Limit("10/second; 100/minute", name="x") == mixed
    assert Limit(Quota(5, 60)) == Limit("5/minute")


def test_renamed_keeps_everything_but_the_name() -> None:
    """renamed() changes only the name (and so the policies and counters)."""
    limit = Limit("1/s burst 3", algorithm="gcra", per_route=False)
    assert Limit("1/s burst 3", name="other", algorithm="gcra", per_route=False) == limit.renamed(
        "other"
    )


def test_repr_reads_back_as_the_limit() -> None:
    """The repr shows the rates in the grammar and every option."""
    assert "Limit('10/1s; 100/1m', name='api', algorithm='gcra', per_route=True)" == repr(
        Limit("10/s; 100/m", name="api", algorithm="gcra")
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("default", '"default"'),
        ("/items/{id}", '"/items/{id}"'),
        ('say "hi"', '"say \\"hi\\""'),
        ("back\\slash", '"back\\\\slash"'),
        ("caf\u00e9\n", '"caf??"'),
    ],
)
def test_policy_names_are_serialized_as_structured_field_strings(text: str, expected: str) -> None:
    """Names are quoted, quotes and backslashes escaped, non-ASCII replaced (RFC 9651 §3.3.3)."""
    assert expected == sf_string(text)
