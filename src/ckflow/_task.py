"""Tasks: ``@task`` on a function, or a subclass of ``Task`` with ``execute``/``revert``.

A task's inputs are the parameters of its ``execute`` (parameters with a
default are optional); its outputs are the names in ``provides``. The
signature is checked where the task is written, so mistakes surface at import
time with a message that shows the fix.
"""

from __future__ import annotations

import copy
import functools
import inspect
from typing import TYPE_CHECKING, Any, ClassVar, Final, Generic, ParamSpec, Self, TypeVar, overload

from ckflow._checkpoint import Retry, _is_name
from ckflow._errors import TaskDefinitionError

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Mapping

__all__ = ["FunctionTask", "Task", "check_task_item", "is_async_callable", "task"]

P = ParamSpec("P")
R = TypeVar("R")

#: Parameter names an ``execute`` may not use (``revert`` receives the outcome as ``result``).
RESERVED_INPUTS: Final = frozenset({"result"})

_UNSET: Any = object()


def is_async_callable(obj: object) -> bool:
    """True for an ``async def`` function, also behind ``functools.partial`` or as ``__call__``."""
    while isinstance(obj, functools.partial):
        obj = obj.func
    return inspect.iscoroutinefunction(obj) or (
        callable(obj) and inspect.iscoroutinefunction(getattr(obj, "__call__", None))  # noqa: B004
    )


class _Signature:
    """What ckflow needs to know of an execute/revert pair, parsed once per function."""

    __slots__ = ("defaults", "is_async", "params", "revert_is_async", "revert_params")

    def __init__(self, task_name: str, execute: Callable[..., Any]) -> None:
        self.is_async = is_async_callable(execute)
        params: list[str] = []
        defaults: dict[str, Any] = {}
        for p in inspect.signature(execute).parameters.values():
            if p.kind is p.VAR_POSITIONAL or p.kind is p.VAR_KEYWORD:
                star = "*" if p.kind is p.VAR_POSITIONAL else "**"
                raise TaskDefinitionError(
                    task_name,
                    f"execute takes `{star}{p.name}`, but ckflow passes inputs by name; "
                    "declare each input as a named parameter.",
                )
            if p.kind is p.POSITIONAL_ONLY:
                raise TaskDefinitionError(
                    task_name,
                    f"parameter {p.name!r} is positional-only, but ckflow passes inputs by name; "
                    "remove the `/` from the signature.",
                )
            if p.name in RESERVED_INPUTS:
                raise TaskDefinitionError(
                    task_name,
                    f"parameter {p.name!r} is reserved (revert receives the task's outcome under that "
                    f"name); rename it and read the value with `rebind={{'new_name': {p.name!r}}}`.",
                )
            params.append(p.name)
            if p.default is not p.empty:
                defaults[p.name] = p.default
        self.params: tuple[str, ...] = tuple(params)
        self.defaults: Mapping[str, Any] = defaults
        #: None when the task has no revert; else the names revert asks for, or () for **kwargs
        self.revert_params: tuple[str, ...] | None = None
        self.revert_is_async = False

    def set_revert(self, task_name: str, revert: object, *, bound: bool) -> None:
        if inspect.iscoroutine(revert):
            revert.close()
            raise TaskDefinitionError(
                task_name, "`.revert` got a coroutine object; decorate the function itself, not a call of it."
            )
        if not callable(revert):
            raise TaskDefinitionError(task_name, f"revert must be a function, got {revert!r}.")
        is_async = is_async_callable(revert)
        if self.is_async and not is_async:
            raise TaskDefinitionError(
                task_name,
                "its execute is `async def` but its revert is a plain `def`; write `async def` for the "
                "revert too, so that undoing never blocks the event loop.",
            )
        sig = inspect.signature(revert)
        names: list[str] = []
        takes_all = False
        allowed = {*self.params, "result"}
        for p in sig.parameters.values():
            if bound and p.name == "self":
                continue
            if p.kind is p.VAR_KEYWORD:
                takes_all = True
                continue
            if p.kind is p.VAR_POSITIONAL or p.kind is p.POSITIONAL_ONLY:
                raise TaskDefinitionError(
                    task_name, f"revert parameter {p.name!r} cannot be passed by name; declare it as a named one."
                )
            if p.name not in allowed:
                raise TaskDefinitionError(
                    task_name,
                    f"revert takes {p.name!r}, which is not an input of the task; revert receives the "
                    f"inputs {sorted(self.params)} and `result`.",
                )
            names.append(p.name)
        self.revert_params = (*self.params, "result") if takes_all else tuple(names)
        self.revert_is_async = is_async


