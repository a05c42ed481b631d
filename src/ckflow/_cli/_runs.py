"""``ckflow runs``, ``show``, ``events``, ``prune``, ``graph`` and ``flows``: reading (and pruning) a store.

These commands open the store directly and never run anything, so they need
no flow registered, except to draw a graph. ``show`` and ``events`` use a
registered flow when there is one, to list tasks in the flow's order and
include those that have no record yet.
"""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING, Any, Final

import anyio

from ckflow._cli._format import CliError, StatusLine, cut, failure_line, fmt_duration, fmt_time, printable, table
from ckflow._errors import CkflowError, FlowDefinitionError
from ckflow._registry import registered_flow, registered_flows
from ckflow._states import TERMINAL, FlowState
from ckflow._view import stored_view
from ckflow.stores import open_store

if TYPE_CHECKING:
    import argparse
    from collections.abc import Sequence

    from ckflow._cli._format import Console
    from ckflow._events import Event
    from ckflow._patterns import Flow
    from ckflow._records import CheckpointRecord, ControlRequest, RunRecord, TaskRecord
    from ckflow.stores import Store

__all__ = [
    "TERMINAL",
    "cmd_events",
    "cmd_flows",
    "cmd_graph",
    "cmd_prune",
    "cmd_runs",
    "cmd_show",
    "open_cli_store",
    "owner_text",
]

#: seconds between looks at the store for ``events --follow``
FOLLOW_POLL: float = 0.2
#: runs deleted per ``delete_runs`` call by ``prune``
PRUNE_CHUNK: int = 500


def open_cli_store(url: str, *, create: bool = False) -> Store:
    """The store of ``--store`` (not yet opened), or a ``CliError`` that says what is wrong with the URL.

    Only a command that starts runs passes ``create=True``: opening the store of any other command
    raises ``StoreNotFoundError`` when there is none, rather than create an empty one (at a mistyped path).
    """
    try:
        return open_store(url, create=create)
    except (ValueError, ImportError) as exc:
        raise CliError(str(exc)) from exc


def maybe_flow(name: str) -> Flow | None:
    """The flow registered as ``name``, or None when this process has none (or cannot build it)."""
    try:
        return registered_flow(name)
    except CkflowError:
        return None


def owner_text(record: RunRecord, now: float, *, long: bool = False) -> str:
    """Who runs the run: the owning engine, marked if its lease has lapsed; ``-`` when nobody does."""
    if record.owner is None:
        return "none (no engine runs it)" if long else "-"
    expires = record.lease_expires
    if expires is not None and expires <= now:
        return (
            f"{record.owner} (lease lapsed {fmt_duration(now - expires)} ago)" if long else f"{record.owner} (lapsed)"
        )
    if long and expires is not None:
        return f"{record.owner} (lease until {fmt_time(expires)}, in {fmt_duration(expires - now)})"
    return record.owner


def _print(console: Console, lines: Sequence[str]) -> None:
    for line in lines:
        console.print(line)


# -- runs ---------------------------------------------------------------------------------


async def cmd_runs(args: argparse.Namespace, console: Console) -> int:
    """``ckflow runs``: a table of the store's runs, newest first."""
    states = None if not args.states else [FlowState(s) for s in args.states]
    limit: int | None = args.limit or None
    async with open_cli_store(args.store_url) as store:
        found = await store.list_runs(states=states, flow=args.flow, limit=None if limit is None else limit + 1)
    more = limit is not None and len(found) > limit
    found = found[:limit]
    if console.json:
        for record in found:
            console.emit_model(record)
    elif found:
        now = time.time()
        rows = [
            (
                r.run_id,
                r.flow,
                str(r.state),
                fmt_time(r.created_at),
                fmt_time(r.ended_at if r.ended_at is not None else r.updated_at),
                owner_text(r, now),
            )
            for r in found
        ]
        headers = ("RUN", "FLOW", "STATE", "CREATED", "ENDED/UPDATED", "OWNER")
        _print(console, table(headers, rows, caps=(None, 32, None, None, None, 48), width=console.width))
    if not found:
        console.note(f"No runs in {store.url} match.")
    elif more:
        console.note(f"Showing the newest {limit} runs; pass --limit N for more (0 for all).")
    return 0


# -- show ---------------------------------------------------------------------------------


def _latest_passes(passes: Sequence[CheckpointRecord]) -> list[CheckpointRecord]:
    latest: dict[str, CheckpointRecord] = {}
    for record in passes:
        seen = latest.get(record.checkpoint)
        if seen is None or record.pass_no > seen.pass_no:
            latest[record.checkpoint] = record
    return list(latest.values())


