"""ckflow: asyncio-native orchestration with checkpoints and partial revert.

Layering (each layer imports only the ones above it; docs/architecture.md draws the parts):

    _errors, _states, _failure, _policy, _checkpoint   the vocabulary; the retry policy as pure functions
    _task, _patterns                                   what users write: tasks and flows
    _compile, _region                                  flow tree -> execution graph; the walker's pure decisions
    _events, _models, _mermaid                         events and the log, results, renderings
    _records, _codec, _ids, stores                     what a store keeps, values as JSON, the stores themselves
    _runtime/                                          one run: its state, scheduler, revert walker, passes
    _durable/                                          writing a run to its store, rebuilding it from there
    _registry, _engine/                                flows by name; the engine (Engine, run, Run handles)
    _cli/                                              the command line (an application of the above)
"""

from __future__ import annotations

from ckflow._checkpoint import Checkpoint as Checkpoint
from ckflow._checkpoint import Retry as Retry
from ckflow._codec import register_codec as register_codec
from ckflow._engine import Engine as Engine
from ckflow._engine import Run as Run
from ckflow._engine import Worker as Worker
from ckflow._engine import run as run
from ckflow._errors import AmbiguousProviderError as AmbiguousProviderError
from ckflow._errors import Cancelled as Cancelled
from ckflow._errors import CkflowError as CkflowError
from ckflow._errors import CkflowInternalError as CkflowInternalError
from ckflow._errors import CycleError as CycleError
from ckflow._errors import DuplicateTaskError as DuplicateTaskError
from ckflow._errors import EventsOverflowError as EventsOverflowError
from ckflow._errors import FlowDefinitionError as FlowDefinitionError
from ckflow._errors import FlowNotRegisteredError as FlowNotRegisteredError
from ckflow._errors import InvalidInputError as InvalidInputError
from ckflow._errors import InvalidRunIdError as InvalidRunIdError
from ckflow._errors import LeaseLostError as LeaseLostError
from ckflow._errors import MisplacedCheckpointError as MisplacedCheckpointError
from ckflow._errors import MissingRequirementError as MissingRequirementError
from ckflow._errors import ProviderOrderError as ProviderOrderError
from ckflow._errors import ResultNotSerializableError as ResultNotSerializableError
from ckflow._errors import RunExistsError as RunExistsError
from ckflow._errors import RunFailedError as RunFailedError
from ckflow._errors import RunNotFoundError as RunNotFoundError
from ckflow._errors import RunOwnedError as RunOwnedError
from ckflow._errors import RunStateError as RunStateError
from ckflow._errors import SchemaVersionError as SchemaVersionError
from ckflow._errors import SiblingDependencyError as SiblingDependencyError
from ckflow._errors import StoreCorruptError as StoreCorruptError
from ckflow._errors import StoreError as StoreError
from ckflow._errors import StoreNotFoundError as StoreNotFoundError
from ckflow._errors import StoreUnavailableError as StoreUnavailableError
from ckflow._errors import TaskDefinitionError as TaskDefinitionError
from ckflow._errors import UnknownCheckpointError as UnknownCheckpointError
from ckflow._events import Event as Event
from ckflow._events import EventStream as EventStream
from ckflow._failure import Failure as Failure
from ckflow._mermaid import to_mermaid as to_mermaid
from ckflow._models import RegionReport as RegionReport
from ckflow._models import RunResult as RunResult
from ckflow._models import TaskSummary as TaskSummary
from ckflow._patterns import Flow as Flow
from ckflow._patterns import Graph as Graph
from ckflow._patterns import Linear as Linear
from ckflow._patterns import Parallel as Parallel
from ckflow._patterns import Periodic as Periodic
from ckflow._registry import register_flow as register_flow
from ckflow._registry import registered_flows as registered_flows
from ckflow._runtime._context import TaskContext as TaskContext
from ckflow._runtime._context import current as current
from ckflow._states import FlowState as FlowState
from ckflow._states import TaskState as TaskState
from ckflow._task import FunctionTask as FunctionTask
from ckflow._task import Task as Task
from ckflow._task import task as task
from ckflow._version import __version__ as __version__
from ckflow._view import FailureView as FailureView
from ckflow._view import RunView as RunView
from ckflow._view import TaskView as TaskView

__all__ = (
    "AmbiguousProviderError",
    "Cancelled",
    "Checkpoint",
    "CkflowError",
    "CkflowInternalError",
    "CycleError",
    "DuplicateTaskError",
    "Engine",
    "Event",
    "EventStream",
    "EventsOverflowError",
    "Failure",
    "FailureView",
    "Flow",
    "FlowDefinitionError",
    "FlowNotRegisteredError",
    "FlowState",
    "FunctionTask",
    "Graph",
    "InvalidInputError",
    "InvalidRunIdError",
    "LeaseLostError",
    "Linear",
    "MisplacedCheckpointError",
    "MissingRequirementError",
    "Parallel",
    "Periodic",
    "ProviderOrderError",
    "RegionReport",
    "ResultNotSerializableError",
    "Retry",
    "Run",
    "RunExistsError",
    "RunFailedError",
    "RunNotFoundError",
    "RunOwnedError",
    "RunResult",
    "RunStateError",
    "RunView",
    "SchemaVersionError",
    "SiblingDependencyError",
    "StoreCorruptError",
    "StoreError",
    "StoreNotFoundError",
    "StoreUnavailableError",
    "Task",
    "TaskContext",
    "TaskDefinitionError",
    "TaskState",
    "TaskSummary",
    "TaskView",
    "UnknownCheckpointError",
    "Worker",
    "__version__",
    "current",
    "register_codec",
    "register_flow",
    "registered_flows",
    "run",
    "task",
    "to_mermaid",
)


# Public objects report the package, not the private module that defines them.
def _report_the_package() -> None:
    for name in __all__:
        obj = globals()[name]
        if hasattr(obj, "__module__") and not isinstance(obj, str):
            try:
                obj.__module__ = "ckflow"
            except (AttributeError, TypeError):
                pass


_report_the_package()
del _report_the_package
