"""Provision a server: one branch is retried under a checkpoint while the other keeps running.

Run it with ``python examples/provision.py``.
"""

from __future__ import annotations

import logging

import anyio
import structlog

import ckflow
from ckflow import Checkpoint, Linear, Parallel, Retry, task

ATTACH_FAILURES = 1  # the first attach hits a transient error


@task(provides="volume")
async def create_volume(size: int) -> str:
    await anyio.sleep(0.05)
    return f"vol-{size}g"


@create_volume.revert
async def delete_volume(size: int, result: object) -> None:
    print(f"  revert: delete {result}")


@task(provides="attachment")
async def attach(volume: str) -> str:
    await anyio.sleep(0.05)
    if ckflow.current().attempt <= ATTACH_FAILURES:
        raise ConnectionError(f"storage busy while attaching {volume}")
    return f"{volume}@/dev/vdb"


@attach.revert
async def detach(volume: str, result: object) -> None:
    print(f"  revert: detach {volume} (result was {result})")


@task(provides="network")
async def configure_network() -> str:
    await anyio.sleep(0.3)  # slow, and never disturbed by the attach retry
    return "10.0.0.17/24"


@task(provides="instance")
async def boot(attachment: str, network: str) -> str:
    return f"up with {attachment} on {network}"


flow = Linear(
    "provision",
    create_volume,
    Parallel(
        "prepare",
        Linear("disk", Checkpoint("disk", retry=Retry(attempts=3, delay=0.05)), attach),
        configure_network,
    ),
    boot,
)


async def main() -> None:
    result = await ckflow.run(flow, inputs={"size": 20})
    result.raise_for_state()
    print(result.state, result.outputs["instance"])
    for name, summary in result.tasks.items():
        print(f"  {name}: {summary.state}, executed {summary.attempts} time(s)")


if __name__ == "__main__":
    # ckflow logs every transition at debug level; an app chooses what it wants to see.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    anyio.run(main)
