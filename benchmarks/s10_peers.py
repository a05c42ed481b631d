"""S10's peers: DBOS queues and procrastinate, on the same PostgreSQL server, each in a database of its own.

The same shape as ckflow's: a run of 5 no-op steps, each durable before the next starts.

- DBOS: a workflow of 5 ``@DBOS.step`` calls, enqueued on a queue (``DBOS.register_queue``, defaults: the queue
  polled every second) by a ``DBOSClient``; worker processes launch DBOS with the queue (``worker_concurrency``
  50). First step started = its ``operation_outputs.started_at_epoch_ms``; submitted = the workflow's
  ``created_at``; ended = its ``updated_at`` once SUCCESS.
- procrastinate: a chain of 5 jobs, each deferring the next (so that each step is durable, as ckflow's and DBOS's
  are); worker processes ``run_worker_async(concurrency=50)`` (LISTEN/NOTIFY on, its defaults). Times from
  ``procrastinate_events`` (``deferred``, ``started``, ``succeeded``), by the database's clock.

Worker processes run ``python -m benchmarks.s10_peers (dbos|procrastinate) DATABASE_URL``.
"""

from __future__ import annotations

import asyncio
import sys
import threading
from typing import Any

STEPS = 5
CONCURRENCY = 50
QUEUE = "s10"

# -- DBOS ------------------------------------------------------------------------------------------


def dbos_definitions() -> Any:
    """Register the workflow and its step with DBOS (in the worker processes, before launch)."""
    from dbos import DBOS

    @DBOS.step(name="s10_step")
    def step() -> None:
        return None

    @DBOS.workflow(name="s10_wf")
    def workflow() -> None:
        for _ in range(STEPS):
            step()

    return DBOS


def dbos_worker(url: str) -> None:
    dbos = dbos_definitions()
    dbos(config={"name": "ckflow-s10", "system_database_url": url, "log_level": "WARNING"})
    dbos.launch()
    dbos.register_queue(QUEUE, worker_concurrency=CONCURRENCY)
    print("claiming from", QUEUE, flush=True)
    threading.Event().wait()


def dbos_enqueue(url: str, runs: int, gap: float = 0.0) -> None:
    import time

    from dbos import DBOSClient

    client = DBOSClient(system_database_url=url)
    try:
        for _ in range(runs):
            client.enqueue({"workflow_name": "s10_wf", "queue_name": QUEUE})
            if gap:
                time.sleep(gap)
    finally:
        client.destroy()


DBOS_TIMES = (
    "SELECT w.created_at / 1000.0, w.updated_at / 1000.0, "
    "(SELECT min(o.started_at_epoch_ms) FROM dbos.operation_outputs o "
    "WHERE o.workflow_uuid = w.workflow_uuid) / 1000.0 "
    "FROM dbos.workflow_status w WHERE w.status = 'SUCCESS'"
)

# -- procrastinate ---------------------------------------------------------------------------------


def procrastinate_app(url: str) -> Any:
    import procrastinate

    app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=url))

    @app.task(name="s10_step", queue=QUEUE)
    async def step(run: int, i: int) -> None:
        if i + 1 < STEPS:
            await step.defer_async(run=run, i=i + 1)

    return app


async def procrastinate_worker(url: str) -> None:
    app = procrastinate_app(url)
    async with app.open_async():
        print("claiming from", QUEUE, flush=True)
        await app.run_worker_async(queues=[QUEUE], concurrency=CONCURRENCY)


async def procrastinate_setup(url: str) -> None:
    app = procrastinate_app(url)
    async with app.open_async():
        await app.schema_manager.apply_schema_async()


async def procrastinate_defer(url: str, runs: int, gap: float = 0.0) -> None:
    app = procrastinate_app(url)
    async with app.open_async():
        step = app.tasks["s10_step"]
        for run in range(runs):
            await step.defer_async(run=run, i=0)
            if gap:
                await asyncio.sleep(gap)


PROCRASTINATE_TIMES = (
    "SELECT extract(epoch from d.at), extract(epoch from f.at), extract(epoch from s.at) "
    "FROM procrastinate_jobs j0 "
    "JOIN procrastinate_events d ON d.job_id = j0.id AND d.type = 'deferred' "
    "JOIN procrastinate_events s ON s.job_id = j0.id AND s.type = 'started' "
    "JOIN procrastinate_jobs j4 ON j4.args->>'run' = j0.args->>'run' AND (j4.args->>'i')::int = "
    f"{STEPS - 1} "
    "JOIN procrastinate_events f ON f.job_id = j4.id AND f.type = 'succeeded' "
    "WHERE (j0.args->>'i')::int = 0"
)


def main(argv: list[str]) -> None:
    peer, url = argv
    if peer == "dbos":
        dbos_worker(url)
    else:
        asyncio.run(procrastinate_worker(url))


if __name__ == "__main__":
    main(sys.argv[1:])
