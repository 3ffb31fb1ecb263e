"""Turns measurements into the report: statistics, ratios, budget verdicts, Markdown and JSON.

The JSON file holds every sample, so any other statistic can be recomputed later; the Markdown
file is what people read. Both carry the machine, the package versions and the exact command,
because a benchmark number without them cannot be checked.

Statistics: the median of the per-round (in-process) or per-repetition (HTTP) samples, with the
minimum, the maximum and the spread ``(max - min) / median``. Ratios are ratios of medians; the
budget line also gives the *paired* ratios (subject / reference within the same round), whose
range shows how stable the ratio itself was.
"""

from __future__ import annotations

import json
import math
import statistics
import sys
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from benchmarks.machine import git_revision, machine_info, package_versions

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence
    from pathlib import Path

    from benchmarks.apps import AppSpec
    from benchmarks.http_mode import HttpConfig, HttpResult, WrkRun
    from benchmarks.inprocess import InProcessConfig, InProcessResult
    from benchmarks.scenarios import Budget, Comparison, Scenario

__all__ = ["Stats", "build_report", "render_markdown", "write_report"]


@dataclass(frozen=True, slots=True)
class Stats:
    """Summary of one app's samples."""

    median: float
    minimum: float
    maximum: float
    spread_pct: float
    """``(max - min) / median`` in percent: how much the samples disagree."""

    @classmethod
    def of(cls, samples: Sequence[float]) -> Stats:
        """Summarize ``samples`` (at least one)."""
        median = statistics.median(samples)
        low, high = min(samples), max(samples)
        return cls(median, low, high, (high - low) / median * 100 if median else 0.0)


def _median_ci(ordered: Sequence[float]) -> tuple[float, float]:
    """A distribution-free 95 % confidence interval of the median of ``ordered`` (sorted).

    The order statistics of (1-based) ranks ``n/2 - 1.96 sqrt(n)/2`` rounded down and
    ``1 + n/2 + 1.96 sqrt(n)/2`` rounded up (normal approximation to the binomial): no
    assumption about the shape of the noise, only that rounds are independent.
    """
    n = len(ordered)
    half_width = 1.96 * math.sqrt(n) / 2
    low = max(0, math.floor(n / 2 - half_width) - 1)
    high = min(n - 1, math.ceil(1 + n / 2 + half_width) - 1)
    return ordered[low], ordered[high]


def _paired(subject: Sequence[float], reference: Sequence[float]) -> dict[str, float]:
    """The per-round ratios subject / reference: median and its 95 % CI, quartiles, min, max."""
    ratios = sorted(s / r for s, r in zip(subject, reference, strict=True))
    low, high = (
        statistics.quantiles(ratios, n=4)[::2] if len(ratios) > 1 else (ratios[0], ratios[0])
    )
    ci_low, ci_high = _median_ci(ratios)
    return {
        "paired_median": statistics.median(ratios),
        "paired_ci_low": ci_low,
        "paired_ci_high": ci_high,
        "paired_p25": low,
        "paired_p75": high,
        "paired_min": ratios[0],
        "paired_max": ratios[-1],
    }


# -- sections -------------------------------------------------------------------------------------


MIN_QUIET_ROUNDS = 5
"""Fewer quiet rounds than this (or than asked for) and the statistics use every round."""
MIN_QUIET_RUNS = 3
"""Fewer quiet HTTP runs of an app than this (or than asked for) and its statistics use all."""


def _used_rounds(result: InProcessResult, config: InProcessConfig) -> list[int]:
    """Indices of the rounds the statistics use: the quiet ones, if there are enough."""
    quiet = [index for index, is_quiet in enumerate(result.round_quiet) if is_quiet]
    if len(quiet) >= min(MIN_QUIET_ROUNDS, config.rounds):
        return quiet
    return list(range(len(result.round_quiet)))


