"""``python -m ckflow demo``: provision a server and watch ckflow revert and retry one branch.

The flow creates a volume, then in parallel attaches it (under a checkpoint
that retries on transient errors) and configures the network (slow), then
boots. Every run is kept in a SQLite file (the embedded default store).
Scenario 1: attaching fails once; only the attach branch is reverted and
retried, while the network keeps being configured. Scenario 2: booting fails
for good; everything that ran is reverted, in reverse order. Scenario 3: the
run is parked at the 'disk' checkpoint and its engine closes, as a process
would stop; a new engine resumes it from the file, and what had succeeded is
not run again.

This module is an application of ckflow, not part of the library: it prints
to stdout (ckflow itself writes nothing unless the application configures
logging; the demo shows every event itself, through a callback).
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
import time
import uuid
from dataclasses import dataclass, field
from typing import TextIO

import anyio

import ckflow
from ckflow import Checkpoint, Linear, Parallel, Retry, task

__all__ = ["build_flow", "run_demo"]


class TransientError(Exception):
    """A failure worth retrying: the storage backend was busy."""


class ImageNotFoundError(Exception):
    """A failure not worth retrying: the boot image does not exist."""


def build_flow(*, fast: bool = False) -> ckflow.Linear:
    """The provisioning flow; with ``fast`` nothing sleeps and retries do not wait."""

    async def work(seconds: float) -> None:
        await anyio.sleep(0 if fast else seconds)

    @task(provides="volume")
    async def create_volume(server: str, size_gb: int) -> str:
        await work(0.2)
        return f"vol-{server}-{size_gb}g"

    @create_volume.revert
    async def _delete_volume(server: str, size_gb: int, result: object) -> None:
        await work(0.1)

    @task(provides="attachment")
    async def attach_volume(volume: str, transient_faults: int) -> str:
        await work(0.15)
        if ckflow.current().attempt <= transient_faults:
            raise TransientError(f"storage backend busy, {volume} is still locked")
        return f"{volume}@/dev/vdb"

    @attach_volume.revert
    async def _detach_volume(volume: str, transient_faults: int, result: object) -> None:
        await work(0.05)

    @task(provides="network")
    async def configure_network(server: str) -> str:
        await work(1.0)
        return f"{server}: 10.0.0.17/24 via 10.0.0.1"

    @configure_network.revert
    async def _release_address(server: str, result: object) -> None:
        await work(0.1)

    @task(provides="instance")
    async def boot(server: str, image: str, attachment: str, network: str) -> str:
        await work(0.3)
        if image.startswith("missing"):
            raise ImageNotFoundError(f"image {image!r} does not exist")
        return f"{server} is up ({image})"

    @boot.revert
    async def _power_off(server: str, image: str, attachment: str, network: str, result: object) -> None:
        await work(0.05)

    return Linear(
        "provision",
        create_volume,
        Parallel(
            "prepare",
            Linear(
                "disk",
                Checkpoint("disk", retry=Retry(attempts=3, delay=0.0 if fast else 0.25, jitter=False)),
                attach_volume,
            ),
            configure_network,
        ),
        boot,
    )


_COLOURS = {
    "PENDING": "2",
    "RUNNING": "36",
    "SUCCESS": "32",
    "FAILURE": "31",
    "REVERTING": "33",
    "REVERTED": "35",
    "REVERT_FAILURE": "1;31",
    "SKIPPED": "2",
    "walker": "1;33",
    "title": "1",
    "dim": "2",
}


def _times(n: int) -> str:
    return "once" if n == 1 else f"{n} times"


def _short(exc_type: str) -> str:
    return exc_type.rsplit(".", 1)[-1]


@dataclass
class _Printer:
    """Prints each event as it happens, relative to the start of the run."""

    out: TextIO
    colour: bool
    start: float = field(default_factory=time.monotonic)
    reverted: set[str] = field(default_factory=set)
    retried: set[str] = field(default_factory=set)
    closed: bool = False

    def paint(self, text: str, key: str) -> str:
        code = _COLOURS.get(key)
        return f"\033[{code}m{text}\033[0m" if self.colour and code and text else text

    def line(self, text: str = "") -> None:
        if self.closed:
            return
        try:
            print(text, file=self.out, flush=True)
        except BrokenPipeError:
            # The reader went away (`| head`): stop printing, let the run finish quietly.
            self.closed = True
            if self.out is sys.stdout:
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())

    def __call__(self, event: ckflow.Event) -> None:
        ms = (event.monotonic - self.start) * 1000
        stamp = self.paint(f"{ms:7.0f} ms", "dim")
        name = event.name
        if name.startswith("ckflow.task.") and event.task is not None:
            old, new = event.old or "?", event.new or "?"
            if new == "REVERTING":
                self.reverted.add(event.task)
            attempt = f"  attempt {event.attempt}" if event.attempt and event.attempt > 1 else ""
            why = ""
            if event.failure is not None:
                why = f"  {_short(event.failure.exc_type)}: {event.failure.message}"
            arrow = f"{self.paint(old, old)} → {self.paint(new, new)}"
            self.line(f"{stamp}  {event.task:<18} {arrow}{self.paint(attempt, 'dim')}{why}")
        elif name == "ckflow.walker.region":
            members = ", ".join(event.detail.get("members", []))
            action = event.detail.get("action", "?")
            what = f"walker: {event.task} failed → region at checkpoint {event.checkpoint!r} ({action}): {members}"
            self.line(f"{stamp}  {self.paint(what, 'walker')}")
        elif name == "ckflow.walker.retry":
            delay = float(event.detail.get("delay", 0.0))
            members = event.detail.get("members", [])
            self.retried.update(members)
            what = (
                f"walker: retry {', '.join(members)} at checkpoint {event.checkpoint!r}, "
                f"attempt {event.attempt}, after {delay * 1000:.0f} ms"
            )
            self.line(f"{stamp}  {self.paint(what, 'walker')}")
        elif name.startswith("ckflow.walker."):
            step = name.removeprefix("ckflow.walker.")
            subject = event.task or event.checkpoint or ""
            self.line(f"{stamp}  {self.paint(f'walker: {step} {subject}', 'walker')}")
        elif name.startswith("ckflow.run."):
            what = f"run {event.old} → {event.new}" if event.old else f"run {name.removeprefix('ckflow.run.')}"
            if name == "ckflow.run.resumed":
                what += " from the store"
            self.line(f"{stamp}  {self.paint(what, 'title')}")


def _report(printer: _Printer, result: ckflow.RunResult) -> None:
    line, paint = printer.line, printer.paint
    line()
    line(f"  result: {paint(str(result.state), str(result.state))} in {result.duration * 1000:.0f} ms")
    for key, value in result.outputs.items():
        line(f"    {key:<12} = {value!r}")
    line("  tasks:")
    for name, summary in result.tasks.items():
        line(f"    {name:<18} {paint(f'{summary.state:<10}', str(summary.state))}  executed {_times(summary.attempts)}")
    for report in result.regions:
        latency = report.revert_latency
        shown = "-" if latency is None else f"{latency * 1000:.1f} ms"
        line(
            f"  region at {report.checkpoint!r} ({report.action}) after {report.cause}: "
            f"{', '.join(report.members)}; revert latency {shown}"
        )
    for report in result.regions:
        if report.action != "retry":
            continue
        # Tasks outside the region that were executing while it was reverted and retried.
        through = [
            f"{name} ({(s.started - printer.start) * 1000:.0f}-{(s.ended - printer.start) * 1000:.0f} ms)"
            for name, s in result.tasks.items()
            if name not in report.members
            and s.started is not None
            and s.ended is not None
            and s.started <= report.failure_at <= s.ended
        ]
        if through:
            line(f"  kept running through the {report.checkpoint!r} retry: {', '.join(through)}")
    never = [n for n in result.tasks if n not in printer.reverted and result.tasks[n].attempts > 0]
    if never:
        line(f"  never reverted: {', '.join(never)}")
    for failure in result.failures:
        line(f"  failure: {failure.task}: {_short(failure.exc_type)}: {failure.message}")


def _title(printer: _Printer, title: str, blurb: str) -> None:
    printer.reverted.clear()
    printer.retried.clear()
    printer.line()
    printer.line(printer.paint(title, "title"))
    printer.line(printer.paint(blurb, "dim"))
    printer.start = time.monotonic()


async def _scenario(
    engine: ckflow.Engine,
    printer: _Printer,
    title: str,
    blurb: str,
    flow: ckflow.Linear,
    inputs: dict[str, object],
) -> ckflow.RunResult:
    _title(printer, title, blurb)
    run = await engine.start(flow, inputs, run_id=f"{inputs['server']}-{uuid.uuid4().hex[:6]}", on_event=printer)
    result = await run.wait()
    _report(printer, result)
    return result


async def _restart(store: str, printer: _Printer, flow: ckflow.Linear, inputs: dict[str, object]) -> ckflow.RunResult:
    """Scenario 3: park the run at a checkpoint, close its engine, resume it from the store in a new one."""
    _title(
        printer,
        "3. the engine stops at checkpoint 'disk'; a new engine resumes the run from the store",
        "   the first engine runs up to 'disk' and closes, as a process would stop; the second one reads the\n"
        "   run back from the SQLite file and goes on from there: create_volume, done already, is not run again.",
    )
    run_id = f"{inputs['server']}-{uuid.uuid4().hex[:6]}"
    async with ckflow.Engine(store=store) as first:
        run = await first.start(flow, inputs, run_id=run_id, on_event=printer)
        await run.goto("disk")
    printer.line(printer.paint(f"           engine closed; run {run_id!r} waits in the store, SUSPENDED", "dim"))
    async with ckflow.Engine(store=store) as second:
        resumed = await second.resume(run_id, flow=flow, on_event=printer)
        result = await resumed.wait()
    _report(printer, result)
    return result


def ckflow_command() -> str:
    """How to run ``ckflow`` from this shell, as printed in a hint: it must work when pasted.

    ``ckflow`` itself when that is on PATH and is this installation's script; else this interpreter
    with ``-m ckflow`` (the Quick start installs into ``.venv`` without activating it, so there is no
    ``ckflow`` on PATH), relative to the current directory when the interpreter is under it.
    """
    here = os.path.dirname(os.path.abspath(sys.executable))
    script = shutil.which("ckflow")
    if script is not None and os.path.dirname(os.path.abspath(script)) == here:
        return "ckflow"
    python = os.path.abspath(sys.executable)
    try:
        relative = os.path.relpath(python)
    except ValueError:  # on another drive (Windows)
        relative = os.pardir
    if not relative.startswith(os.pardir):
        python = relative if os.sep in relative else os.path.join(os.curdir, relative)
    return f"{shlex.quote(python)} -m ckflow"


async def run_demo(
    *,
    fast: bool = False,
    out: TextIO | None = None,
    colour: bool | None = None,
    store: str = "sqlite:///ckflow-demo.db",
) -> int:
    """Run the three scenarios on ``store``, printing as they go; returns 0 if each ended as intended."""
    # Declared: typeshed's sys.stdout is `TextIO | Any`, and with Any pyright would not narrow `colour` to bool.
    stream: TextIO = out if out is not None else sys.stdout
    if colour is None:
        colour = stream.isatty() and "NO_COLOR" not in os.environ
    flow = build_flow(fast=fast)
    printer = _Printer(stream, colour)
    printer.line(
        "ckflow demo: provision a server. create_volume, then in parallel attach_volume\n"
        "(under checkpoint 'disk', Retry(attempts=3)) and configure_network (slow), then boot.\n"
        f"Every run is kept in {store}."
    )
    async with ckflow.Engine(store=store) as engine:
        first = await _scenario(
            engine,
            printer,
            "1. attach_volume hits a transient error once",
            "   only the 'disk' branch is reverted and retried; configure_network keeps running.",
            flow,
            {"server": "web-1", "size_gb": 20, "transient_faults": 1, "image": "ubuntu-24.04"},
        )
        second = await _scenario(
            engine,
            printer,
            "2. boot fails for good (no checkpoint around it)",
            "   the failure reaches the root: everything that ran is reverted, in reverse order.",
            flow,
            {"server": "web-2", "size_gb": 20, "transient_faults": 0, "image": "missing-image"},
        )
    third = await _restart(
        store, printer, flow, {"server": "web-3", "size_gb": 20, "transient_faults": 0, "image": "ubuntu-24.04"}
    )
    printer.line()
    look = f"{ckflow_command()} runs --store {shlex.quote(store)}"
    printer.line(f"The runs are kept in {store}; look at them with `{look}`.")
    ok = (
        first.state is ckflow.FlowState.SUCCESS
        and second.state is ckflow.FlowState.REVERTED
        and third.state is ckflow.FlowState.SUCCESS
        and third.tasks["create_volume"].attempts == 1
    )
    return 0 if ok else 1
