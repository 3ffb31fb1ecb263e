"""Apps that tests serve with a real uvicorn, and the helpers that start them.

``serve(app)`` runs ``python -m uvicorn <app>`` on a free 127.0.0.1 port, waits until it
answers, and stops it afterwards; ``free_port()`` finds a port nothing listens on.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    """A TCP port nothing listens on (bound by the kernel's choice, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def serve(
    app: str,
    *,
    arguments: Sequence[str] = ("--log-level", "warning"),
    env: Mapping[str, str] | None = None,
    log: Path | None = None,
    ready_path: str = "/_bastion/health/live",
    timeout_s: float = 30.0,
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """Serve ``app`` (``module:attribute``) with uvicorn until the block ends.

    Yields the base URL and the server process once ``ready_path`` answers with a 2xx.
    The server is terminated afterwards, and killed if it does not stop in time.

    Raises:
        RuntimeError: the server exited or did not answer within ``timeout_s``.
    """
    port = free_port()
    output = log.open("w") if log is not None else None
    process = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", app, "--port", str(port), *arguments],
        cwd=ROOT,
        stdout=output if output is not None else subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
        env=dict(env) if env is not None else None,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                httpx.get(f"{url}{ready_path}", timeout=1).raise_for_status()
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError(f"uvicorn serving {app} did not start") from None
                time.sleep(0.05)
        yield url, process
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if output is not None:
            output.close()
