"""Which processes share a metrics directory, and what Bastion serves at /metrics and /stats."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import anyio
import httpx
import orjson
import pytest
from fastapi import FastAPI

from bastion import Bastion, Settings
from bastion.observability._assembly import _is_supervisor, prune_stale_directories
from tests.asgi import client_for
from tests.servers import free_port


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        (["/venv/bin/python3", "/venv/bin/uvicorn", "app:app", "--workers", "4"], True),
        (["python", "-m", "uvicorn", "app:app", "--workers", "2"], True),
        (["uvicorn", "app:app", "--workers", "2"], True),
        (["gunicorn: master [app:app]"], True),
        (["/usr/bin/python3.11", "/venv/bin/gunicorn", "-k", "uvicorn_worker.UvicornWorker"], True),
        (["/venv/bin/python", "/venv/bin/bastion", "demo", "--workers", "2"], True),
        (["/venv/bin/python", "/venv/bin/bastion", "demo"], False),
        (["uv", "run", "bastion", "demo"], False),
        (["uv", "run", "uvicorn", "app:app"], False),
        (["-bash"], False),
        (["/usr/bin/python3", "-m", "pytest"], False),
        ([], False),
    ],
)
def test_only_a_server_supervisor_makes_workers_share(command: list[str], expected: bool) -> None:
    """The parent's program decides, not a wrapper such as uv that merely names it."""
    assert expected == _is_supervisor(command)


def make_app(tmp_path: Path, **overrides: Any) -> FastAPI:
    """A FastAPI app under Bastion, its logs in a file, with a route that logs a line."""
    app = FastAPI()
    settings = Settings(_env_file=None, logging={"file": tmp_path / "app.log"}, **overrides)
    Bastion(app, settings)

    @app.get("/albums/{album_id}")
    async def album(album_id: int) -> dict[str, int]:
        """Log from inside the handler, as an app does."""
        logging.getLogger("shop").info("looking up album", extra={"album_id": album_id})
        return {"album_id": album_id}

    return app


def log_lines(tmp_path: Path) -> list[dict[str, Any]]:
    """The JSON lines written to the app's log file (after shutdown flushed them)."""
    return [orjson.loads(line) for line in (tmp_path / "app.log").read_bytes().splitlines()]


