"""HTTP mode: each app served by uvicorn in a subprocess, loaded by wrk over loopback.

This adds what in-process mode leaves out: sockets, HTTP parsing, the server's event loop and
keep-alive connections, so it is closer to what users see, and noisier. For each repetition and
each app (order rotated per repetition), a fresh server is started on a free port on 127.0.0.1
(one worker, no access log, ``--log-level warning``), a short wrk run warms it up, a measured wrk
run follows, and the server is stopped with SIGTERM (which runs the app's lifespan shutdown).
As in-process, the CPU other processes used during each run is measured; runs in which they used
more than ``quiet_share`` are kept in the data but not counted, and repetitions go on until every
app has ``repetitions`` quiet runs (or ``max_repetitions`` were run).

The machine this project runs on has two cores: wrk and the server compete for them. When two
CPUs are available, the server is pinned to one and wrk to the other (``taskset``), so neither
steals the other's core; numbers are still a lower bound of what a dedicated load generator
would show, and only ratios measured in the same run mean anything.

Module name: ``http_mode`` rather than ``http``, which would shadow the standard library.
"""

from __future__ import annotations

import http.client
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from benchmarks.apps import APP_ENV_VAR
from benchmarks.machine import CpuMeter, free_port

if TYPE_CHECKING:
    from collections.abc import Sequence

    from benchmarks.scenarios import Scenario

__all__ = ["HttpConfig", "HttpResult", "WrkRun", "parse_wrk", "run", "wrk_version"]

REPO_ROOT = Path(__file__).resolve().parent.parent
WRK = "wrk"


@dataclass(frozen=True, slots=True, kw_only=True)
class HttpConfig:
    """How to serve and how to load."""

    repetitions: int = 5
    """Quiet measured wrk runs wanted per app (each on a freshly started server)."""
    max_repetitions: int = 10
    """Repetitions after which the run stops even if some app has fewer quiet runs."""
    quiet_share: float = 0.10
    """A run is quiet when other processes used at most this share of the machine's CPU."""
    duration_s: int = 5
    """Length of each measured wrk run."""
    warmup_s: int = 2
    """Length of the unmeasured wrk run before each measured one."""
    connections: int = 32
    """Keep-alive connections wrk holds open (``-c``)."""
    threads: int = 1
    """wrk threads (``-t``); one, because wrk has one core at most here."""
    loop: str = "uvloop"
    """uvicorn ``--loop``: ``uvloop`` is what ``uvicorn[standard]`` picks in production."""
    http: str = "httptools"
    """uvicorn ``--http``: ``httptools`` is what ``uvicorn[standard]`` picks in production."""
    pin_cpus: bool = True
    """Pin the server and wrk to different CPUs when two are available."""
    startup_timeout_s: float = 30.0
    """How long a server may take to answer its first request."""


@dataclass(frozen=True, slots=True, kw_only=True)
class WrkRun:
    """What one wrk run reported."""

    requests_per_s: float
    latency_p50_ms: float
    latency_p90_ms: float
    latency_p99_ms: float
    requests: int
    duration_s: float
    non_2xx_3xx: int
    socket_errors: int
    others_cpu_share: float | None = None
    """Share of the machine's CPU other processes used from server start to server exit."""
    quiet: bool = True
    """Whether that share was at most ``quiet_share``; the report uses quiet runs."""


@dataclass(slots=True)
class HttpResult:
    """Runs per app, one per repetition, and what is needed to reproduce them."""

    runs: dict[str, list[WrkRun]] = field(default_factory=dict)
    """App name -> measured wrk runs, in repetition order."""
    round_orders: list[list[str]] = field(default_factory=list)
    """The order apps ran in, per repetition."""
    server_output: dict[str, list[str]] = field(default_factory=dict)
    """App name -> lines its servers printed (warnings and errors only; usually empty)."""
    server_command: list[str] = field(default_factory=list)
    """One server's command line (the port varies)."""
    wrk_command: list[str] = field(default_factory=list)
    """One measured wrk command line (the port varies)."""
    server_cpus: list[int] | None = None
    """CPUs the servers were pinned to, or ``None``."""
    wrk_cpus: list[int] | None = None
    """CPUs wrk was pinned to, or ``None``."""
    wrk_version: str = ""
    """wrk's version line."""
    others_cpu_share: float | None = None
    """Share of the machine's CPU other processes used during the runs (``None``: unknown)."""


class BenchmarkError(RuntimeError):
    """A server did not start, or wrk failed or saw errors."""


