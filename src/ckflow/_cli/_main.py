"""The ``ckflow`` command line's parser and dispatch (stdlib ``argparse``, so it needs no extra dependency).

Each subcommand is a function taking the parsed arguments and returning an
exit status; add one by writing it and registering it in ``_parser()``.
The commands over a store live in ``_runs`` (reading, pruning, graphs),
``_control`` (resuming and controlling runs) and ``_start`` (starting
one); ``_workers`` (``submit`` and ``worker``); ``_format`` holds what they print, ``_demo`` the
``ckflow demo`` command, and ``_bench`` the ``ckflow bench`` command. Only ``start``, ``submit``,
``worker``, ``bench`` and the demo create a store that is missing; the others say that no store is
there (exit 1).

Exit statuses: 0 when the command did what it was asked (for a command that
runs a run here: when the run ended where the command meant it to), 1 for an
error that the message explains, 2 for a usage error, 130 when interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import os
import sys
from typing import TYPE_CHECKING, Any, Final

import anyio

from ckflow._cli import _bench, _control, _runs, _start, _workers
from ckflow._cli._control import LEFT_IN_STORE
from ckflow._cli._format import CliError, Console, StatusLine, parse_duration, printable
from ckflow._errors import CkflowError, FlowNotRegisteredError, InvalidRunIdError
from ckflow._ids import check_run_id
from ckflow._states import FlowState
from ckflow._version import __version__

if TYPE_CHECKING:
    from argparse import _SubParsersAction
    from collections.abc import Iterator, Sequence

__all__ = ["main"]

#: the environment variable that gives the store when ``--store`` does not
STORE_ENV: Final = "CKFLOW_STORE"
#: where the demo keeps its runs unless ``--store`` says otherwise (never ``$CKFLOW_STORE``: that is yours)
DEMO_STORE: Final = "sqlite:///ckflow-demo.db"
_STATES: Final = tuple(str(state) for state in FlowState)
_ENDED: Final = tuple(str(state) for state in (FlowState.SUCCESS, FlowState.REVERTED, FlowState.FAILURE))


def _demo(args: argparse.Namespace) -> int:
    from ckflow._cli._demo import run_demo

    fast: bool = args.fast
    store: str = args.store or DEMO_STORE
    return anyio.run(lambda: run_demo(fast=fast, store=store))


# -- the parser ---------------------------------------------------------------------------


def _add_states(sub: argparse.ArgumentParser, choices: Sequence[str], help: str) -> None:
    """``--state STATE ...``: run states, any case, each one of ``choices``."""

    def parse(text: str) -> str:
        state = text.strip().upper()
        if state not in choices:
            raise argparse.ArgumentTypeError(f"{text!r} is not one of {', '.join(choices)}")
        return state

    sub.add_argument("--state", dest="states", metavar="STATE", nargs="+", action="extend", type=parse, help=help)


def _common(*, top: bool) -> argparse.ArgumentParser:
    """The global options, accepted before the command and after it."""
    # After the command their defaults are SUPPRESS, so that they do not undo what was given before it.
    parent = argparse.ArgumentParser(add_help=False)
    default: Any = None if top else argparse.SUPPRESS
    group = parent.add_argument_group("global options")
    group.add_argument(
        "--store",
        metavar="URL",
        default=default,
        help=f"the store, e.g. sqlite:///runs.db or postgresql://host/db (default: ${STORE_ENV})",
    )
    group.add_argument(
        "--import",
        metavar="MODULE",
        dest="imports" if top else "more_imports",
        action="append",
        default=[] if top else argparse.SUPPRESS,
        help=(
            "import MODULE first (it registers flows with ckflow.register_flow); repeatable; the current "
            "directory is searched last, after the standard library and installed packages"
        ),
    )
    group.add_argument(
        "--json",
        action="store_true",
        default=False if top else argparse.SUPPRESS,
        help="machine output on stdout: JSON lines, or one JSON document",
    )
    return parent


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ckflow",
        description="ckflow: asyncio-native orchestration with checkpoints and partial revert.",
        parents=[_common(top=True)],
    )
    parser.add_argument("--version", action="version", version=f"ckflow {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_demo(commands)
    command = _Commands(commands)
    _add_reading(command)
    _add_start(command)
    _add_workers(command)
    _add_control(command)
    _add_upkeep(command)
    _bench.add_bench(command, _no_check)
    return parser


def _add_demo(commands: _SubParsersAction[argparse.ArgumentParser]) -> None:
    """``ckflow demo``: it brings its own store, so it takes none of the global options after its name."""
    demo = commands.add_parser(
        "demo",
        help="provision a server: watch one branch be reverted and retried while the others run",
        description=(
            "Run a provisioning flow three times (a transient failure, a permanent one, and a run resumed by a "
            "new engine from the store), printing every event."
        ),
    )
    demo.add_argument("--fast", action="store_true", help="no sleeps and no retry delays (for tests)")
    demo.add_argument(
        "--store",
        metavar="URL",
        default=argparse.SUPPRESS,
        help=f"where the demo keeps its runs (default: {DEMO_STORE}, a file in this directory)",
    )
    demo.set_defaults(handler=_demo)


class _Commands:
    """Adds the commands that accept the global options after their name too."""

    def __init__(self, commands: _SubParsersAction[argparse.ArgumentParser]) -> None:
        self._commands = commands
        self._common = [_common(top=False)]

    def __call__(
        self, name: str, handler: Any, summary: str, *, check: Any = None, more: str = ""
    ) -> argparse.ArgumentParser:
        """Add command ``name``; ``check(args)`` returns the usage error to report, if any (default: a store).

        ``more``: sentences that the command's ``--help`` adds after the summary.
        """
        description = summary[0].upper() + summary[1:] + "." + (f" {more}" if more else "")
        sub = self._commands.add_parser(name, parents=self._common, help=summary, description=description)
        sub.set_defaults(handler=handler, check=check or _needs_store, subparser=sub)
        return sub


def _add_reading(command: _Commands) -> None:
    """The commands that read runs: ``runs``, ``show``, ``events``."""
    sub = command("runs", _runs.cmd_runs, "list the runs of the store, newest first")
    _add_states(sub, _STATES, f"only runs in these states ({', '.join(_STATES)})")
    sub.add_argument("--flow", metavar="NAME", help="only runs of this flow")
    sub.add_argument(
        "--limit", metavar="N", type=_count, default=50, help="show at most N runs (default: 50; 0 for all)"
    )

    sub = command("show", _runs.cmd_show, "show a run: its record, tasks, checkpoints and pending requests")
    sub.add_argument("run_id", metavar="RUN", help="the run's id", type=_run_id)

    sub = command("events", _runs.cmd_events, "print a run's events in order")
    sub.add_argument("run_id", metavar="RUN", help="the run's id", type=_run_id)
    sub.add_argument("--after", metavar="SEQ", type=int, default=-1, help="only events after sequence number SEQ")
    sub.add_argument("--follow", "-f", action="store_true", help="keep printing new events until the run ends")


def _add_start(command: _Commands) -> None:
    """``ckflow start``: the one command over a store that creates it if it is missing."""
    sub = command(
        "start",
        _start.cmd_start,
        "start a run of a registered flow and run it here, in the foreground, until it ends or is suspended",
        more=(
            "The run's id is printed first, on stdout. The store is created if it is missing. If the command "
            "is interrupted (Ctrl-C), the run stays in its store: go on with `ckflow resume RUN` (once this "
            "process's lease on it has lapsed). Exit status 0 when the run ends SUCCESS."
        ),
    )
    sub.add_argument("flow", metavar="FLOW", help="the name the flow is registered under (see --import)")
    sub.add_argument(
        "--inputs",
        metavar="JSON",
        type=_start.parse_inputs,
        default={},
        help="the run's inputs as a JSON object, e.g. '{\"size\": 10}' (default: {})",
    )
    sub.add_argument("--run-id", metavar="ID", type=_run_id, help="the new run's id (default: a new UUID)")


def _add_workers(command: _Commands) -> None:
    """``ckflow submit`` (creates the store if it is missing, as ``start`` does) and ``ckflow worker``."""
    sub = command(
        "submit",
        _workers.cmd_submit,
        "queue a run of a registered flow for the workers (`ckflow worker`) and print its id",
        more="The store is created if it is missing. Nothing runs here.",
    )
    sub.add_argument("flow", metavar="FLOW", help="the name the flow is registered under (see --import)")
    sub.add_argument(
        "--inputs", metavar="JSON", type=_start.parse_inputs, default={}, help="the run's inputs as a JSON object"
    )
    sub.add_argument("--run-id", metavar="ID", type=_run_id, help="the new run's id (default: a new UUID)")
    sub.add_argument("--queue", metavar="Q", default="default", help="the queue to wait in (default: default)")
    sub.add_argument("--priority", metavar="P", type=int, default=0, help="higher runs first (default: 0)")
    sub = command(
        "worker",
        _workers.cmd_worker,
        "claim and run the queued runs of a PostgreSQL store until SIGTERM or SIGINT drains the worker",
        more=(
            "A drain stops claiming, lets the runs go on for up to --grace seconds, then stops the rest where "
            "they are and releases them for other workers; a second signal stops at once."
        ),
    )
    sub.add_argument(
        "--queue", metavar="Q", dest="queues", action="append", help="claim from Q (repeatable; default: default)"
    )
    sub.add_argument("--concurrency", metavar="N", type=_count, default=10, help="at most N runs at once (default: 10)")
    sub.add_argument(
        "--limit",
        metavar="Q=N",
        dest="limits",
        type=_workers.parse_limit,
        action="append",
        default=[],
        help="at most N runs of queue Q under way at once across all workers (repeatable)",
    )
    sub.add_argument(
        "--grace", metavar="S", type=float, default=30.0, help="seconds a drain lets runs go on (default: 30)"
    )
    sub.add_argument("--lease-ttl", metavar="S", type=float, default=10.0, help="seconds a lease lasts (default: 10)")
    sub.add_argument(
        "--poll-interval", metavar="S", type=float, default=1.0, help="seconds between looks at the store (default: 1)"
    )


def _add_control(command: _Commands) -> None:
    """The commands that move runs: ``resume``, ``suspend``, ``cancel``, ``goto``, ``revert-to``."""
    sub = command(
        "resume", _control.cmd_resume, "go on with a run here, in the foreground, until it ends or is suspended"
    )
    sub.add_argument("run_id", metavar="RUN", help="the run's id", type=_run_id)

    sub = command("suspend", _control.cmd_suspend, "suspend a run: running tasks finish, nothing new starts")
    sub.add_argument("run_id", metavar="RUN", help="the run's id", type=_run_id)

    sub = command("cancel", _control.cmd_cancel, "cancel a run: revert everything that ran")
    sub.add_argument("run_id", metavar="RUN", help="the run's id", type=_run_id)

    sub = command("goto", _control.cmd_goto, "run a run forward (or back) to a checkpoint and suspend it there")
    sub.add_argument("run_id", metavar="RUN", help="the run's id", type=_run_id)
    sub.add_argument("checkpoint", metavar="CHECKPOINT", help="a checkpoint of the run's flow")

    sub = command(
        "revert-to",
        _control.cmd_revert_to,
        "revert what a checkpoint's scope and its consumers ran, then run it again (or park there)",
    )
    sub.add_argument("run_id", metavar="RUN", help="the run's id", type=_run_id)
    sub.add_argument("checkpoint", metavar="CHECKPOINT", help="a checkpoint of the run's flow")
    sub.add_argument(
        "--no-retry", dest="retry", action="store_false", help="park the run SUSPENDED at the checkpoint instead"
    )


def _add_upkeep(command: _Commands) -> None:
    """The commands that keep a store and its flows: ``prune``, ``graph``, ``flows``."""
    sub = command("prune", _runs.cmd_prune, "delete runs that ended long ago")
    sub.add_argument(
        "--older-than",
        metavar="DURATION",
        type=parse_duration,
        default=parse_duration("30d"),
        help="delete runs that ended longer ago than this: 30d, 12h, 90m, 3600s or 1h30m (default: 30d)",
    )
    _add_states(sub, _ENDED, "only runs that ended in these states (default: SUCCESS REVERTED FAILURE)")
    sub.add_argument("--dry-run", action="store_true", help="only list the runs that would be deleted")
    sub.add_argument("--yes", "-y", action="store_true", help="do not ask before deleting")

    sub = command(
        "graph",
        _runs.cmd_graph,
        "print a registered flow (or a run's flow, coloured by its task states) as Mermaid text",
        check=_check_graph,
    )
    sub.add_argument("flow", metavar="NAME", nargs="?", help="the name a flow is registered under")
    sub.add_argument(
        "--run",
        metavar="RUN",
        dest="run_id",
        type=_run_id,
        help="the flow of this run, coloured by its task states (NAME, if given too, must be that flow)",
    )

    command("flows", _runs.cmd_flows, "list the registered flows (after --import)", check=_no_check)


def _no_check(args: argparse.Namespace) -> str | None:
    return None


def _needs_store(args: argparse.Namespace) -> str | None:
    if args.store_url is None:
        return f"no store given: pass --store URL (e.g. --store sqlite:///runs.db) or set ${STORE_ENV}"
    return None


def _check_graph(args: argparse.Namespace) -> str | None:
    if args.flow is None and args.run_id is None:
        return "give a flow's NAME, or --run RUN (with or without the NAME of its flow)"
    return None if args.run_id is None else _needs_store(args)


def _run_id(text: str) -> str:
    """A RUN argument: refused as a usage error, before any store is opened, if it cannot be a run id."""
    try:
        return check_run_id(text)
    except InvalidRunIdError as exc:
        raise argparse.ArgumentTypeError(printable(str(exc))) from None


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a count; give a whole number, 0 or more")
    return value


# -- running a command --------------------------------------------------------------------


def _import(modules: Sequence[str]) -> None:
    """Import the ``--import`` modules, which register flows and codecs, from the current directory too.

    The current directory goes at the end of ``sys.path`` (if it is not there already): a ``./json.py`` or
    ``./ckflow.py`` must not shadow the standard library or an installed package.
    """
    if not modules:
        return
    here = os.getcwd()
    if "" not in sys.path and here not in sys.path:
        sys.path.append(here)  # so that `ckflow --import myflows` finds ./myflows.py
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            raise CliError(
                f"Cannot import {name!r}, given with --import ({exc}); check the module's name and run ckflow "
                "from the directory that holds it, or add that directory to PYTHONPATH."
            ) from exc


class _AroundProgress(logging.Filter):
    """Keep ckflow's log lines from colliding with what the command draws."""

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in list(vars(record).items()):
            if isinstance(value, str):
                setattr(record, key, printable(value))  # a run id or a failure message may carry terminal escapes
        name = str(getattr(record, "event", ""))
        if name == "ckflow.run.stopped" and getattr(record, "run_id", None) in LEFT_IN_STORE:
            return False  # the command left the run in its store on purpose and says so itself
        status = StatusLine.active()
        if status is not None:
            if name.startswith(("ckflow.task.", "ckflow.walker.", "ckflow.run.")):
                return False  # the progress display shows these itself
            status.clear()  # the log line goes above the status line, which the next tick redraws
        record.exc_info = None  # `ckflow show` gives the tracebacks; a warning line stays one line
        return True