def _inprocess_section(
    result: InProcessResult,
    config: InProcessConfig,
    baseline: str,
    comparisons: Sequence[Comparison],
    budgets: Sequence[Budget],
) -> dict[str, Any]:
    used = _used_rounds(result, config)
    wall = {name: [values[i] for i in used] for name, values in result.samples_us.items()}
    cpu = {name: [values[i] for i in used] for name, values in result.cpu_samples_us.items()}

    def ratio(subject: str, reference: str) -> dict[str, Any]:
        """subject / reference, estimated four ways; ``ratio`` (paired) is the one reported."""
        paired = _paired(wall[subject], wall[reference])
        return {
            "subject": subject,
            "reference": reference,
            "ratio": paired["paired_median"],
            **paired,
            "ratio_of_medians": statistics.median(wall[subject])
            / statistics.median(wall[reference]),
            "best_ratio": min(wall[subject]) / min(wall[reference]),
            "cpu_ratio": _paired(cpu[subject], cpu[reference])["paired_median"],
        }

    rows: dict[str, Any] = {}
    for name, values in wall.items():
        summary = Stats.of(values)
        rows[name] = {
            "batch_requests": result.batch_requests[name],
            "samples_us": result.samples_us[name],
            "cpu_samples_us": result.cpu_samples_us[name],
            "median_us": summary.median,
            "min_us": summary.minimum,
            "max_us": summary.maximum,
            "spread_pct": summary.spread_pct,
            "cpu_median_us": statistics.median(cpu[name]),
            "calls_per_request": result.calls_per_request.get(name),
            "requests_per_s": 1e6 / summary.median,
            "vs_baseline": ratio(name, baseline) if baseline in wall else None,
        }

    compared = [
        ratio(c.subject, c.reference)
        for c in comparisons
        if c.subject in wall and c.reference in wall
    ]
    checked = []
    for budget in budgets:
        if budget.subject not in wall or budget.reference not in wall:
            continue
        measured = ratio(budget.subject, budget.reference)
        passed = measured["ratio"] <= budget.max_ratio
        others = (measured["ratio_of_medians"], measured["best_ratio"], measured["cpu_ratio"])
        checked.append(
            {
                "statement": budget.statement,
                "max_ratio": budget.max_ratio,
                **measured,
                "verdict": "PASS" if passed else "FAIL",
                # When the other estimates of the same ratio land on the other side of the
                # limit, noise decided the verdict, not the code.
                "settled": all((estimate <= budget.max_ratio) == passed for estimate in others),
                # When the limit lies inside the confidence interval, a rerun may flip it.
                "borderline": measured["paired_ci_low"]
                <= budget.max_ratio
                < measured["paired_ci_high"],
            }
        )
    return {
        "config": asdict(config),
        "event_loop": result.loop,
        "others_cpu_share": result.others_cpu_share,
        "round_orders": result.round_orders,
        "round_others_share": result.round_others_share,
        "round_quiet": result.round_quiet,
        "rounds_used": used,
        "only_quiet_rounds": len(used) == sum(result.round_quiet),
        "results": rows,
        "comparisons": compared,
        "budgets": checked,
    }


def _used_runs(runs: Sequence[WrkRun], config: HttpConfig) -> list[int]:
    """Indices of the runs the statistics use: the quiet ones, if there are enough."""
    quiet = [index for index, run in enumerate(runs) if run.quiet]
    return (
        quiet if len(quiet) >= min(MIN_QUIET_RUNS, config.repetitions) else list(range(len(runs)))
    )


