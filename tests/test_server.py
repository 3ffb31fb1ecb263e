"""Behaviour only a real server shows: what the client sees when a response breaks midway."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """uvicorn serving tests/servers/failing_stream_app.py on a free port."""
    port = free_port()
    log = (tmp_path_factory.mktemp("uvicorn") / "server.log").open("w")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "tests.servers.failing_stream_app:app",
            "--port",
            str(port),
            "--log-level",
            "warning",
        ],
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                httpx.get(f"{url}/_bastion/health/live", timeout=1)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError("uvicorn did not start") from None
                time.sleep(0.05)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)
        log.close()


def test_a_stream_that_fails_midway_is_cut_off_not_completed(server_url: str) -> None:
    """The client sees a broken response (no terminating chunk), never a complete-looking one."""
    with pytest.raises(httpx.RemoteProtocolError):
        httpx.get(f"{server_url}/stream", timeout=5)


def test_a_failure_before_the_response_is_a_problem(server_url: str) -> None:
    """Over a real connection too, an early failure is a problem+json 500 with the request id."""
    response = httpx.get(f"{server_url}/boom", timeout=5)
    assert 500 == response.status_code
    assert response.headers["x-request-id"] == response.json()["request_id"]
