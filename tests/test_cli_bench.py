"""``ckflow bench FLOW`` (DESIGN §14): a registered flow measured with one command, on any store.

Commands run in this process through ``ckflow._cli.main(argv)``, with the flow of ``tests/bench_flows.py``.
"""

from __future__ import annotations

import io
import json
import logging
import os
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pytest
from tests.test_bench import DESIGN_KEYS

from ckflow._cli import main
from ckflow._cli._bench import parse_fail, progress_bar
from ckflow.testing import TouchedTask

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

IMPORT = ("--import", "tests.bench_flows")


@dataclass
class Done:
    status: int
    out: str
    err: str


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Callable[..., Done]:
    """Run `ckflow ARGS...` in this thread; returns its exit status, stdout and stderr."""

    def run(*argv: str) -> Done:
        capsys.readouterr()
        status = main(list(argv))
        captured = capsys.readouterr()
        return Done(status, captured.out, captured.err)

    return run


class Tty(io.StringIO):
    """A stream that says it is a terminal."""

    def isatty(self) -> bool:
        return True


class TestBench:
    """The table, the JSON and the store of a bench."""

    def test_table(self, cli: Callable[..., Done]) -> None:
        """The table gives latencies, region sizes, makespans and the zero-touch count; exit status 0."""
        done = cli("bench", "bench-seed", *IMPORT, "--runs", "4", "--concurrency", "2", "--fail", "b")
        assert done.status == 0, done.err
        assert "ckflow bench 'bench-seed': 4 runs per phase, 2 at once, store memory (no store)" in done.out
        assert "injected: b=first (seed 0); failures injected: b 4" in done.out
        for row in ("revert latency (ms)", "retry latency (ms)", "region size (tasks)", "makespan with failures"):
            assert row in done.out
        assert "tasks touched outside their region: 0" in done.out
        assert "runs with failures:    4 SUCCESS" in done.out

    def test_json_on_a_sqlite_store(self, cli: Callable[..., Done], tmp_path: Path) -> None:
        """--json prints DESIGN §14's keys; --store keeps every run of both phases there; --inputs reach them."""
        url = f"sqlite:///{tmp_path / 'bench.db'}"
        done = cli(
            "bench", "bench-seed", *IMPORT, "--runs", "3", "--fail", "b=0.5", "--fail", "c:first",
            "--seed", "4", "--store", url, "--inputs", '{"start": 5}', "--json",
        )  # fmt: skip
        assert done.status == 0, done.err
        doc = json.loads(done.out)
        assert set(doc) >= DESIGN_KEYS
        assert (doc["runs"], doc["seed"], doc["store"]) == (3, 4, url)
        assert doc["fail"] == {"b": "0.5", "c": "first"}
        assert doc["injected"]["c"] == 3
        assert doc["states"] == {"with_failures": {"REVERTED": 3}, "without": {"SUCCESS": 3}}
        assert set(doc["makespan_ms"]["without"]) == {"p50", "p95", "p99", "max", "count"}
        runs = cli("runs", "--store", url, "--json", "--limit", "0")
        assert len(runs.out.splitlines()) == 6
        assert {json.loads(json.loads(line)["inputs"])["start"] for line in runs.out.splitlines()} == {5}

    def test_not_the_environments_store(
        self, cli: Callable[..., Done], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """$CKFLOW_STORE is not used: a bench writes there only when --store says so."""
        monkeypatch.setenv("CKFLOW_STORE", f"sqlite:///{tmp_path / 'yours.db'}")
        assert cli("bench", "bench-seed", *IMPORT, "--runs", "1").status == 0
        assert not (tmp_path / "yours.db").exists()

    def test_log_lines_off_while_it_runs(self, cli: Callable[..., Done]) -> None:
        """Runs that revert log nothing while the bench runs, and the loggers' levels are put back after."""
        levels = [logging.getLogger(n).level for n in ("ckflow.task", "ckflow.walker", "ckflow.run")]
        done = cli("bench", "bench-seed", *IMPORT, "--runs", "2", "--fail", "c")
        assert done.status == 0
        assert "ckflow.run.reverted" not in done.err
        assert "2 REVERTED" in done.out
        assert [logging.getLogger(n).level for n in ("ckflow.task", "ckflow.walker", "ckflow.run")] == levels

    def test_touched_tasks_fail_the_command(self, cli: Callable[..., Done], monkeypatch: pytest.MonkeyPatch) -> None:
        """A task touched outside its region is named, and the exit status is 1."""
        monkeypatch.setattr(
            "ckflow._bench.touched_outside_region", lambda results: [TouchedTask("r9", "c", "reverted")]
        )
        done = cli("bench", "bench-seed", *IMPORT, "--runs", "1", "--fail", "b")
        assert done.status == 1
        assert "run r9: c (reverted)" in done.out
        assert "touched outside their region" in done.err


class TestMistakes:
    """Usage errors (exit 2) and errors the message explains (exit 1), before any run."""

    @pytest.mark.parametrize(
        ("text", "expected"),
        [("b", ("b", "first")), ("b=0.25", ("b", 0.25)), ("b:first:2", ("b", "first:2")), ("b=first", ("b", "first"))],
    )
    def test_fail_forms(self, text: str, expected: tuple[str, object]) -> None:
        """--fail TASK, TASK=P, TASK:first:N and TASK=first."""
        assert parse_fail(text) == expected

    @pytest.mark.parametrize("text", ["b=1.5", "b=sometimes", "=0.5", "b=first:0"])
    def test_bad_fail_is_a_usage_error(self, cli: Callable[..., Done], text: str) -> None:
        """A --fail rule that is not a probability, first or first:N is a usage error naming it."""
        done = cli("bench", "bench-seed", *IMPORT, "--fail", text)
        assert done.status == 2
        assert f"argument --fail: {text!r}" in done.err

    def test_unknown_task(self, cli: Callable[..., Done]) -> None:
        """A --fail naming no task of the flow is refused, listing the flow's tasks."""
        done = cli("bench", "bench-seed", *IMPORT, "--fail", "charge")
        assert done.status == 1
        assert "flow 'bench-seed' has no task 'charge' to fail; its tasks are a, b, c" in done.err

    def test_same_task_twice(self, cli: Callable[..., Done]) -> None:
        """Two rules for one task are refused."""
        done = cli("bench", "bench-seed", *IMPORT, "--fail", "b", "--fail", "b=0.1")
        assert done.status == 1
        assert "--fail names 'b' more than once" in done.err

    def test_unregistered_flow(self, cli: Callable[..., Done]) -> None:
        """A flow that no --import registered: the message says to pass --import."""
        done = cli("bench", "nope", *IMPORT)
        assert done.status == 1
        assert "--import" in done.err

    @pytest.mark.parametrize("option", ["--runs", "--concurrency"])
    def test_counts(self, cli: Callable[..., Done], option: str) -> None:
        """--runs and --concurrency are positive whole numbers."""
        assert cli("bench", "bench-seed", *IMPORT, option, "0").status == 2


class TestPlot:
    """--plot draws the SVG, or names the extra before any run."""

    def test_svg(self, cli: Callable[..., Done], tmp_path: Path) -> None:
        """--plot FILE.svg writes the histograms."""
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            if os.environ.get("CI") == "true":
                raise
            pytest.skip("matplotlib (ckflow[plot]) is not installed")
        path = tmp_path / "latency.svg"
        done = cli("bench", "bench-seed", *IMPORT, "--runs", "3", "--fail", "b", "--plot", str(path))
        assert done.status == 0, done.err
        assert "revert latency (3 regions)" in path.read_text(encoding="utf-8")
        assert f"latency histograms drawn in {path}" in done.err

    def test_missing_extra(self, cli: Callable[..., Done], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """Without matplotlib, the command says which extra to install, and runs nothing."""
        monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
        url = f"sqlite:///{tmp_path / 'bench.db'}"
        done = cli("bench", "bench-seed", *IMPORT, "--store", url, "--plot", str(tmp_path / "x.svg"))
        assert done.status == 1
        assert "pip install 'ckflow[plot]'" in done.err
        assert not (tmp_path / "bench.db").exists()


class TestProgress:
    """A bar on a terminal, from rich (ckflow[progress]); none elsewhere or without rich."""

    def test_bar_on_a_terminal(self) -> None:
        """On a terminal the bar shows the description and the count."""
        stream = Tty()
        with progress_bar(stream, "bench seed", enabled=True) as tick:
            assert tick is not None
            tick(3, 4)
        assert "bench seed" in stream.getvalue()
        assert "3/4" in stream.getvalue()

    def test_no_bar_elsewhere(self) -> None:
        """Not a terminal: no bar and no callback."""
        stream = io.StringIO()
        with progress_bar(stream, "bench seed", enabled=False) as tick:
            assert tick is None
        assert stream.getvalue() == ""

    def test_no_bar_without_rich(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Without rich installed: no bar, and the bench runs all the same."""
        monkeypatch.setitem(sys.modules, "rich.progress", None)
        stream = Tty()
        with progress_bar(stream, "bench seed", enabled=True) as tick:
            assert tick is None
        assert stream.getvalue() == ""
