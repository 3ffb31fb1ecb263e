"""Metrics under a real ``uvicorn --workers 2``: one scrape shows the totals of both workers."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.servers import serve

COUNT = re.compile(
    r'^http_server_request_duration_seconds_count\{method="GET",route="/pid/\{item\}",'
    r'status_class="2xx"\} (\d+)$',
    re.MULTILINE,
)

pytestmark = pytest.mark.slow


def scrape(url: str) -> str:
    """One scrape of the ops metrics endpoint."""
    response = httpx.get(f"{url}/_bastion/metrics", timeout=10)
    assert 200 == response.status_code
    return response.text


def counted(text: str) -> int:
    """The request count of the test route in a scrape."""
    found = COUNT.search(text)
    return int(found.group(1)) if found else 0


def serve_requests(url: str, count: int) -> set[int]:
    """Send ``count`` requests, each on a new connection; the pids that answered them."""
    pids = set()
    for item in range(count):
        with httpx.Client() as client:  # a new connection lets the kernel pick a worker
            response = client.get(f"{url}/pid/{item}", timeout=10)
        assert 200 == response.status_code
        pids.add(int(response.json()["pid"]))
    return pids


@pytest.fixture
def two_workers(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """``uvicorn --workers 2`` serving tests/servers/pid_app.py, with nothing configured for
    metrics: the workers must find their shared directory on their own."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("BASTION_METRICS")}
    environment["BASTION_LOGGING__ACCESS_LOG"] = "false"
    arguments = ("--workers", "2", "--log-level", "warning")
    with serve(
        "tests.servers.pid_app:app", arguments=arguments, env=environment, log=tmp_path / "log"
    ) as server:
        yield server


def worker_pids(supervisor: int) -> list[int]:
    """The children of uvicorn's supervisor that are its workers."""
    children = Path(f"/proc/{supervisor}/task/{supervisor}/children").read_text().split()
    return [int(pid) for pid in children if "resource_tracker" not in _cmdline(int(pid))]


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def test_one_scrape_counts_the_requests_of_both_workers(
    two_workers: tuple[str, subprocess.Popen[bytes]],
) -> None:
    """N requests spread over two workers: any single scrape shows exactly N."""
    url, _ = two_workers

    pids = serve_requests(url, 200)

    assert 2 == len(pids), "the kernel sent every request to one worker"
    assert [200, 200, 200] == [counted(scrape(url)) for _ in range(3)]


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed")
def test_promtool_accepts_a_real_scrape(two_workers: tuple[str, subprocess.Popen[bytes]]) -> None:
    """`promtool check metrics` passes on what the server really serves."""
    url, _ = two_workers
    serve_requests(url, 20)

    result = subprocess.run(
        ["promtool", "check", "metrics"],
        input=scrape(url).encode(),
        capture_output=True,
        check=False,
    )

    assert (0, b"") == (result.returncode, result.stdout + result.stderr)


def test_a_killed_worker_keeps_its_counts_and_leaves_no_file(
    two_workers: tuple[str, subprocess.Popen[bytes]],
) -> None:
    """After a worker is killed and replaced, totals are unchanged and no dead file piles up."""
    url, supervisor = two_workers
    serve_requests(url, 50)
    victim = worker_pids(supervisor.pid)[0]

    directory = next(
        Path(tempfile.gettempdir()).glob(f"bastion-metrics-{os.getuid()}/{supervisor.pid}-*")
    )
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while True:  # uvicorn's supervisor replaces the dead worker, which shares its metrics
        owners = {int(path.name.split("-")[1]) for path in directory.glob("worker-*.db")}
        if len(owners - {victim}) == 2:
            break
        assert time.monotonic() < deadline, "the worker was not replaced"
        time.sleep(0.1)
    serve_requests(url, 10)

    text = scrape(url)

    assert 60 == counted(text)
    owners = {int(path.name.split("-")[1]) for path in directory.glob("worker-*.db")}
    assert victim not in owners
    assert set(worker_pids(supervisor.pid)) == owners
