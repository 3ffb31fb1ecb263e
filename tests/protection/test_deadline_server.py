"""Deadlines over a real uvicorn connection: what the client sees when a response is cut off.

This module is also the app the test serves (``tests.protection.test_deadline_server:app``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import anyio
import httpx
import pytest
from fastapi import FastAPI
from fastapi.responses import StreamingResponse

from bastion import Bastion, Settings
from tests.servers import serve

pytestmark = pytest.mark.slow

app = FastAPI()
Bastion(app, Settings(_env_file=None, deadline={"default_s": 0.2}))


@app.get("/stream")
async def stream() -> StreamingResponse:
    """One chunk, then nothing until long past the deadline."""

    async def chunks() -> AsyncIterator[bytes]:
        yield b"first chunk\n"
        await anyio.sleep(3600)
        yield b"never sent\n"

    return StreamingResponse(chunks(), media_type="text/plain")


@app.get("/slow")
async def slow() -> dict[str, bool]:
    """Past the deadline before it answers."""
    await anyio.sleep(3600)
    return {"done": True}


@pytest.fixture(scope="module")
def server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """uvicorn serving this module's app on a free port."""
    log = tmp_path_factory.mktemp("uvicorn") / "server.log"
    with serve("tests.protection.test_deadline_server:app", log=log) as (url, _):
        yield url


def test_a_stream_past_its_deadline_is_cut_off_not_completed(server_url: str) -> None:
    """The client gets the 200 it was sent, then a broken body: never a complete-looking one."""
    with httpx.stream("GET", f"{server_url}/stream", timeout=10) as response:
        assert 200 == response.status_code
        with pytest.raises(httpx.RemoteProtocolError):
            response.read()


def test_a_slow_request_is_a_504_problem_over_the_wire(server_url: str) -> None:
    """Before the response started, the deadline answers 504 problem+json with the request id."""
    response = httpx.get(f"{server_url}/slow", timeout=10)

    assert 504 == response.status_code
    assert response.headers["x-request-id"] == response.json()["request_id"]


def test_the_server_keeps_serving_after_a_cut_off(server_url: str) -> None:
    """A cut-off response closes its own connection only; the next request is served."""
    with (
        httpx.stream("GET", f"{server_url}/stream", timeout=10) as response,
        pytest.raises(httpx.RemoteProtocolError),
    ):
        response.read()
    assert 200 == httpx.get(f"{server_url}/_bastion/health/live", timeout=10).status_code
