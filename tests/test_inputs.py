"""Run inputs are validated against the annotations of the tasks that read them when a run starts (DESIGN §11, §12)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import anyio
import pydantic
import pytest

import ckflow
from ckflow import Engine, FlowNotRegisteredError, FlowState, InvalidInputError, Linear, MissingRequirementError, task

if TYPE_CHECKING:
    from pathlib import Path


class Order(pydantic.BaseModel):
    item: str
    qty: int


def reader(name: str, annotation: Any, seen: list[Any], *, default: Any = ...) -> ckflow.Task:
    """A task called ``name`` whose parameter ``n`` has ``annotation`` (none if ``annotation`` is ...)."""

    async def body(n: Any = default) -> None:
        seen.append(n)

    if default is ...:

        async def required(n: Any) -> None:
            seen.append(n)

        fn = required
    else:
        fn = body
    if annotation is ...:
        del fn.__annotations__["n"]
    else:
        fn.__annotations__["n"] = annotation
    fn.__name__ = fn.__qualname__ = name
    return task(fn)


@pytest.fixture(params=["memory", "sqlite"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return "memory://" if request.param == "memory" else f"sqlite:///{tmp_path / 'runs.db'}"


class TestCoercion:
    """A task gets its input as its annotation says, on the first pass and after a resume."""

    async def test_string_reaches_an_int_parameter_as_an_int(self) -> None:
        """ckflow.run: {"n": "7"} reaches `n: int` as 7, not '7'."""
        seen: list[Any] = []
        result = await ckflow.run(Linear("coerce", reader("a", int, seen)), inputs={"n": "7"})
        assert result.state is FlowState.SUCCESS
        assert seen == [7]
        assert type(seen[0]) is int

    async def test_same_value_after_a_resume_on_sqlite(self, tmp_path: Path) -> None:
        """engine.start stores the coerced value; the task sees 7 (an int) on the first pass and after a resume."""
        url = f"sqlite:///{tmp_path / 'runs.db'}"
        seen: list[Any] = []
        gate, started = anyio.Event(), anyio.Event()

        @task
        async def slow(n: int) -> None:
            seen.append(n)
            started.set()
            await gate.wait()

        flow = Linear("coerce-resume", slow)
        with anyio.CancelScope() as scope:
            async with Engine(store=url) as engine:
                await engine.start(flow, inputs={"n": "7"}, run_id="r")
                await started.wait()
                assert engine.store is not None
                assert json.loads((await engine.store.get_run("r")).inputs) == {"n": 7}
                scope.cancel()
        gate.set()
        async with Engine(store=url) as engine:
            result = await (await engine.resume("r", flow=flow)).wait()
        assert result.state is FlowState.SUCCESS
        assert seen == [7, 7]
        assert [type(v) for v in seen] == [int, int]

    async def test_dict_becomes_a_pydantic_model(self) -> None:
        """A dict given for `order: Order` reaches the task as an Order."""
        seen: list[Any] = []
        await ckflow.run(Linear("model", reader("a", Order, seen)), inputs={"n": {"item": "tea", "qty": "2"}})
        assert seen == [Order(item="tea", qty=2)]

    async def test_list_of_int(self) -> None:
        """`list[int]` coerces each item: ["1", 2] arrives as [1, 2]."""
        seen: list[Any] = []
        await ckflow.run(Linear("ints", reader("a", list[int], seen)), inputs={"n": ["1", 2]})
        assert seen == [[1, 2]]
        assert [type(v) for v in seen[0]] == [int, int]

    @pytest.mark.parametrize(("given", "expected"), [(None, None), ("3", 3)])
    async def test_optional(self, given: Any, expected: Any) -> None:
        """`int | None` takes None and coerces "3" to 3."""
        seen: list[Any] = []
        await ckflow.run(Linear("optional", reader("a", int | None, seen)), inputs={"n": given})
        assert seen == [expected]

    async def test_a_default_is_used_as_is_and_a_given_value_is_checked(self) -> None:
        """A parameter with a default gets its default when the input is missing, and a given value is coerced."""
        seen: list[Any] = []
        flow = Linear("defaults", reader("a", int, seen, default="not checked"))
        await ckflow.run(flow)
        await ckflow.run(flow, inputs={"n": "8"})
        assert seen == ["not checked", 8]
        with pytest.raises(InvalidInputError):
            await ckflow.run(flow, inputs={"n": "eight"})

    @pytest.mark.parametrize("annotation", [..., Any, object], ids=["none", "Any", "object"])
    async def test_unannotated_parameters_are_untouched(self, annotation: Any) -> None:
        """A parameter without an annotation (or `Any`, `object`) gets the value as given."""
        seen: list[Any] = []
        await ckflow.run(Linear("untyped", reader("a", annotation, seen)), inputs={"n": "7"})
        assert seen == ["7"]

    async def test_inputs_no_task_reads_are_kept_as_given(self) -> None:
        """An input that no task reads is stored as given, unchecked."""
        seen: list[Any] = []
        async with Engine(store="memory://") as engine:
            run = await engine.start(Linear("extra", reader("a", int, seen)), {"n": "1", "extra": "7"}, run_id="r")
            await run.wait()
            assert engine.store is not None
            assert json.loads((await engine.store.get_run("r")).inputs) == {"n": 1, "extra": "7"}

    async def test_adapters_are_built_on_the_first_run_with_inputs_and_kept(self) -> None:
        """Compiling looks at no annotation; the checks are built once per compiled flow and reused."""
        flow = Linear("lazy", reader("a", int, []))
        graph = flow.compile()
        assert flow.compile().input_checks is None
        await ckflow.run(flow, inputs={"n": 1})
        checks = graph.input_checks
        assert checks is not None
        await ckflow.run(flow, inputs={"n": 2})
        assert graph.input_checks is checks


class TestRefusal:
    """A value that does not fit is refused with InvalidInputError before any task runs or anything is stored."""

    async def test_run_refuses_before_any_task_runs(self) -> None:
        """ckflow.run: "abc" for `n: int` raises InvalidInputError naming flow, task, parameter and input."""
        ran: list[Any] = []

        @task
        async def first() -> None:
            ran.append("first")

        flow = Linear("refuse", first, reader("count", int, ran).with_options(rebind={"n": "amount"}))
        with pytest.raises(InvalidInputError, match=r"run input 'amount' does not fit parameter 'n' of task 'count'"):
            await ckflow.run(flow, inputs={"amount": "abc"})
        assert ran == []

    async def test_attributes(self) -> None:
        """The error keeps flow, task, parameter, input and pydantic's errors as JSON data."""
        with pytest.raises(InvalidInputError) as caught:
            await ckflow.run(Linear("attrs", reader("a", int, [])), inputs={"n": "abc"})
        error = caught.value
        assert (error.flow, error.task, error.parameter, error.input) == ("attrs", "a", "n", "n")
        assert [(e["type"], e["loc"], e["input"]) for e in error.errors] == [("int_parsing", [], "abc")]
        assert isinstance(error, ckflow.CkflowError)
        assert isinstance(error, ValueError)
        json.dumps(error.errors)

    async def test_a_model_field_is_named(self) -> None:
        """A model input with a bad field: the error's loc names the field."""
        with pytest.raises(InvalidInputError, match="qty") as caught:
            await ckflow.run(Linear("field", reader("a", Order, [])), inputs={"n": {"item": "tea", "qty": "x"}})
        assert [e["loc"] for e in caught.value.errors] == [["qty"]]

    async def test_start_stores_nothing(self, store_url: str) -> None:
        """engine.start on memory:// and SQLite: the refused run has no record in the store and no task ran."""
        ran: list[Any] = []
        async with Engine(store=store_url) as engine:
            with pytest.raises(InvalidInputError):
                await engine.start(Linear("nothing", reader("a", int, ran)), {"n": "abc"}, run_id="r")
            assert engine.store is not None
            assert await engine.store.list_runs() == []
            assert "r" not in engine.runs
        assert ran == []

    async def test_missing_input_is_still_missing_requirement_error(self) -> None:
        """A required input that is not given is MissingRequirementError, as before."""
        with pytest.raises(MissingRequirementError):
            await ckflow.run(Linear("missing", reader("a", int, [])), inputs={"other": 1})


