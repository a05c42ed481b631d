"""``ckflow bench FLOW``: measure what a failure costs in a registered flow (``ckflow.testing.bench``).

The runs go to ``--store`` only (never ``$CKFLOW_STORE``: a bench writes many runs, and yours is not the place
for them unless you say so); without it they stay in memory. While the runs go, a progress bar is drawn on
stderr when it is a terminal and ``rich`` (``ckflow[progress]``) is installed, and ckflow's per-run log lines
are off (their cost would be measured, and a bar has no room for them); a revert that fails still logs.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
from typing import TYPE_CHECKING, Any, Final

from ckflow._bench import bench
from ckflow._bench_plot import require_matplotlib
from ckflow._cli._format import CliError
from ckflow._cli._start import parse_inputs
from ckflow._faults import parse_rule
from ckflow._registry import registered_flow

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from typing import TextIO

    from ckflow._cli._format import Console

__all__ = ["add_bench", "cmd_bench", "parse_fail", "progress_bar"]

#: the loggers whose lines a bench turns off while it runs (each run's failures, reverts and end)
_HUSHED: Final = ("ckflow.task", "ckflow.walker", "ckflow.run")


def parse_fail(text: str) -> tuple[str, float | str]:
    """``--fail TASK[=RULE]``: TASK alone fails its first execution; RULE is a probability, first or first:N."""
    sep = "=" if "=" in text else ":"
    task, _, rule_text = text.partition(sep)
    rule: float | str = rule_text or "first"
    try:
        rule = float(rule_text)
    except ValueError:
        pass
    try:
        parse_rule(task, rule)
    except (TypeError, ValueError) as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: {str(exc).removeprefix('inject_failures: ')}") from None
    return task, rule


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number")
    return value


def _seed(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None


def add_bench(command: Callable[..., argparse.ArgumentParser], no_check: Callable[..., str | None]) -> None:
    """Register ``ckflow bench`` with the parser's ``command`` (``_main._Commands``); it needs no store."""
    sub = command(
        "bench",
        cmd_bench,
        "measure revert and retry latency of a registered flow, with failures injected into its tasks",
        check=no_check,
        more=(
            "Runs FLOW --runs times without injected failures, then --runs times with them, --concurrency at "
            "once, and prints revert latency (failure to first revert start) and retry latency (failure to the "
            "next execute) as p50/p95/p99/max, region sizes, makespans with and without failures, and the tasks "
            "touched outside their region (exit status 1 unless there are none). The runs are kept in --store "
            "if given (not $CKFLOW_STORE), else in memory."
        ),
    )
    sub.add_argument("flow", metavar="FLOW", help="the name the flow is registered under (see --import)")
    sub.add_argument("--runs", metavar="N", type=_positive, default=100, help="runs in each phase (default: 100)")
    sub.add_argument("--concurrency", metavar="C", type=_positive, default=10, help="runs at once (default: 10)")
    sub.add_argument(
        "--fail",
        metavar="TASK[=RULE]",
        action="append",
        type=parse_fail,
        default=[],
        help=(
            "fail TASK: RULE is a probability per execution (TASK=0.2), first (its first execution, the default) "
            "or first:N (its first N); repeatable"
        ),
    )
    sub.add_argument(
        "--seed", metavar="S", type=_seed, default=0, help="the seed of the injected failures (default: 0)"
    )
    sub.add_argument(
        "--inputs", metavar="JSON", type=parse_inputs, default={}, help="every run's inputs as a JSON object"
    )
    sub.add_argument("--plot", metavar="FILE.svg", help="also draw revert and retry latency histograms (ckflow[plot])")


async def cmd_bench(args: argparse.Namespace, console: Console) -> int:
    """``ckflow bench FLOW``: run the bench, print its table (or JSON), draw its plot; 1 if a task was touched."""
    flow = registered_flow(args.flow)
    fail = dict(args.fail)
    if len(fail) < len(args.fail):
        twice = sorted({task for task, _ in args.fail if sum(t == task for t, _ in args.fail) > 1})
        raise CliError(f"--fail names {', '.join(map(repr, twice))} more than once; give one rule per task.")
    if args.plot is not None:
        try:
            require_matplotlib()  # before the runs, not after them
        except ImportError as exc:
            raise CliError(str(exc)) from exc
    with _hushed(), progress_bar(console.err, f"bench {flow.name}", enabled=console.progress) as tick:
        try:
            report = await bench(
                flow,
                runs=args.runs,
                concurrency=args.concurrency,
                fail=fail,
                seed=args.seed,
                store=args.store,
                inputs=args.inputs,
                on_progress=tick,
            )
        except ValueError as exc:  # refused before any run starts: a --fail naming no task of the flow
            raise CliError(str(exc)) from exc
    if console.json:
        console.emit(report.to_json())
    else:
        for line in report.table().splitlines():
            console.print(line)
    if args.plot is not None:
        report.plot_svg(args.plot)
        console.note(f"latency histograms drawn in {args.plot}")
    touched = report.touched_outside_region
    if touched:
        console.note(f"ckflow: {len(touched)} task(s) touched outside their region; see the table.")
        return 1
    return 0


@contextlib.contextmanager
def _hushed() -> Iterator[None]:
    """ckflow's per-run log lines off (below ERROR) while the bench runs; their levels are put back after."""
    loggers = [logging.getLogger(name) for name in _HUSHED]
    levels = [log.level for log in loggers]
    for log in loggers:
        log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for log, level in zip(loggers, levels, strict=True):
            log.setLevel(level)


@contextlib.contextmanager
def progress_bar(stream: TextIO, description: str, *, enabled: bool) -> Iterator[Callable[[int, int], Any] | None]:
    """A rich progress bar on ``stream`` that the callback it gives moves (done, total); no bar (None) when not
    ``enabled`` (``stream`` is no terminal) or when rich is not installed."""
    if not enabled:
        yield None
        return
    try:
        from rich.console import Console as RichConsole
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    except ImportError:
        yield None
        return
    # Redrawn by rich's own thread a few times a second, so that drawing costs the measured runs little.
    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=RichConsole(file=stream),
        refresh_per_second=4,
        transient=True,
        redirect_stdout=False,
        redirect_stderr=False,
    )
    with bar:
        task = bar.add_task(description, total=None)

        def tick(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield tick
