"""Tasks: the @task forms, the class form, revert, with_options, and the errors for misuse."""

from __future__ import annotations

import threading
from typing import Any

import anyio
import pytest

import ckflow
from ckflow import Linear, Retry, Task, task


async def provision() -> None:
    """A module-level coroutine function, as users usually write tasks."""


class TestTaskForms:
    """@task, @task(...), task(fn, ...) and the class form."""

    def test_bare_decorator_names_task_after_function(self) -> None:
        """@task without arguments makes a task named after the function, providing nothing."""

        @task
        async def make(size: int) -> int:
            return size

        assert isinstance(make, Task)
        assert make.name == "make"
        assert make.provided == ()
        assert make.requires == ("size",)

    def test_decorator_with_options(self) -> None:
        """@task(name=..., provides=...) sets the name and the provided value."""

        @task(name="custom", provides="volume")
        async def make(size: int) -> int:
            return size

        assert make.name == "custom"
        assert make.provided == ("volume",)

    def test_call_form(self) -> None:
        """task(fn, provides=...) is the same as decorating with @task(provides=...)."""

        async def make(size: int) -> int:
            return size

        t = task(make, provides="volume")
        assert t.name == "make"
        assert t.provided == ("volume",)

    def test_provides_tuple_is_normalised(self) -> None:
        """provides may be a tuple of names; .provided is always a tuple."""

        @task(provides=("a", "b"))
        async def pair() -> tuple[int, int]:
            return 1, 2

        assert pair.provided == ("a", "b")

    def test_defaults_make_inputs_optional(self) -> None:
        """Parameters with a default are optional inputs; the others are required."""

        @task
        async def make(size: int, zone: str = "eu") -> str:
            return zone

        assert make.requires == ("size", "zone")
        assert make.optional == frozenset({"zone"})

    async def test_optional_input_uses_default_when_unprovided(self) -> None:
        """A run without a value for an optional input calls the task with its default."""

        @task(provides="out")
        async def make(zone: str = "eu") -> str:
            return zone

        result = await ckflow.run(Linear("f", make))
        assert result.outputs["out"] == "eu"

    async def test_tuple_return_unpacked(self) -> None:
        """With several provides, a returned tuple is unpacked in order."""

        @task(provides=("a", "b"))
        async def pair() -> tuple[int, int]:
            return 1, 2

        result = await ckflow.run(Linear("f", pair))
        assert result.state == ckflow.FlowState.SUCCESS
        assert result.outputs["a"] == 1
        assert result.outputs["b"] == 2

    async def test_mapping_return_unpacked_by_name(self) -> None:
        """With several provides, a returned mapping is unpacked by name."""

        @task(provides=("a", "b"))
        async def pair() -> dict[str, int]:
            return {"b": 2, "a": 1, "extra": 3}

        result = await ckflow.run(Linear("f", pair))
        assert result.outputs["a"] == 1
        assert result.outputs["b"] == 2
        assert "extra" not in result.outputs

    def test_class_form_named_after_class(self) -> None:
        """A Task subclass is named after its class and reads provides/timeout from class attributes."""

        class Attach(Task):
            provides = "attachment"
            timeout = 5.0

            async def execute(self, volume: str) -> str:
                return volume

        t = Attach()
        assert t.name == "Attach"
        assert t.provided == ("attachment",)
        assert t.timeout == 5.0
        assert t.requires == ("volume",)

    def test_class_form_name_override(self) -> None:
        """Task(name=...) overrides the class name."""

        class Attach(Task):
            async def execute(self) -> None:
                return None

        assert Attach(name="other").name == "other"

    async def test_class_form_runs(self) -> None:
        """A class-form task runs with its inputs and its value is stored under provides."""

        class Double(Task):
            provides = "doubled"

            async def execute(self, x: int) -> int:
                return x * 2

        result = await ckflow.run(Linear("f", Double()), inputs={"x": 21})
        assert result.outputs["doubled"] == 42

    async def test_class_timeout_applies(self) -> None:
        """A class-level timeout fails a task that runs too long with TimeoutError, and the run reverts."""

        class Hang(Task):
            timeout = 0.01

            async def execute(self) -> None:
                await anyio.sleep_forever()

        result = await ckflow.run(Linear("f", Hang()))
        assert result.state == ckflow.FlowState.REVERTED
        assert [f.task for f in result.failures] == ["Hang"]
        assert "TimeoutError" in result.failures[0].exc_type

    async def test_sync_task_runs_in_worker_thread(self) -> None:
        """A plain `def` task runs in a worker thread, not on the event loop's thread."""
        loop_thread = threading.get_ident()

        @task(provides="tid")
        def which() -> int:
            return threading.get_ident()

        result = await ckflow.run(Linear("f", which))
        assert result.state == ckflow.FlowState.SUCCESS
        assert result.outputs["tid"] != loop_thread

    async def test_async_task_runs_on_loop_thread(self) -> None:
        """An `async def` task runs on the event loop's thread."""
        loop_thread = threading.get_ident()

        @task(provides="tid")
        async def which() -> int:
            return threading.get_ident()

        result = await ckflow.run(Linear("f", which))
        assert result.outputs["tid"] == loop_thread


