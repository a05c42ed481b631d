"""The example order service plus a flow whose tasks write a ledger, for ``tests/test_fastapi_crash.py``.

``python -m uvicorn tests.fastapi_crash_app:app`` (from the repository root) serves ``examples/fastapi_service.py``'s
app, on the store of ``ORDERS_STORE``, with one more registered flow: ``crash-ledger``, a Linear of ``STEPS`` tasks
that each append ``pid task`` to the file named by the run input ``ledger``, fsynced, as their first act. With
``CKFLOW_CRASH_HOLD=step_K`` in the environment, task ``step_K`` then waits forever, so that the test kills the
process while that task runs; a process started without it runs the flow to its end.
"""

from __future__ import annotations

import os

import anyio
from examples.fastapi_service import app
from tests.recovery_worker import note

import ckflow
from ckflow import Linear, task

__all__ = ["FLOW", "STEPS", "app"]

FLOW = "crash-ledger"
STEPS = 8
#: the task that waits forever in this process (none unless the environment names one)
HOLD = os.environ.get("CKFLOW_CRASH_HOLD")


def build() -> Linear:
    def step(name: str) -> ckflow.Task:
        @task(name=name)
        async def execute(ledger: str) -> None:
            note(ledger, name)
            if name == HOLD:
                await anyio.sleep_forever()

        return execute

    return Linear(FLOW, *(step(f"step_{i}") for i in range(1, STEPS + 1)))


ckflow.register_flow(FLOW, build)
