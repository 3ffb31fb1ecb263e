"""The ``bastion`` command line: demo, config and doctor, in-process and as real processes."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from bastion.cli import main
from bastion.cli._demo import banner
from bastion.demo.db import DEFAULT_DATABASE_URL
from bastion.demo.factory import create_app
from bastion.settings import Settings, load_settings
from tests.servers import free_port

if TYPE_CHECKING:
    from collections.abc import Iterator


BASTION_SCRIPT = Path(sys.executable).with_name("bastion")
"""The console script the package installs (next to the interpreter running the tests)."""

SECRET = "hunter2"


@pytest.fixture(autouse=True)
def isolated_env(isolated_env: None) -> None:
    """Every test here runs without the developer's BASTION_* settings, in a temp directory."""


def clean_env(**settings: str) -> dict[str, str]:
    """The test process's environment without BASTION_* variables, plus ``settings``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BASTION_")}
    env.update(settings)
    return env


def run_cli(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run a command to completion (bounded), capturing its output."""
    return subprocess.run(
        list(args), env=env, cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )


# ------------------------------------------------------------------------------------- general


def test_help_lists_the_commands(capsys: pytest.CaptureFixture[str]) -> None:
    """--help exits 0 and names every command."""
    code = main(["--help"])
    out = capsys.readouterr().out
    assert 0 == code
    assert {"demo", "config", "doctor"} <= set(re.findall(r"\b(demo|config|doctor)\b", out))


def test_no_command_prints_usage_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    """Without a command, the usage goes to stderr and the exit code is 2."""
    assert 2 == main([])
    assert "usage: bastion" in capsys.readouterr().err


def test_a_bad_argument_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    """argparse errors come back as exit code 2 from main(), not as SystemExit."""
    assert 2 == main(["demo", "--port", "70000"])
    assert "not a TCP port" in capsys.readouterr().err


# -------------------------------------------------------------------------------------- config