class TestRevert:
    """.revert registration and what revert receives."""

    def test_revert_returns_function_and_registers(self) -> None:
        """.revert returns the function unchanged and the task then has a revert."""

        @task
        async def make(size: int) -> int:
            return size

        assert not make.has_revert

        async def undo(size: int, result: object) -> None:
            return None

        assert make.revert(undo) is undo
        assert make.has_revert

    async def test_revert_receives_inputs_and_result(self) -> None:
        """On a later failure, revert gets the task's inputs by name and its return value as `result`."""
        seen: dict[str, Any] = {}

        @task(provides="volume")
        async def make(size: int) -> str:
            return f"vol-{size}"

        @make.revert
        async def _(size: int, result: object) -> None:
            seen["size"] = size
            seen["result"] = result

        @task
        async def boom(volume: str) -> None:
            raise RuntimeError("no")

        result = await ckflow.run(Linear("f", make, boom), inputs={"size": 10})
        assert result.state == ckflow.FlowState.REVERTED
        assert seen == {"size": 10, "result": "vol-10"}

    async def test_revert_of_failed_task_gets_failure(self) -> None:
        """The failed task's own revert gets a ckflow.Failure describing the exception as `result`."""
        seen: list[object] = []

        @task
        async def boom() -> None:
            raise RuntimeError("broken disk")

        @boom.revert
        async def _(result: object) -> None:
            seen.append(result)

        result = await ckflow.run(Linear("f", boom))
        assert result.state == ckflow.FlowState.REVERTED
        assert len(seen) == 1
        failure = seen[0]
        assert isinstance(failure, ckflow.Failure)
        assert failure.task == "boom"
        assert "RuntimeError" in failure.exc_type
        assert "broken disk" in failure.message

    async def test_revert_may_take_a_subset(self) -> None:
        """A revert may ask for only some of the inputs, and need not take `result`."""
        seen: list[int] = []

        @task
        async def make(a: int, b: int) -> None:
            raise RuntimeError("x")

        @make.revert
        async def _(b: int) -> None:
            seen.append(b)

        await ckflow.run(Linear("f", make), inputs={"a": 1, "b": 2})
        assert seen == [2]

    async def test_class_form_revert(self) -> None:
        """A class-form task's revert method is called with inputs and result."""
        seen: list[tuple[str, object]] = []

        class Attach(Task):
            provides = "attachment"

            async def execute(self, volume: str) -> str:
                return f"att-{volume}"

            async def revert(self, volume: str, result: object) -> None:
                seen.append((volume, result))

        @task
        async def boom(attachment: str) -> None:
            raise RuntimeError("no")

        result = await ckflow.run(Linear("f", Attach(), boom), inputs={"volume": "v"})
        assert result.state == ckflow.FlowState.REVERTED
        assert seen == [("v", "att-v")]


