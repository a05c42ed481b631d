"""S11's processes: ``python -m benchmarks._s11_worker {ckflow,dbos} {first,restart} URL``.

``first`` starts the run ``r`` of a Linear of ``TASKS`` no-op steps on the store (ckflow) or system database
(DBOS) at URL; step ``HOLD`` prints ``S11 ready`` and waits forever, for the benchmark's SIGKILL. ``restart`` is
the service coming back with default options: ckflow's ``Engine(store=URL, recover=True)``, DBOS's
``DBOS.launch()``; it prints ``S11 imported T`` once the interpreter has started and imported the library and the
flow, ``S11 opened T`` once the engine is open (DBOS: launched), and ``S11 done T STATE`` once the run has ended
(T: ``time.time()``). The held step is the same code in both lives (``S11_HOLD`` in the environment holds it),
so DBOS sees the same application version.
"""

from __future__ import annotations

import os
import sys
import threading
import time

TASKS = 1_000
HOLD = 500
FLOW = "s11"
RUN = "r"


def say(*words: object) -> None:
    print("S11", *words, flush=True)


def _hold(i: int) -> None:
    if i == HOLD and os.environ.get("S11_HOLD"):
        say("ready")
        threading.Event().wait()


def ckflow_main(mode: str, url: str) -> None:
    import anyio

    import ckflow

    @ckflow.task(provides="v0")
    async def first() -> int:
        return 0

    @ckflow.task
    async def step(x: int, i: int) -> int:
        if i == HOLD and os.environ.get("S11_HOLD"):
            say("ready")
            await anyio.sleep_forever()
        return x + 1

    def build() -> ckflow.Linear:
        tasks: list[ckflow.Task] = [first.with_options(name="t0")]
        tasks += [
            step.with_options(name=f"t{i}", provides=f"v{i}", rebind={"x": f"v{i - 1}"}, inject={"i": i})
            for i in range(1, TASKS)
        ]
        return ckflow.Linear(FLOW, *tasks)

    ckflow.register_flow(FLOW, build)
    say("imported", time.time())

    async def main() -> None:
        if mode == "first":
            async with ckflow.Engine(store=url) as engine:
                await (await engine.start(FLOW, run_id=RUN)).wait()
        else:
            async with ckflow.Engine(store=url, recover=True) as engine:
                say("opened", time.time())  # the run is taken: recovery adopts at open
                result = await engine.get_run(RUN).wait()
                say("done", time.time(), result.state)

    anyio.run(main)


def dbos_main(mode: str, url: str) -> None:
    from dbos import DBOS, SetWorkflowID

    DBOS(config={"name": "ckflow-bench-s11", "system_database_url": url})

    @DBOS.step()
    def step(x: int, i: int) -> int:
        _hold(i)
        return x + 1

    @DBOS.workflow()
    def linear() -> int:
        x = 0
        for i in range(1, TASKS):
            x = step(x, i)
        return x

    say("imported", time.time())
    DBOS.launch()
    say("opened", time.time())  # the pending workflow is handed to a recovery thread, which goes on after this
    if mode == "first":
        with SetWorkflowID(RUN):
            DBOS.start_workflow(linear)
        threading.Event().wait()
    # the run's end as soon as it is committed: look every 5 ms (DBOS's handle polls at its own pace)
    while (status := DBOS.get_workflow_status(RUN)) is None or status.status in ("PENDING", "ENQUEUED"):
        time.sleep(0.005)
    say("done", time.time(), status.status)
    DBOS.destroy()


if __name__ == "__main__":
    engine, mode, url = sys.argv[1:4]
    (ckflow_main if engine == "ckflow" else dbos_main)(mode, url)
