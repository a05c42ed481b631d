"""``RunTasks``: the tasks an engine runs its runs in, spawned as plain asyncio tasks and kept by its task group.

anyio's ``TaskGroup.start_soon`` wraps every task in a ``TaskHandle`` with a cancel scope, an event, a wrapper
coroutine, a task state and a done-callback closure: some 22 objects the cyclic GC tracks and 9 µs a spawn,
where ``loop.create_task`` costs 6 and 1.3 µs. An engine runs a thousand short runs a second, each in a task of
its own, so on asyncio it spawns them with ``loop.create_task`` and does for them what the task group did:

- one task of the engine's task group, ``keep``, stands for them all: the group's exit waits for it, and it
  returns once the engine closes and the last run's task has ended;
- each run's task runs inside a cancel scope of its own, made with the task: when the group's scope is
  cancelled (the block left by an exception, an enclosing scope cancelled, a run's task raised), ``keep`` is
  cancelled with it and cancels every run's scope (an anyio cancellation: level-triggered, and taken at the
  task's first checkpoint if it has not run yet, as the group's would be), then waits for them, shielded;
- an exception that escapes a run's task is raised again in a task of the group, which then fails as it
  would have if the run's task had been its own (the group's scope cancelled, the exception in its group);
- the engine holds each task until it ends (the event loop keeps only weak references to tasks), and reads
  each one's outcome, so none is reported as "never retrieved".

On any other async library (trio), runs are spawned in the group with ``start_soon`` as before.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import anyio

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine

    from anyio.abc import TaskGroup

__all__ = ["RunTasks"]

_T = TypeVar("_T")


async def _raise(exc: BaseException) -> NoReturn:
    """Raise an exception that escaped a run's task, in a task of the engine's group (see ``RunTasks``)."""
    raise exc


class RunTasks:
    """The tasks of an engine's runs (see the module's docstring); made when the engine opens."""

    __slots__ = ("_closing", "_create", "_done", "_idle", "_native", "_scope_class", "_tasks", "_tg")

    def __init__(self, tg: TaskGroup) -> None:
        self._tg = tg
        #: each live run's task, and the cancel scope it runs in
        self._tasks: dict[asyncio.Task[None], anyio.CancelScope] = {}
        #: no more runs are spawned as plain tasks (the engine closes, or its group's scope was cancelled)
        self._closing = False
        self._idle = anyio.Event()
        # The running library's CancelScope class, looked up once (anyio.CancelScope() asks for it each call).
        self._scope_class: type[anyio.CancelScope] = type(anyio.CancelScope())
        self._done = self._task_done
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # not asyncio: the task group spawns the runs
            self._native = False
            self._create: Callable[..., asyncio.Task[None]] | None = None
            return
        self._native = True
        self._create = _task_constructor(loop)
        tg.start_soon(self._keep, name="ckflow engine runs")

    def spawn(self, fn: Callable[[_T, anyio.CancelScope], Coroutine[Any, Any, None]], arg: _T, name: str) -> None:
        """Run ``fn(arg, scope)`` in a task of its own; ``fn`` enters ``scope`` (made here) around all it does."""
        scope = self._scope_class()
        create = self._create
        if create is None or self._closing:
            # not asyncio, or spawned after the group's scope was cancelled: the group runs (and cancels) it
            self._tg.start_soon(fn, arg, scope, name=name)
            return
        task = create(fn(arg, scope), name=name)
        self._tasks[task] = scope
        task.add_done_callback(self._done)

    def close(self) -> None:
        """The engine closes: no run starts any more, and ``keep`` returns once the last run's task has ended."""
        self._closing = True
        if not self._tasks:
            self._idle.set()

    def _task_done(self, task: asyncio.Task[None]) -> None:
        del self._tasks[task]
        if not task.cancelled():
            exc = task.exception()  # (read: asyncio would otherwise report it as never retrieved)
            if exc is not None:
                self._tg.start_soon(_raise, exc, name=f"{task.get_name()} (raised)")
        if self._closing and not self._tasks:
            self._idle.set()

    async def _keep(self) -> None:
        """Stand for the runs' tasks in the engine's group until it closes and they have ended; when the group's
        scope is cancelled, cancel each run's scope and wait, shielded, for them all to end."""
        try:
            await self._idle.wait()
        except BaseException:
            self._closing = True
            for scope in self._tasks.values():
                scope.cancel()
            if self._tasks:
                with anyio.CancelScope(shield=True):
                    await self._idle.wait()
            raise


def _task_constructor(loop: asyncio.AbstractEventLoop) -> Callable[..., asyncio.Task[Any]]:
    """``loop.create_task``, unless the loop's task factory starts tasks eagerly (3.12+): a run's task must not
    run inside ``engine.start``, so it is then made as anyio makes its tasks, with the factory's task class."""
    factory: Any = loop.get_task_factory()
    eager = getattr(asyncio, "eager_task_factory", None)
    if factory is not None and eager is not None and getattr(factory, "__code__", None) is eager.__code__:
        closure = getattr(factory, "__closure__", None)
        if closure:
            task_class: Callable[..., asyncio.Task[Any]] = closure[0].cell_contents

            def create(coro: Any, *, name: str) -> asyncio.Task[Any]:
                return task_class(coro, loop=loop, name=name)

            return create
    return loop.create_task