class TestWithOptions:
    """with_options makes a separate copy with other options."""

    def test_copy_is_independent(self) -> None:
        """with_options returns a new task and leaves the original unchanged."""

        @task(provides="volume")
        async def make(size: int) -> str:
            return str(size)

        vol2 = make.with_options(name="vol2", rebind={"size": "size2"}, provides="volume2", timeout=3.0)
        assert vol2 is not make
        assert (vol2.name, vol2.requires, vol2.provided, vol2.timeout) == ("vol2", ("size2",), ("volume2",), 3.0)
        assert (make.name, make.requires, make.provided, make.timeout) == ("make", ("size",), ("volume",), None)

    def test_inject_on_copy_only(self) -> None:
        """inject given to with_options applies to the copy only."""

        @task
        async def make(size: int) -> None:
            return None

        copy = make.with_options(name="c", inject={"size": 3})
        assert copy.inject == {"size": 3}
        assert make.inject is None

    async def test_copy_and_original_run_side_by_side(self) -> None:
        """The original and a rebound copy run in one flow, each reading and providing its own names."""

        @task(provides="volume")
        async def make(size: int) -> str:
            return f"vol-{size}"

        vol2 = make.with_options(name="vol2", rebind={"size": "size2"}, provides="volume2")
        result = await ckflow.run(ckflow.Parallel("p", make, vol2), inputs={"size": 1, "size2": 2})
        assert result.outputs == {"volume": "vol-1", "volume2": "vol-2"}

    def test_revert_on_copy_leaves_original_alone(self) -> None:
        """Registering a revert on a copy does not give the original one."""

        @task
        async def make(size: int) -> None:
            return None

        copy: ckflow.FunctionTask[[int], Any] = make.with_options(name="c")

        @copy.revert
        async def _(size: int) -> None:
            return None

        assert copy.has_revert
        assert not make.has_revert

    def test_class_form_with_options(self) -> None:
        """with_options on a class-form task copies it, keeping the class defaults it does not override."""

        class Attach(Task):
            provides = "attachment"
            timeout = 5.0

            async def execute(self, volume: str) -> str:
                return volume

        original = Attach()
        copy = original.with_options(name="attach2", rebind={"volume": "volume2"}, provides="attachment2")
        assert (copy.name, copy.requires, copy.provided, copy.timeout) == (
            "attach2",
            ("volume2",),
            ("attachment2",),
            5.0,
        )
        assert (original.name, original.requires, original.provided) == ("Attach", ("volume",), ("attachment",))

    def test_with_options_keeps_revert(self) -> None:
        """A copy made after .revert keeps the revert."""

        @task
        async def make(size: int) -> None:
            return None

        @make.revert
        async def _(size: int) -> None:
            return None

        assert make.with_options(name="c").has_revert