def _is_positive_number(value: object) -> bool:
    return not isinstance(value, bool) and isinstance(value, int | float) and value > 0


def _normalise_provides(task_name: str, provides: object) -> tuple[str, ...]:
    if provides is None:
        return ()
    if isinstance(provides, str):
        return (provides,)
    if isinstance(provides, tuple | list) and all(isinstance(p, str) for p in provides):
        if len(set(provides)) != len(provides):
            raise TaskDefinitionError(task_name, f"provides={provides!r} names a value twice.")
        return tuple(provides)
    raise TaskDefinitionError(task_name, f"provides must be a name or a tuple of names, got {provides!r}.")


class Task:
    """Base class of every task; subclass it and write ``async def execute(self, ...)``.

    Class attributes ``name``, ``provides``, ``timeout``, ``shield``,
    ``retry``, ``rebind`` and ``inject`` set the defaults; the constructor and
    ``with_options`` override them per instance. A class-form task is named
    after its class unless told otherwise.

    Example::

        class Attach(ckflow.Task):
            provides = "attachment"

            async def execute(self, volume: str) -> str: ...
            async def revert(self, volume: str, result: object) -> None: ...
    """

    name: str
    provides: str | tuple[str, ...] | None = None
    timeout: float | None = None
    shield: bool = False
    retry: Retry | None = None
    rebind: Mapping[str, str] | None = None
    inject: Mapping[str, Any] | None = None

    _signature: ClassVar[_Signature]
    _sig: _Signature
    _provides: tuple[str, ...]
    _inputs: tuple[tuple[str, str], ...]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get("_function_form", False):
            return
        execute = getattr(cls, "execute", None)
        if execute is None:
            return  # an abstract base of the user's; instantiating it says what is missing
        label = cls.__dict__.get("name", cls.__name__)
        sig = _Signature(label, functools.partial(execute, None))
        revert = getattr(cls, "revert", None)
        if revert is not None:
            sig.set_revert(label, revert, bound=True)
        cls._signature = sig

    def __init__(
        self,
        *,
        name: str | None = None,
        provides: str | tuple[str, ...] | None = _UNSET,
        rebind: Mapping[str, str] | None = None,
        inject: Mapping[str, Any] | None = None,
        timeout: float | None = _UNSET,
        shield: bool = _UNSET,
        retry: Retry | None = _UNSET,
    ) -> None:
        cls = type(self)
        if not hasattr(cls, "_signature"):
            raise TaskDefinitionError(
                cls.__name__,
                f"class {cls.__name__} needs an `async def execute(self, ...)`; or decorate a function "
                "with @ckflow.task.",
            )
        self._sig = cls._signature
        self.name = name if name is not None else cls.__dict__.get("name", cls.__name__)
        self._apply(provides=provides, rebind=rebind, inject=inject, timeout=timeout, shield=shield, retry=retry)

    def _apply(
        self,
        *,
        provides: Any = _UNSET,
        rebind: Any = None,
        inject: Any = None,
        timeout: Any = _UNSET,
        shield: Any = _UNSET,
        retry: Any = _UNSET,
    ) -> None:
        """Set and validate the options; anything unset keeps its current value."""
        name = self.name
        if not _is_name(name):
            raise TaskDefinitionError(repr(name), "a task name must be a non-empty string.")
        if provides is not _UNSET:
            self.provides = provides
        if timeout is not _UNSET:
            self.timeout = timeout
        if shield is not _UNSET:
            self.shield = shield
        if retry is not _UNSET:
            self.retry = retry
        if rebind is not None:
            self.rebind = {**(self.rebind or {}), **rebind}
        if inject is not None:
            self.inject = {**(self.inject or {}), **inject}
        self._provides = _normalise_provides(name, self.provides)
        if self.timeout is not None and not _is_positive_number(self.timeout):
            raise TaskDefinitionError(name, f"timeout must be a positive number of seconds, got {self.timeout!r}.")
        if self.retry is not None and not isinstance(self.retry, Retry):
            raise TaskDefinitionError(name, f"retry must be a ckflow.Retry, got {self.retry!r}.")
        params = self._sig.params
        rebind_map = dict(self.rebind or {})
        for param, target in rebind_map.items():
            if param not in params:
                raise TaskDefinitionError(
                    name, f"rebind names {param!r}, which is not a parameter of execute {list(params)}."
                )
            if not _is_name(target):
                raise TaskDefinitionError(name, f"rebind[{param!r}] must be a value name, got {target!r}.")
        self._inputs = tuple((p, rebind_map.get(p, p)) for p in params)
        input_names = {n for _, n in self._inputs}
        for key in self.inject or {}:
            if key not in input_names:
                raise TaskDefinitionError(
                    name, f"inject names {key!r}, which is not one of its inputs {sorted(input_names)}."
                )

    # -- public -----------------------------------------------------------

    @property
    def requires(self) -> tuple[str, ...]:
        """The names of the values this task reads (after ``rebind``), optional ones included."""
        return tuple(n for _, n in self._inputs)

    @property
    def optional(self) -> frozenset[str]:
        """The names among ``requires`` that have a default and may be left unprovided."""
        defaults = self._sig.defaults
        return frozenset(n for p, n in self._inputs if p in defaults)

    @property
    def provided(self) -> tuple[str, ...]:
        """The names of the values this task provides, always as a tuple."""
        return self._provides

    @property
    def has_revert(self) -> bool:
        """True when the task defines a revert."""
        return self._sig.revert_params is not None

    @property
    def bindings(self) -> tuple[tuple[str, str], ...]:
        """``(parameter, value name)`` for each parameter of execute, after ``rebind``."""
        return self._inputs

    @property
    def parameter_defaults(self) -> Mapping[str, Any]:
        """Parameter -> default, for the parameters of execute that have one."""
        return self._sig.defaults

    @property
    def is_async(self) -> bool:
        """True for an ``async def`` execute (False: a plain ``def``, run in a worker thread)."""
        return self._sig.is_async

    @property
    def revert_parameters(self) -> tuple[str, ...] | None:
        """The names revert takes (inputs and ``result``); None when the task has no revert."""
        return self._sig.revert_params

    @property
    def revert_is_async(self) -> bool:
        """True for an ``async def`` revert."""
        return self._sig.revert_is_async

    def with_options(
        self,
        *,
        name: str | None = None,
        provides: str | tuple[str, ...] | None = _UNSET,
        rebind: Mapping[str, str] | None = None,
        inject: Mapping[str, Any] | None = None,
        timeout: float | None = _UNSET,
        shield: bool = _UNSET,
        retry: Retry | None = _UNSET,
    ) -> Self:
        """A copy of this task with other options, to reuse it under another name.

        ``rebind`` and ``inject`` are merged into the existing ones; the other
        options replace theirs.
        """
        clone = copy.copy(self)
        if name is not None:
            clone.name = name
        Task._apply(clone, provides=provides, rebind=rebind, inject=inject, timeout=timeout, shield=shield, retry=retry)
        return clone

    # -- the calls the engine makes (the task's own code: its execute, its revert) ----

    def call_execute(self, kwargs: dict[str, Any]) -> Any:
        return self.execute(**kwargs)  # type: ignore[attr-defined]

    def execute_function(self) -> Callable[..., Any]:
        """The function whose annotations type this task's inputs and result."""
        execute: Callable[..., Any] = type(self).execute  # type: ignore[attr-defined]
        return execute

    def call_revert(self, kwargs: dict[str, Any]) -> Any:
        return self.revert(**kwargs)  # type: ignore[attr-defined]

    def __repr__(self) -> str:
        return f"<ckflow.Task {self.name!r} requires={list(self.requires)} provides={list(self._provides)}>"