def _task_order(flow: Flow | None, tasks: Sequence[TaskRecord]) -> list[tuple[str, TaskRecord | None]]:
    """Tasks in the flow's order with those not yet recorded (if the flow is known), else as they started."""
    by_name = {t.task: t for t in tasks}
    if flow is not None:
        names = [t.name for t in flow.iter_tasks()]
        extra = [n for n in by_name if n not in set(names)]
        return [(n, by_name.get(n)) for n in [*names, *extra]]
    ordered = sorted(tasks, key=lambda t: (t.started_at is None, t.started_at or 0.0, t.task))
    return [(t.task, t) for t in ordered]


def _task_row(name: str, record: TaskRecord | None, now: float) -> tuple[str, ...]:
    if record is None:
        return (name, "PENDING", "0", "-", "-", "")
    if record.started_at is not None and record.ended_at is None and record.state == "RUNNING":
        duration = fmt_duration(now - record.started_at) + "+"
    elif record.started_at is not None and record.ended_at is not None:
        duration = fmt_duration(record.ended_at - record.started_at)
    else:
        duration = "-"
    return (
        name,
        str(record.state),
        str(record.attempts),
        fmt_time(record.started_at),
        duration,
        failure_line(record.failure),
    )


def _request_text(request: ControlRequest) -> str:
    op = request.op.replace("_", "-")
    if request.checkpoint is not None:
        op += f" {request.checkpoint}"
    if request.op == "revert_to" and not request.retry:
        op += " --no-retry"
    return op


async def cmd_show(args: argparse.Namespace, console: Console) -> int:
    """``ckflow show RUN``: the run's record, tasks, checkpoints, row counts and pending requests.

    With ``--json``: the run's ``ckflow.RunView``, as an HTTP handler returns it, with tracebacks (the operator
    reads their own store).
    """
    run_id: str = args.run_id
    async with open_cli_store(args.store_url) as store:
        if console.json:
            stored = await store.load(run_id)
            flow = maybe_flow(stored.run.flow)
            names = [] if flow is None else [t.name for t in flow.iter_tasks()]
            console.emit_model(stored_view(stored, names, tracebacks=True))
            return 0
        record = await store.get_run(run_id)
        tasks = await store.tasks(run_id)
        passes = _latest_passes(await store.checkpoints(run_id))
        counts = await store.row_counts(run_id)
        pending = [r for r in await store.requests(run_id) if r.done_at is None]
    now = time.time()
    _show_record(console, record, now)
    console.print()
    _show_tasks(console, record, tasks, now)
    console.print()
    _show_passes(console, record, passes)
    console.print()
    console.print(f"{'rows':<10} " + ", ".join(f"{name} {count}" for name, count in counts.items()))
    _show_pending(console, pending)
    return 0


def _show_record(console: Console, record: RunRecord, now: float) -> None:
    """``ckflow show``'s first block: the run's record, one field a line, and what it was asked to do."""
    took = "" if record.ended_at is None else f" (took {fmt_duration(record.ended_at - record.created_at)})"
    fields = [
        ("run", record.run_id),
        ("flow", record.flow),
        ("state", str(record.state)),
        ("owner", owner_text(record, now, long=True)),
        ("created", fmt_time(record.created_at)),
        ("updated", fmt_time(record.updated_at)),
        ("ended", fmt_time(record.ended_at) + took),
        ("inputs", record.inputs),
    ]
    if record.halted and record.state is FlowState.RUNNING:
        fields.append(("control", "a suspension was asked: running tasks finish, nothing new starts"))
    if record.queue is not None:
        fields.append(("queue", f"{record.queue} (priority {record.priority})"))
    if record.halted and record.state is FlowState.QUEUED:
        fields.append(("control", "suspended: no worker claims it until it is resumed"))
    if record.goto is not None:
        fields.append(("control", f"going to checkpoint {record.goto!r}, to suspend there"))
    _print(console, [f"{key:<10} {value}" for key, value in fields])


def _show_tasks(console: Console, record: RunRecord, tasks: Sequence[TaskRecord], now: float) -> None:
    """``ckflow show``'s task table, in the flow's order when the flow is registered here."""
    order = _task_order(maybe_flow(record.flow), tasks)
    if not order:
        console.print("tasks      none recorded yet")
        return
    rows = [_task_row(name, task, now) for name, task in order]
    headers = ("TASK", "STATE", "ATTEMPTS", "STARTED", "DURATION", "FAILURE")
    _print(console, table(headers, rows, width=console.width))


def _show_passes(console: Console, record: RunRecord, passes: Sequence[CheckpointRecord]) -> None:
    """``ckflow show``'s checkpoint table: the latest pass of each checkpoint."""
    if not passes:
        console.print("checkpoints none passed yet")
        return
    rows = [
        (
            f"{p.checkpoint} (flow)" if p.checkpoint == record.flow else p.checkpoint,
            str(p.pass_no),
            p.state,
            str(p.attempts),
            str(len(p.history)),
            failure_line(p.history[-1]) if p.history else "",
        )
        for p in passes
    ]
    headers = ("CHECKPOINT", "PASS", "STATE", "ATTEMPTS", "FAILURES", "LAST FAILURE")
    _print(console, table(headers, rows, width=console.width))


