"""``ckflow resume``, ``suspend``, ``cancel``, ``goto`` and ``revert-to``: controlling a run of a store.

Each command opens one engine on the store. The operation goes through
``engine.attach(run_id)``: to the engine that runs the run, as a request it
carries out at its next heartbeat, or, when no live engine owns the run, into
this engine, which takes the run over. A run that this process took over (or
resumed) is then run here, in the foreground, until it ends or is SUSPENDED;
leaving the engine leaves a SUSPENDED run in its store for anyone to resume.
"""

from __future__ import annotations

import contextlib
import time
from typing import TYPE_CHECKING, Final, TypeVar

import anyio

from ckflow._cli._format import CliError, StatusLine, Stopwatch, failure_line, fmt_duration
from ckflow._cli._runs import TERMINAL, open_cli_store
from ckflow._engine import Engine
from ckflow._errors import RunOwnedError
from ckflow._states import FlowState, TaskState

if TYPE_CHECKING:
    import argparse
    from collections.abc import AsyncIterator, Awaitable, Callable

    from ckflow._cli._format import Console
    from ckflow._engine import Run
    from ckflow._events import Event
    from ckflow._records import RunRecord
    from ckflow.stores import Store

__all__ = [
    "HEARTBEAT",
    "LEASE_TTL",
    "LEFT_IN_STORE",
    "cmd_cancel",
    "cmd_goto",
    "cmd_resume",
    "cmd_revert_to",
    "cmd_suspend",
    "run_here",
]

T = TypeVar("T")

#: the engine of a command: how long its lease on a run it takes over lasts, and how often it renews it
LEASE_TTL: float = 10.0
HEARTBEAT: float = 1.0
#: seconds between redraws of a status line
TICK: Final = 0.1
#: ids of the runs a command leaves in their store on purpose, SUSPENDED or interrupted (``_main`` hides
#: the engine's "stopped when it shut down" warning for them: the command's own summary says so)
LEFT_IN_STORE: Final[set[str]] = set()
_DONE: Final = frozenset({TaskState.SUCCESS, TaskState.SKIPPED})
_BUSY: Final = frozenset({TaskState.RUNNING, TaskState.REVERTING})


@contextlib.asynccontextmanager
async def _engine(url: str) -> AsyncIterator[tuple[Engine, Store]]:
    store = open_cli_store(url)
    async with store, Engine(store=store, lease_ttl=LEASE_TTL, heartbeat=HEARTBEAT) as engine:
        yield engine, store


async def _ticking(draw: Callable[[], None], operation: Awaitable[T]) -> T:
    """Await ``operation`` while ``draw()`` redraws a status line every ``TICK`` seconds."""

    async def tick() -> None:
        while True:
            await anyio.sleep(TICK)
            draw()

    failure: Exception | None = None
    value: list[T] = []  # the operation's result, once it has one
    # Drawn once before anything awaits: the run (already started) logs nothing before the status line shows.
    draw()
    async with anyio.create_task_group() as tg:
        tg.start_soon(tick)
        try:
            value.append(await operation)
        except Exception as exc:  # raised as is below, not inside the task group's ExceptionGroup
            failure = exc
        finally:
            tg.cancel_scope.cancel()
    if failure is not None:
        raise failure
    return value[0]


