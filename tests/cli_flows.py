"""Flows for tests/test_cli.py, registered by name so that `ckflow --import tests.cli_flows` finds them.

``GATES`` holds an ``anyio.Event`` per task name: a task whose gate is there
waits for it (so a test can hold a run at that task); without one it goes on
at once. A gate belongs to the event loop of the engine that runs the task,
so tests remove their gates before a command runs the flow in its own loop.
``LOG`` records what the tasks did, in order.
"""

from __future__ import annotations

import anyio  # noqa: TC002  (the gates are anyio.Events that the tests create)

import ckflow
from ckflow import Checkpoint, Linear, Parallel, Retry, task

GATES: dict[str, anyio.Event] = {}
#: the task name -> an Event set once that task has started (the test's own loop)
STARTED: dict[str, anyio.Event] = {}
LOG: list[str] = []


async def _checkpoint(name: str) -> None:
    LOG.append(name)
    started = STARTED.get(name)
    if started is not None:
        started.set()
    gate = GATES.get(name)
    if gate is not None:
        await gate.wait()


def build_line() -> ckflow.Linear:
    """prepare -> [checkpoint "work"] build -> ship: three tasks, each held by its gate if one is set."""

    @task(provides="prepared")
    async def prepare(size: int) -> int:
        await _checkpoint("prepare")
        return size + 1

    @task(provides="built")
    async def build(prepared: int) -> int:
        await _checkpoint("build")
        return prepared * 2

    @build.revert
    async def _unbuild(prepared: int, result: object) -> None:
        LOG.append("undo build")

    @task(provides="shipped")
    async def ship(built: int) -> str:
        await _checkpoint("ship")
        return f"shipped {built}"

    @ship.revert
    async def _unship(built: int, result: object) -> None:
        LOG.append("undo ship")

    return Linear("cli-line", prepare, Linear("work", Checkpoint("work"), build, ship))


def build_flaky() -> ckflow.Linear:
    """fetch, then in parallel a "parse" branch that always fails (retried once at its checkpoint) and "index"."""

    @task(provides="page")
    async def fetch(url: str) -> str:
        return f"<html>{url}</html>"

    @task(provides="tree")
    async def parse(page: str) -> str:
        raise ValueError(f"cannot parse {page[:12]}: unexpected end of input\nat line 1")

    @task(provides="index")
    async def index(page: str) -> int:
        return len(page)

    return Linear(
        "cli-flaky",
        fetch,
        Parallel("both", Linear("parsing", Checkpoint("parsing", retry=Retry(attempts=2, jitter=False)), parse), index),
    )


ckflow.register_flow("cli-line", build_line)
ckflow.register_flow("cli-flaky", build_flaky)