class TestMisuse:
    """Mistakes in writing a task raise TaskDefinitionError where they are written."""

    def test_task_definition_error_is_flow_definition_error(self) -> None:
        """TaskDefinitionError is a FlowDefinitionError and a CkflowError."""
        assert issubclass(ckflow.TaskDefinitionError, ckflow.FlowDefinitionError)
        assert issubclass(ckflow.TaskDefinitionError, ckflow.CkflowError)

    def test_coroutine_object_to_task(self) -> None:
        """task(fn()) says to decorate the function, not a call of it."""
        with pytest.raises(ckflow.TaskDefinitionError) as info:
            task(provision())  # type: ignore[call-overload]
        assert info.value.task == "provision"
        assert "coroutine object" in str(info.value)
        assert "task(provision(...))" in str(info.value)
        assert "async def provision" in str(info.value)

    def test_coroutine_object_hint_for_nested_function(self) -> None:
        """The hint names a nested function as the user wrote it, without `<locals>`."""

        async def make() -> None:
            return None

        with pytest.raises(ckflow.TaskDefinitionError) as info:
            Linear("f", task(make)())  # type: ignore[arg-type]
        assert "<locals>" not in str(info.value)

    def test_coroutine_object_to_linear(self) -> None:
        """Linear("f", t()) shows the wrong call beside the right one."""
        with pytest.raises(ckflow.TaskDefinitionError) as info:
            Linear("f", task(provision)())  # type: ignore[arg-type]
        message = str(info.value)
        assert info.value.task == "provision"
        assert "'f'" in message
        assert "`provision`" in message
        assert "`provision(...)`" in message

    def test_plain_function_in_flow(self) -> None:
        """An undecorated function in a flow says to decorate it with @ckflow.task."""

        async def make() -> None:
            return None

        with pytest.raises(ckflow.TaskDefinitionError) as info:
            Linear("f", make)  # type: ignore[arg-type]
        assert "@ckflow.task" in str(info.value)
        assert "'f'" in str(info.value)

    def test_sync_revert_on_async_task(self) -> None:
        """A plain `def` revert on an `async def` task is refused."""

        @task
        async def make() -> None:
            return None

        def undo() -> None:
            return None

        with pytest.raises(ckflow.TaskDefinitionError) as info:
            make.revert(undo)
        assert info.value.task == "make"
        assert "async def" in str(info.value)
        assert not make.has_revert

    def test_parameter_named_result(self) -> None:
        """An execute parameter named `result` is reserved and the message suggests rebind."""

        with pytest.raises(ckflow.TaskDefinitionError) as info:

            @task
            async def make(result: int) -> None:
                return None

        assert info.value.task == "make"
        assert "reserved" in str(info.value)
        assert "rebind" in str(info.value)

    @pytest.mark.parametrize("star", ["args", "kwargs"])
    def test_star_parameters(self, star: str) -> None:
        """*args and **kwargs are refused: inputs are passed by name."""

        async def with_args(*args: int) -> None:
            return None

        async def with_kwargs(**kwargs: int) -> None:
            return None

        fn = with_args if star == "args" else with_kwargs
        with pytest.raises(ckflow.TaskDefinitionError) as info:
            task(fn)
        assert f"{'*' if star == 'args' else '**'}{star}" in str(info.value)

    def test_star_parameters_in_class_form(self) -> None:
        """The class form checks execute's signature when the class is defined."""
        with pytest.raises(ckflow.TaskDefinitionError) as info:

            class Bad(Task):
                async def execute(self, **kwargs: Any) -> None:
                    return None

        assert info.value.task == "Bad"

    def test_revert_unknown_parameter(self) -> None:
        """A revert parameter that is neither an input nor `result` is refused, naming it."""

        @task
        async def make(size: int) -> None:
            return None

        async def undo(sise: int) -> None:
            return None

        with pytest.raises(ckflow.TaskDefinitionError) as info:
            make.revert(undo)
        assert "'sise'" in str(info.value)
        assert "size" in str(info.value)

    def test_rebind_unknown_parameter(self) -> None:
        """rebind naming a parameter execute does not have is refused."""

        async def make(size: int) -> None:
            return None

        with pytest.raises(ckflow.TaskDefinitionError) as info:
            task(rebind={"sise": "x"})(make)
        assert info.value.task == "make"
        assert "'sise'" in str(info.value)

    def test_inject_unknown_input(self) -> None:
        """inject naming something that is not an input is refused."""

        async def make(size: int) -> None:
            return None

        with pytest.raises(ckflow.TaskDefinitionError) as info:
            task(inject={"zone": 1})(make)
        assert "'zone'" in str(info.value)

    def test_with_options_checks_rebind(self) -> None:
        """with_options validates rebind like the decorator does."""

        @task
        async def make(size: int) -> None:
            return None

        with pytest.raises(ckflow.TaskDefinitionError):
            make.with_options(rebind={"nope": "x"})

    @pytest.mark.parametrize("timeout", [0, -1.0, "5", True])
    def test_bad_timeout(self, timeout: object) -> None:
        """A timeout that is not a positive number is refused."""

        async def make() -> None:
            return None

        with pytest.raises(ckflow.TaskDefinitionError) as info:
            task(timeout=timeout)(make)  # type: ignore[call-overload]
        assert "timeout" in str(info.value)

    def test_bad_timeout_class_attribute(self) -> None:
        """A bad class-level timeout is refused when the task is instantiated."""

        class Slow(Task):
            timeout = -2.0

            async def execute(self) -> None:
                return None

        with pytest.raises(ckflow.TaskDefinitionError):
            Slow()

    def test_retry_zero_attempts(self) -> None:
        """Retry(attempts=0) raises ValueError where it is written."""
        with pytest.raises(ValueError, match="attempts"):
            Retry(attempts=0)
