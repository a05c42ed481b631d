"""Run inputs checked against the annotations of the tasks that read them, when a run starts (DESIGN §12).

Each input a task reads from the run's inputs is validated (pydantic, lax mode) against the annotation of the
task's parameter, before any task runs and before anything is stored, and the run goes on with the validated
value: ``{"n": "7"}`` reaches ``n: int`` as ``7`` on the first pass, is stored as ``7``, and is ``7`` after a
resume. A value that does not fit is an ``InvalidInputError`` naming the task and the parameter.

When several tasks read one input under different annotations, the value must fit each of them, and each must
make the same value of it (same type, same JSON): ``"7"`` read as ``int`` by one task and as ``str`` by another is
refused, since no single value would reach both as they say. Parameters without an annotation (or ``Any``,
``object``, or a type pydantic cannot validate) are not checked; inputs that no task reads are kept as given.

The adapters are found once per compiled flow, on the first run given inputs, and kept on its ``ExecutionGraph``:
compiling looks at no annotation, and a run without inputs pays nothing.

``input_schema`` says the same as a JSON Schema object (what ``GET /flows`` shows): one property per input a task
reads from the run's inputs, typed by the readers' annotations, required unless every reader has a default.
"""

from __future__ import annotations

import json
import reprlib
from typing import TYPE_CHECKING, Any, final

import pydantic
import pydantic_core

from ckflow._codec import annotation_adapter, parameter_annotations
from ckflow._errors import InvalidInputError, MissingRequirementError

if TYPE_CHECKING:
    from collections.abc import Mapping

    from pydantic import TypeAdapter

    from ckflow._compile import ExecutionGraph

__all__ = ["InputChecks", "checked_inputs", "input_checks", "input_schema", "start_inputs"]

_SHORT = reprlib.Repr()
_SHORT.maxstring = _SHORT.maxother = 40


@final
class _Reader:
    """One task parameter that reads a run input, with the adapter of its annotation."""

    __slots__ = ("adapter", "annotation", "parameter", "task")

    def __init__(self, task: str, parameter: str, annotation: Any, adapter: TypeAdapter[Any]) -> None:
        self.task = task
        self.parameter = parameter
        self.annotation = annotation
        self.adapter = adapter


@final
class InputChecks:
    """For one compiled flow: input name -> the annotated parameters that read it (one per distinct adapter)."""

    __slots__ = ("decoders", "flow", "names", "readers", "schema")

    def __init__(self, graph: ExecutionGraph) -> None:
        self.flow = graph.flow_name
        #: every input a task reads from the run's inputs, in the order the tasks read them (typed or not)
        self.names: dict[str, None] = {}
        #: the flow's ``input_schema``, made on first use
        self.schema: dict[str, Any] | None = None
        readers: dict[str, list[_Reader]] = {}
        for node in graph.nodes:
            task = node.task
            if task is None or not node.input_in:
                continue
            hints = parameter_annotations(task)
            for param, name, _required in node.input_in:
                self.names[name] = None
                annotation = hints.get(param)
                adapter = annotation_adapter(annotation)
                if adapter is None:
                    continue
                known = readers.setdefault(name, [])
                # Adapters are cached per annotation: one check per distinct annotation is enough.
                if all(r.adapter is not adapter for r in known):
                    known.append(_Reader(node.name, param, annotation, adapter))
        self.readers = {name: tuple(found) for name, found in readers.items()}
        #: input name -> the adapter that decodes its stored value (the first reader's)
        self.decoders: dict[str, TypeAdapter[Any] | None] = {name: found[0].adapter for name, found in readers.items()}

    def check(self, inputs: dict[str, Any]) -> dict[str, Any]:
        """``inputs`` with each value that an annotated parameter reads replaced by its validated value.

        Raises:
            InvalidInputError: a value does not fit a reader's annotation, or two readers make different values of it.
        """
        for name, readers in self.readers.items():
            if name in inputs:
                inputs[name] = self._value(name, inputs[name], readers)
        return inputs

    def _value(self, name: str, value: Any, readers: tuple[_Reader, ...]) -> Any:
        first = readers[0]
        chosen = self._validate(first, name, value)
        for other in readers[1:]:
            coerced = self._validate(other, name, value)
            if not _same(coerced, chosen):
                problem = (
                    f"task {first.task!r} reads it as {_SHORT.repr(chosen)} ({_type_name(first.annotation)}) and "
                    f"this one as {_SHORT.repr(coerced)} ({_type_name(other.annotation)})"
                )
                error = {"type": "input_conflict", "loc": [], "msg": problem}
                raise InvalidInputError(
                    self.flow, other.task, other.parameter, name, [error], problem, "pass a value both take unchanged"
                )
        return chosen

    def _validate(self, reader: _Reader, name: str, value: Any) -> Any:
        try:
            return reader.adapter.validate_python(value)
        except pydantic.ValidationError as exc:
            errors: list[dict[str, Any]] = json.loads(exc.json(include_url=False))
            problem = "; ".join(_described(e) for e in errors)
            raise InvalidInputError(
                self.flow,
                reader.task,
                reader.parameter,
                name,
                errors,
                problem,
                f"pass a value that fits `{_type_name(reader.annotation)}`",
            ) from exc


