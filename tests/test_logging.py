"""Logging as a library does it: quiet by default, the stdlib ``ckflow`` loggers, structlog through ExtraAdder."""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
import textwrap
from typing import TYPE_CHECKING, Any

import anyio
import pytest
import structlog

import ckflow
import ckflow._events
from ckflow import Checkpoint, FlowState, Linear, Retry, task

if TYPE_CHECKING:
    from collections.abc import Iterator


def flaky_flow() -> Linear:
    """A task that fails once under a retrying checkpoint, then succeeds."""
    calls = {"n": 0}

    @task(provides="x")
    async def flaky() -> int:
        calls["n"] += 1
        if calls["n"] == 1:
            raise ConnectionError("first try")
        return 1

    return Linear("flaky", Checkpoint("cp", retry=Retry(attempts=2)), flaky)


def doomed_flow() -> Linear:
    @task
    async def a() -> None: ...

    @task
    async def boom() -> None:
        raise ValueError("boom")

    return Linear("doomed", a, boom)


def events_of(records: list[logging.LogRecord]) -> list[tuple[str, str, int]]:
    """(logger, event, level) of each ckflow record."""
    return [(r.name, getattr(r, "event", ""), r.levelno) for r in records if r.name.startswith("ckflow")]


class TestQuietByDefault:
    def test_nothing_on_stdout_or_stderr_with_nothing_configured(self, tmp_path: Any) -> None:
        """A process that configures no logging gets nothing from ckflow on stdout or stderr, whatever happens:
        success, a retried failure, an escalation to REVERTED, a revert that raises, a durable run."""
        script = textwrap.dedent(
            """
            import anyio, ckflow
            from ckflow import Checkpoint, Linear, Retry, task

            n = {"c": 0}

            @task(provides="x")
            async def once() -> int:
                n["c"] += 1
                if n["c"] == 1:
                    raise RuntimeError("retried")
                return 1

            @task
            async def boom() -> None:
                raise ValueError("boom")

            @task
            async def fine() -> None: ...

            @fine.revert
            async def _() -> None:
                raise OSError("revert failed")

            async def main() -> None:
                flaky = Linear("a", Checkpoint("c", retry=Retry(attempts=2)), once)
                assert (await ckflow.run(flaky)).state == "SUCCESS"
                assert (await ckflow.run(Linear("b", fine.with_options(name="ok"), boom))).state == "FAILURE"
                assert (await ckflow.run(Linear("c", boom))).state == "REVERTED"
                async with ckflow.Engine(store="sqlite:///runs.db") as engine:
                    run = await engine.start(Linear("d", boom))
                    assert (await run.wait()).state == "REVERTED"

            anyio.run(main)
            """
        )
        done = subprocess.run(
            [sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout == ""
        assert done.stderr == ""

    async def test_no_record_is_made_for_disabled_levels(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """With logging as a fresh install leaves it (root at WARNING), a successful run and a retried failure make
        no LogRecord at all: a disabled level is one isEnabledFor check, nothing built."""
        made: list[str] = []
        factory = logging.getLogRecordFactory()

        def counting(*args: Any, **kwargs: Any) -> logging.LogRecord:
            record = factory(*args, **kwargs)
            if record.name.startswith("ckflow"):
                made.append(record.getMessage())
            return record

        monkeypatch.setattr(logging, "_logRecordFactory", counting)
        assert (await ckflow.run(flaky_flow())).state is FlowState.SUCCESS
        await anyio.lowlevel.checkpoint()  # held failure lines would be written now
        assert made == []


class TestStdlibLogging:
    async def test_transitions_at_debug_with_fields(self, caplog: pytest.LogCaptureFixture) -> None:
        """Task transitions go to logger 'ckflow.task' at DEBUG, each record carrying run_id, flow, task, attempt,
        checkpoint, old and new as attributes, and a message that names them."""
        with caplog.at_level(logging.DEBUG, "ckflow"):
            result = await ckflow.run(flaky_flow(), run_id="r-1")
        assert result.state is FlowState.SUCCESS
        running = [r for r in caplog.records if getattr(r, "event", "") == "ckflow.task.running"]
        assert [r.levelno for r in running] == [logging.DEBUG, logging.DEBUG]
        first = running[0]
        assert first.name == "ckflow.task"
        fields = {k: getattr(first, k) for k in ("run_id", "flow", "task", "attempt", "checkpoint", "old", "new")}
        assert fields == {
            "run_id": "r-1",
            "flow": "flaky",
            "task": "flaky",
            "attempt": 1,
            "checkpoint": "cp",
            "old": "PENDING",
            "new": "RUNNING",
        }
        assert first.getMessage().startswith("ckflow.task.running run_id=r-1 flow=flaky task=flaky")
        assert running[1].attempt == 2  # type: ignore[attr-defined]

    async def test_levels(self, caplog: pytest.LogCaptureFixture) -> None:
        """A failure its checkpoint retries is INFO; one that escalates is WARNING, as is the run that ends
        REVERTED; a revert that raises and a run that ends FAILURE are ERROR."""

        @task
        async def fine() -> None: ...

        @fine.revert
        async def _() -> None:
            raise OSError("revert failed")

        @task
        async def boom() -> None:
            raise ValueError("boom")

        with caplog.at_level(logging.INFO, "ckflow"):
            await ckflow.run(flaky_flow())
            retried = events_of(caplog.records)
            caplog.clear()
            await ckflow.run(doomed_flow())
            escalated = events_of(caplog.records)
            caplog.clear()
            await ckflow.run(Linear("broken", fine, boom))
            broken = events_of(caplog.records)
        assert ("ckflow.task", "ckflow.task.failure", logging.INFO) in retried
        assert ("ckflow.walker", "ckflow.walker.retry", logging.INFO) in retried
        assert not [e for e in retried if e[2] >= logging.WARNING]
        assert ("ckflow.task", "ckflow.task.failure", logging.WARNING) in escalated
        assert ("ckflow.run", "ckflow.run.reverted", logging.WARNING) in escalated
        assert ("ckflow.task", "ckflow.task.revert_failure", logging.ERROR) in broken
        assert ("ckflow.run", "ckflow.run.failure", logging.ERROR) in broken

    async def test_failure_record_carries_the_exception(self, caplog: pytest.LogCaptureFixture) -> None:
        """A failure's record has the task's exception as exc_info, so handlers print its traceback."""
        with caplog.at_level(logging.INFO, "ckflow"):
            await ckflow.run(doomed_flow())
        [record] = [r for r in caplog.records if getattr(r, "event", "") == "ckflow.task.failure"]
        assert record.exc_info is not None
        assert isinstance(record.exc_info[1], ValueError)
        assert "ValueError: boom" in caplog.text

    async def test_a_cancel_is_no_warning(self, caplog: pytest.LogCaptureFixture) -> None:
        """A run cancelled on request ends REVERTED at INFO: no failure, no warning."""
        gate = anyio.Event()

        @task
        async def wait() -> None:
            await gate.wait()

        with caplog.at_level(logging.DEBUG, "ckflow"):
            async with ckflow.Engine() as engine:
                run = await engine.start(Linear("held", wait))
                await anyio.wait_all_tasks_blocked()
                await run.cancel()
                assert (await run.wait()).state is FlowState.REVERTED
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
        assert ("ckflow.run", "ckflow.run.reverted", logging.INFO) in events_of(caplog.records)

    async def test_set_level_on_ckflow_silences_it(self, caplog: pytest.LogCaptureFixture) -> None:
        """logging.getLogger('ckflow').setLevel(CRITICAL) silences every ckflow logger, warnings included."""
        log = logging.getLogger("ckflow")
        with caplog.at_level(logging.DEBUG):  # the root logger takes everything...
            log.setLevel(logging.CRITICAL)  # ...but ckflow says nothing
            try:
                await ckflow.run(doomed_flow())
            finally:
                log.setLevel(logging.NOTSET)
        assert events_of(caplog.records) == []

    async def test_a_family_logger_is_set_on_its_own(self, caplog: pytest.LogCaptureFixture) -> None:
        """'ckflow.task' at WARNING drops task transitions while 'ckflow.walker' still says what it decided."""
        task_log = logging.getLogger("ckflow.task")
        with caplog.at_level(logging.DEBUG, "ckflow"):
            task_log.setLevel(logging.WARNING)
            try:
                await ckflow.run(flaky_flow())
            finally:
                task_log.setLevel(logging.NOTSET)
        names = {e[0] for e in events_of(caplog.records)}
        assert "ckflow.task" not in names
        assert "ckflow.walker" in names

    async def test_region_line_at_its_level_with_no_subscriber(self, caplog: pytest.LogCaptureFixture) -> None:
        """With the log alone listening (no subscriber, no store), a region is written by 'ckflow.walker' at INFO
        when its checkpoint retries it and at WARNING when it escalates, with its members; 'ckflow.walker' at
        WARNING keeps the escalation and drops the retried region."""

        def regions() -> list[tuple[int, Any]]:
            found = caplog.records
            return [(r.levelno, r.members) for r in found if getattr(r, "event", "") == "ckflow.walker.region"]

        with caplog.at_level(logging.INFO, "ckflow"):
            await ckflow.run(flaky_flow())
            assert regions() == [(logging.INFO, ["flaky"])]
            caplog.clear()
            await ckflow.run(doomed_flow())
            assert regions() == [(logging.WARNING, ["a", "boom"])]
            caplog.clear()
            walker_log = logging.getLogger("ckflow.walker")
            walker_log.setLevel(logging.WARNING)
            try:
                await ckflow.run(flaky_flow())
                assert regions() == []
                await ckflow.run(doomed_flow())
                assert regions() == [(logging.WARNING, ["a", "boom"])]
            finally:
                walker_log.setLevel(logging.NOTSET)

    async def test_failure_line_waits_for_the_revert_and_keeps_its_place(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A task's failure reaches subscribers at once but the log only once its revert has started (a log write
        never delays a revert); the log lines come in the order of the events all the same."""
        names: list[str] = []
        at_revert: dict[str, list[str]] = {}

        @task
        async def boom() -> None:
            raise ValueError("boom")

        @boom.revert
        async def _(result: object) -> None:
            at_revert["events"] = list(names)
            at_revert["log"] = [getattr(r, "event", "") for r in caplog.records]

        with caplog.at_level(logging.DEBUG, "ckflow"):
            result = await ckflow.run(Linear("l", boom), on_event=lambda e: names.append(e.name))
        assert result.state is FlowState.REVERTED
        assert "ckflow.task.failure" in at_revert["events"]
        assert "ckflow.task.failure" not in at_revert["log"]
        assert [getattr(r, "event", "") for r in caplog.records] == names

    async def test_held_lines_are_written_when_the_loop_goes_round_or_the_run_ends(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        """Lines held behind a failure are written, in order, once the loop goes round, or at close()."""
        for finish in ("loop", "close"):
            caplog.clear()
            hub = ckflow._events.EventHub("r", "f")
            with caplog.at_level(logging.DEBUG, "ckflow"):
                hub.hold_log(logging.WARNING, "ckflow.task.failure", task="t")
                hub.emit(logging.WARNING, "ckflow.walker.exhausted", task="t")
                assert caplog.records == []
                if finish == "loop":
                    await anyio.lowlevel.checkpoint()
                else:
                    hub.close()
            assert [getattr(r, "event", "") for r in caplog.records] == [
                "ckflow.task.failure",
                "ckflow.walker.exhausted",
            ]


@pytest.fixture
def structlog_json() -> Iterator[io.StringIO]:
    """An application that renders stdlib records with structlog (ProcessorFormatter, ExtraAdder), as JSON."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[structlog.stdlib.ExtraAdder(), structlog.stdlib.add_log_level],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                structlog.processors.JSONRenderer(default=str),
            ],
        )
    )
    log = logging.getLogger("ckflow")
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    yield out
    log.removeHandler(handler)
    log.setLevel(logging.NOTSET)


class TestStructlog:
    async def test_events_arrive_as_key_values(self, structlog_json: io.StringIO) -> None:
        """In an application that brings stdlib records into structlog with ExtraAdder, each ckflow event arrives
        as key-values: event, run_id, flow, task, attempt, checkpoint; a failure with its traceback."""
        await ckflow.run(flaky_flow(), run_id="r-s")
        lines = [json.loads(line) for line in structlog_json.getvalue().splitlines()]
        [failure] = [entry for entry in lines if entry["event"] == "ckflow.task.failure"]
        assert failure["level"] == "info"
        assert (failure["run_id"], failure["flow"], failure["task"], failure["attempt"], failure["checkpoint"]) == (
            "r-s",
            "flaky",
            "flaky",
            1,
            "cp",
        )
        assert "ConnectionError: first try" in failure["exception"]
        [retry] = [entry for entry in lines if entry["event"] == "ckflow.walker.retry"]
        assert retry["checkpoint"] == "cp"
        assert retry["attempt"] == 2
        assert {entry["run_id"] for entry in lines} == {"r-s"}