def _show_pending(console: Console, pending: Sequence[ControlRequest]) -> None:
    """``ckflow show``'s last block: the control requests that no engine has carried out yet."""
    if not pending:
        console.print(f"{'requests':<10} none pending")
        return
    console.print()
    rows = [(r.request_id, _request_text(r), fmt_time(r.requested_at), r.requested_by) for r in pending]
    _print(console, table(("PENDING REQUEST", "OPERATION", "REQUESTED", "BY"), rows, width=console.width))


# -- events -------------------------------------------------------------------------------

_EVENT_HEADERS: Final = ("SEQ", "TIME", "EVENT", "TASK", "CHANGE", "ATTEMPT", "CHECKPOINT", "DETAIL")


def _detail(event: Event) -> str:
    if event.failure is not None:
        return failure_line(event.failure)
    detail = event.detail
    members = ", ".join(str(m) for m in detail.get("members", []))
    if event.name == "ckflow.walker.region":
        return f"{detail.get('action', '?')}: {members}"
    if event.name == "ckflow.walker.retry":
        return f"after {fmt_duration(float(detail.get('delay', 0.0)))}: {members}"
    return ", ".join(f"{key}={value}" for key, value in detail.items())


def _event_cells(event: Event) -> list[str]:
    change = f"{event.old or '?'}->{event.new or '?'}" if event.old or event.new else ""
    return [
        "-" if event.seq is None else str(event.seq),
        fmt_time(event.wall, ms=True),
        event.name.removeprefix("ckflow."),
        event.task or "",
        change,
        "" if event.attempt is None else str(event.attempt),
        event.checkpoint or "",
        _detail(event),
    ]


class _EventPrinter:
    """Prints events as aligned rows, a batch at a time.

    The columns are sized by the flow's names (when it is registered) and the
    first batch, then kept, so that the rows of ``--follow`` line up.
    """

    def __init__(self, console: Console, flow: Flow | None) -> None:
        self.console = console
        self.widths = [len(h) for h in _EVENT_HEADERS]
        if flow is not None:
            # Known names size the columns at once, so that rows printed later stay aligned.
            self.widths[3] = max([self.widths[3], *(len(t.name) for t in flow.iter_tasks())])
            self.widths[6] = max([self.widths[6], *(len(s.name) for s in flow.compile().scopes)])
        self.widths[1] = len(fmt_time(0.0, ms=True))
        self.widths[2] = max(self.widths[2], len("walker.reverts_done"))
        self.widths[4] = max(self.widths[4], len("REVERTING->REVERTED"))
        self.header = False

    def print(self, events: Sequence[Event]) -> None:
        if self.console.json:
            for event in events:
                self.console.emit_model(event)
            return
        rows = [_event_cells(e) for e in events]
        if not rows:
            return
        if not self.header:
            for row in rows:
                self.widths = [max(w, len(c)) for w, c in zip(self.widths, row, strict=True)]
            rows.insert(0, list(_EVENT_HEADERS))
            self.header = True
        width = self.console.width
        used = sum(self.widths[:-1]) + 2 * (len(self.widths) - 1)
        for row in rows:
            last = row[-1] if width is None else cut(row[-1], max(width - used, 8))
            cells = [c.ljust(w) for c, w in zip(row[:-1], self.widths, strict=False)]
            self.console.print("  ".join([*cells, last]).rstrip())


async def cmd_events(args: argparse.Namespace, console: Console) -> int:
    """``ckflow events RUN``: the run's events in order; with ``--follow``, until the run ends."""
    run_id: str = args.run_id
    after: int = args.after
    async with open_cli_store(args.store_url) as store:
        record = await store.get_run(run_id)
        printer = _EventPrinter(console, maybe_flow(record.flow))
        count = 0
        while True:
            # Read the state before the events: once it is seen ended, the events read next are the last.
            ended = record.state in TERMINAL
            events = await store.events(run_id, after=after)
            printer.print(events)
            count += len(events)
            if events and events[-1].seq is not None:
                after = events[-1].seq
            if not args.follow or ended:
                break
            await anyio.sleep(FOLLOW_POLL)
            record = await store.get_run(run_id)
    if args.follow:
        console.note(f"{run_id}: {record.state} ({count} events)")
    elif count == 0:
        console.note(f"{run_id}: no events after sequence number {args.after}.")
    return 0


# -- prune --------------------------------------------------------------------------------


async def _confirm(question: str) -> bool:
    def ask() -> str:
        print(printable(question), end="", file=sys.stderr, flush=True)
        return sys.stdin.readline()

    answer = await anyio.to_thread.run_sync(ask)
    return answer.strip().lower() in ("y", "yes")


