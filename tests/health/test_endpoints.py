"""The probe endpoints: health+json bodies, status codes, admin details, no-store, HEAD."""

from __future__ import annotations

import anyio
import pytest

from bastion._ops import OpsEndpoint
from bastion.health import HEALTH_CONTENT_TYPE, HealthRegistry, health_endpoints
from tests.asgi import RawResponse, call, http_scope

KEY = "s3cret-admin-key"


async def up() -> None:
    """A check that passes."""


async def down() -> bool:
    """A check that fails."""
    return False


async def boom() -> None:
    """A check that raises with a secret in its message."""
    raise ConnectionError("redis://:hunter2@db:6379 refused")


def endpoints(registry: HealthRegistry) -> dict[str, OpsEndpoint]:
    """The endpoints with the test admin key."""
    return health_endpoints(registry, admin_key=KEY)


async def get(
    handler: OpsEndpoint, *, authorization: str | None = None, method: str = "GET"
) -> RawResponse:
    """Call a probe handler, with an Authorization header if given."""
    headers = [] if authorization is None else [(b"authorization", authorization.encode())]
    return await call(handler, http_scope("/health/ready", method=method, headers=headers))


def test_paths() -> None:
    """The factory serves the three probe paths."""
    expected = ["/health/live", "/health/ready", "/health/startup"]
    assert expected == sorted(endpoints(HealthRegistry()))


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("checks", "status", "draft", "health"),
    [
        ([("a", up, True)], 200, "pass", "UP"),
        ([("a", up, True), ("b", down, False)], 200, "warn", "DEGRADED"),
        ([("a", down, True), ("b", up, False)], 503, "fail", "DOWN"),
    ],
)
async def test_status_codes_and_body(
    checks: list[tuple[str, object, bool]], status: int, draft: str, health: str
) -> None:
    """UP and DEGRADED answer 200, DOWN 503, with the draft status and bastion's health."""
    registry = HealthRegistry()
    for name, check, critical in checks:
        registry.add(name, check, critical=critical)  # type: ignore[arg-type]
    response = await get(endpoints(registry)["/health/ready"])
    assert status == response.status
    assert {"status": draft, "health": health} == response.json()
    assert HEALTH_CONTENT_TYPE == response.headers["content-type"]


@pytest.mark.anyio
async def test_no_store() -> None:
    """Every probe answer carries Cache-Control: no-store."""
    for handler in endpoints(HealthRegistry()).values():
        assert "no-store" == (await get(handler)).headers["cache-control"]


@pytest.mark.anyio
async def test_head_has_no_body() -> None:
    """HEAD gets the status and headers of GET but no body."""
    registry = HealthRegistry()
    registry.add("db", down)
    get_response = await get(endpoints(registry)["/health/ready"])
    head_response = await get(endpoints(registry)["/health/ready"], method="HEAD")
    assert 503 == head_response.status
    assert b"" == head_response.body
    assert get_response.headers["content-length"] == head_response.headers["content-length"]


@pytest.mark.anyio
async def test_details_need_the_admin_key() -> None:
    """Without the key only the aggregate is shown; with it each check and its timing."""
    registry = HealthRegistry()
    registry.add("db", up)
    handler = endpoints(registry)["/health/ready"]
    assert "checks" not in (await get(handler)).json()
    body = (await get(handler, authorization=f"Bearer {KEY}")).json()
    [entry] = body["checks"]["db"]
    assert ("pass", "UP", True) == (entry["status"], entry["health"], entry["critical"])
    assert isinstance(entry["duration_ms"], float)
    assert "time" in entry


@pytest.mark.anyio
@pytest.mark.parametrize(
    "authorization",
    [f"Bearer {KEY}x", "Bearer ", f"Basic {KEY}", KEY, f"Bearer{KEY}"],
)
async def test_wrong_key_hides_details(authorization: str) -> None:
    """A wrong key, a wrong scheme or a malformed header shows only the aggregate."""
    registry = HealthRegistry()
    registry.add("db", up)
    response = await get(endpoints(registry)["/health/ready"], authorization=authorization)
    assert {"status": "pass", "health": "UP"} == response.json()


@pytest.mark.anyio
async def test_bearer_scheme_is_case_insensitive() -> None:
    """The Bearer scheme matches in any case (RFC 9110)."""
    registry = HealthRegistry()
    registry.add("db", up)
    response = await get(endpoints(registry)["/health/ready"], authorization=f"bearer {KEY}")
    assert "checks" in response.json()


@pytest.mark.anyio
async def test_no_admin_key_never_shows_details() -> None:
    """With admin_key=None no header unlocks the details."""
    registry = HealthRegistry()
    registry.add("db", up)
    handler = health_endpoints(registry, admin_key=None)["/health/ready"]
    response = await get(handler, authorization="Bearer ")
    assert "checks" not in response.json()


@pytest.mark.anyio
async def test_exception_message_only_with_the_key() -> None:
    """A check's exception message never reaches a client without the admin key."""
    registry = HealthRegistry()
    registry.add("redis", boom)
    handler = endpoints(registry)["/health/ready"]
    anonymous = await get(handler)
    assert b"hunter2" not in anonymous.body
    assert b"ConnectionError" not in anonymous.body
    [entry] = (await get(handler, authorization=f"Bearer {KEY}")).json()["checks"]["redis"]
    assert "ConnectionError" == entry["error"]
    assert "ConnectionError: redis://:hunter2@db:6379 refused" == entry["output"]


@pytest.mark.anyio
async def test_draining_ready_answers_503_at_once() -> None:
    """After set_draining() the ready endpoint answers 503 with output draining."""
    registry = HealthRegistry()
    registry.add("db", up)
    handlers = endpoints(registry)
    assert 200 == (await get(handlers["/health/ready"])).status
    registry.set_draining()
    response = await get(handlers["/health/ready"])
    assert 503 == response.status
    assert {"status": "fail", "health": "DOWN", "output": "draining"} == response.json()
    assert 200 == (await get(handlers["/health/live"])).status


@pytest.mark.anyio
async def test_startup_endpoint_follows_mark_started() -> None:
    """The startup endpoint answers 503 until mark_started(), then 200."""
    registry = HealthRegistry()
    handler = endpoints(registry)["/health/startup"]
    assert 503 == (await get(handler)).status
    registry.mark_started()
    assert 200 == (await get(handler)).status


@pytest.mark.anyio
async def test_timed_out_check_answers_503() -> None:
    """A critical check that exceeds its timeout makes the endpoint answer 503 promptly."""
    never = anyio.Event()

    async def hangs() -> None:
        await never.wait()

    registry = HealthRegistry()
    registry.add("slow", hangs, timeout_s=0.05)
    with anyio.fail_after(5):
        response = await get(endpoints(registry)["/health/ready"], authorization=f"Bearer {KEY}")
    assert 503 == response.status
    assert "timeout: timed out after 0.05s" == response.json()["checks"]["slow"][0]["output"]
