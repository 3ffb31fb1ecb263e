"""The metrics registry: exposition format, cardinality guard, and totals across processes."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path
from typing import Any

import pytest

from bastion.observability._values import _write_archive, read_archive
from bastion.observability.metrics import MetricsRegistry


def declare(registry: MetricsRegistry) -> None:
    """Declare the metrics every test process uses, as every worker of one app would."""
    registry.counter("jobs_done_total", "Jobs done.", ["queue"])
    registry.gauge("jobs_running", "Jobs running.", mode="sum")
    registry.gauge("loop_lag_seconds", "Loop lag.", mode="max")
    registry.gauge("memory_bytes", "Memory.", mode="each")
    registry.histogram("job_seconds", "Job duration.", buckets=[0.1, 1.0])


def sample_lines(registry: MetricsRegistry) -> list[str]:
    """The rendered sample lines, without comments."""
    text = registry.render().decode()
    return [line for line in text.splitlines() if line and not line.startswith("#")]


class TestExposition:
    def test_counter_gauge_and_histogram_render_in_text_format(self) -> None:
        """Families are rendered with HELP, TYPE, cumulative buckets, sum and count."""
        registry = MetricsRegistry()
        declare(registry)
        registry.counter("jobs_done_total", "Jobs done.", ["queue"]).labels("mail").inc(2)
        histogram = registry.histogram("job_seconds", "Job duration.", buckets=[0.1, 1.0])
        for value in (0.05, 0.1, 0.5, 3.0):
            histogram.observe(value)

        text = registry.render().decode()

        assert "# HELP jobs_done_total Jobs done.\n# TYPE jobs_done_total counter\n" in text
        assert 'jobs_done_total{queue="mail"} 2\n' in text
        assert 'job_seconds_bucket{le="0.1"} 2\n' in text  # le includes its bound
        assert 'job_seconds_bucket{le="1.0"} 3\n' in text
        assert 'job_seconds_bucket{le="+Inf"} 4\n' in text
        assert "job_seconds_sum 3.65\njob_seconds_count 4\n" in text

    def test_label_values_are_escaped(self) -> None:
        """Quotes, backslashes and newlines in label values cannot break the format."""
        registry = MetricsRegistry()
        registry.counter("odd_total", "Odd labels.", ["value"]).labels('a"b\\c\nd').inc()

        assert ['odd_total{value="a\\"b\\\\c\\nd"} 1'] == sample_lines(registry)

    def test_counter_names_must_end_in_total(self) -> None:
        """A counter not named *_total is refused at declaration."""
        with pytest.raises(ValueError, match="_total"):
            MetricsRegistry().counter("requests", "Requests.")

    def test_redeclaring_differently_is_refused(self) -> None:
        """The same name with other labels is a programming error, reported at once."""
        registry = MetricsRegistry()
        registry.counter("a_total", "A.", ["x"])

        assert registry.counter("a_total", "A.", ["x"]) is registry.counter("a_total", "A.", ["x"])
        with pytest.raises(ValueError, match="already declared"):
            registry.counter("a_total", "A.", ["y"])

    def test_wrong_label_count_is_refused(self) -> None:
        """Label values must match the declared label names."""
        counter = MetricsRegistry().counter("a_total", "A.", ["x", "y"])

        with pytest.raises(ValueError, match="takes labels"):
            counter.labels("only-one")

    def test_series_beyond_the_limit_are_counted_as_other(self) -> None:
        """The cardinality guard keeps the count of series bounded, and loses no count."""
        registry = MetricsRegistry(max_series=3)
        counter = registry.counter("hits_total", "Hits.", ["path"])
        for index in range(10):
            counter.labels(f"/p/{index}").inc()

        lines = sample_lines(registry)

        assert 4 == len(lines)
        assert 'hits_total{path="other"} 7' in lines

    def test_the_value_store_grows_past_its_first_size(self) -> None:
        """Many series keep their values when the slot array is reallocated."""
        registry = MetricsRegistry()
        counter = registry.counter("many_total", "Many.", ["n"])
        children = [counter.labels(str(n)) for n in range(1_500)]
        for child in children:
            child.inc()

        assert 1_500 == len(sample_lines(registry))
        assert all(line.endswith(" 1") for line in sample_lines(registry))

    @pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed")
    def test_promtool_accepts_the_output(self, tmp_path: Path) -> None:
        """`promtool check metrics` finds no problem in a rendered scrape."""
        registry = MetricsRegistry()
        declare(registry)
        registry.counter("jobs_done_total", "Jobs done.", ["queue"]).labels("mail").inc()
        registry.histogram("job_seconds", "Job duration.", buckets=[0.1, 1.0]).observe(0.2)
        registry.gauge("jobs_running", "Jobs running.", mode="sum").set(2)

        result = subprocess.run(
            ["promtool", "check", "metrics"],
            input=registry.render(),
            capture_output=True,
            check=False,
        )

        assert (0, b"") == (result.returncode, result.stdout + result.stderr)


class TestAcrossProcesses:
    def test_two_workers_in_one_directory_add_up(self, tmp_path: Path) -> None:
        """Counters and histograms sum over workers; gauges combine by their mode."""
        first, second = MetricsRegistry(directory=tmp_path), MetricsRegistry(directory=tmp_path)
        for registry, jobs, lag, memory in ((first, 2, 0.5, 10), (second, 3, 0.25, 20)):
            declare(registry)
            registry.counter("jobs_done_total", "Jobs done.", ["queue"]).labels("q").inc(jobs)
            registry.gauge("jobs_running", "Jobs running.").set(jobs)
            registry.gauge("loop_lag_seconds", "Loop lag.", mode="max").set(lag)
            registry.gauge("memory_bytes", "Memory.", mode="each").set(memory)
            registry.histogram("job_seconds", "Job duration.", buckets=[0.1, 1.0]).observe(0.5)

        lines = sample_lines(first)

        assert 'jobs_done_total{queue="q"} 5' in lines
        assert "jobs_running 5" in lines
        assert "loop_lag_seconds 0.5" in lines
        # "each" keeps one series per process; both registries live in this one.
        memory_lines = [line for line in lines if line.startswith("memory_bytes")]
        assert 1 == len(memory_lines)
        assert memory_lines[0].startswith(f'memory_bytes{{pid="{os.getpid()}"}} ')
        assert 'job_seconds_bucket{le="1.0"} 2' in lines
        assert lines == sample_lines(second)
        first.close()
        second.close()

    def test_a_retired_worker_keeps_its_counts_but_not_its_gauges(self, tmp_path: Path) -> None:
        """A clean exit folds counters into the archive, drops gauges and deletes the file."""
        stays, leaves = MetricsRegistry(directory=tmp_path), MetricsRegistry(directory=tmp_path)
        for registry in (stays, leaves):
            declare(registry)
        leaves.counter("jobs_done_total", "Jobs done.", ["queue"]).labels("q").inc(7)
        leaves.gauge("jobs_running", "Jobs running.").set(4)

        leaves.close()

        lines = sample_lines(stays)
        assert 'jobs_done_total{queue="q"} 7' in lines
        assert not any(line.startswith("jobs_running") for line in lines)
        assert 1 == len(list(tmp_path.glob("worker-*.db")))
        stays.close()

    def test_a_killed_worker_is_folded_into_the_archive_once(self, tmp_path: Path) -> None:
        """A worker that died without cleanup still counts, exactly once, and its file goes."""
        script = textwrap.dedent(
            f"""
            import os, sys
            from pathlib import Path
            sys.path.insert(0, {str(Path(__file__).parent)!r})
            from test_metrics import declare
            from bastion.observability.metrics import MetricsRegistry
            registry = MetricsRegistry(directory=Path({str(tmp_path)!r}))
            declare(registry)
            registry.counter("jobs_done_total", "Jobs done.", ["queue"]).labels("q").inc(11)
            registry.gauge("jobs_running", "Jobs running.").set(9)
            os._exit(0)  # no cleanup, as if killed
            """
        )
        for _ in range(2):
            subprocess.run([sys.executable, "-c", script], check=True)
        survivor = MetricsRegistry(directory=tmp_path)
        declare(survivor)

        first_scrape, second_scrape = sample_lines(survivor), sample_lines(survivor)

        assert 'jobs_done_total{queue="q"} 22' in first_scrape
        assert not any(line.startswith("jobs_running") for line in first_scrape)
        assert first_scrape == second_scrape
        assert 1 == len(list(tmp_path.glob("worker-*.db")))
        assert [] == read_archive(tmp_path)["merged"]
        survivor.close()

    def test_a_file_already_in_the_archive_is_not_counted_twice(self, tmp_path: Path) -> None:
        """After a crash between archiving and deleting, the leftover file is only deleted."""
        dead = MetricsRegistry(directory=tmp_path)
        declare(dead)
        dead.counter("jobs_done_total", "Jobs done.", ["queue"]).labels("q").inc(5)
        name = next(tmp_path.glob("worker-*.db")).name
        dead_file = dead._file
        assert dead_file is not None
        dead_file.close()  # the worker is gone without retiring ...
        archive: dict[str, Any] = {"merged": [name], "series": {"jobs_done_total\x00q": [5.0]}}
        _write_archive(tmp_path, archive)  # ... and a compaction crashed after archiving it
        survivor = MetricsRegistry(directory=tmp_path)
        declare(survivor)

        lines = sample_lines(survivor)

        assert 'jobs_done_total{queue="q"} 5' in lines
        assert not (tmp_path / name).exists()
        survivor.close()

    def test_values_counted_before_sharing_are_kept(self, tmp_path: Path) -> None:
        """Series made at app construction keep their counts when moved into the directory."""
        registry = MetricsRegistry()
        declare(registry)
        child = registry.counter("jobs_done_total", "Jobs done.", ["queue"]).labels("q")
        child.inc(3)

        registry.share(tmp_path)
        child.inc()

        assert 'jobs_done_total{queue="q"} 4' in sample_lines(registry)
        registry.close()

    def test_a_forked_child_never_writes_into_its_parents_file(self, tmp_path: Path) -> None:
        """After a fork (gunicorn --preload) the child counts in private memory."""
        registry = MetricsRegistry(directory=tmp_path)
        declare(registry)
        child = registry.counter("jobs_done_total", "Jobs done.", ["queue"]).labels("q")
        child.inc()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # forking with threads around
            pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            child.inc(100)
            os._exit(0)
        os.waitpid(pid, 0)

        assert 'jobs_done_total{queue="q"} 1' in sample_lines(registry)
        registry.close()
