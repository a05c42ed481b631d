"""What a failure costs, and a test of a revert, with failures injected from outside the flow's code.

The seed case: ``reserve``; then, in parallel, ``charge`` under a checkpoint that retries it (3 attempts),
and ``label``, which takes half a second. None of the tasks fails by itself: ``inject_failures`` fails
``charge``'s first execution, as a test of its revert would, and ``bench`` measures how soon the revert
and the retry start while ``label`` goes on.

Measure it from the command line, on a SQLite store (run from this directory)::

    ckflow bench seed --import seed_case --runs 100 --concurrency 10 --fail charge --store sqlite:///bench.db
"""

from __future__ import annotations

import anyio

import ckflow
from ckflow import Checkpoint, Linear, Parallel, Retry, TaskState, task
from ckflow.testing import bench, inject_failures

REFUNDS: list[str] = []


def build_seed(label_seconds: float = 0.5) -> Linear:
    @task(provides="order")
    async def reserve() -> str:
        return "order-1"

    @task(provides="payment")
    async def charge(order: str) -> str:
        return f"payment for {order}"

    @charge.revert
    async def refund(order: str, result: object) -> None:
        REFUNDS.append(order)

    @task(provides="label")
    async def label(order: str) -> str:
        await anyio.sleep(label_seconds)
        return f"label for {order}"

    payment = Linear("payment", Checkpoint("charge", retry=Retry(attempts=3)), charge)
    return Linear("seed", reserve, Parallel("both", payment, label))


ckflow.register_flow("seed", build_seed)


async def test_charge_is_refunded_and_retried() -> None:
    """How a test of a revert reads: charge's first execution fails, its revert runs, the retry succeeds."""
    REFUNDS.clear()
    with inject_failures({"charge": "first"}) as plan:
        result = await ckflow.run(build_seed(label_seconds=0.0))
    assert result.state is ckflow.FlowState.SUCCESS
    assert [(f.task, f.exc_type) for f in result.failures] == [("charge", "ckflow.testing.InjectedFailure")]
    assert REFUNDS == ["order-1"]
    assert result.tasks["charge"].attempts == 2
    assert result.tasks["label"].attempts == 1  # outside the region: untouched
    assert result.tasks["reserve"].state is TaskState.SUCCESS
    assert len(plan.injected) == 1


async def main() -> None:
    await test_charge_is_refunded_and_retried()
    print("the revert test passes")
    report = await bench(build_seed(label_seconds=0.05), runs=10, concurrency=5, fail={"charge": "first"})
    print(report.table())


if __name__ == "__main__":
    anyio.run(main)
