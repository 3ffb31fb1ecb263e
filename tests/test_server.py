"""Behaviour only a real server shows: what the client sees when a response breaks midway."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.servers import serve

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """uvicorn serving tests/servers/failing_stream_app.py on a free port."""
    log = tmp_path_factory.mktemp("uvicorn") / "server.log"
    with serve("tests.servers.failing_stream_app:app", log=log) as (url, _):
        yield url


def test_a_stream_that_fails_midway_is_cut_off_not_completed(server_url: str) -> None:
    """The client sees a broken response (no terminating chunk), never a complete-looking one."""
    with pytest.raises(httpx.RemoteProtocolError):
        httpx.get(f"{server_url}/stream", timeout=5)


def test_a_failure_before_the_response_is_a_problem(server_url: str) -> None:
    """Over a real connection too, an early failure is a problem+json 500 with the request id."""
    response = httpx.get(f"{server_url}/boom", timeout=5)
    assert 500 == response.status_code
    assert response.headers["x-request-id"] == response.json()["request_id"]
