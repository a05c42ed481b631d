"""A real uvicorn process killed with SIGKILL mid-run, and a new one on the same store: the run finishes there.

The server is ``tests/fastapi_crash_app.py`` (the example order service plus a flow whose tasks write a ledger
file), started as ``python -m uvicorn`` on port 0 of loopback; the test reads the port from its log. Every task
appends ``pid task`` to the ledger, fsynced, so the test knows where the run is, and which process ran what. The
first server holds the run in ``step_K``; the test kills it there and starts a second one on the same store.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import httpx
import pytest
from tests.fastapi_crash_app import FLOW, STEPS
from tests.stores.conftest import url_of_kind

from ckflow.stores import open_store

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from anyio.abc import Process

ROOT = Path(__file__).resolve().parent.parent
#: the task the first server is killed in (tasks before it have succeeded, tasks after it have not started)
HOLD = 4
#: the lease the dead server's run is left with (the test renews it for the dead owner once it is killed): a
#: recovery that waited for it to lapse would take longer than RECOVERED_WITHIN, which leaves a loaded machine
#: the time to start a second uvicorn (the engine's default lease, 10 s, would not)
LEASE_LEFT = 60.0
RECOVERED_WITHIN = 40.0
_RUNNING_ON = re.compile(r"Uvicorn running on http://127\.0\.0\.1:(\d+)")


@pytest.fixture(params=["sqlite", "postgres"])
async def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """An empty store for both servers (on PostgreSQL a schema of its own, dropped afterwards)."""
    async with url_of_kind(request, tmp_path, "memory://") as found:
        yield found


class Server:
    """A ``python -m uvicorn tests.fastapi_crash_app:app`` process on the given store; its log goes to a file."""

    def __init__(self, process: Process, log: Path) -> None:
        self.process = process
        self.log = log

    @classmethod
    async def start(cls, store_url: str, log: Path, *, hold: str | None = None) -> Server:
        env = {**os.environ, "ORDERS_STORE": store_url, "PYTHONPATH": str(ROOT / "src")}
        env.pop("CKFLOW_CRASH_HOLD", None)
        if hold is not None:
            env["CKFLOW_CRASH_HOLD"] = hold
        command = [sys.executable, "-m", "uvicorn", "tests.fastapi_crash_app:app"]
        command += ["--host", "127.0.0.1", "--port", "0", "--no-access-log"]
        with log.open("wb") as out:
            process = await anyio.open_process(command, cwd=ROOT, env=env, stdout=out, stderr=out)
        return cls(process, log)

    async def base_url(self) -> str:
        """The server's URL once it serves (read from its log; fails if the process ends first)."""
        while True:
            found = _RUNNING_ON.search(self.log.read_text())
            if found:
                return f"http://127.0.0.1:{found[1]}"
            if self.process.returncode is not None:
                pytest.fail(f"uvicorn exited with {self.process.returncode}:\n{self.log.read_text()}")
            await anyio.sleep(0.02)


def ledger_lines(ledger: Path) -> list[tuple[int, str]]:
    if not ledger.exists():
        return []
    return [(int(pid), task) for pid, task in (line.split() for line in ledger.read_text().splitlines())]


async def wait_for_line(ledger: Path, task: str) -> None:
    """Poll the ledger until ``task`` has started (the file is the state the other process leaves)."""
    while all(name != task for _, name in ledger_lines(ledger)):  # noqa: ASYNC110 - another process writes it
        await anyio.sleep(0.01)


class TestKilledServer:
    @pytest.mark.timeout(150)  # the suite's hang guard is 60 s: two uvicorn start-ups on a loaded machine
    async def test_a_run_killed_mid_way_finishes_on_the_next_server_with_no_success_run_again(
        self, store_url: str, tmp_path: Path
    ) -> None:
        """SIGKILL of uvicorn while step_K runs; a new uvicorn on the store ends the run SUCCESS well inside the dead
        server's lease; step_1..step_K-1 ran once, step_K twice (at least once), the rest once."""
        ledger = tmp_path / "ledger"
        held = f"step_{HOLD}"
        with anyio.fail_after(120):
            first = await Server.start(store_url, tmp_path / "first.log", hold=held)
            try:
                async with httpx.AsyncClient(base_url=await first.base_url()) as client:
                    body = {"flow": FLOW, "inputs": {"ledger": str(ledger)}, "run_id": "crash-1"}
                    response = await client.post("/ckflow/runs", json=body)
                assert response.status_code == 201, response.text
                await wait_for_line(ledger, held)
            finally:
                first.process.kill()
                await first.process.wait()
            async with open_store(store_url) as store:
                record = await store.get_run("crash-1")
                assert record.owner is not None
                assert record.owner.split(":")[1] == str(first.process.pid)
                assert record.lease_expires is not None
                assert (await store.renew(record.owner, ["crash-1"], LEASE_LEFT)).lost == []
                record = await store.get_run("crash-1")
            killed = time.time()
            assert record.lease_expires is not None
            assert record.lease_expires > killed + RECOVERED_WITHIN  # the lease alone would keep it that long

            second = await Server.start(store_url, tmp_path / "second.log")
            try:
                with anyio.fail_after(RECOVERED_WITHIN):
                    async with httpx.AsyncClient(base_url=await second.base_url()) as client:
                        view = (await client.get("/ckflow/runs/crash-1")).json()
                        while view["state"] != "SUCCESS":
                            assert view["state"] in ("PENDING", "RUNNING"), json.dumps(view)
                            await anyio.sleep(0.02)
                            view = (await client.get("/ckflow/runs/crash-1")).json()
            finally:
                second.process.terminate()
                await second.process.wait()

        assert [task["state"] for task in view["tasks"]] == ["SUCCESS"] * STEPS
        steps = [f"step_{i}" for i in range(1, STEPS + 1)]
        before, after = first.process.pid, second.process.pid
        assert ledger_lines(ledger) == [(before, name) for name in steps[:HOLD]] + [
            (after, name) for name in steps[HOLD - 1 :]
        ]
