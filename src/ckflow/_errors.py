"""The ckflow exception tree.

::

    CkflowError
    ├── FlowDefinitionError            (raised when a flow is built, compiled or started)
    │   ├── TaskDefinitionError        (a task written wrongly: sync revert, reserved name, ...)
    │   ├── DuplicateTaskError
    │   ├── MissingRequirementError
    │   ├── AmbiguousProviderError
    │   ├── ProviderOrderError         (a Linear consumer before its provider)
    │   ├── SiblingDependencyError     (siblings of a Parallel depending on each other)
    │   ├── CycleError
    │   └── MisplacedCheckpointError
    ├── RunStateError                  (a control operation that the run's state forbids)
    ├── EventsOverflowError            (a subscriber fell further behind than its buffer)
    ├── RunFailedError                 (ExceptionGroup raised by RunResult.raise_for_state())
    ├── Cancelled                      (the reason recorded for a task the revert walker cancelled)
    └── CkflowInternalError            (a bug in ckflow)

Every message is built in ``__init__`` from named fields that stay available as
attributes, so tools and tests read ``.flow``, ``.task`` or ``.cycle`` rather
than parse text.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = [
    "AmbiguousProviderError",
    "Cancelled",
    "CkflowError",
    "CkflowInternalError",
    "CycleError",
    "DuplicateTaskError",
    "EventsOverflowError",
    "FlowDefinitionError",
    "MisplacedCheckpointError",
    "MissingRequirementError",
    "ProviderOrderError",
    "RunFailedError",
    "RunStateError",
    "SiblingDependencyError",
    "TaskDefinitionError",
]


class CkflowError(Exception):
    """Root of every error ckflow raises on purpose."""


class FlowDefinitionError(CkflowError):
    """A flow or task is defined in a way ckflow cannot run.

    Raised where the mistake is written (decoration, flow construction) or, for
    what needs the whole flow, when it is compiled or a run starts, before any
    task runs.
    """


class TaskDefinitionError(FlowDefinitionError, TypeError):
    """A task is written in a way ckflow cannot call; the message says what to write."""

    def __init__(self, task: str, problem: str) -> None:
        self.task = task
        self.problem = problem
        super().__init__(f"Task {task!r}: {problem}")


class DuplicateTaskError(FlowDefinitionError):
    """Two tasks of one flow tree share a name."""

    def __init__(self, flow: str, task: str) -> None:
        self.flow = flow
        self.task = task
        super().__init__(
            f"Flow {flow!r} holds two tasks named {task!r}; give one another name with `.with_options(name=...)`."
        )


class MissingRequirementError(FlowDefinitionError):
    """A required input is provided by no task, no inject and no run input."""

    def __init__(self, flow: str, missing: dict[str, tuple[str, ...]]) -> None:
        self.flow = flow
        #: requirement name -> the tasks that need it
        self.missing = missing
        first = next(iter(missing))
        self.requirement = first
        self.task = missing[first][0]
        more = "" if len(missing) == 1 else f" (and {len(missing) - 1} more: {sorted(set(missing) - {first})})"
        super().__init__(
            f"Flow {flow!r}: task {self.task!r} requires {first!r}, which no task provides"
            f"{more}; add it to `inputs=`, to an `inject=` or to a task's `provides`."
        )


class AmbiguousProviderError(FlowDefinitionError):
    """Two tasks of one flow provide the same name."""

    def __init__(self, flow: str, name: str, providers: tuple[str, str]) -> None:
        self.flow = flow
        self.name = name
        self.providers = providers
        self.task = providers[1]
        super().__init__(
            f"Flow {flow!r}: both {providers[0]!r} and {providers[1]!r} provide {name!r}; "
            f"rename one with `.with_options(provides=...)`."
        )


class ProviderOrderError(FlowDefinitionError):
    """In a Linear, a task consumes a value that a later item provides."""

    def __init__(self, flow: str, task: str, requirement: str, provider: str) -> None:
        self.flow = flow
        self.task = task
        self.requirement = requirement
        self.provider = provider
        super().__init__(
            f"Linear {flow!r}: task {task!r} requires {requirement!r}, but its provider "
            f"{provider!r} comes later; move {provider!r} before {task!r} or use a Graph."
        )


class SiblingDependencyError(FlowDefinitionError):
    """Two siblings of a Parallel depend on each other."""

    def __init__(self, flow: str, task: str, requirement: str, provider: str) -> None:
        self.flow = flow
        self.task = task
        self.requirement = requirement
        self.provider = provider
        super().__init__(
            f"Parallel {flow!r}: task {task!r} requires {requirement!r} from its sibling "
            f"{provider!r}, and siblings of a Parallel run unordered; use a Linear or a Graph."
        )


class CycleError(FlowDefinitionError):
    """The dependencies of a Graph form a cycle."""

    def __init__(self, flow: str, cycle: Sequence[str]) -> None:
        self.flow = flow
        self.cycle = tuple(cycle)
        self.task = self.cycle[0]
        path = " -> ".join((*self.cycle, self.cycle[0]))
        super().__init__(f"Graph {flow!r} has a dependency cycle: {path}; remove one of these edges.")


class MisplacedCheckpointError(FlowDefinitionError):
    """A Checkpoint marker stands where it cannot scope anything, or its name is taken."""

    def __init__(self, flow: str, checkpoint: str, problem: str) -> None:
        self.flow = flow
        self.checkpoint = checkpoint
        self.problem = problem
        super().__init__(f"Flow {flow!r}: checkpoint {checkpoint!r} {problem}")


class RunStateError(CkflowError):
    """A control operation the run's current state does not allow, or an unknown name."""


class EventsOverflowError(CkflowError):
    """Raised by a ``run.events()`` iterator whose buffer filled up: the engine never waits for a reader."""

    def __init__(self, run_id: str, buffer: int) -> None:
        self.run_id = run_id
        self.buffer = buffer
        super().__init__(
            f"Run {run_id!r}: this events() subscriber fell {buffer} events behind and was cut off; "
            "read faster, or pass a larger `buffer=` to run.events()."
        )


class Cancelled(CkflowError):
    """Recorded as the failure of a task that ckflow cancelled (never raised to users)."""


class RunFailedError(ExceptionGroup[Exception], CkflowError):
    """Raised by ``RunResult.raise_for_state()``: the original causes of a run that did not succeed."""


class CkflowInternalError(CkflowError):
    """A bug in ckflow; please report it with the message and traceback."""
