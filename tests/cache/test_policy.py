"""Route policies: validation, rules from settings, tags, purges and invalidation by writes."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from bastion._clock import ManualClock
from bastion.cache import CacheBackend, CachePolicy, CacheRule, cache, invalidates
from bastion.cache._policy import POLICY_ATTRIBUTE, TagTemplate, path_params
from bastion.exceptions import ConfigurationError
from tests.cache.responses import CountedApp, client_for


def test_the_decorator_records_a_policy_and_returns_the_endpoint() -> None:
    """Nothing wraps the endpoint; timedeltas become seconds."""

    async def endpoint() -> None: ...

    decorated = cache(ttl=timedelta(minutes=1), stale_if_error=30, tags=["a"])(endpoint)

    assert endpoint is decorated
    assert CachePolicy(ttl_s=60.0, stale_if_error_s=30.0, tags=("a",)) == getattr(
        endpoint, POLICY_ATTRIBUTE
    )


@pytest.mark.parametrize(
    "options",
    [
        {"ttl": -1},
        {"ttl": float("inf")},
        {"stale_if_error": "10"},
        {"tags": "albums"},
        {"tags": [""]},
        {"vary": ["*"]},
        {"invalidate_on": ["GET"]},
        {"max_entry_bytes": -1},
    ],
)
def test_invalid_options_fail_at_decoration_time(options: dict[str, Any]) -> None:
    """A typo never waits for the first request to surface."""
    with pytest.raises(ConfigurationError):
        cache(**options)


def test_invalidates_needs_a_tag() -> None:
    """``@invalidates()`` with nothing to purge is a mistake."""
    with pytest.raises(ConfigurationError):
        invalidates()


@pytest.mark.parametrize(
    ("value", "rule"),
    [
        ("/albums*=60", CacheRule(path="/albums*", policy=CachePolicy(ttl_s=60.0))),
        (
            {"path": "/tracks/{id}", "ttl": 5, "tags": ["tracks"], "public": True},
            CacheRule(
                path="/tracks/{id}", policy=CachePolicy(ttl_s=5.0, tags=("tracks",), public=True)
            ),
        ),
    ],
)
def test_rules_parse_from_settings_values(value: Any, rule: CacheRule) -> None:
    """The shorthand and the mapping form."""
    assert rule == CacheRule.from_value(value)


@pytest.mark.parametrize(
    "value", ["/albums", "albums=60", "/albums=soon", {"ttl": 5}, {"path": "/a", "tll": 5}, 42]
)
def test_invalid_rules_are_refused(value: Any) -> None:
    """No TTL, no leading slash, a typo in an option, or not a rule at all."""
    with pytest.raises(ConfigurationError):
        CacheRule.from_value(value)


def test_rule_patterns_match_templates_with_stars() -> None:
    """``*`` matches any characters, ``/`` included; the rest is literal."""
    rule = CacheRule(path="/albums/*/tracks")

    assert (True, True, False) == (
        rule.matches("/albums/{id}/tracks"),
        rule.matches("/albums/a/b/tracks"),
        rule.matches("/albums/{id}/tracks/1"),
    )


def test_tags_are_filled_from_path_parameters() -> None:
    """``album:{album_id}`` on ``/albums/{album_id}`` for ``/albums/42`` is ``album:42``."""
    params = path_params("/artists/{artist}/albums/{album_id:int}")("/artists/x/albums/42")

    assert ("album:42", "a:x:42", "static", None) == (
        TagTemplate("album:{album_id}").render(params),
        TagTemplate("a:{artist}:{album_id}").render(params),
        TagTemplate("static").render(params),
        TagTemplate("{missing}").render(params),
    )


@pytest.mark.anyio
async def test_purge_by_tag_empties_matching_entries(
    backend: CacheBackend, manual_clock: ManualClock
) -> None:
    """``CacheMiddleware.purge("albums")``: the next request runs the handler."""
    counted = CountedApp()
    async with client_for(counted, backend, manual_clock) as client:
        await client.get("/albums")
        await backend.purge("albums")
        response = await client.get("/albums")

    assert (2, "bastion; fwd=miss; stored") == (
        counted.runs["albums"],
        response.headers["cache-status"],
    )


@pytest.mark.anyio
async def test_a_write_to_the_same_route_purges_its_tags(
    backend: CacheBackend, manual_clock: ManualClock
) -> None:
    """``invalidate_on=["POST"]``: a successful POST /albums purges "albums" before answering."""
    counted = CountedApp()
    async with client_for(counted, backend, manual_clock) as client:
        await client.get("/albums")
        await client.post("/albums")
        response = await client.get("/albums")

    assert (2, 2) == (counted.runs["albums"], response.json()["version"])


@pytest.mark.anyio
async def test_invalidates_purges_the_tag_of_one_entity(
    backend: CacheBackend, manual_clock: ManualClock
) -> None:
    """``@invalidates("album:{album_id}")`` on PUT /albums/1 purges album 1, not album 2."""
    counted = CountedApp()
    async with client_for(counted, backend, manual_clock) as client:
        await client.get("/albums/1")
        await client.get("/albums/2")
        await client.put("/albums/1")
        one = await client.get("/albums/1")
        two = await client.get("/albums/2")

    assert (2, 1) == (one.json()["version"], two.json()["version"])
    assert (2, 1) == (counted.runs["album:1"], counted.runs["album:2"])


@pytest.mark.anyio
async def test_a_failed_write_purges_nothing(
    memory_backend: CacheBackend, manual_clock: ManualClock
) -> None:
    """A 4xx answer to the write leaves the cache as it was."""
    counted = CountedApp()
    async with client_for(counted, memory_backend, manual_clock) as client:
        await client.get("/albums/1")
        refused = await client.put("/albums/not-a-number")
        await client.get("/albums/1")

    assert (422, 1) == (refused.status_code, counted.runs["album:1"])
