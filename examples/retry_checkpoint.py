"""A checkpoint's retry policy, seen from inside a task with ``ckflow.current()``.

The checkpoint ``fetch`` scopes two tasks. ``download`` fails twice; each time
the region (``download`` and what depends on it inside the scope) is reverted
and retried after a backoff, and the task sees its attempt number and the
failures of the earlier attempts.
"""

from __future__ import annotations

import logging

import anyio
import structlog

import ckflow
from ckflow import Checkpoint, Linear, Retry, task


@task(provides="payload")
async def download(url: str) -> bytes:
    ctx = ckflow.current()
    print(f"  download attempt {ctx.attempt}; earlier failures: {[f.message for f in ctx.history]}")
    if ctx.attempt < 3:
        raise TimeoutError(f"{url} timed out (attempt {ctx.attempt})")
    return b"hello"


@task(provides="checksum")
async def checksum(payload: bytes) -> int:
    return sum(payload)


flow = Linear(
    "fetch-and-check",
    Checkpoint("fetch", retry=Retry(attempts=3, delay=0.01, backoff=2.0, jitter=False, retry_on=TimeoutError)),
    download,
    checksum,
)


async def main() -> None:
    result = await ckflow.run(flow, inputs={"url": "https://example.invalid/data"})
    print(result.state, result.outputs)
    print("download executed", result.tasks["download"].attempts, "times")
    print("failures kept in the result:", [f.message for f in result.failures])
    for region in result.regions:
        print(f"  region {region.checkpoint} ({region.action}): {region.members}")


if __name__ == "__main__":
    # ckflow logs every transition at debug level; an app chooses what it wants to see.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    anyio.run(main)
