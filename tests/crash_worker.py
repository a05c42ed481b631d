"""A process that runs (or resumes) the crash-test flow, and kills itself with SIGKILL where it is told to.

Usage: ``python -m tests.crash_worker STORE_URL RUN_ID LEDGER (start|resume) SCENARIO [KILL_POINT]``.

SCENARIO is ``retry`` (attach fails once and is retried; the run succeeds) or
``revert`` (boot fails for good; everything that ran is reverted).

Every execute and revert appends a line to LEDGER (``pid kind task attempt``),
flushed and fsynced before the task's effect counts, so the test can see what
ran in which process. KILL_POINT is one of:

- ``execute:TASK:ATTEMPT`` / ``revert:TASK``: SIGKILL inside that execute or revert,
  after its ledger line;
- ``backoff``: SIGKILL while the walker waits before a retry;
- ``before-write:K`` / ``after-write:K``: SIGKILL just before the K-th write of the
  run reaches the store, or just after it is committed.

The process prints the run's final state and outputs (JSON) when it is not killed.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from typing import TYPE_CHECKING, Any

import anyio

import ckflow
from ckflow import Checkpoint, Linear, Parallel, Retry, task
from ckflow.stores import open_store

if TYPE_CHECKING:
    from ckflow.stores import Batch, Store

LEASE_TTL = 0.4


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


class Ledger:
    def __init__(self, path: str, kill: str) -> None:
        self.path = path
        self.kill = kill

    def note(self, kind: str, name: str, attempt: int) -> None:
        line = f"{os.getpid()} {kind} {name} {attempt}\n"
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        if self.kill in (f"{kind}:{name}:{attempt}", f"{kind}:{name}"):
            die()


def build(ledger: Ledger, scenario: str) -> ckflow.Linear:
    """create -> (disk: Retry(3, 20 ms backoff): attach, failing once -> format) beside net -> boot."""

    def step(kind: str, name: str) -> int:
        attempt = ckflow.current().attempt
        ledger.note(kind, name, attempt)
        return attempt

    @task(provides="volume")
    async def create(size: int) -> str:
        step("execute", "create")
        return f"vol-{size}"

    @create.revert
    async def _(size: int, result: object) -> None:
        step("revert", "create")

    @task(provides="attachment")
    async def attach(volume: str) -> str:
        if step("execute", "attach") == 1:
            raise RuntimeError("storage busy")
        return f"{volume}@vdb"

    @attach.revert
    async def _(volume: str, result: object) -> None:
        step("revert", "attach")

    @task(provides="fs")
    async def format_disk(attachment: str) -> str:
        step("execute", "format_disk")
        await anyio.sleep(0.01)
        return f"ext4:{attachment}"

    @task(provides="net")
    async def net() -> str:
        step("execute", "net")
        await anyio.sleep(0.02)
        return "10.0.0.7"

    @net.revert
    async def _(result: object) -> None:
        step("revert", "net")

    @format_disk.revert
    async def _(attachment: str, result: object) -> None:
        step("revert", "format_disk")

    @task(provides="server")
    async def boot(fs: str, net: str) -> dict[str, str]:
        step("execute", "boot")
        if scenario == "revert":
            raise RuntimeError("image not found")
        return {"fs": fs, "net": net}

    return Linear(
        "crash-flow",
        create,
        Parallel(
            "prepare",
            Linear(
                "disk",
                Checkpoint("disk", retry=Retry(attempts=3, delay=0.02, jitter=False)),
                attach,
                format_disk,
            ),
            net,
        ),
        boot,
    )


class KillingStore:
    """Passes everything to ``inner``; SIGKILLs the process around the K-th write."""

    def __init__(self, inner: Store, kill: str) -> None:
        self.inner = inner
        self.kill = kill
        self.writes = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def write(self, batch: Batch) -> None:
        self.writes += 1
        if self.kill == f"before-write:{self.writes}":
            die()
        await self.inner.write(batch)
        if self.kill == f"after-write:{self.writes}":
            die()


async def main(url: str, run_id: str, ledger_path: str, mode: str, scenario: str, kill: str) -> None:
    ledger = Ledger(ledger_path, kill)
    flow = build(ledger, scenario)
    inner = open_store(url)
    store: Any = KillingStore(inner, kill)
    await inner.open()

    def on_event(event: ckflow.Event) -> None:
        if kill == "backoff" and event.name == "ckflow.walker.retry":
            die()

    try:
        async with ckflow.Engine(store=store, lease_ttl=LEASE_TTL, heartbeat=LEASE_TTL / 4) as engine:
            if mode == "start":
                run = await engine.start(flow, {"size": 10}, run_id=run_id, on_event=on_event)
            else:
                while True:
                    try:
                        run = await engine.resume(run_id, flow=flow, on_event=on_event)
                        break
                    except ckflow.RunOwnedError:
                        await anyio.sleep(LEASE_TTL / 4)  # the killed engine's lease has not lapsed yet
            result = await run.wait()
    finally:
        await inner.close()
    print(json.dumps({"state": str(result.state), "outputs": result.outputs}))


if __name__ == "__main__":
    url, run_id, ledger_path, mode, scenario = sys.argv[1:6]
    kill = sys.argv[6] if len(sys.argv) > 6 else ""
    anyio.run(main, url, run_id, ledger_path, mode, scenario, kill)
