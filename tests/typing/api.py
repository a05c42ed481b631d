"""DESIGN.md §10 written as a user would, for ``mypy --strict`` (tests/test_public_api.py runs it).

Nothing here runs: the code sits inside an ``async def`` that is never called,
so importing this module starts no flow. A ``# type: ignore[...]`` below marks
a line that must be rejected; with ``warn_unused_ignores`` (part of
``--strict``) mypy fails if ckflow ever stops rejecting it.
"""

from __future__ import annotations

import contextlib
import datetime
from typing import TYPE_CHECKING, Annotated

from fastapi import Depends, FastAPI, Request

import ckflow
import ckflow.fastapi
import ckflow.stores
from ckflow import Checkpoint, Linear, Parallel, Retry, Task, task

if TYPE_CHECKING:
    from collections.abc import AsyncIterator


@task(provides="volume")  # name defaults to the function's
async def create_volume(size: int) -> str:
    return f"vol-{size}"


@create_volume.revert  # inputs by name, plus `result`: the return value, or a ckflow.Failure
async def _(size: int, result: str | ckflow.Failure) -> None:
    if isinstance(result, ckflow.Failure):
        print(result.task, result.exc_type, result.message)


class Attach(Task):  # class form, same rules
    provides = "attachment"

    async def execute(self, volume: str) -> str:
        return f"att-{volume}"

    async def revert(self, volume: str, result: str | ckflow.Failure) -> None:
        return None


@task
async def configure_network() -> None:
    ctx: ckflow.TaskContext = ckflow.current()  # inside a task: run_id, task, attempt, history
    run_id: str = ctx.run_id
    name: str = ctx.task
    attempt: int = ctx.attempt
    history: tuple[ckflow.Failure, ...] = ctx.history
    print(run_id, name, attempt, history)


@task
def blocking_probe(volume: str) -> bool:  # a plain `def` task runs in a worker thread
    return bool(volume)


vol2 = create_volume.with_options(name="vol2", rebind={"size": "size2"}, provides="volume2")

flow = Linear(
    "boot",
    create_volume,
    Parallel(
        "prepare",
        Linear("disk", Checkpoint("disk", retry=Retry(attempts=3)), Attach()),
        configure_network,
    ),
)


async def signatures_are_kept() -> None:
    """@task keeps the function's signature: calling the task calls the function."""
    volume: str = await create_volume(10)
    ok: bool = blocking_probe("v")
    print(volume, ok)
    await create_volume("ten")  # type: ignore[arg-type]


async def one_run() -> None:
    result: ckflow.RunResult = await ckflow.run(flow, inputs={"size": 10})
    state: ckflow.FlowState = result.state  # ckflow.FlowState.SUCCESS (a StrEnum)
    is_done: bool = state == ckflow.FlowState.SUCCESS
    text: str = state  # a StrEnum is a str
    attachment: object = result.outputs["attachment"]
    summary: ckflow.TaskSummary = result.tasks["create_volume"]
    task_state: ckflow.TaskState = summary.state
    attempts: int = summary.attempts
    failures: list[ckflow.Failure] = result.failures
    for failure in failures:
        print(failure.task, failure.exc_type, failure.message, failure.traceback)
    print(is_done, text, attachment, task_state, attempts)
    result.raise_for_state()  # ExceptionGroup of the causes unless SUCCESS


async def engine_runs() -> None:
    async with ckflow.Engine() as engine:
        run: ckflow.Run = await engine.start(flow, inputs={"size": 10}, run_id="boot-42")  # id optional
        await run.suspend()
        await run.resume()
        parked: ckflow.RunResult = await run.wait_suspended()
        unsubscribe = run.subscribe(lambda event: print(event.name))
        async for event in run.events():
            print(event.name, event.task)
        unsubscribe()
        await run.cancel()
        result: ckflow.RunResult = await run.wait()
        print(parked.state, result.state)
        view: ckflow.RunView = await run.view(tracebacks=False)
        task_view: ckflow.TaskView = view.tasks[0]
        print(task_view.duration, ckflow.RunView.of(result).model_dump(mode="json"))


def build_flow() -> ckflow.Linear:
    return flow


async def workers() -> None:
    ckflow.register_flow("boot", build_flow)
    async with ckflow.Engine(store="postgresql://db/app") as engine:
        run: ckflow.Run = await engine.submit("boot", {"size": 10}, queue="provisioning", priority=5)
        await run.cancel()
        await engine.submit(flow, {"size": 10}, "boot-43")
        await engine.submit("boot", {"size": 10}, queue=3)  # type: ignore[arg-type]
    async with ckflow.Worker(
        "postgresql://db/app", queues=["provisioning", "default"], concurrency=20, limits={"provisioning": 5}
    ) as worker:
        print(worker.queues, len(worker.runs))
        await worker.drain()
        await worker.wait()


async def durable_runs() -> None:
    ckflow.register_flow("boot", build_flow)
    async with ckflow.Engine(store="sqlite:///runs.db") as engine:
        run = await engine.start(flow, inputs={"size": 10}, run_id="boot-42")  # id optional
        await run.goto("disk")
        await run.resume()
        await run.cancel()
        await run.suspend()
        await run.revert_to("disk", retry=False)
        async for event in run.events():
            seq: int | None = event.seq
            print(seq)
        result = await run.wait()
        print(result.state)
    # another process, after a crash: the flow object, or a name registered with ckflow.register_flow
    async with ckflow.Engine(store="sqlite:///runs.db") as engine:
        resumed: ckflow.Run = await engine.resume("boot-42", flow=flow)
        by_name: ckflow.Run = await engine.resume("boot-42")
        elsewhere: ckflow.Run = await engine.attach("boot-42")
        local: bool = elsewhere.local
        print(resumed.state, by_name.id, local)
    store: ckflow.stores.Store = ckflow.stores.open_store("postgresql://postgres@127.0.0.1/test")
    async with store:
        records: list[ckflow.stores.RunRecord] = await store.list_runs(states=[ckflow.FlowState.SUSPENDED])
        print(records)
    periodic = ckflow.Periodic(
        "sync", create_volume, every=datetime.timedelta(minutes=5), checkpoint=Checkpoint("sync", keep_last=20)
    )
    print(periodic.every)


async def errors() -> None:
    try:
        await ckflow.run(flow)
    except ckflow.MissingRequirementError as exc:
        flow_name: str = exc.flow
        requirement: str = exc.requirement
        print(flow_name, requirement)
    except ckflow.FlowDefinitionError:
        raise
    except ckflow.CkflowError:
        raise


def fastapi_service() -> None:
    """DESIGN.md §12: the engine in a FastAPI app's lifespan, and runs inline in handlers."""

    @contextlib.asynccontextmanager
    async def my_lifespan(app: FastAPI) -> AsyncIterator[dict[str, int]]:
        yield {"answer": 42}

    app = FastAPI(lifespan=ckflow.fastapi.lifespan("sqlite:///runs.db", app_lifespan=my_lifespan))
    FastAPI(lifespan=ckflow.fastapi.lifespan(None, max_concurrency=4))

    @app.post("/orders")
    async def order(
        request: Request, engine: Annotated[ckflow.Engine, Depends(ckflow.fastapi.engine)]
    ) -> ckflow.RunView:
        view: ckflow.RunView = await ckflow.fastapi.run(request, flow, {"size": 1}, run_id="order-1")
        print(engine.id)
        return view
