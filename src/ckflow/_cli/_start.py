"""``ckflow start``: start a run of a registered flow from the command line, and run it here.

It is the one command over a store that creates the store when it is missing (the others only
read or act on runs already there, and refuse a store that is not there). The flow is looked up,
the inputs parsed and checked against the flow's tasks (and the run id checked, by argparse) before
the store is opened, so that a mistake leaves nothing behind.
"""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING, Any

from ckflow._cli import _control
from ckflow._cli._runs import open_cli_store
from ckflow._engine import Engine
from ckflow._inputs import start_inputs
from ckflow._registry import registered_flow
from ckflow._states import FlowState

if TYPE_CHECKING:
    from ckflow._cli._format import Console

__all__ = ["cmd_start", "parse_inputs"]


def parse_inputs(text: str) -> dict[str, Any]:
    """``--inputs JSON``: a JSON object; anything else is a usage error (exit status 2)."""
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON ({exc}); give an object such as '{{\"size\": 10}}'") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(
            f"a JSON object of input names to values is needed, got {type(value).__name__}: {text!r}"
        )
    return value


async def cmd_start(args: argparse.Namespace, console: Console) -> int:
    """``ckflow start FLOW``: record a new run, print its id, and run it here until it ends or is suspended."""
    # Refused before the store is opened (or created): an unknown flow, inputs that are missing or do not fit.
    # The engine checks the inputs again as it starts the run, which costs next to nothing.
    flow = registered_flow(args.flow)
    inputs = start_inputs(flow.compile(), args.inputs)
    store = open_cli_store(args.store_url, create=True)
    async with store, Engine(store=store, lease_ttl=_control.LEASE_TTL, heartbeat=_control.HEARTBEAT) as engine:
        run = await engine.start(flow, inputs, run_id=args.run_id)
        if not console.json:
            console.print(run.id)  # first, on stdout: `RUN=$(ckflow start ...)` has it even if the run is stopped
        console.note(f"{run.id}: started, a run of {flow.name!r} in {store.url}")
        return await _control.run_here(run, console, store, frozenset({FlowState.SUCCESS}))