@contextlib.contextmanager
def _quiet_logs() -> Iterator[None]:
    """ckflow's log output at WARNING and above, on stderr, while a command runs.

    The command line is an application: it gives the ``ckflow`` logger a handler of its own, which renders
    records with structlog's console renderer (a library's records reach structlog this way, through
    ``ProcessorFormatter`` and ``ExtraAdder``), and takes it away afterwards.
    """
    import structlog

    handler = logging.StreamHandler(sys.stderr)
    handler.setLevel(logging.WARNING)
    handler.addFilter(_AroundProgress())
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[
                structlog.stdlib.ExtraAdder(),
                structlog.processors.add_log_level,
                structlog.processors.TimeStamper(fmt="%Y-%m-%d %H:%M:%S", utc=False),
            ],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.dev.ConsoleRenderer(colors=False),
            ],
        )
    )
    log = logging.getLogger("ckflow")
    log.addHandler(handler)
    try:
        yield
    finally:
        log.removeHandler(handler)
        LEFT_IN_STORE.clear()


def _leaves(exc: BaseException) -> list[BaseException]:
    """The exceptions in ``exc``, out of the exception groups that task groups wrap them in."""
    if isinstance(exc, BaseExceptionGroup) and not isinstance(exc, CkflowError):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [exc]