_LATENCY = re.compile(r"^\s*(50|90|99)(?:\.0+)?%\s+([\d.]+)(us|ms|s|m)\s*$", re.MULTILINE)
_UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def parse_wrk(output: str) -> WrkRun:
    """Parse the report of ``wrk --latency``.

    Raises:
        BenchmarkError: the output lacks the throughput or the latency distribution.
    """
    rps = re.search(r"^Requests/sec:\s+([\d.]+)", output, re.MULTILINE)
    total = re.search(r"^\s*(\d+) requests in ([\d.]+)(us|ms|s|m)", output, re.MULTILINE)
    latencies = {int(p): float(v) * _UNIT_MS[u] for p, v, u in _LATENCY.findall(output)}
    if rps is None or total is None or set(latencies) != {50, 90, 99}:
        raise BenchmarkError(f"could not parse wrk's output:\n{output}")
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    return WrkRun(
        requests_per_s=float(rps.group(1)),
        latency_p50_ms=latencies[50],
        latency_p90_ms=latencies[90],
        latency_p99_ms=latencies[99],
        requests=int(total.group(1)),
        duration_s=float(total.group(2)) * _UNIT_MS[total.group(3)] / 1000,
        non_2xx_3xx=int(non_2xx.group(1)) if non_2xx else 0,
        socket_errors=sum(int(n) for n in errors.groups()) if errors else 0,
    )


def wrk_version() -> str:
    """wrk's version line (``wrk -v`` prints it and exits non-zero)."""
    found = shutil.which(WRK)
    if found is None:
        return "not installed"
    done = subprocess.run([found, "-v"], capture_output=True, text=True, check=False)
    first = (done.stdout + done.stderr).splitlines()[0]
    return first.split(" Copyright")[0].strip()


def _cpu_plan(config: HttpConfig) -> tuple[list[int] | None, list[int] | None]:
    """(server CPUs, wrk CPUs), or ``(None, None)`` when not pinning."""
    cpus = sorted(os.sched_getaffinity(0))
    if not config.pin_cpus or len(cpus) < 2 or shutil.which("taskset") is None:
        return None, None
    half = len(cpus) // 2
    return cpus[:half], cpus[half:]


def _pinned(command: list[str], cpus: list[int] | None) -> list[str]:
    if cpus is None:
        return command
    return ["taskset", "-c", ",".join(map(str, cpus)), *command]


def _server_env(app: str) -> dict[str, str]:
    # No BASTION_* variable reaches the server: the bastion row must measure the defaults.
    env = {key: value for key, value in os.environ.items() if not key.startswith("BASTION_")}
    env[APP_ENV_VAR] = app
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _server_command(port: int, config: HttpConfig) -> list[str]:
    return [
        sys.executable,
        "-m",
        "uvicorn",
        "benchmarks.apps:build",
        "--factory",
        "--app-dir",
        str(REPO_ROOT),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
        "--loop",
        config.loop,
        "--http",
        config.http,
        "--lifespan",
        "on",
        "--no-access-log",
        "--log-level",
        "warning",
    ]


def _wrk_command(port: int, scenario: Scenario, config: HttpConfig, duration_s: int) -> list[str]:
    command = [
        WRK,
        f"-t{config.threads}",
        f"-c{config.connections}",
        f"-d{duration_s}s",
        "--latency",
    ]
    for name, value in scenario.headers:
        command += ["-H", f"{name}: {value}"]
    return [*command, f"http://127.0.0.1:{port}{scenario.target}"]


