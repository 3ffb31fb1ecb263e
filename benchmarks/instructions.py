"""Instructions per request, counted by callgrind: a cost measure that no noise can move.

Wall-clock ratios on this project's shared, virtual machines wander by several percent from one
run to the next, which is the size of the differences worth finding while optimizing a layer.
``valgrind --tool=callgrind`` counts the instructions the CPU executes instead: the same code with
the same input gives the same count whatever else the machine is doing. Instructions are not
time (a cache miss costs more than an add), so budgets are still judged on the time ratios of
``benchmarks.run``; this tool is the fine scale used to compare two versions of the same code,
and its ratios are a second, noise-free view of the same comparison.

Each app runs in its own process under callgrind, exactly as ``driver.py`` serves it (lifespan,
scope copies, the log writer flushed inside the batch, so writing the access lines is billed).
After ``warmup`` requests the process zeroes callgrind's counters (``callgrind_control -z``),
serves ``requests`` requests and dumps the counters (``callgrind_control -d``): the dump holds
those requests only, every thread included, without imports, startup or warm-up.

Run::

    uv run --group bench python -m benchmarks.instructions --apps fastapi,bastion
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from benchmarks.machine import git_revision, package_versions
from benchmarks.scenarios import SCENARIOS

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["main"]

RESULTS = Path(__file__).resolve().parent / "results"
_TOTALS = re.compile(rb"^(?:summary|totals): (\d+)", re.MULTILINE)


async def _serve(app_name: str, scenario_name: str, warmup: int, requests: int) -> None:
    """Serve ``requests`` counted requests (inside the callgrind process)."""
    from benchmarks.apps import APPS
    from benchmarks.driver import _Target

    scenario = SCENARIOS[scenario_name]
    target = _Target(app_name, APPS[app_name].factory(), scenario)
    await target.lifespan.startup()
    try:
        await target.check(scenario)
        await target.serve(warmup)
        # Blocking on purpose: nothing else may run between the counters and the batch.
        pid = str(os.getpid())
        subprocess.run(["callgrind_control", "-z", pid], check=True, capture_output=True)  # noqa: ASYNC221
        await target.serve(requests)
        subprocess.run(["callgrind_control", "-d", pid], check=True, capture_output=True)  # noqa: ASYNC221
    finally:
        await target.lifespan.shutdown()


def _count(app_name: str, scenario: str, warmup: int, requests: int) -> float:
    """Instructions per request of one app, from a callgrind run in a child process."""
    with tempfile.TemporaryDirectory(prefix="bastion-callgrind-") as directory:
        output = Path(directory) / "cg.out"
        command = [
            "valgrind",
            "--tool=callgrind",
            f"--callgrind-out-file={output}",
            sys.executable,
            "-m",
            "benchmarks.instructions",
            "--worker",
            app_name,
            "--scenario",
            scenario,
            "--warmup",
            str(warmup),
            "--requests",
            str(requests),
        ]
        subprocess.run(command, check=True, capture_output=True)
        # The dump requested after the counted batch is the first numbered file.
        match = _TOTALS.search((Path(directory) / "cg.out.1").read_bytes())
        if match is None:
            raise RuntimeError(f"{app_name}: no totals in callgrind's dump")
        return int(match.group(1)) / requests


def main(argv: Sequence[str] | None = None) -> int:
    """Count instructions per request of each app and print (and write) their ratios."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--apps", default="fastapi,bastion", help="comma-separated app names")
    parser.add_argument("--scenario", choices=sorted(SCENARIOS), default="item")
    parser.add_argument("--warmup", type=int, default=300)
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--name", help="write benchmarks/results/<name>.json and .md")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        asyncio.run(_serve(args.worker, args.scenario, args.warmup, args.requests))
        return 0
    names = [name.strip() for name in args.apps.split(",") if name.strip()]
    counts = {name: _count(name, args.scenario, args.warmup, args.requests) for name in names}
    baseline = counts[names[0]]
    lines = [
        (
            f"Instructions per request (callgrind), scenario {args.scenario}, "
            f"{args.requests} requests after {args.warmup} warm-up, baseline {names[0]}"
        ),
        "",
        "| app | instructions/request | ratio |",
        "|---|---:|---:|",
    ]
    lines += [
        f"| {name} | {count:,.0f} | {count / baseline:.3f} |" for name, count in counts.items()
    ]
    text = "\n".join(lines)
    print(text)
    if args.name:
        RESULTS.mkdir(exist_ok=True)
        command = "python -m benchmarks.instructions " + " ".join(argv or sys.argv[1:])
        record = {
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "command": command,
            "git": git_revision(),
            "packages": package_versions(),
            "scenario": args.scenario,
            "requests": args.requests,
            "warmup": args.warmup,
            "instructions_per_request": counts,
            "ratios": {name: count / baseline for name, count in counts.items()},
        }
        (RESULTS / f"{args.name}.json").write_text(json.dumps(record, indent=2) + "\n")
        (RESULTS / f"{args.name}.md").write_text(f"{text}\n\n`{command}` at {record['git']}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
