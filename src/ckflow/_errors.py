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
    │   ├── RunNotFoundError           (no run has that id, in the engine or its store)
    │   ├── RunExistsError             (a run id is taken)
    │   ├── RunOwnedError              (another live engine holds the run's lease)
    │   ├── InvalidRunIdError          (a run id that is not a short, printable, UTF-8 string)
    │   └── UnknownCheckpointError     (the flow has no checkpoint of that name)
    ├── InvalidInputError              (a run input does not fit the annotation of a task that reads it)
    ├── FlowNotRegisteredError         (no flow was registered under a name)
    ├── StoreError                     (a store cannot do what was asked)
    │   ├── StoreUnavailableError      (cannot connect, or the file is not a ckflow store)
    │   │   └── StoreNotFoundError     (opened with create=False, and no store is there)
    │   ├── SchemaVersionError         (the store was written by a newer ckflow)
    │   ├── StoreCorruptError          (the SQLite file is damaged)
    │   ├── ResultNotSerializableError (a task's value cannot be stored as JSON)
    │   └── LeaseLostError             (another engine took the run over; this one stops)
    ├── EventsOverflowError            (a subscriber fell further behind than its buffer)
    ├── RunFailedError                 (ExceptionGroup raised by RunResult.raise_for_state())
    ├── Cancelled                      (the reason recorded for a task the revert walker cancelled)
    └── CkflowInternalError            (a bug in ckflow)

Every message is built in ``__init__`` from named fields that stay available as
attributes, so tools and tests read ``.flow``, ``.task`` or ``.cycle`` rather
than parse text.
"""

from __future__ import annotations

import datetime
import shlex
from typing import TYPE_CHECKING, Any, Final

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
    "FlowNotRegisteredError",
    "InvalidInputError",
    "InvalidRunIdError",
    "LeaseLostError",
    "MisplacedCheckpointError",
    "MissingRequirementError",
    "ProviderOrderError",
    "ResultNotSerializableError",
    "RunExistsError",
    "RunFailedError",
    "RunNotFoundError",
    "RunOwnedError",
    "RunStateError",
    "SchemaVersionError",
    "SiblingDependencyError",
    "StoreCorruptError",
    "StoreError",
    "StoreNotFoundError",
    "StoreUnavailableError",
    "TaskDefinitionError",
    "UnknownCheckpointError",
]


#: the longest run id every store keeps (PostgreSQL indexes it; a run id is a name, not a payload)
RUN_ID_MAX_LENGTH: Final = 200


def _wall(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


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


class RunNotFoundError(RunStateError, LookupError):
    """No run has this id, neither in the engine nor in its store."""

    def __init__(self, run_id: str, where: str) -> None:
        self.run_id = run_id
        self.where = where
        super().__init__(f"No run has id {run_id!r} in {where}; list the runs with `ckflow runs`.")


class RunExistsError(RunStateError):
    """A run with this id already exists; run ids are unique within a store."""

    def __init__(self, run_id: str, where: str) -> None:
        self.run_id = run_id
        self.where = where
        super().__init__(
            f"A run with id {run_id!r} already exists in {where}; pick another id, or resume it "
            "with `engine.resume(run_id)`."
        )


class RunOwnedError(RunStateError):
    """Another engine holds the run's lease and keeps renewing it: it runs there."""

    def __init__(self, run_id: str, owner: str, lease_expires: float | None) -> None:
        self.run_id = run_id
        self.owner = owner
        self.lease_expires = lease_expires
        until = "" if lease_expires is None else f" (lease until {_wall(lease_expires)})"
        super().__init__(
            f"Run {run_id!r} is held by engine {owner!r}{until}; control it through "
            "`await engine.attach(run_id)`, or resume it here once that engine is gone and its lease lapses."
        )


class InvalidRunIdError(RunStateError, ValueError):
    """A run id that every store cannot keep as it is: empty, too long, with control characters, or not UTF-8."""

    def __init__(self, run_id: object, problem: str) -> None:
        #: the id as given (it may be long, or not even a string)
        self.run_id = run_id
        self.problem = problem
        shown = repr(run_id)
        if len(shown) > 60:
            shown = f"{shown[:50]}...{shown[-7:]} ({len(run_id) if isinstance(run_id, str) else '?'} characters)"
        super().__init__(
            f"Run id {shown} {problem}; use a non-empty string of at most {RUN_ID_MAX_LENGTH} printable characters, "
            "such as letters, digits, '-', '_', '.' and ':'."
        )


class UnknownCheckpointError(RunStateError, LookupError):
    """The run's flow has no checkpoint of this name."""

    def __init__(self, run_id: str, flow: str, checkpoint: str, known: Sequence[str]) -> None:
        self.run_id = run_id
        self.flow = flow
        self.checkpoint = checkpoint
        self.known = tuple(known)
        super().__init__(
            f"Run {run_id!r} of flow {flow!r} has no checkpoint {checkpoint!r}; its checkpoints are {list(known)}."
        )


class InvalidInputError(CkflowError, ValueError):
    """A run input does not fit the annotation of a task's parameter that reads it; refused before the run starts.

    ``errors`` is pydantic's list of errors as JSON data (``loc``, ``msg``, ``type``, ``input``), so that an HTTP
    layer can answer 422 naming the field.
    """

    def __init__(
        self,
        flow: str,
        task: str,
        parameter: str,
        input: str,
        errors: Sequence[dict[str, Any]],
        problem: str,
        hint: str,
    ) -> None:
        self.flow = flow
        self.task = task
        self.parameter = parameter
        #: the name of the run input
        self.input = input
        self.errors = list(errors)
        self.problem = problem
        super().__init__(
            f"Flow {flow!r}: run input {input!r} does not fit parameter {parameter!r} of task {task!r} ({problem}); "
            f"{hint}."
        )


class FlowNotRegisteredError(CkflowError, LookupError):
    """No flow is registered under this name in this process."""

    def __init__(self, flow: str, known: Sequence[str]) -> None:
        self.flow = flow
        self.known = tuple(known)
        super().__init__(
            f"No flow is registered as {flow!r} in this process (registered: {sorted(known)}); call "
            f"`ckflow.register_flow({flow!r}, factory)` at import time, or pass `flow=`."
        )


class StoreError(CkflowError):
    """A store could not do what was asked; nothing it had already recorded is lost."""


class StoreUnavailableError(StoreError):
    """The store cannot be opened: the database is unreachable, or the file is not a ckflow store."""

    def __init__(self, url: str, problem: str) -> None:
        self.url = url
        self.problem = problem
        super().__init__(f"Store {url!r} cannot be opened: {problem}")


class StoreNotFoundError(StoreUnavailableError):
    """No store is there: ``open_store(url, create=False)`` found no file, or no ckflow tables, and made none."""

    def __init__(self, url: str, where: str) -> None:
        self.where = where
        super().__init__(
            url,
            f"no store is there ({where}); check the URL (a store is created only by what starts runs, "
            "such as `ckflow start` or `ckflow.Engine(store=...)`).",
        )


class SchemaVersionError(StoreError):
    """The store's schema is newer than this ckflow understands."""

    def __init__(self, url: str, found: int, supported: int) -> None:
        self.url = url
        self.found = found
        self.supported = supported
        super().__init__(
            f"Store {url!r} has schema version {found}, written by a newer ckflow; this ckflow reads up to "
            f"version {supported}: upgrade ckflow (`pip install -U ckflow`) before opening it."
        )


class StoreCorruptError(StoreError):
    """The SQLite file of a store is damaged (SQLite says "database disk image is malformed")."""

    def __init__(self, url: str, path: str, problem: str) -> None:
        self.url = url
        self.path = path
        self.problem = problem
        file = shlex.quote(path)
        super().__init__(
            f'Store {url!r} is damaged ({problem}): check it with `sqlite3 {file} "PRAGMA integrity_check"`, '
            f"then restore it from a backup, or save what is readable with "
            f'`sqlite3 {file} ".recover" | sqlite3 NEW.db` and use NEW.db.'
        )


def _article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


class ResultNotSerializableError(StoreError, TypeError):
    """A task returned (or a run was given as input) a value that cannot be stored as JSON."""

    def __init__(
        self, task: str | None, type_name: str, problem: str, *, input: str | None = None, value: object = None
    ) -> None:
        #: the task whose result it is (None for a run input)
        self.task = task
        #: the run input it is (None for a task result)
        self.input = input
        self.type_name = type_name
        self.problem = problem
        #: the value itself (in the process that produced it)
        self.value = value
        subject = f"Task {task!r} returned" if input is None else f"Run input {input!r} is"
        super().__init__(
            f"{subject} {_article(type_name)} {type_name}, which cannot be stored as JSON ({problem}); use JSON-able "
            "data or a pydantic model, or register a codec for the type with `ckflow.register_codec()`."
        )


class LeaseLostError(StoreError):
    """Another engine took the run over (this engine's lease had lapsed): this engine stops running it."""

    def __init__(self, run_id: str, owner: str) -> None:
        self.run_id = run_id
        self.owner = owner
        super().__init__(
            f"Run {run_id!r}: engine {owner!r} lost its lease (another engine took the run over after it "
            "lapsed); this engine stopped running it and the other one goes on."
        )


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