class FunctionTask(Task, Generic[P, R]):
    """A task made by ``@ckflow.task`` from a function; calling it calls the function."""

    _function_form: ClassVar[bool] = True

    def __init__(self, fn: Callable[P, R], **options: Any) -> None:
        name = options.pop("name", None) or getattr(fn, "__name__", None) or repr(fn)
        self.name = name
        self._fn = fn
        self._revert_fn: Callable[..., Any] | None = None
        self._sig = _Signature(name, fn)
        functools.update_wrapper(self, fn)
        self.name = name  # update_wrapper may not touch it, but keep the task's name explicit
        self._apply(**options)

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Call the underlying function directly (handy in unit tests)."""
        return self._fn(*args, **kwargs)

    def revert(self, fn: Callable[..., Awaitable[None]] | Callable[..., None]) -> Callable[..., Any]:
        """Register ``fn`` as the undo of this task; returns ``fn`` unchanged.

        ``fn`` receives any of the task's inputs by name, and ``result``: the
        value execute returned, or the ``ckflow.Failure`` it raised or was
        cancelled with.
        """
        sig = copy.copy(self._sig)
        sig.set_revert(self.name, fn, bound=False)
        self._sig = sig
        self._revert_fn = fn
        return fn

    def call_execute(self, kwargs: dict[str, Any]) -> Any:
        return self._fn(**kwargs)  # type: ignore[call-arg]

    def execute_function(self) -> Callable[..., Any]:
        return self._fn

    def call_revert(self, kwargs: dict[str, Any]) -> Any:
        assert self._revert_fn is not None
        return self._revert_fn(**kwargs)

    def __repr__(self) -> str:
        return f"<ckflow.task {self.name!r} requires={list(self.requires)} provides={list(self._provides)}>"


def _check_function(fn: object) -> None:
    if inspect.iscoroutine(fn):
        name = getattr(fn, "__name__", "fn")
        fn.close()
        raise TaskDefinitionError(
            name,
            f"@task got a coroutine object; decorate the function, not a call of it: write `@task` above "
            f"`async def {name}(...)` instead of `task({name}(...))`.",
        )
    if isinstance(fn, type):
        raise TaskDefinitionError(
            fn.__name__, "@task decorates functions; for a class, subclass ckflow.Task and write execute()."
        )
    if not callable(fn):
        raise TaskDefinitionError(repr(fn), "@task needs a function.")


@overload
def task(
    fn: Callable[P, R],
    /,
    *,
    name: str | None = None,
    provides: str | tuple[str, ...] | None = None,
    rebind: Mapping[str, str] | None = None,
    inject: Mapping[str, Any] | None = None,
    timeout: float | None = None,
    shield: bool = False,
    retry: Retry | None = None,
) -> FunctionTask[P, R]: ...


@overload
def task(
    *,
    name: str | None = None,
    provides: str | tuple[str, ...] | None = None,
    rebind: Mapping[str, str] | None = None,
    inject: Mapping[str, Any] | None = None,
    timeout: float | None = None,
    shield: bool = False,
    retry: Retry | None = None,
) -> Callable[[Callable[P, R]], FunctionTask[P, R]]: ...


def task(
    fn: Callable[P, R] | None = None,
    /,
    *,
    name: str | None = None,
    provides: str | tuple[str, ...] | None = None,
    rebind: Mapping[str, str] | None = None,
    inject: Mapping[str, Any] | None = None,
    timeout: float | None = None,
    shield: bool = False,
    retry: Retry | None = None,
) -> FunctionTask[P, R] | Callable[[Callable[P, R]], FunctionTask[P, R]]:
    """Make a task of a function; ``async def`` runs on the loop, a plain ``def`` in a worker thread.

    Args:
        name: the task's name, unique within a flow; defaults to the function's name.
        provides: the name, or tuple of names, its return value is stored under.
            With several names, a returned tuple is unpacked in order and a
            returned mapping by name.
        rebind: parameter name -> the name of the value to read instead.
        inject: input name -> a constant passed to this task.
        timeout: seconds; past it the task fails with ``TimeoutError``.
        shield: when the revert walker cancels its branch, await this task
            instead of cancelling it.
        retry: shorthand for a checkpoint around this task alone.

    Raises:
        TaskDefinitionError: the function cannot be a task; the message says why.
    """
    options: dict[str, Any] = {
        "name": name,
        "provides": provides,
        "rebind": rebind,
        "inject": inject,
        "timeout": timeout,
        "shield": shield,
        "retry": retry,
    }

    def decorate(f: Callable[P, R]) -> FunctionTask[P, R]:
        _check_function(f)
        return FunctionTask(f, **options)

    if fn is not None:
        return decorate(fn)
    return decorate


def check_task_item(flow: str, item: object) -> None:
    """Raise a helpful error for an object that a flow cannot hold as a task."""
    if inspect.iscoroutine(item):
        qualname = getattr(item, "__name__", "the_task")
        item.close()
        raise TaskDefinitionError(
            qualname,
            f"flow {flow!r} got a coroutine object; pass the task itself, not a call of it: "
            f"`{qualname}` instead of `{qualname}(...)`.",
        )
    if callable(item) and not isinstance(item, Task | type):
        qualname = getattr(item, "__qualname__", repr(item))
        raise TaskDefinitionError(
            qualname, f"flow {flow!r} got a plain function; decorate it with `@ckflow.task` first."
        )
    if isinstance(item, type) and issubclass(item, Task):
        raise TaskDefinitionError(
            item.__name__, f"flow {flow!r} got the class {item.__name__}; pass an instance: `{item.__name__}()`."
        )
    raise TypeError(f"Flow {flow!r} cannot hold {item!r}: items are tasks, flows and checkpoints.")