def input_checks(graph: ExecutionGraph) -> InputChecks:
    """The input checks of ``graph``, built on first use and kept on it."""
    checks = graph.input_checks
    if not isinstance(checks, InputChecks):
        checks = graph.input_checks = InputChecks(graph)
    return checks


def checked_inputs(graph: ExecutionGraph, inputs: dict[str, Any]) -> dict[str, Any]:
    """``inputs`` (a dict of the caller's own) validated against the annotations of the tasks that read them."""
    return input_checks(graph).check(inputs)


def start_inputs(graph: ExecutionGraph, inputs: Mapping[str, Any] | None) -> dict[str, Any]:
    """The inputs a run of ``graph`` starts with: a dict of its own, each value a task reads validated.

    Raises:
        MissingRequirementError: a task reads an input that is not given (and has no default).
        InvalidInputError: a value does not fit the annotation of a task's parameter that reads it.
    """
    given = dict(inputs or {})
    required = graph.required_inputs
    if not given and not required:
        return given  # (most runs: nothing given, nothing required)
    missing = {name: tasks for name, tasks in required.items() if name not in given}
    if missing:
        raise MissingRequirementError(graph.flow_name, missing)
    # A run without inputs skips the checks (and the adapters are not looked for).
    return checked_inputs(graph, given) if given else given


def input_schema(graph: ExecutionGraph) -> dict[str, Any]:
    """The flow's run inputs as a JSON Schema object (validation mode), made once and kept with its checks.

    Each input a task reads from the run's inputs is a property, with its readers' annotations as its schema (all
    of them, ``allOf``, when they differ; ``{}`` when none says anything, or pydantic can give no schema for it),
    and is required unless every task that reads it has a default. Inputs that a task provides, or that a flow
    injects, are not inputs. Models and other named types are in ``$defs``. Other keys are allowed (kept as given).
    """
    checks = input_checks(graph)
    if checks.schema is None:
        checks.schema = _schema(checks, graph.required_inputs)
    return checks.schema


def _schema(checks: InputChecks, required: Mapping[str, object]) -> dict[str, Any]:
    typed = [
        (name, index, reader.adapter)
        for name, readers in checks.readers.items()
        for index, reader in enumerate(readers)
        if _has_schema(reader.adapter)
    ]
    by_key, defs = pydantic.TypeAdapter.json_schemas([((name, i), "validation", a) for name, i, a in typed])
    parts: dict[str, list[dict[str, Any]]] = {}
    for name, index, _ in typed:
        parts.setdefault(name, []).append(dict(by_key[(name, index), "validation"]))
    properties = {
        name: {} if not parts.get(name) else parts[name][0] if len(parts[name]) == 1 else {"allOf": parts[name]}
        for name in checks.names
    }
    schema: dict[str, Any] = {"title": checks.flow, "type": "object", "properties": properties}
    needed = [name for name in checks.names if name in required]
    if needed:
        schema["required"] = needed
    schema.update(defs)
    return schema


def _has_schema(adapter: TypeAdapter[Any]) -> bool:
    """Whether pydantic can give a JSON Schema for the adapter's type (not for arbitrary classes, callables...)."""
    try:
        adapter.json_schema()
    except pydantic.PydanticUserError:
        return False
    return True


def _described(error: dict[str, Any]) -> str:
    loc = ".".join(str(part) for part in error.get("loc", ()))
    got = f", got {_SHORT.repr(error['input'])}" if "input" in error and not loc else ""
    return f"{loc + ': ' if loc else ''}{error.get('msg', 'invalid')}{got}"


def _type_name(annotation: Any) -> str:
    if isinstance(annotation, type):
        return annotation.__qualname__
    return repr(annotation).replace("typing.", "")


def _json(value: Any) -> bytes | None:
    try:
        return pydantic_core.to_json(value, bytes_mode="base64")
    except Exception:
        return None


def _same(a: Any, b: Any) -> bool:
    """Whether two validated values are one value: same type, equal, and the same JSON (so ``[1]`` is not ``[1.0]``)."""
    if a is b:
        return True
    try:
        equal = type(a) is type(b) and bool(a == b)
    except Exception:
        return False
    return equal and _json(a) == _json(b)
