"""``RunTasks``: the tasks an engine runs its runs in, spawned as plain asyncio tasks and kept by its task group.

anyio's ``TaskGroup.start_soon`` wraps every task in a ``TaskHandle`` with a cancel scope, an event, a wrapper
coroutine, a task state and a done-callback closure: some 22 objects the cyclic GC tracks and 9 µs a spawn,
where ``loop.create_task`` costs 6 and 1.3 µs. An engine runs a thousand short runs a second, each in a task of
its own, so on asyncio it spawns them with ``loop.create_task`` and does for them what the task group did:

- one task of the engine's task group, ``keep``, stands for them all: the group's exit waits for it, and it
  returns once the engine closes and the last run's task has ended;
- each run's task runs inside a cancel scope of its own, made as the task starts: when the group's scope is
  cancelled (the block left by an exception, an enclosing scope cancelled, a run's task raised), ``keep`` is
  cancelled with it and cancels every run's scope, and a task that has not started yet starts in a cancelled
  one (an anyio cancellation: level-triggered, taken at the task's first checkpoint, as the group's would
  be; ``Task.cancel()`` would stop a task that has not started before its first line), then it waits for
  them all, shielded;
- an exception that escapes a run's task is raised again in a task of the group, which then fails as it
  would have if the run's task had been its own (the group's scope cancelled, the exception in its group);
- the engine holds each task until it ends (the event loop keeps only weak references to tasks), and reads
  each one's outcome, so none is reported as "never retrieved".

On any other async library (trio), runs are spawned in the group with ``start_soon`` as before.
"""

from __future__ import annotations

import asyncio
import contextvars
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

    __slots__ = ("_cancelled", "_closing", "_context", "_create", "_done", "_idle", "_scope_class", "_tasks", "_tg")

    def __init__(self, tg: TaskGroup) -> None:
        self._tg = tg
        #: each live run's task, and the cancel scope it runs in (None until the task has made it)
        self._tasks: dict[asyncio.Task[None], anyio.CancelScope | None] = {}
        #: no more runs are spawned as plain tasks (the engine closes, or its group's scope was cancelled)
        self._closing = False
        #: the group's scope was cancelled: a run's task that starts now starts cancelled
        self._cancelled = False
        self._idle = anyio.Event()
        # The running library's CancelScope class, looked up once (anyio.CancelScope() asks for it each call).
        self._scope_class: type[anyio.CancelScope] = type(anyio.CancelScope())
        self._done = self._task_done
        #: the context the done callbacks run in: they read no context variable, and asyncio would copy the
        #: spawner's context for each one otherwise (an object the cyclic GC tracks, per live run)
        self._context = contextvars.Context()
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # not asyncio: the task group spawns the runs
            self._create: Callable[..., asyncio.Task[None]] | None = None
            return
        self._create = _task_constructor(loop)
        tg.start_soon(self._keep, name="ckflow engine runs")

    def spawn(self, fn: Callable[[_T], Coroutine[Any, Any, None]], arg: _T, name: str) -> None:
        """Run ``fn(arg)`` in a task of its own; ``fn`` enters ``scope()`` around all it does."""
        create = self._create
        if create is None or self._closing:
            # not asyncio, or spawned after the group's scope was cancelled: the group runs (and cancels) it
            self._tg.start_soon(fn, arg, name=name)
            return
        task = create(fn(arg), name=name)
        self._tasks[task] = None
        task.add_done_callback(self._done, context=self._context)

    def scope(self) -> anyio.CancelScope:
        """The cancel scope for a run's task to run in, made as the task starts (a run that waits for its first
        step holds none); cancelled already if the engine's group was."""
        scope = self._scope_class()
        if self._create is not None:
            task = asyncio.current_task()
            if task is not None and task in self._tasks:
                self._tasks[task] = scope
        if self._cancelled:
            scope.cancel()
        return scope

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
            self._closing = self._cancelled = True
            for scope in self._tasks.values():
                if scope is not None:
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
