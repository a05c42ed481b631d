"""``ckflow submit`` and ``ckflow worker``: queue a run for the workers, and be one.

``submit`` records a QUEUED run of a registered flow and prints its id. Both create the store if it
is missing, as ``start`` does (workers may well start before anything is submitted). ``worker`` claims
and runs the queued runs of a PostgreSQL store until it is told to stop: SIGTERM or SIGINT (Ctrl-C)
drains it (no new claims, the runs go on for up to ``--grace`` seconds, then the rest are stopped and
released for other workers); a second signal stops it at once.
The signal handlers are the command's: the library installs none.
"""

from __future__ import annotations

import argparse
import signal
from typing import TYPE_CHECKING, Any

import anyio

from ckflow._cli._format import CliError
from ckflow._cli._runs import open_cli_store
from ckflow._engine import Engine, Worker
from ckflow._registry import registered_flow, registered_flows

if TYPE_CHECKING:
    from ckflow._cli._format import Console

__all__ = ["cmd_submit", "cmd_worker", "parse_limit"]


def parse_limit(text: str) -> tuple[str, int]:
    """``--limit QUEUE=N``: at most N runs of QUEUE under way at once, across all workers."""
    queue, sep, n = text.rpartition("=")
    if not (sep and queue and n.isdigit() and int(n) > 0):
        raise argparse.ArgumentTypeError(f"give QUEUE=N with N a positive integer, e.g. 'emails=5', got {text!r}")
    return queue, int(n)


async def cmd_submit(args: argparse.Namespace, console: Console) -> int:
    """``ckflow submit FLOW``: record a QUEUED run for the workers and print its id."""
    flow = registered_flow(args.flow)  # an unknown flow is refused before the store is opened (or created)
    inputs: dict[str, Any] = args.inputs
    store = open_cli_store(args.store_url, create=True)
    async with store, Engine(store=store) as engine:
        try:
            run = await engine.submit(flow, inputs, args.run_id, queue=args.queue, priority=args.priority)
        except ValueError as exc:
            raise CliError(str(exc)) from exc
    if console.json:
        console.emit({"run_id": run.id, "flow": run.flow, "state": str(run.state), "queue": args.queue})
    else:
        console.print(run.id)
    console.note(
        f"{run.id}: queued in {args.queue!r} (priority {args.priority}), a run of {flow.name!r} in {store.url}"
    )
    return 0


async def cmd_worker(args: argparse.Namespace, console: Console) -> int:
    """``ckflow worker``: claim and run queued runs until SIGTERM or SIGINT drains the worker."""
    if not registered_flows():
        raise CliError("No flow is registered in this process: pass `--import MODULE`, the module that registers them.")
    store = open_cli_store(args.store_url, create=True)  # workers may well start before anything is submitted
    try:
        worker = Worker(
            store,
            queues=args.queues or ["default"],
            concurrency=args.concurrency,
            limits=dict(args.limits),
            lease_ttl=args.lease_ttl,
            grace=args.grace,
            poll_interval=args.poll_interval,
        )
    except ValueError as exc:
        raise CliError(str(exc)) from exc
    async with store:
        try:
            async with worker, anyio.create_task_group() as tg:
                tg.start_soon(_drain_on_signals, worker, console, args.grace)
                console.note(
                    f"ckflow worker: claiming from {', '.join(worker.queues)} in {store.url}, "
                    f"{args.concurrency} runs at once, flows {', '.join(registered_flows())}"
                )
                await worker.wait()
                tg.cancel_scope.cancel()
        except ValueError as exc:
            raise CliError(str(exc)) from exc
    console.note("ckflow worker: drained")
    return 0


async def _drain_on_signals(worker: Worker, console: Console, grace: float) -> None:
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            console.note(f"ckflow worker: {signal.Signals(signum).name}, draining (within {grace:g} s)")
            async with anyio.create_task_group() as tg:
                tg.start_soon(worker.drain)
                async for _ in signals:  # a second signal: stop at once
                    console.note("ckflow worker: stopping now")
                    raise KeyboardInterrupt