class _Server:
    """A uvicorn subprocess serving one app; a context manager that always stops it."""

    def __init__(self, app: str, config: HttpConfig, cpus: list[int] | None) -> None:
        self.app = app
        self.port = free_port()
        self.command = _server_command(self.port, config)
        self._config = config
        self._cpus = cpus
        self._log = tempfile.TemporaryFile(mode="w+", encoding="utf-8")  # noqa: SIM115
        self._process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> _Server:
        self._process = subprocess.Popen(
            _pinned(self.command, self._cpus),
            cwd=REPO_ROOT,
            env=_server_env(self.app),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        return self

    def wait_ready(self, scenario: Scenario) -> None:
        """Wait until the server answers the scenario's request with the expected status.

        Raises:
            BenchmarkError: the server exited, answered wrongly, or did not answer in time.
        """
        assert self._process is not None
        deadline = time.monotonic() + self._config.startup_timeout_s
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise BenchmarkError(f"{self.app}: server exited:\n{self.output()}")
            connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
            try:
                connection.request(scenario.method, scenario.target, body=scenario.body or None)
                status = connection.getresponse().status
            except OSError:
                time.sleep(0.05)
                continue
            finally:
                connection.close()
            if status != scenario.expected_status:
                raise BenchmarkError(f"{self.app}: answered {status}:\n{self.output()}")
            return
        raise BenchmarkError(f"{self.app}: no answer in {self._config.startup_timeout_s} s")

    def output(self) -> str:
        """What the server printed so far."""
        self._log.seek(0)
        return self._log.read()

    def __exit__(self, *exc_info: object) -> None:
        process = self._process
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def close(self) -> None:
        """Release the log file."""
        self._log.close()


def _wrk(command: list[str], cpus: list[int] | None, duration_s: int) -> WrkRun:
    done = subprocess.run(
        _pinned(command, cpus),
        capture_output=True,
        text=True,
        check=False,
        timeout=duration_s + 60,
    )
    if done.returncode != 0:
        raise BenchmarkError(f"wrk failed ({done.returncode}):\n{done.stdout}{done.stderr}")
    return parse_wrk(done.stdout)


def _load(server: _Server, scenario: Scenario, config: HttpConfig, result: HttpResult) -> WrkRun:
    """Warm the server up, then measure it; every response must have had the expected status."""
    if config.warmup_s > 0:
        warmup = _wrk_command(server.port, scenario, config, config.warmup_s)
        _wrk(warmup, result.wrk_cpus, config.warmup_s)
    command = _wrk_command(server.port, scenario, config, config.duration_s)
    run = _wrk(command, result.wrk_cpus, config.duration_s)
    result.wrk_command = command
    if run.non_2xx_3xx or run.socket_errors:
        raise BenchmarkError(
            f"{server.app}: {run.non_2xx_3xx} non-2xx/3xx responses and {run.socket_errors} "
            f"socket errors:\n{server.output()}"
        )
    return run


def _measure(name: str, scenario: Scenario, config: HttpConfig, result: HttpResult) -> WrkRun:
    """Start a server for app ``name``, load it, stop it; the run records others' CPU share."""
    server = _Server(name, config, result.server_cpus)
    meter = CpuMeter()
    meter.start()
    try:
        with server:
            server.wait_ready(scenario)
            measured = _load(server, scenario, config, result)
        # Read after the server exited: only then is its CPU time counted as ours.
        share = meter.others_share()
        result.server_command = server.command
        result.server_output[name] += [
            line for line in server.output().splitlines() if line.strip()
        ]
    finally:
        server.close()
    quiet = share is None or share <= config.quiet_share
    return replace(measured, others_cpu_share=share, quiet=quiet)


def run(
    apps: Sequence[str],
    scenario: Scenario,
    config: HttpConfig,
    *,
    progress: bool = True,
) -> HttpResult:
    """Measure every app over HTTP, ``config.repetitions`` times, interleaved.

    Raises:
        BenchmarkError: wrk is missing, a server failed, or a response was wrong.
    """
    if shutil.which(WRK) is None:
        raise BenchmarkError("wrk is not installed (Debian: apt-get install wrk)")
    result = HttpResult(wrk_version=wrk_version())
    result.server_cpus, result.wrk_cpus = _cpu_plan(config)
    overall = CpuMeter()
    overall.start()
    for name in apps:
        result.runs[name] = []
        result.server_output[name] = []

    def quiet_runs(name: str) -> int:
        return sum(run.quiet for run in result.runs[name])

    while len(result.round_orders) < config.max_repetitions and any(
        quiet_runs(name) < config.repetitions for name in apps
    ):
        shift = len(result.round_orders) % len(apps)
        order = [*apps[shift:], *apps[:shift]]
        result.round_orders.append(order)
        for name in order:
            measured = _measure(name, scenario, config, result)
            result.runs[name].append(measured)
            if progress:
                share = measured.others_cpu_share
                print(
                    f"  http  repetition {len(result.round_orders)}  {name:<24} "
                    f"{measured.requests_per_s:>10.0f} req/s  p99 {measured.latency_p99_ms:.2f} ms"
                    f"  others {'?' if share is None else f'{share:.0%}'}"
                    f"{'' if measured.quiet else ', NOISY, not counted'}",
                    file=sys.stderr,
                    flush=True,
                )
    result.others_cpu_share = overall.others_share()
    return result