class TestThroughBastion:
    @pytest.mark.anyio
    async def test_requests_are_counted_and_ops_requests_are_not(self, tmp_path: Path) -> None:
        """/metrics counts app requests by route template; probes and scrapes are not counted."""
        app = make_app(tmp_path)
        async with client_for(app) as client:
            for album_id in (1, 2, 3):
                await client.get(f"/albums/{album_id}")
            await client.get("/no/such/path")
            await client.get("/_bastion/health/live")
            first = (await client.get("/_bastion/metrics")).text
            response = await client.get("/_bastion/metrics")

        assert "text/plain; version=0.0.4; charset=utf-8" == response.headers["content-type"]
        assert first == response.text or "process_" in response.text  # process metrics move
        text = response.text
        assert (
            'http_server_request_duration_seconds_count{method="GET",route="/albums/{album_id}",'
            'status_class="2xx"} 3'
        ) in text
        assert (
            'http_server_request_duration_seconds_count{method="GET",route="unmatched",'
            'status_class="4xx"} 1'
        ) in text
        assert "_bastion" not in "".join(
            line for line in text.splitlines() if line.startswith("http_server")
        )
        assert "http_server_active_requests 0" in text
        assert f'process_resident_memory_bytes{{pid="{os.getpid()}"}}' in text

    @pytest.mark.anyio
    async def test_an_admin_key_protects_metrics_and_stats(self, tmp_path: Path) -> None:
        """With an admin key set, /metrics and /stats answer 401 problems without it."""
        app = make_app(tmp_path, ops={"admin_key": "k3y"})
        async with client_for(app) as client:
            refused = [await client.get(f"/_bastion/{path}") for path in ("metrics", "stats")]
            allowed = [
                await client.get(f"/_bastion/{path}", headers={"Authorization": "Bearer k3y"})
                for path in ("metrics", "stats")
            ]

        assert [401, 401] == [response.status_code for response in refused]
        assert "application/problem+json" == refused[0].headers["content-type"]
        assert [200, 200] == [response.status_code for response in allowed]

    @pytest.mark.anyio
    async def test_stats_report_per_route_rates_and_errors(self, tmp_path: Path) -> None:
        """/stats shows the routes served, their counts and latency percentiles."""
        app = make_app(tmp_path)
        async with client_for(app) as client:
            await client.get("/_bastion/stats")  # the first sample: the window starts here
            for album_id in range(4):
                await client.get(f"/albums/{album_id}")
            report = (await client.get("/_bastion/stats")).json()

        (route,) = [entry for entry in report["routes"] if entry["route"] == "/albums/{album_id}"]
        assert (4, 0) == (route["requests"], route["errors"])
        assert route["p50_s"] is not None

    @pytest.mark.anyio
    async def test_one_requests_log_lines_share_its_ids_and_hide_its_secrets(
        self, tmp_path: Path
    ) -> None:
        """The app's line and the access line carry one request id and trace id; the bearer
        token, the cookie and a token in the query string appear in no line."""
        app = make_app(tmp_path)
        traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        async with client_for(app) as client:
            await client.get(
                "/albums/7?access_token=qs-s3cret",
                headers={
                    "Authorization": "Bearer header-s3cret",
                    "Cookie": "session=cookie-s3cret",
                    "traceparent": traceparent,
                    "X-Request-ID": "req-7",
                },
            )

        raw = (tmp_path / "app.log").read_text()
        lines = [line for line in log_lines(tmp_path) if line.get("request_id") == "req-7"]
        assert ["shop", "bastion.access"] == [line["logger"] for line in lines]
        assert {"0af7651916cd43dd8448eb211c80319c"} == {line["trace_id"] for line in lines}
        assert 7 == lines[0]["album_id"]
        for secret in ("header-s3cret", "cookie-s3cret", "qs-s3cret"):
            assert secret not in raw

    @pytest.mark.anyio
    async def test_access_lines_say_what_bastion_decided(self, tmp_path: Path) -> None:
        """A rate-limited request's access line lists rate_limited in decisions; a request
        nothing was decided for has no decisions field."""
        app = make_app(tmp_path, ratelimit={"rate": "1/minute"})
        async with client_for(app) as client:
            statuses = [(await client.get("/albums/7")).status_code for _ in range(2)]

        access = [line for line in log_lines(tmp_path) if line["logger"] == "bastion.access"]
        assert [200, 429] == statuses
        assert [None, ["rate_limited"]] == [line.get("decisions") for line in access]
        assert "decisions" not in access[0]

    @pytest.mark.anyio
    async def test_a_blocked_event_loop_makes_readiness_degraded(self, tmp_path: Path) -> None:
        """Blocking the loop longer than the limit: readiness warns (200), then recovers."""
        app = make_app(tmp_path, health={"cache_s": 0, "loop_lag_degraded_s": 0.2})
        async with client_for(app) as client:
            time.sleep(1.2)  # noqa: ASYNC251 - the point: block the loop the monitor runs on
            await anyio.sleep(0.1)  # let the monitor wake, late, and measure it
            blocked = await client.get("/_bastion/health/ready")
            recovered = await client.get("/_bastion/health/ready")

        assert (200, "warn") == (blocked.status_code, blocked.json()["status"])
        assert (200, "pass") == (recovered.status_code, recovered.json()["status"])


def test_directories_of_finished_servers_are_pruned(tmp_path: Path) -> None:
    """A directory named after a supervisor that is gone is deleted; a live one is kept."""
    stat = Path(f"/proc/{os.getpid()}/stat").read_text()
    started = stat.rsplit(")", 1)[1].split()[19]
    alive = tmp_path / f"{os.getpid()}-{started}"
    reused_pid = tmp_path / f"{os.getpid()}-1"  # our pid, another start time: a reused pid
    gone = tmp_path / "4194999-12345"
    for directory in (alive, reused_pid, gone):
        directory.mkdir()
        (directory / "archive.json").write_text("{}")

    removed = prune_stale_directories(tmp_path)

    assert {reused_pid, gone} == set(removed)
    assert [alive] == list(tmp_path.iterdir())


@pytest.mark.anyio
async def test_metrics_are_also_served_on_their_own_port(tmp_path: Path) -> None:
    """With a metrics port, GET /metrics there answers the same scrape; other paths 404."""
    port = free_port()
    app = make_app(tmp_path, metrics={"port": port})
    async with client_for(app) as client:
        await client.get("/albums/1")
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as direct:
            scrape = await direct.get("/metrics")
            missing = await direct.get("/albums/1")

    assert 200 == scrape.status_code
    assert 'route="/albums/{album_id}"' in scrape.text
    assert 404 == missing.status_code