class _Watch:
    """Follows a run of this engine through its events, for a live status line on a terminal."""

    def __init__(self, run: Run, console: Console) -> None:
        self.run = run
        self.status = StatusLine(console)
        self.clock = Stopwatch()
        self.states: dict[str, str] = {}
        self.done = self.busy = 0
        self._unsubscribe: Callable[[], None] | None = None
        if self.status.enabled:
            # One look at every task now, then only the changes: a status line costs O(1) per event.
            self.states = {name: str(summary.state) for name, summary in run.tasks.items()}
            self.done = sum(1 for s in self.states.values() if s in _DONE)
            self.busy = sum(1 for s in self.states.values() if s in _BUSY)
            self._unsubscribe = run.subscribe(self._on_event)

    def _on_event(self, event: Event) -> None:
        if event.task is not None and event.new is not None and event.name.startswith("ckflow.task."):
            old = self.states.get(event.task)
            self.states[event.task] = event.new
            self.done += (event.new in _DONE) - (old in _DONE)
            self.busy += (event.new in _BUSY) - (old in _BUSY)
            failure = event.failure
            if event.new in ("FAILURE", "REVERT_FAILURE") and failure is not None and not failure.cancelled:
                self.status.above(f"  {event.task} failed (attempt {event.attempt}): {failure_line(failure)}")
        elif event.name.startswith("ckflow.run.") and event.old is not None and event.new is not None:
            self.status.above(f"{self.run.id}: {event.old} -> {event.new}")
        elif event.name == "ckflow.walker.region":
            members = ", ".join(str(m) for m in event.detail.get("members", []))
            action = event.detail.get("action", "?")
            self.status.above(f"  reverting back to checkpoint {event.checkpoint!r} ({action}): {members}")

    def draw(self) -> None:
        total = len(self.states)
        self.status.show(
            f"{self.run.id}  {self.run.state}  {self.done}/{total} tasks done, {self.busy} running  "
            f"{fmt_duration(self.clock.elapsed)}"
        )

    def close(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
        self.status.close()


async def run_here(run: Run, console: Console, store: Store, expect: frozenset[FlowState]) -> int:
    """Run ``run`` (this engine runs it) until it ends or is SUSPENDED; 0 if it ends in ``expect``."""
    watch = _Watch(run, console)
    try:
        result = await _ticking(watch.draw, run.wait_suspended())
    except anyio.get_cancelled_exc_class():
        watch.close()
        LEFT_IN_STORE.add(run.id)
        console.note(
            f"{run.id}: interrupted while {run.state}; it stays in its store: go on with `ckflow resume {run.id}`."
        )
        raise
    finally:
        watch.close()
    done = sum(1 for summary in result.tasks.values() if summary.state in _DONE)
    line = f"{run.id}: {result.state} ({done}/{len(result.tasks)} tasks done) after {fmt_duration(watch.clock.elapsed)}"
    if result.state is FlowState.SUSPENDED:
        LEFT_IN_STORE.add(run.id)
        line += f"; it stays in its store: go on with `ckflow resume {run.id}`"
    elif result.state is not FlowState.SUCCESS and result.failures:
        line += f"; last failure: {result.failures[-1].task}: {failure_line(result.failures[-1])}"
    if console.json:
        console.emit_model(await store.get_run(run.id))
    console.note(line)
    return 0 if result.state in expect else 1


async def _control(
    engine: Engine,
    store: Store,
    run_id: str,
    console: Console,
    *,
    verb: str,
    expect: frozenset[FlowState],
    act: Callable[[Run], Awaitable[None]],
    refused_once_ended: bool = False,
) -> int:
    """Attach to the run and ``act`` on it; run it here if this engine took it over, else report its state.

    ``refused_once_ended``: an ended run cannot do this (goto, revert-to), whatever state it ended in.
    """
    before = await store.get_run(run_id)
    if before.state in TERMINAL:
        if refused_once_ended:
            console.note(f"Run {run_id!r} cannot {verb}: it has already ended ({before.state}).")
            return 1
        console.note(f"Run {run_id!r} has already ended ({before.state}); there is nothing to {verb}.")
        return 0 if before.state in expect else 1
    owner = _live_owner(before)
    run = await engine.attach(run_id)
    status = StatusLine(console)
    clock = Stopwatch()
    through = "its store" if owner is None else f"engine {owner}"

    def draw() -> None:
        status.show(f"{run_id}: {verb} (through {through}) {fmt_duration(clock.elapsed)}")

    try:
        await _ticking(draw, act(run))
    finally:
        status.close()
    local = engine.runs.get(run_id)
    if local is not None:  # this engine took the run over: run it here
        return await run_here(local, console, store, expect)
    after = await store.get_run(run_id)
    if console.json:
        console.emit_model(after)
    if after.state in TERMINAL and after.state not in expect:
        console.note(f"{run_id}: {after.state}: the run ended before it could {verb}.")
        return 1
    if owner is not None:
        console.note(f"{run_id}: {after.state} ({verb}: carried out by engine {owner}, which runs it)")
    else:
        console.note(f"{run_id}: {after.state} ({verb}: done in its store, as no engine runs it)")
    return 0


async def _command(
    args: argparse.Namespace,
    console: Console,
    *,
    verb: str,
    expect: frozenset[FlowState],
    act: Callable[[Run], Awaitable[None]],
    refused_once_ended: bool = False,
) -> int:
    async with _engine(args.store_url) as (engine, store):
        return await _control(
            engine,
            store,
            args.run_id,
            console,
            verb=verb,
            expect=expect,
            act=act,
            refused_once_ended=refused_once_ended,
        )


async def _resume(run: Run) -> None:
    await run.resume()


def _live_owner(record: RunRecord) -> str | None:
    """The engine that holds a live lease on the run (as of ``record``), if any."""
    if record.owner is not None and (record.lease_expires or 0.0) > time.time():
        return record.owner
    return None


async def cmd_resume(args: argparse.Namespace, console: Console) -> int:
    """``ckflow resume RUN``: go on with the run here, in the foreground; 0 if it ends SUCCESS."""
    run_id: str = args.run_id
    success = frozenset({FlowState.SUCCESS})
    async with _engine(args.store_url) as (engine, store):
        record = await store.get_run(run_id)
        if record.state in TERMINAL:
            console.note(f"Run {run_id!r} has already ended ({record.state}); there is nothing to resume.")
            return 0 if record.state in success else 1
        if record.state is FlowState.QUEUED:
            await engine.resume(run_id)  # lifts a suspension: the run is for a worker to run, not for this command
            console.note(f"Run {run_id!r} is queued in {record.queue!r}: a worker (`ckflow worker`) runs it.")
            return 0
        owner = _live_owner(record)
        if owner is None:
            try:
                run = await engine.resume(run_id)
            except RunOwnedError as exc:  # another engine claimed it a moment ago
                owner = exc.owner
                record = await store.get_run(run_id)
            else:
                return await run_here(run, console, store, success)
        if record.state is not FlowState.SUSPENDED:
            raise CliError(
                f"Run {run_id!r} is {record.state} in engine {owner!r}, whose lease on it is live, so there is "
                f"nothing to resume here (if that engine died, its lease lapses and the run can be resumed then); "
                f"watch it with `ckflow events {run_id} --follow`."
            )
        # SUSPENDED in a live engine: ask that engine to resume it (it needs no flow here).
        return await _control(engine, store, run_id, console, verb="resume", expect=success, act=_resume)


async def cmd_suspend(args: argparse.Namespace, console: Console) -> int:
    """``ckflow suspend RUN``: running tasks finish, nothing new starts; 0 once it is SUSPENDED."""
    return await _command(
        args, console, verb="suspend", expect=frozenset({FlowState.SUSPENDED}), act=lambda r: r.suspend()
    )


async def cmd_cancel(args: argparse.Namespace, console: Console) -> int:
    """``ckflow cancel RUN``: revert everything that ran; run here, 0 once it is REVERTED."""
    return await _command(
        args, console, verb="cancel", expect=frozenset({FlowState.REVERTED}), act=lambda r: r.cancel()
    )


async def cmd_goto(args: argparse.Namespace, console: Console) -> int:
    """``ckflow goto RUN CHECKPOINT``: run forward (or back) to the checkpoint and suspend there."""
    checkpoint: str = args.checkpoint
    return await _command(
        args,
        console,
        verb=f"go to {checkpoint!r}",
        expect=frozenset({FlowState.SUSPENDED}),
        act=lambda r: r.goto(checkpoint),
        refused_once_ended=True,
    )


async def cmd_revert_to(args: argparse.Namespace, console: Console) -> int:
    """``ckflow revert-to RUN CHECKPOINT``: revert the checkpoint's scope, then run it again (or park)."""
    checkpoint: str = args.checkpoint
    retry: bool = args.retry
    return await _command(
        args,
        console,
        verb=f"revert to {checkpoint!r}",
        expect=frozenset({FlowState.SUCCESS if retry else FlowState.SUSPENDED}),
        act=lambda r: r.revert_to(checkpoint, retry=retry),
        refused_once_ended=True,
    )
