"""Use ckflow from your own async code: ``await ckflow.run(...)`` in a handler, or an ``Engine`` for control.

``handle_request`` is what an HTTP handler would call: the run happens in the
caller's task, and if the caller is cancelled (the client hung up) everything
that ran is reverted before the cancellation goes on. ``operate`` starts a run
in an ``Engine``, follows its events and suspends and resumes it.
"""

from __future__ import annotations

import logging

import anyio
import structlog

import ckflow
from ckflow import Linear, task

ledger: list[str] = []


@task(provides="reservation")
async def reserve(order_id: str) -> str:
    ledger.append(f"reserve {order_id}")
    return f"rsv-{order_id}"


@reserve.revert
async def release(order_id: str, result: object) -> None:
    ledger.append(f"release {order_id}")


@task(provides="charge")
async def charge(reservation: str, amount: int) -> str:
    await anyio.sleep(0.05)
    if amount > 100:
        raise ValueError(f"card declined for {amount}")
    return f"paid {amount} for {reservation}"


order = Linear("order", reserve, charge)


async def handle_request(order_id: str, amount: int) -> dict[str, object]:
    """What a web handler does: run the flow, answer with its outcome."""
    result = await ckflow.run(order, inputs={"order_id": order_id, "amount": amount})
    if result.state is ckflow.FlowState.SUCCESS:
        return {"ok": True, "charge": result.outputs["charge"]}
    return {"ok": False, "state": str(result.state), "why": [f.message for f in result.failures]}


async def operate() -> None:
    """Start a run in an engine, watch its events, suspend and resume it."""
    async with ckflow.Engine() as engine:
        run = await engine.start(order, inputs={"order_id": "o-3", "amount": 30})
        events = run.events()
        await run.suspend()  # running tasks finish, nothing new starts
        print("suspended:", run.state)
        await run.resume()
        async for event in events:
            if event.name.startswith("ckflow.task."):
                print(f"  event {event.task}: {event.old} -> {event.new}")
        print("engine run:", (await run.wait()).state)


async def main() -> None:
    print(await handle_request("o-1", 40))
    print(await handle_request("o-2", 400))
    print("ledger:", ledger)
    await operate()


if __name__ == "__main__":
    # ckflow logs every transition at debug level; an app chooses what it wants to see.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    anyio.run(main)