def _http_section(
    result: HttpResult,
    config: HttpConfig,
    baseline: str,
    comparisons: Sequence[Comparison],
) -> dict[str, Any]:
    used = {name: _used_runs(runs, config) for name, runs in result.runs.items()}
    rps = {name: [run.requests_per_s for run in runs] for name, runs in result.runs.items()}
    base = statistics.median(rps[baseline][i] for i in used[baseline]) if baseline in rps else None
    rows: dict[str, Any] = {}
    for name, runs in result.runs.items():
        chosen = [runs[i] for i in used[name]]
        summary = Stats.of([run.requests_per_s for run in chosen])
        rows[name] = {
            "runs": [asdict(run) for run in runs],
            "runs_used": used[name],
            "only_quiet_runs": all(run.quiet for run in chosen),
            "requests_per_s_median": summary.median,
            "requests_per_s_min": summary.minimum,
            "requests_per_s_max": summary.maximum,
            "spread_pct": summary.spread_pct,
            "latency_p50_ms_median": statistics.median(run.latency_p50_ms for run in chosen),
            "latency_p99_ms_median": statistics.median(run.latency_p99_ms for run in chosen),
            "throughput_vs_baseline": summary.median / base if base else None,
        }
    compared = []
    for c in comparisons:
        if c.subject not in rps or c.reference not in rps:
            continue
        # Pair runs of the same repetition, among those both apps' statistics use.
        both = sorted(set(used[c.subject]) & set(used[c.reference]))
        paired = (
            _paired([rps[c.subject][i] for i in both], [rps[c.reference][i] for i in both])
            if both
            else {}
        )
        compared.append(
            {
                "subject": c.subject,
                "reference": c.reference,
                "throughput_ratio": rows[c.subject]["requests_per_s_median"]
                / rows[c.reference]["requests_per_s_median"],
                **paired,
            }
        )
    return {
        "config": asdict(config),
        "wrk_version": result.wrk_version,
        "server_command": result.server_command,
        "wrk_command": result.wrk_command,
        "server_cpus": result.server_cpus,
        "wrk_cpus": result.wrk_cpus,
        "others_cpu_share": result.others_cpu_share,
        "round_orders": result.round_orders,
        "results": rows,
        "comparisons": compared,
        "server_output": {name: lines for name, lines in result.server_output.items() if lines},
    }


def build_report(
    *,
    name: str,
    command: str,
    scenario: Scenario,
    apps: Sequence[AppSpec],
    baseline: str,
    comparisons: Sequence[Comparison],
    budgets: Sequence[Budget],
    inprocess: tuple[InProcessResult, InProcessConfig] | None,
    http: tuple[HttpResult, HttpConfig] | None,
    errors: Mapping[str, str],
    started: datetime,
    notes: Sequence[str] = (),
    build: str = "",
) -> dict[str, Any]:
    """Everything measured and everything needed to reproduce it, as JSON-ready data."""
    return {
        "name": name,
        "started_utc": started.astimezone(UTC).isoformat(timespec="seconds"),
        "finished_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": command,
        "git_revision": git_revision(),
        "build": build,
        "machine": machine_info(),
        "packages": package_versions(),
        "scenario": {
            "name": scenario.name,
            "description": scenario.description,
            "request": f"{scenario.method} {scenario.target}",
            "headers": [f"{key}: {value}" for key, value in scenario.headers],
        },
        "apps": {
            spec.name: {"title": spec.title, "description": spec.description} for spec in apps
        },
        "baseline": baseline,
        "inprocess": (
            _inprocess_section(*inprocess, baseline, comparisons, budgets) if inprocess else None
        ),
        "http": _http_section(*http, baseline, comparisons) if http else None,
        "errors": dict(errors),
        "notes": list(notes),
    }


# -- Markdown -------------------------------------------------------------------------------------