def test_config_prints_one_line_per_setting_with_secrets_masked(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each setting is a BASTION_...=value line; URL passwords and secrets are masked."""
    monkeypatch.setenv("BASTION_REDIS_URL", f"redis://:{SECRET}@cache.internal:6379/0")
    monkeypatch.setenv("BASTION_OPS__ADMIN_KEY", f"{SECRET}-admin")
    monkeypatch.setenv("BASTION_CONTEXT__TRUSTED_PROXIES", "10.0.0.0/8,127.0.0.1")
    code = main(["config"])
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert 0 == code
    assert SECRET not in out
    assert "BASTION_REDIS_URL=redis://:****@cache.internal:6379/0" in lines
    assert "BASTION_OPS__ADMIN_KEY=**********" in lines
    assert "BASTION_CONTEXT__TRUSTED_PROXIES=10.0.0.0/8,127.0.0.1" in lines
    assert "BASTION_STORES__REQUIRED_AT_STARTUP=false" in lines
    assert all(re.fullmatch(r"BASTION_[A-Z0-9_]+=.*", line) for line in lines)


def test_config_lines_read_back_as_the_same_settings(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without secrets, the printed lines are valid settings that read back unchanged."""
    monkeypatch.setenv("BASTION_CONTEXT__TRUSTED_PROXIES", "10.0.0.0/8,127.0.0.1")
    monkeypatch.setenv("BASTION_STORES__GATE_MAX_DELAY_S", "12.5")
    assert 0 == main(["config"])
    expected = load_settings()
    for line in capsys.readouterr().out.splitlines():
        name, _, value = line.partition("=")
        if value:
            monkeypatch.setenv(name, value)
    assert expected == load_settings()


def test_config_json_is_the_masked_settings(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """--json prints Settings.masked() as one JSON object."""
    monkeypatch.setenv("BASTION_REDIS_URL", f"redis://user:{SECRET}@cache.internal:6379/0")
    assert 0 == main(["config", "--json"])
    out = capsys.readouterr().out
    assert SECRET not in out
    assert load_settings().masked() == json.loads(out)
    assert "redis://user:****@cache.internal:6379/0" == json.loads(out)["redis_url"]


def test_config_with_invalid_settings_exits_2_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Invalid settings print the validation message to stderr and exit 2."""
    monkeypatch.setenv("BASTION_OPS__PREFIX", "no-slash")
    code = main(["config"])
    captured = capsys.readouterr()
    assert (2, "") == (code, captured.out)
    assert "BASTION_OPS__PREFIX='no-slash'" in captured.err


def test_demo_with_invalid_settings_exits_2_before_serving(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`bastion demo` checks the settings first: nothing is printed to stdout, nothing served."""
    monkeypatch.setenv("BASTION_STORES__MEMORY_MAX_BYTES", "-1")
    code = main(["demo", "--port", str(free_port())])
    captured = capsys.readouterr()
    assert (2, "") == (code, captured.out)
    assert "BASTION_STORES__MEMORY_MAX_BYTES" in captured.err


# --------------------------------------------------------------------------------------- doctor


def test_doctor_with_invalid_settings_exits_2_with_the_diagnosis(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Invalid settings are the doctor's first (and only) finding, naming the variable."""
    monkeypatch.setenv("BASTION_REDIS_URL", "nonsense")
    monkeypatch.setenv("BASTION_REDSI_URL", "redis://typo:6379/0")
    code = main(["doctor"])
    out = capsys.readouterr().out
    assert 2 == code
    assert out.startswith("FAIL settings - invalid bastion settings:")
    assert "BASTION_REDIS_URL='nonsense'" in out
    assert "BASTION_REDSI_URL: not a bastion setting (did you mean BASTION_REDIS_URL?)" in out


def test_doctor_with_nothing_configured_reports_the_embedded_defaults(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """With no backend configured, doctor says the memory store and demo SQLite are used."""
    code = main(["doctor"])
    lines = capsys.readouterr().out.splitlines()
    assert 0 == code
    assert "ok   settings" == lines[0]
    # The tests run the editable sources; tests/test_compiled.py runs them again compiled.
    assert lines[1].startswith("ok   build ")
    assert any(line.startswith("ok   store memory (embedded default") for line in lines)
    assert any(line.startswith(f"ok   database {DEFAULT_DATABASE_URL} (embedded") for line in lines)
    assert [] == list(tmp_path.iterdir())  # looked, created nothing


@pytest.mark.redis
def test_doctor_ok_against_a_real_redis(
    redis_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A reachable Redis is ok, with the connect and PING times."""
    monkeypatch.setenv("BASTION_REDIS_URL", redis_url)
    code = main(["doctor"])
    out = capsys.readouterr().out
    assert 0 == code
    pattern = rf"ok   redis {re.escape(redis_url)} \(connected in [\d.]+ ms, PING [\d.]+ ms\)"
    assert re.search(pattern, out), out


@pytest.mark.postgres
def test_doctor_ok_against_a_real_postgresql(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A reachable PostgreSQL is ok; a plain postgresql:// URL is checked through asyncpg."""
    monkeypatch.setenv("BASTION_DATABASE_URL", postgres_url)
    code = main(["doctor"])
    out = capsys.readouterr().out
    assert 0 == code, out
    pattern = rf"ok   database {re.escape(postgres_url)} \(connected in [\d.]+ ms, SELECT 1"
    assert re.search(pattern, out), out


def test_doctor_fails_for_backends_on_closed_ports(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Nothing listening: one FAIL line per backend, passwords masked, exit 1, quickly."""
    redis_port, postgres_port = free_port(), free_port()
    monkeypatch.setenv("BASTION_REDIS_URL", f"redis://:{SECRET}@127.0.0.1:{redis_port}/0")
    monkeypatch.setenv(
        "BASTION_DATABASE_URL", f"postgresql://app:{SECRET}@127.0.0.1:{postgres_port}/app"
    )
    started = time.monotonic()
    code = main(["doctor"])
    elapsed = time.monotonic() - started
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert 1 == code
    assert SECRET not in out
    assert f"FAIL redis redis://:****@127.0.0.1:{redis_port}/0: connection refused" in lines
    assert (
        f"FAIL database postgresql://app:****@127.0.0.1:{postgres_port}/app: connection refused"
        in lines
    )
    assert elapsed < 3.0


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A port where connections are accepted by the kernel but nothing ever answers."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield int(sock.getsockname()[1])


@pytest.mark.slow
def test_doctor_is_bounded_when_a_backend_never_answers(
    silent_server: int, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Backends that accept but never answer fail within the check timeout, not a hang."""
    monkeypatch.setenv("BASTION_REDIS_URL", f"redis://127.0.0.1:{silent_server}/0")
    monkeypatch.setenv("BASTION_DATABASE_URL", f"postgresql://app@127.0.0.1:{silent_server}/app")
    started = time.monotonic()
    code = main(["doctor"])
    elapsed = time.monotonic() - started
    lines = capsys.readouterr().out.splitlines()
    assert 1 == code
    assert [True, True] == [
        any(line.startswith(f"FAIL {name} ") for line in lines) for name in ("redis", "database")
    ]
    assert elapsed < 3.5


def test_doctor_checks_a_sqlite_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """An existing SQLite file is queried; a missing one is only looked at, never created."""
    existing = tmp_path / "existing.sqlite3"
    sqlite3.connect(existing).close()
    monkeypatch.setenv("BASTION_DATABASE_URL", f"sqlite:///{existing}")
    assert 0 == main(["doctor"])
    assert f"ok   database sqlite:///{existing} (connected in" in capsys.readouterr().out

    later = tmp_path / "later.sqlite3"
    monkeypatch.setenv("BASTION_DATABASE_URL", f"sqlite+aiosqlite:///{later}")
    assert 0 == main(["doctor"])
    assert "(does not exist yet; will be created in" in capsys.readouterr().out
    assert not later.exists()

    nowhere = tmp_path / "missing-directory" / "demo.sqlite3"
    monkeypatch.setenv("BASTION_DATABASE_URL", f"sqlite:///{nowhere}")
    assert 1 == main(["doctor"])
    assert f"FAIL database sqlite:///{nowhere}: directory" in capsys.readouterr().out


# ------------------------------------------------------------------- the real entry points


def test_a_reader_that_goes_away_stops_the_command_quietly(tmp_path: Path) -> None:
    """``bastion doctor | head -0``: no traceback when the pipe is closed, exit 141 (SIGPIPE)."""
    reader, writer = os.pipe()
    os.close(reader)  # gone before the doctor writes its first line: every write fails
    try:
        process = subprocess.Popen(
            [sys.executable, "-m", "bastion", "doctor"],
            env=clean_env(),
            cwd=tmp_path,
            stdout=writer,
            stderr=subprocess.PIPE,
        )
    finally:
        os.close(writer)
    _, errors = process.communicate(timeout=60)
    assert (141, b"") == (process.returncode, errors)


@pytest.mark.parametrize(
    "command",
    [
        pytest.param([str(BASTION_SCRIPT), "demo"], id="bastion-demo"),
        pytest.param([sys.executable, "-m", "bastion", "doctor"], id="python-m-bastion-doctor"),
        pytest.param([sys.executable, "-m", "bastion", "config"], id="python-m-bastion-config"),
    ],
)
def test_invalid_redis_url_stops_the_command_naming_the_variable(
    command: list[str], tmp_path: Path
) -> None:
    """BASTION_REDIS_URL=nonsense: exit 2 with the variable named, before any server starts."""
    result = run_cli(*command, env=clean_env(BASTION_REDIS_URL="nonsense"), cwd=tmp_path)
    assert 2 == result.returncode
    assert "BASTION_REDIS_URL='nonsense'" in result.stdout + result.stderr
    assert "Uvicorn running" not in result.stderr
    assert "bastion demo:" not in result.stdout
    assert [] == list(tmp_path.iterdir())  # no database file: nothing was started


# ----------------------------------------------------------------------------------------- demo


def demo_settings(**overrides: Any) -> Settings:
    """Settings for building the demo app in-process, ignoring any .env."""
    return Settings(_env_file=None, database_url="sqlite+aiosqlite://", **overrides)


def test_the_banner_lists_the_registered_ops_endpoints_under_the_prefix() -> None:
    """Docs, health, ops index, metrics and stats are shown under the configured prefix."""
    app = create_app(demo_settings(ops={"prefix": "/_ops"}))
    text = banner(app, app.state.bastion, base_url="http://127.0.0.1:9000", workers=2, reload=False)

    assert "bastion demo: music catalog on http://127.0.0.1:9000 (2 workers)" in text
    assert "  API docs   http://127.0.0.1:9000/docs" in text
    assert "  health     http://127.0.0.1:9000/_ops/health/live" in text
    assert "  readiness  http://127.0.0.1:9000/_ops/health/ready" in text
    assert "  ops index  http://127.0.0.1:9000/_ops/" in text
    assert "  metrics    http://127.0.0.1:9000/_ops/metrics" in text
    assert "  stats      http://127.0.0.1:9000/_ops/stats" in text


def test_the_banner_lists_only_endpoints_that_exist() -> None:
    """With metrics disabled, the banner does not advertise a metrics URL that would 404."""
    app = create_app(demo_settings(metrics={"enabled": False}))
    text = banner(app, app.state.bastion, base_url="http://h:1", workers=1, reload=False)

    assert "metrics" not in text
    assert "  health     http://h:1/_bastion/health/live" in text


def test_the_banner_omits_ops_endpoints_when_they_are_disabled() -> None:
    """With the ops endpoints disabled, the banner does not advertise URLs that would 404."""
    app = create_app(demo_settings(ops={"enabled": False}))
    text = banner(app, app.state.bastion, base_url="http://h:1", workers=1, reload=True)
    assert "(auto-reload)" in text
    assert "_bastion" not in text


class Server:
    """A server process the test started: its own process group, logs in files."""

    def __init__(self, command: list[str], *, cwd: Path, env: dict[str, str]) -> None:
        self.stdout_path = cwd / "stdout.log"
        self.stderr_path = cwd / "stderr.log"
        with self.stdout_path.open("wb") as out, self.stderr_path.open("wb") as err:
            # A new session: the uvicorn supervisor's workers can be killed with it by group id.
            self.process = subprocess.Popen(
                command, cwd=cwd, env=env, stdout=out, stderr=err, start_new_session=True
            )

    @property
    def logs(self) -> str:
        """Everything the server printed so far."""
        return self.stdout_path.read_text() + self.stderr_path.read_text()

    def wait_until_answering(self, url: str, timeout_s: float = 20.0) -> httpx.Response:
        """Poll ``url`` until it answers 200; fail with the logs if the server dies or is slow."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"the server exited:\n{self.logs}"
            try:
                response = httpx.get(url, timeout=1.0)
            except httpx.TransportError:
                time.sleep(0.1)
                continue
            if response.status_code == 200:
                return response
        pytest.fail(f"{url} did not answer within {timeout_s} s:\n{self.logs}")

    def terminate(self, timeout_s: float = 15.0) -> int:
        """Send SIGTERM, as an orchestrator would, and return the exit code."""
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout_s)

    def kill_leftovers(self) -> None:
        """Kill the whole process group if anything is still running."""
        with contextlib.suppress(ProcessLookupError):  # everything already exited
            os.killpg(self.process.pid, signal.SIGKILL)
        if self.process.poll() is None:
            self.process.wait(timeout=10)


@pytest.fixture
def servers() -> Iterator[list[Server]]:
    """Servers started by the test; every one is killed afterwards, whatever happened."""
    started: list[Server] = []
    try:
        yield started
    finally:
        for server in started:
            server.kill_leftovers()


@pytest.mark.slow
def test_bastion_demo_serves_and_stops_cleanly_on_sigterm(
    tmp_path: Path, servers: list[Server]
) -> None:
    """`bastion demo` serves the catalog and the ops endpoints, then exits 0 on SIGTERM."""
    port = free_port()
    database = tmp_path / "catalog.sqlite3"
    server = Server(
        [str(BASTION_SCRIPT), "demo", "--port", str(port)],
        cwd=tmp_path,
        env=clean_env(BASTION_DATABASE_URL=f"sqlite+aiosqlite:///{database}"),
    )
    servers.append(server)
    base = f"http://127.0.0.1:{port}"

    artists = server.wait_until_answering(f"{base}/artists")
    live = httpx.get(f"{base}/_bastion/health/live", headers={"X-Request-ID": "e2e-1"})
    code = server.terminate()

    assert 20 == artists.json()["total"]
    assert re.fullmatch(r"[0-9a-f]{32}", artists.headers["x-request-id"])
    assert (200, "e2e-1") == (live.status_code, live.headers["x-request-id"])
    assert 0 == code, server.logs
    assert f"  health     {base}/_bastion/health/live" in server.logs
    assert "Application shutdown complete." in server.logs
    assert {"catalog.sqlite3", "stdout.log", "stderr.log"} <= {p.name for p in tmp_path.iterdir()}


@pytest.mark.slow
def test_two_uvicorn_workers_share_one_sqlite_file(tmp_path: Path, servers: list[Server]) -> None:
    """`uvicorn bastion.demo:app --workers 2`: both workers start on one new file and answer."""
    port = free_port()
    database = tmp_path / "shared.sqlite3"
    server = Server(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "bastion.demo:app",
            "--workers",
            "2",
            "--port",
            str(port),
        ],
        cwd=tmp_path,
        env=clean_env(BASTION_DATABASE_URL=f"sqlite+aiosqlite:///{database}"),
    )
    servers.append(server)
    base = f"http://127.0.0.1:{port}"

    server.wait_until_answering(f"{base}/artists")
    deadline = time.monotonic() + 20
    while server.logs.count("Application startup complete.") < 2:
        assert time.monotonic() < deadline, f"both workers did not start:\n{server.logs}"
        time.sleep(0.1)
    # A fresh connection each time, so the kernel spreads them over both workers' accepts.
    totals = {httpx.get(f"{base}/artists", timeout=5).json()["total"] for _ in range(20)}
    code = server.terminate()

    assert {20} == totals
    assert 0 == code, server.logs
    with sqlite3.connect(database) as connection:
        seeds = connection.execute("SELECT count(*) FROM demo_meta").fetchone()[0]
    assert 1 == seeds