def _stdin_is_a_terminal() -> bool:
    try:
        return sys.stdin is not None and sys.stdin.isatty()
    except (AttributeError, ValueError):
        return False


async def cmd_prune(args: argparse.Namespace, console: Console) -> int:
    """``ckflow prune``: delete the runs that ended before a cutoff, in chunks, with progress."""
    states = [FlowState(s) for s in (args.states or ("SUCCESS", "REVERTED", "FAILURE"))]
    cutoff = time.time() - float(args.older_than)
    what = f"{'/'.join(states)} runs that ended before {fmt_time(cutoff)}"
    async with open_cli_store(args.store_url) as store:
        found = await store.list_runs(states=states, ended_before=cutoff)
        if args.dry_run:
            if console.json:
                for record in found:
                    console.emit_model(record)
            elif found:
                rows = [(r.run_id, r.flow, str(r.state), fmt_time(r.ended_at)) for r in found]
                _print(console, table(("RUN", "FLOW", "STATE", "ENDED"), rows, caps=(None, 32, None, None)))
            console.note(f"Would delete {len(found)} {what} (dry run: nothing deleted).")
            return 0
        if not found:
            if console.json:
                console.emit({"deleted": 0, "ended_before": cutoff})
            console.note(f"Deleted 0 runs: no {what}.")
            return 0
        if not args.yes:
            if not _stdin_is_a_terminal():
                raise CliError(
                    f"Refusing to delete {len(found)} {what} without confirmation; pass --yes, "
                    "or --dry-run to list them first."
                )
            if not await _confirm(f"Delete {len(found)} {what}? [y/N] "):
                console.note("Nothing deleted.")
                return 1
        status = StatusLine(console)
        deleted = 0
        ids = [r.run_id for r in found]
        try:
            for start in range(0, len(ids), PRUNE_CHUNK):
                status.show(f"deleting runs: {start}/{len(ids)} ({100 * start // len(ids)}%)")
                deleted += await store.delete_runs(ids[start : start + PRUNE_CHUNK])
            status.show(f"deleting runs: {len(ids)}/{len(ids)} (100%)")
        finally:
            status.close()
            if deleted < len(ids):
                console.note(f"Deleted {deleted} of {len(ids)} {what} before stopping.")
    if console.json:
        console.emit({"deleted": deleted, "ended_before": cutoff})
    console.note(f"Deleted {deleted} {what} from {store.url}.")
    return 0


# -- graph and flows ----------------------------------------------------------------------


async def cmd_graph(args: argparse.Namespace, console: Console) -> int:
    """``ckflow graph NAME`` / ``[NAME] --run RUN``: Mermaid text of a flow, coloured by a run's task states."""
    from ckflow._engine import Engine
    from ckflow._mermaid import to_mermaid

    run_id: str | None = args.run_id
    if run_id is None:
        flow = registered_flow(args.flow)
        text = to_mermaid(flow)
    else:
        async with open_cli_store(args.store_url) as store, Engine(store=store) as engine:
            run = await engine.attach(run_id)  # a handle read from the store: its tasks carry their states
            if args.flow is not None and args.flow != run.flow:
                raise CliError(
                    f"Run {run_id!r} is a run of flow {run.flow!r}, not {args.flow!r}; "
                    f"name its flow, or leave NAME out: `ckflow graph --run {run_id}`."
                )
            flow = registered_flow(run.flow)
            text = to_mermaid(flow, run)
    if console.json:
        console.emit({"flow": flow.name, "run_id": run_id, "mermaid": text})
    else:
        console.out.write(text)
        console.out.flush()
    return 0


async def cmd_flows(args: argparse.Namespace, console: Console) -> int:
    """``ckflow flows``: the registered flows (after ``--import``), with their tasks and checkpoints."""
    found: list[dict[str, Any]] = []
    for name in registered_flows():
        flow = registered_flow(name)
        entry: dict[str, Any] = {"name": name, "tasks": [t.name for t in flow.iter_tasks()], "checkpoints": []}
        try:
            entry["checkpoints"] = [s.name for s in flow.compile().scopes[1:]]
        except FlowDefinitionError as exc:  # listed, with what is wrong with it: the others are still worth seeing
            entry["error"] = str(exc)
        found.append(entry)
    if console.json:
        console.emit(found)
    elif found:
        rows = [
            (
                f["name"],
                str(len(f["tasks"])),
                f"does not compile: {f['error']}" if "error" in f else ", ".join(f["checkpoints"]) or "-",
            )
            for f in found
        ]
        _print(console, table(("FLOW", "TASKS", "CHECKPOINTS"), rows, width=console.width))
    if not found:
        console.note("No flows are registered; pass --import MODULE naming a module that calls ckflow.register_flow().")
    return 0