def _x(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _calls(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def _share(value: float | None) -> str:
    return "unknown" if value is None else f"{value:.0%}"


def _process_sets(config: dict[str, Any]) -> str:
    sets = config.get("processes", 1)  # results written before process sets existed: one
    if sets == 1:
        return ""
    return (
        f"the rounds are shared by {sets} sets of fresh worker processes (one process per app "
        "in each set, started one set after the other); "
    )


def _inprocess_markdown(report: dict[str, Any], section: dict[str, Any]) -> list[str]:
    config = section["config"]
    titles = report["apps"]
    base = titles[report["baseline"]]["title"] if report["baseline"] in titles else "baseline"
    run, used = len(section["round_quiet"]), len(section["rounds_used"])
    if section["only_quiet_rounds"]:
        rounds = (
            f"{used} quiet rounds used of {run} run (a round is quiet when other processes "
            f"used at most {config['quiet_share']:.0%} of the CPU)"
        )
    else:
        rounds = (
            f"**only {sum(section['round_quiet'])} of {run} rounds were quiet, so all {run} are "
            "used: treat these numbers as noisy**"
        )
    batch = (
        f"{config['requests']} sequential requests"
        if config["requests"]
        else f"sequential requests lasting about {config['batch_ms']:.0f} ms (how many: *batch*)"
    )
    lines = [
        "## In-process",
        "",
        (
            "ASGI callable driven directly (no network, no HTTP client) on the stock asyncio "
            f"loop ({section['event_loop']}); {_process_sets(config)}every app warmed up with "
            f"{config['warmup']} requests, then rounds in which each app serves a batch of "
            f"{batch}, in an order rotated every round; {rounds}. Other processes used "
            f"{_share(section['others_cpu_share'])} of the CPU over the whole run. "
            f"*time vs {base}* is the median over rounds of the per-round ratio (quartiles in "
            "brackets)."
        ),
        "",
        (
            "| app | µs/request (median) | min | max | CPU µs/request | calls/request "
            f"| requests/s | batch | time vs {base} |"
        ),
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, row in section["results"].items():
        vs = row["vs_baseline"]
        versus = (
            f"{_x(vs['ratio'])} ({vs['paired_p25']:.2f} to {vs['paired_p75']:.2f})" if vs else "-"
        )
        lines.append(
            f"| {titles[name]['title']} | {row['median_us']:.1f} | {row['min_us']:.1f} | "
            f"{row['max_us']:.1f} | {row['cpu_median_us']:.1f} | "
            f"{_calls(row['calls_per_request'])} | {row['requests_per_s']:,.0f} | "
            f"{row['batch_requests']} | {versus} |"
        )
    if section["comparisons"]:
        lines.append("")
        lines.extend(
            f"- {titles[c['subject']]['title']} vs {titles[c['reference']]['title']}: "
            f"{_x(c['ratio'])} the time per request, {_x(1 / c['ratio'])} the throughput "
            f"(per-round ratios: quartiles {c['paired_p25']:.2f} to {c['paired_p75']:.2f}; "
            f"ratio of medians {c['ratio_of_medians']:.2f}; CPU time {c['cpu_ratio']:.2f})."
            for c in section["comparisons"]
        )
    if section["budgets"]:
        lines += ["", "### Budget", ""]
        for b in section["budgets"]:
            lines.append(
                f"- **{b['verdict']}**: {b['statement']}. {b['subject']} µs / {b['reference']} "
                f"µs = **{b['ratio']:.3f}** (limit {b['max_ratio']:.2f}), the median of "
                f"{used} per-round ratios (95 % confidence interval {b['paired_ci_low']:.3f} to "
                f"{b['paired_ci_high']:.3f}; quartiles {b['paired_p25']:.3f} to "
                f"{b['paired_p75']:.3f}). Other estimates of the same ratio: ratio of medians "
                f"{b['ratio_of_medians']:.3f}, best round vs best round {b['best_ratio']:.3f}, "
                f"CPU time {b['cpu_ratio']:.3f}."
            )
            if b["borderline"]:
                lines.append(
                    "  **Borderline**: the limit lies inside the confidence interval; another "
                    "run may give the other verdict. The code is at the limit, not clearly on "
                    "one side of it."
                )
            if not b["settled"]:
                lines.append(
                    "  **Unsettled**: other estimates land on the other side of the limit, so "
                    "noise decided this verdict. Rerun on a quiet machine (`--wait-quiet 600`)."
                )
    return lines


def _http_markdown(report: dict[str, Any], section: dict[str, Any]) -> list[str]:
    config = section["config"]
    titles = report["apps"]
    base = titles[report["baseline"]]["title"] if report["baseline"] in titles else "baseline"
    if section["server_cpus"] is not None:
        pinning = f"server pinned to CPU {section['server_cpus']}, wrk to CPU {section['wrk_cpus']}"
    else:
        pinning = "no CPU pinning"
    lines = [
        "## HTTP",
        "",
        (
            f"uvicorn, 1 worker, `--loop {config['loop']} --http {config['http']}`, no access "
            f"log; `wrk -t{config['threads']} -c{config['connections']} "
            f"-d{config['duration_s']}s --latency` on 127.0.0.1 after a {config['warmup_s']} s "
            f"warm-up; {len(section['round_orders'])} repetitions, each run on a fresh server, "
            f"apps interleaved; {pinning}; {section['wrk_version']}. A run is quiet when other "
            f"processes used at most {config['quiet_share']:.0%} of the CPU; each app's "
            f"statistics use its quiet runs (column *runs*) if it has at least "
            f"{min(MIN_QUIET_RUNS, config['repetitions'])}, else all of them (marked *noisy*). "
            f"Other processes used {_share(section['others_cpu_share'])} of the CPU over the "
            "whole run."
        ),
        "",
        (
            "| app | requests/s (median) | min | max | spread | p50 ms | p99 ms | runs "
            f"| throughput vs {base} |"
        ),
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    lines.extend(
        f"| {titles[name]['title']} | {row['requests_per_s_median']:,.0f} | "
        f"{row['requests_per_s_min']:,.0f} | {row['requests_per_s_max']:,.0f} | "
        f"{row['spread_pct']:.1f} % | {row['latency_p50_ms_median']:.2f} | "
        f"{row['latency_p99_ms_median']:.2f} | {len(row['runs_used'])}"
        f"{'' if row['only_quiet_runs'] else ' noisy'} | {_x(row['throughput_vs_baseline'])} |"
        for name, row in section["results"].items()
    )
    if section["comparisons"]:
        lines.append("")
        lines.extend(
            f"- {titles[c['subject']]['title']} vs {titles[c['reference']]['title']}: "
            f"{_x(c['throughput_ratio'])} the throughput"
            + (
                f" (per-repetition ratios {c['paired_min']:.2f} to {c['paired_max']:.2f})."
                if "paired_min" in c
                else "."
            )
            for c in section["comparisons"]
        )
    if section["server_output"]:
        lines += ["", "Servers printed (warnings and errors):", ""]
        for name, printed in section["server_output"].items():
            lines += [f"- {name}: `{line}`" for line in printed[:5]]
    return lines


def render_markdown(report: dict[str, Any]) -> str:
    """The human-readable report."""
    machine = report["machine"]
    packages = ", ".join(f"{name} {v}" for name, v in report["packages"].items())
    scenario = report["scenario"]
    headers = ", ".join(f"`{header}`" for header in scenario["headers"])
    lines = [
        f"# Benchmark `{report['name']}`",
        "",
        f"- Command: `{report['command']}`",
        (
            f"- Started {report['started_utc']}, finished {report['finished_utc']}; "
            f"revision {report['git_revision']}"
        ),
        (
            f"- Machine: {machine['cpu_model']}, {machine['logical_cpus']} logical CPUs "
            f"({machine['usable_cpus']} usable), {machine['platform']}, {machine['python']}"
        ),
        f"- Packages: {packages}",
        *([f"- Build: {report['build']}"] if report.get("build") else []),
        f"- Request: `{scenario['request']}` with {headers} ({scenario['description']})",
        "",
    ]
    if report["inprocess"]:
        lines += [*_inprocess_markdown(report, report["inprocess"]), ""]
    if report["http"]:
        lines += [*_http_markdown(report, report["http"]), ""]
    if report["errors"]:
        lines += ["## Not measured", ""]
        lines += [f"- {name}: {error}" for name, error in report["errors"].items()]
        lines.append("")
    lines += ["## Apps", ""]
    lines += [
        f"- **{app['title']}** (`{name}`): {app['description']}"
        for name, app in report["apps"].items()
    ]
    if report["notes"]:
        lines += ["", "## Notes", ""]
        lines += [f"- {note}" for note in report["notes"]]
    return "\n".join(lines) + "\n"


def write_report(
    report: dict[str, Any],
    directory: Path,
    *,
    render: Callable[[dict[str, Any]], str] | None = None,
) -> tuple[Path, Path]:
    """Write ``<name>.md`` and ``<name>.json`` into ``directory``; return both paths.

    ``render`` turns the report into Markdown (``render_markdown`` when omitted; other
    commands, such as ``benchmarks.ratelimit``, pass their own).
    """
    directory.mkdir(parents=True, exist_ok=True)
    markdown = directory / f"{report['name']}.md"
    data = directory / f"{report['name']}.json"
    markdown.write_text((render or render_markdown)(report), encoding="utf-8")
    data.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {markdown} and {data}", file=sys.stderr)
    return markdown, data
