"""Through a real uvicorn and curl: bodies decode, streams and SSE arrive while still open."""

from __future__ import annotations

import os
import select
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest

from tests.servers import serve
from tests.servers.compression_app import ITEMS

CURL = shutil.which("curl")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(CURL is None, reason="curl is not installed"),
]


def curl_features() -> set[str]:
    """The features line of ``curl -V``, lower-cased (``brotli``, ``zstd``, ``libz``, ...)."""
    if CURL is None:
        return set()
    output = subprocess.run([CURL, "-V"], capture_output=True, text=True, check=True).stdout
    for line in output.splitlines():
        if line.startswith("Features:"):
            return {feature.lower() for feature in line.split()[1:]}
    return set()


FEATURES = curl_features()
# The curl feature that decodes each coding.
DECODERS = {"br": "brotli", "zstd": "zstd", "gzip": "libz"}


def encoding_param(encoding: str) -> object:
    """A parameter for ``encoding``, skipped when this machine's curl cannot decode it."""
    feature = DECODERS[encoding]
    reason = f"this curl was built without {feature} (see curl -V)"
    return pytest.param(encoding, marks=pytest.mark.skipif(feature not in FEATURES, reason=reason))


ENCODINGS = [encoding_param(encoding) for encoding in ("br", "zstd", "gzip")]


@pytest.fixture(scope="module")
def server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """uvicorn serving tests/servers/compression_app.py on a free port."""
    log = tmp_path_factory.mktemp("uvicorn") / "server.log"
    with serve("tests.servers.compression_app:app", log=log, ready_path="/ping") as (url, _):
        yield url


def headers_of(path: Path) -> dict[str, str]:
    """The response headers curl dumped with ``-D``, lower-cased names."""
    lines = path.read_text().splitlines()[1:]
    pairs = (line.split(":", 1) for line in lines if ":" in line)
    return {name.strip().lower(): value.strip() for name, value in pairs}


def read_until(process: subprocess.Popen[bytes], marker: bytes, timeout_s: float) -> bytes:
    """Read curl's output until ``marker`` appears; fail if it does not within the timeout."""
    assert process.stdout is not None
    fd = process.stdout.fileno()
    data = b""
    deadline = time.monotonic() + timeout_s
    while marker not in data:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"{marker!r} did not arrive; got {data!r}"
        ready, _, _ = select.select([fd], [], [], remaining)
        if ready:
            chunk = os.read(fd, 65536)
            assert chunk, f"the stream ended before {marker!r}; got {data!r}"
            data += chunk
    return data


def start_curl(url: str, accept: str, header_file: Path) -> subprocess.Popen[bytes]:
    """curl --compressed, unbuffered (-N), asking for ``accept``, dumping headers to a file."""
    assert CURL is not None
    command = [CURL, "-sS", "-N", "--compressed", "-H", f"Accept-Encoding: {accept}"]
    return subprocess.Popen(
        [*command, "-D", str(header_file), url], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_curl_decodes_the_compressed_json(server_url: str, encoding: str, tmp_path: Path) -> None:
    """curl asks for one coding, gets it, and decodes the JSON to the original items."""
    assert CURL is not None
    header_file = tmp_path / "headers"
    command = [CURL, "-sS", "--compressed", "-H", f"Accept-Encoding: {encoding}"]
    result = subprocess.run(
        [*command, "-D", str(header_file), f"{server_url}/items"],
        capture_output=True,
        check=True,
        timeout=10,
    )
    headers = headers_of(header_file)
    assert encoding == headers["content-encoding"]
    assert "accept-encoding" == headers["vary"].lower()
    assert ITEMS == orjson.loads(result.stdout)


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_curl_decodes_a_stream_part_before_it_ends(
    server_url: str, encoding: str, tmp_path: Path
) -> None:
    """The first compressed chunk is decoded by curl while the server still holds the stream."""
    token = uuid.uuid4().hex
    header_file = tmp_path / "headers"
    process = start_curl(f"{server_url}/stream/{token}", encoding, header_file)
    try:
        first = read_until(process, b'{"part": 1}\n', timeout_s=5)
        assert None is process.poll()  # still open: the rest is not produced yet
        httpx.get(f"{server_url}/release/{token}", timeout=5)
        rest, _ = process.communicate(timeout=10)
    finally:
        process.kill()
        process.wait()
    assert b'{"part": 1}\n' + b'{"part": 2}\n' * 100 == first + rest
    assert encoding == headers_of(header_file)["content-encoding"]


def test_curl_gets_the_first_event_before_the_stream_ends(server_url: str, tmp_path: Path) -> None:
    """An SSE feed is sent uncompressed and its first event arrives while it is still open."""
    token = uuid.uuid4().hex
    header_file = tmp_path / "headers"
    process = start_curl(f"{server_url}/events/{token}", "br, zstd, gzip", header_file)
    try:
        first = read_until(process, b"data: first\n\n", timeout_s=5)
        assert None is process.poll()
        httpx.get(f"{server_url}/release/{token}", timeout=5)
        rest, _ = process.communicate(timeout=10)
    finally:
        process.kill()
        process.wait()
    assert b"data: first\n\ndata: last\n\n" == first + rest
    assert "content-encoding" not in headers_of(header_file)
