"""Any ASGI framework, through the Bastion object: Litestar as the example."""

from __future__ import annotations

import pytest
from litestar import Litestar, get
from litestar.params import FromPath

from bastion import Bastion, Settings, current_context
from tests.asgi import client_for

pytestmark = pytest.mark.anyio


@get("/items/{item_id:int}")
async def item(item_id: FromPath[int]) -> dict[str, str | int | None]:
    """Answer with what bastion's request context says."""
    context = current_context()
    return {"id": item_id, "request_id": context.request_id, "client": context.client}


@get("/boom")
async def boom() -> None:
    """Fail in the handler."""
    raise RuntimeError("kaboom")


async def test_a_litestar_app_served_through_bastion() -> None:
    """Request ids, the lifespan, ops endpoints and the context work for Litestar too; its own
    error responses keep their status and carry the request id."""
    started: list[str] = []
    litestar_app = Litestar(
        route_handlers=[item, boom], on_startup=[lambda: started.append("litestar")]
    )
    app = Bastion(litestar_app, Settings(_env_file=None))
    async with client_for(app) as client:
        ok = await client.get("/items/7", headers={"X-Request-ID": "lit-1"})
        failed = await client.get("/boom")
        ready = await client.get("/_bastion/health/ready")
    assert ["litestar"] == started
    assert {"id": 7, "request_id": "lit-1", "client": "127.0.0.1"} == ok.json()
    assert "lit-1" == ok.headers["x-request-id"]
    assert 500 == failed.status_code
    assert "kaboom" not in failed.text
    assert "x-request-id" in failed.headers
    assert 200 == ready.status_code