def _message(exc: BaseException) -> str:
    """The one-line message of an error the user can act on."""
    if isinstance(exc, FlowNotRegisteredError):
        known = f" (registered: {', '.join(sorted(exc.known))})" if exc.known else ""
        return (
            f"No flow is registered as {exc.flow!r} in this process{known}; pass `--import MODULE` naming the "
            f"module that calls `ckflow.register_flow({exc.flow!r}, ...)`."
        )
    return str(exc)


def _exit_status(code: object) -> int:
    if code is None:
        return 0
    return code if isinstance(code, int) else 1


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``ckflow`` command line with ``argv`` (default: ``sys.argv[1:]``); returns the exit status."""
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # a usage error (2), or --help / --version (0)
        return _exit_status(exc.code)
    if args.command is None:
        parser.print_help()
        return 2
    if args.command == "demo":
        status: int = args.handler(args)
        return status
    args.imports = [*args.imports, *getattr(args, "more_imports", [])]
    args.store_url = args.store or os.environ.get(STORE_ENV) or None
    problem = args.check(args)
    if problem is not None:
        try:
            args.subparser.error(problem)
        except SystemExit as exc:
            return _exit_status(exc.code)
    console = Console(sys.stdout, sys.stderr, json=args.json)
    try:
        _import(args.imports)
        with _quiet_logs():
            status = anyio.run(args.handler, args, console)
    except BaseException as exc:
        leaves = _leaves(exc)
        if all(isinstance(leaf, KeyboardInterrupt) for leaf in leaves):
            console.note("ckflow: interrupted")
            return 130
        if all(isinstance(leaf, BrokenPipeError) for leaf in leaves):
            # The reader went away (`ckflow events RUN | head`): stop quietly.
            with contextlib.suppress(OSError, ValueError):
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 1
        if not all(isinstance(leaf, CliError | CkflowError | ImportError) for leaf in leaves):
            raise  # a bug: let its traceback show
        console.note(f"ckflow: error: {_message(leaves[0])}")
        return 1
    return status