class TestTwoReaders:
    """An input read by several tasks must fit each annotation and give each the same value."""

    async def test_one_value_for_both(self) -> None:
        """`int` and `int | None` both coerce "7" to 7: accepted, and both tasks get 7."""
        seen: list[Any] = []
        flow = Linear("both", reader("a", int, seen), reader("b", int | None, seen))
        await ckflow.run(flow, inputs={"n": "7"})
        assert seen == [7, 7]

    async def test_a_value_that_one_refuses(self) -> None:
        """ "x" fits `str` but not `int`: refused, naming the task that reads it as int."""
        flow = Linear("one-refuses", reader("a", str, []), reader("b", int, []))
        with pytest.raises(InvalidInputError) as caught:
            await ckflow.run(flow, inputs={"n": "x"})
        assert caught.value.task == "b"

    async def test_different_values_are_refused_naming_both_tasks(self) -> None:
        """ "7" becomes 7 for `int` and stays '7' for `str`: refused, the message names both tasks."""
        ran: list[Any] = []
        flow = Linear("conflict", reader("a", int, ran), reader("b", str, ran))
        with pytest.raises(InvalidInputError, match=r"task 'b'.*task 'a' reads it as 7 \(int\)") as caught:
            await ckflow.run(flow, inputs={"n": "7"})
        assert caught.value.errors[0]["type"] == "input_conflict"
        assert ran == []

    async def test_int_and_float_differ(self) -> None:
        """`list[int]` and `list[float]` make [1] and [1.0] of [1], which are equal but not one value: refused."""
        flow = Linear("floats", reader("a", list[int], []), reader("b", list[float], []))
        with pytest.raises(InvalidInputError, match=r"\[1\.0\]"):
            await ckflow.run(flow, inputs={"n": [1]})


class TestRegisteredName:
    """ckflow.run takes the name of a registered flow, as engine.start does."""

    async def test_run_by_name(self) -> None:
        """ckflow.run("name", inputs=...) builds the registered flow and checks its inputs."""
        seen: list[Any] = []
        ckflow.register_flow("inputs-registered", lambda: Linear("inputs-registered", reader("a", int, seen)))
        result = await ckflow.run("inputs-registered", inputs={"n": "5"})
        assert result.state is FlowState.SUCCESS
        assert seen == [5]
        with pytest.raises(InvalidInputError):
            await ckflow.run("inputs-registered", inputs={"n": "five"})

    async def test_unknown_name(self) -> None:
        """An unknown name is FlowNotRegisteredError."""
        with pytest.raises(FlowNotRegisteredError):
            await ckflow.run("inputs-not-registered")
