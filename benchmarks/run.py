"""The one command: ``uv run --group bench python -m benchmarks.run [options]``.

Builds the selected apps, measures them in-process and/or over HTTP in one run, prints the
Markdown report and writes it with its JSON twin to ``benchmarks/results/<name>.{md,json}``.

Exit status: 0 when every app was measured and every budget passed; 1 when a budget failed or an
app could not be built (the report still says which); 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from benchmarks import http_mode, inprocess
from benchmarks.apps import APPS, AppSpec
from benchmarks.build import BUILDS, use_build
from benchmarks.machine import wait_until_quiet
from benchmarks.report import build_report, render_markdown, write_report
from benchmarks.scenarios import BASELINE, BUDGETS, COMPARISONS, SCENARIOS

if TYPE_CHECKING:
    from collections.abc import Sequence


__all__ = ["main"]

RESULTS = Path(__file__).resolve().parent / "results"

QUICK_INPROCESS = inprocess.InProcessConfig(
    rounds=21, max_rounds=60, batch_ms=5.0, warmup=200, profiled=50, processes=1
)
QUICK_HTTP = http_mode.HttpConfig(repetitions=3, max_repetitions=6, duration_s=2, warmup_s=1)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.run",
        description="Measure bastion and the stacks users assemble today, side by side.",
    )
    parser.add_argument("--mode", choices=("inprocess", "http", "both"), default="both")
    parser.add_argument(
        "--quick", action="store_true", help="small counts: a smoke test, not a result"
    )
    parser.add_argument("--name", help="report name (default: <group>-YYYYMMDD)")
    parser.add_argument(
        "--group", default="foundation", help="apps of this group (default: %(default)s)"
    )
    parser.add_argument("--apps", help="comma-separated app names (overrides --group)")
    parser.add_argument("--scenario", choices=sorted(SCENARIOS), default="item")
    parser.add_argument("--list", action="store_true", help="list the registered apps and exit")
    parser.add_argument("--output-dir", type=Path, default=RESULTS)
    parser.add_argument("--no-write", action="store_true", help="print the report only")
    parser.add_argument(
        "--build",
        choices=BUILDS,
        default="wheel",
        help="measure bastion's wheel (hot path compiled; default) or its plain sources",
    )

    local = parser.add_argument_group("in-process mode")
    local.add_argument("--rounds", type=int, help="quiet rounds wanted (default 201; quick 21)")
    local.add_argument("--max-rounds", type=int, help="stop after this many rounds (800; quick 60)")

    local.add_argument(
        "--batch-ms", type=float, help="duration of one app's batch per round (10; quick 5)"
    )
    local.add_argument(
        "--requests", type=int, help="fixed requests per batch instead of calibrating to --batch-ms"
    )
    local.add_argument("--warmup", type=int, help="warm-up requests per app (1000; quick 200)")
    local.add_argument(
        "--processes",
        type=int,
        help="sets of fresh worker processes sharing the rounds (default 5; quick 1)",
    )

    remote = parser.add_argument_group("HTTP mode")
    remote.add_argument(
        "--repetitions", type=int, help="quiet runs wanted per app (default 5; quick 3)"
    )
    remote.add_argument(
        "--max-repetitions", type=int, help="stop after this many repetitions (10; quick 6)"
    )
    remote.add_argument("--duration", type=int, help="seconds per measured wrk run (5; quick 2)")
    remote.add_argument("--http-warmup", type=int, help="seconds of wrk warm-up (2; quick 1)")
    remote.add_argument("--connections", type=int, help="wrk connections (default 32)")
    remote.add_argument("--loop", choices=("uvloop", "asyncio"), help="uvicorn loop (uvloop)")
    remote.add_argument("--no-pin", action="store_true", help="do not pin server and wrk to CPUs")
    parser.add_argument(
        "--quiet-share",
        type=float,
        help="a round or run is quiet if other processes used at most this share of the CPU "
        "(default 0.10; 1 counts every round)",
    )
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="before each mode, wait up to this long for the machine to be at most 15%% busy",
    )
    return parser


def _select(args: argparse.Namespace, parser: argparse.ArgumentParser) -> list[AppSpec]:
    if args.apps:
        names = [name.strip() for name in args.apps.split(",") if name.strip()]
        unknown = [name for name in names if name not in APPS]
        if unknown:
            parser.error(f"unknown app(s) {', '.join(unknown)}; known: {', '.join(APPS)}")
        return [APPS[name] for name in names]
    selected = [spec for spec in APPS.values() if args.group in spec.groups]
    if not selected:
        groups = sorted({group for spec in APPS.values() for group in spec.groups})
        parser.error(f"no app in group {args.group!r}; groups: {', '.join(groups)}")
    return selected


def _inprocess_config(args: argparse.Namespace) -> inprocess.InProcessConfig:
    defaults = QUICK_INPROCESS if args.quick else inprocess.InProcessConfig()
    return replace(
        defaults,
        rounds=args.rounds or defaults.rounds,
        max_rounds=args.max_rounds or max(defaults.max_rounds, args.rounds or 0),
        quiet_share=args.quiet_share if args.quiet_share is not None else defaults.quiet_share,
        requests=args.requests or defaults.requests,
        batch_ms=args.batch_ms or defaults.batch_ms,
        warmup=args.warmup if args.warmup is not None else defaults.warmup,
        processes=args.processes or defaults.processes,
    )


def _http_config(args: argparse.Namespace) -> http_mode.HttpConfig:
    defaults = QUICK_HTTP if args.quick else http_mode.HttpConfig()
    return replace(
        defaults,
        repetitions=args.repetitions or defaults.repetitions,
        max_repetitions=args.max_repetitions
        or max(defaults.max_repetitions, 2 * (args.repetitions or 0)),
        quiet_share=args.quiet_share if args.quiet_share is not None else defaults.quiet_share,
        duration_s=args.duration or defaults.duration_s,
        warmup_s=args.http_warmup if args.http_warmup is not None else defaults.warmup_s,
        connections=args.connections or defaults.connections,
        loop=args.loop or defaults.loop,
        pin_cpus=defaults.pin_cpus and not args.no_pin,
    )


def _command(argv: Sequence[str] | None) -> str:
    arguments = shlex.join(sys.argv[1:] if argv is None else argv)
    prefix = "uv run --group bench " if "UV" in os.environ else ""
    return f"{prefix}python -m benchmarks.run {arguments}".rstrip()


def _buildable(specs: Sequence[AppSpec]) -> tuple[list[str], dict[str, str]]:
    """Build every app once here, to report the ones that fail as "not measured" up front.

    The measured instances are built again where they run (worker processes, servers).
    """
    names: list[str] = []
    errors: dict[str, str] = {}
    for spec in specs:
        try:
            spec.factory()
        except Exception as exc:  # any failure is reported in the results as "not measured"
            errors[spec.name] = f"could not build: {type(exc).__name__}: {exc}"
            print(f"  {spec.name}: {errors[spec.name]}", file=sys.stderr)
        else:
            names.append(spec.name)
    return names, errors


def _wait(max_wait_s: float, notes: list[str], mode: str) -> None:
    if max_wait_s <= 0:
        return
    busy = wait_until_quiet(max_wait_s)
    notes.append(f"{mode} mode started when the machine was {busy:.0%} busy (--wait-quiet).")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; see the module docstring for the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.list:
        for spec in APPS.values():
            print(f"{spec.name:<24} [{', '.join(spec.groups)}] {spec.title}")
        return 0
    specs = _select(args, parser)
    scenario = SCENARIOS[args.scenario]
    started = datetime.now(UTC)
    name = args.name or f"{args.group if not args.apps else 'custom'}-{started:%Y%m%d}"
    if args.quick and not args.name:
        name += "-quick"

    notes: list[str] = []
    leaked = sorted(key for key in os.environ if key.startswith("BASTION_"))
    if leaked:
        notes.append(
            f"BASTION_* variables were set ({', '.join(leaked)}); they were ignored: the bastion "
            "rows use default settings in-process and servers get an environment without them."
        )
    if args.quick:
        notes.append("--quick: small counts, a smoke test; do not quote these numbers.")

    build = use_build(args.build)
    names, errors = _buildable(specs)
    measured_specs = [spec for spec in specs if spec.name not in errors]

    local = None
    if args.mode in ("inprocess", "both") and names:
        config = _inprocess_config(args)
        print(f"in-process: {len(names)} apps, {config}", file=sys.stderr)
        _wait(args.wait_quiet, notes, "in-process")
        local = (inprocess.run(names, scenario, config, progress=True), config)

    remote = None
    if args.mode in ("http", "both") and names:
        http_config = _http_config(args)
        print(f"http: {len(names)} apps, {http_config}", file=sys.stderr)
        _wait(args.wait_quiet, notes, "HTTP")
        remote = (http_mode.run(names, scenario, http_config), http_config)

    report = build_report(
        name=name,
        command=_command(argv),
        scenario=scenario,
        apps=measured_specs,
        baseline=BASELINE,
        comparisons=COMPARISONS,
        budgets=BUDGETS,
        inprocess=local,
        http=remote,
        errors=errors,
        started=started,
        notes=notes,
        build=build,
    )
    print(render_markdown(report))
    if not args.no_write:
        write_report(report, args.output_dir)
    failed = [b for b in (report["inprocess"] or {}).get("budgets", []) if b["verdict"] != "PASS"]
    return 1 if failed or errors else 0


if __name__ == "__main__":
    sys.exit(main())
