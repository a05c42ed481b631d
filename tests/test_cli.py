"""The `ckflow` command line over a store: reading runs, pruning them, and controlling them.

Commands run in this process through `ckflow._cli.main(argv)`, on a SQLite file in `tmp_path`,
with the flows of `tests/cli_flows.py` (`--import tests.cli_flows`). A run "that nobody owns" is
left in the store by an engine that stopped while one of its tasks ran; a run "that another engine
owns" runs in an engine of the test's event loop while the command runs in a worker thread.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import pytest
from tests import cli_flows

import ckflow
from ckflow import Engine, FlowState, TaskState
from ckflow._cli import main
from ckflow.stores import ControlRequest, RunRecord, open_store

IMPORT = ("--import", "tests.cli_flows")
#: the owner engine's heartbeat: how soon it carries out a command's request
BEAT = 0.05
ROOT = Path(__file__).resolve().parent.parent
TIME = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d"


@dataclass
class Done:
    status: int
    out: str
    err: str


#: `cli("runs", "--store", url)`: run a command in this thread
Cli = Callable[..., Done]
#: `await cli_thread(...)`: run a command in a worker thread, from an async test
CliThread = Callable[..., Awaitable[Done]]


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/runs.db"


@pytest.fixture(autouse=True)
def _fresh(monkeypatch: pytest.MonkeyPatch) -> None:
    """No store from the environment, no gates or log left by another test, and a quick --follow."""
    monkeypatch.delenv("CKFLOW_STORE", raising=False)
    monkeypatch.setattr("ckflow._cli._runs.FOLLOW_POLL", 0.01)
    cli_flows.GATES.clear()
    cli_flows.STARTED.clear()
    cli_flows.LOG.clear()


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Cli:
    """Run `ckflow ARGS...` in this thread; returns its exit status, stdout and stderr."""

    def run(*argv: str) -> Done:
        capsys.readouterr()  # what the test printed before (its engines' warnings) is not the command's
        status = main(list(argv))
        captured = capsys.readouterr()
        return Done(status, captured.out, captured.err)

    return run


@pytest.fixture
def cli_thread(capsys: pytest.CaptureFixture[str]) -> CliThread:
    """Run `ckflow ARGS...` in a worker thread (its own event loop), from an async test."""

    async def run(*argv: str) -> Done:
        capsys.readouterr()
        status = await anyio.to_thread.run_sync(main, list(argv))
        captured = capsys.readouterr()
        return Done(status, captured.out, captured.err)

    return run


class Terminal(io.StringIO):
    """A stream that says it is a terminal, to see what the command draws there."""

    def isatty(self) -> bool:
        return True


class Watched(io.StringIO):
    """A stream that another thread can wait on until some text has been written to it."""

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self._waits: list[tuple[str, threading.Event]] = []

    def write(self, text: str) -> int:
        with self._lock:
            n = super().write(text)
            for pattern, seen in self._waits:
                if re.search(pattern, self.getvalue()):
                    seen.set()
        return n

    def seen(self, pattern: str) -> threading.Event:
        """An event set once what was written matches ``pattern`` (a regular expression)."""
        event = threading.Event()
        with self._lock:
            self._waits.append((pattern, event))
            if re.search(pattern, self.getvalue()):
                event.set()
        return event


# -- runs in the store ----------------------------------------------------------------------


async def _finish(url: str) -> None:
    """Two ended runs: `ok-1` of flow "cli-line" (SUCCESS) and `flaky-1` of flow "cli-flaky" (REVERTED)."""
    async with Engine(store=url) as engine:
        assert (await (await engine.start("cli-line", inputs={"size": 3}, run_id="ok-1")).wait()).state == "SUCCESS"
        flaky = await engine.start("cli-flaky", inputs={"url": "http://example.com"}, run_id="flaky-1")
        assert (await flaky.wait()).state == "REVERTED"


def finished(url: str) -> None:
    anyio.run(_finish, url)


async def _leave(url: str, run_id: str, at: str) -> None:
    """A run of "cli-line" whose engine stopped while task `at` ran: RUNNING in the store, owned by nobody."""
    gate = cli_flows.GATES[at] = anyio.Event()
    started = cli_flows.STARTED[at] = anyio.Event()
    with anyio.CancelScope() as scope:
        async with Engine(store=url) as engine:
            await engine.start("cli-line", inputs={"size": 3}, run_id=run_id)
            await started.wait()
            scope.cancel()
    assert not gate.is_set()
    # The gates belong to this event loop: a command that takes the run over runs the tasks freely.
    cli_flows.GATES.clear()
    cli_flows.STARTED.clear()
    cli_flows.LOG.clear()


def left(url: str, run_id: str, at: str = "ship") -> None:
    anyio.run(_leave, url, run_id, at)


async def _read(url: str, run_id: str) -> tuple[RunRecord, dict[str, Any]]:
    async with open_store(url) as store:
        return await store.get_run(run_id), {t.task: t for t in await store.tasks(run_id)}


def stored(url: str, run_id: str) -> tuple[RunRecord, dict[str, Any]]:
    """The run's record and its task records, read from the store."""
    return anyio.run(_read, url, run_id)


async def _seed(url: str, records: list[RunRecord]) -> None:
    async with open_store(url) as store:
        for record in records:
            await store.create_run(record)


def seed(url: str, *runs: tuple[str, str, float | None]) -> None:
    """Runs written straight into the store: (id, state, days since it ended, or None if it has not)."""
    now = time.time()
    records = []
    for run_id, state, days in runs:
        ended = None if days is None else now - days * 86_400
        created = (ended or now) - 60
        records.append(
            RunRecord(
                run_id=run_id,
                flow="cli-line",
                state=FlowState(state),
                created_at=created,
                updated_at=ended or now,
                ended_at=ended,
            )
        )
    anyio.run(_seed, url, records)


async def _create(url: str) -> None:
    async with open_store(url):
        pass


def created(url: str) -> None:
    """An empty store at ``url`` (the commands that only read refuse a store that is not there)."""
    anyio.run(_create, url)


def unregister(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    """Forget flow ``name`` for this test, as a process that did not `--import tests.cli_flows` would."""
    from ckflow import _registry

    monkeypatch.delitem(_registry._FACTORIES, name)
    monkeypatch.delitem(_registry._BUILT, name, raising=False)


def rows(out: str) -> list[list[str]]:
    """The rows of a table printed on stdout, without its header, split into columns."""
    lines = [line for line in out.splitlines() if line.strip()]
    return [re.split(r"\s{2,}", line.strip()) for line in lines[1:]]


# -- global options -------------------------------------------------------------------------


class TestGlobalOptions:
    """Options every store command takes, before or after the command, and how errors end."""

    def test_no_store_is_a_usage_error(self, cli: Cli) -> None:
        """Without --store or $CKFLOW_STORE a store command exits 2 and says how to give one."""
        done = cli("runs")
        assert done.status == 2
        assert "--store URL" in done.err
        assert "CKFLOW_STORE" in done.err

    def test_store_from_the_environment(self, cli: Cli, url: str, monkeypatch: pytest.MonkeyPatch) -> None:
        """$CKFLOW_STORE stands for --store."""
        finished(url)
        monkeypatch.setenv("CKFLOW_STORE", url)
        done = cli("runs")
        assert done.status == 0
        assert "ok-1" in done.out

    def test_options_before_or_after_the_command(self, cli: Cli, url: str) -> None:
        """--store, --import and --json work before the command as well as after it."""
        finished(url)
        before = cli("--store", url, "--json", "runs")
        after = cli("runs", "--store", url, "--json")
        assert before.status == after.status == 0
        assert before.out == after.out
        assert json.loads(before.out.splitlines()[0])["run_id"] in ("ok-1", "flaky-1")
        assert cli("--import", "tests.cli_flows", "flows", "--json").status == 0

    def test_unknown_store_scheme(self, cli: Cli) -> None:
        """A URL with an unknown scheme is an error (exit 1) that lists the schemes ckflow knows."""
        done = cli("runs", "--store", "nosuch://x")
        assert done.status == 1
        assert done.err.startswith("ckflow: error: Unknown store scheme 'nosuch'")
        assert "sqlite://" in done.err

    def test_import_of_a_missing_module(self, cli: Cli) -> None:
        """--import of a module that does not exist is an error (exit 1) naming it."""
        done = cli("flows", "--import", "tests.no_such_flows")
        assert done.status == 1
        assert "ckflow: error: Cannot import 'tests.no_such_flows'" in done.err

    def test_no_command_prints_help(self, cli: Cli) -> None:
        """`ckflow` alone prints its help, listing the commands, and exits 2."""
        done = cli()
        assert done.status == 2
        for command in ("runs", "show", "events", "resume", "revert-to", "prune", "graph", "flows", "demo"):
            assert command in done.out

    def test_python_dash_m(self, url: str) -> None:
        """`python -m ckflow runs --store URL` lists the runs of the store in a process of its own."""
        finished(url)
        proc = subprocess.run(
            [sys.executable, "-m", "ckflow", "runs", "--store", url],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=60,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.splitlines()[0].split() == ["RUN", "FLOW", "STATE", "CREATED", "ENDED/UPDATED", "OWNER"]
        assert {r[0] for r in rows(proc.stdout)} == {"ok-1", "flaky-1"}
        assert proc.stderr == ""


# -- runs, show, events ---------------------------------------------------------------------


class TestRuns:
    """`ckflow runs`: a table of the store's runs, newest first."""

    def test_table_newest_first(self, cli: Cli, url: str) -> None:
        """`runs` prints one aligned row per run, newest first, with local times and owner."""
        finished(url)
        left(url, "held-1")
        done = cli("runs", "--store", url)
        assert done.status == 0
        table = rows(done.out)
        assert [r[0] for r in table] == ["held-1", "flaky-1", "ok-1"]
        assert table[0][1:3] == ["cli-line", "RUNNING"]
        assert table[1][1:3] == ["cli-flaky", "REVERTED"]
        assert re.fullmatch(TIME, table[0][3])
        assert table[0][5] == "-"  # its engine stopped: nobody owns it
        header, *lines = done.out.splitlines()
        for line, row in zip(lines, table, strict=True):
            assert line.index(row[2]) == header.index("STATE")  # aligned columns
            assert line.index(row[3]) == header.index("CREATED")

    def test_filters(self, cli: Cli, url: str) -> None:
        """--state (repeatable, any case) and --flow keep only the runs that match."""
        finished(url)
        left(url, "held-1")
        assert [r[0] for r in rows(cli("runs", "--store", url, "--state", "reverted").out)] == ["flaky-1"]
        both = cli("runs", "--store", url, "--state", "SUCCESS", "--state", "RUNNING").out
        assert [r[0] for r in rows(both)] == ["held-1", "ok-1"]
        assert [r[0] for r in rows(cli("runs", "--store", url, "--flow", "cli-line").out)] == ["held-1", "ok-1"]

    def test_json_lines(self, cli: Cli, url: str) -> None:
        """--json prints one run record per line, as the store keeps it."""
        finished(url)
        done = cli("runs", "--store", url, "--json")
        records = [RunRecord.model_validate(json.loads(line)) for line in done.out.splitlines()]
        assert {(r.run_id, r.state) for r in records} == {("ok-1", "SUCCESS"), ("flaky-1", "REVERTED")}

    def test_limit(self, cli: Cli, url: str) -> None:
        """--limit N shows the newest N runs and says on stderr that there are more."""
        finished(url)
        done = cli("runs", "--store", url, "--limit", "1")
        assert [r[0] for r in rows(done.out)] == ["flaky-1"]
        assert "Showing the newest 1 runs" in done.err

    def test_owner_and_lapsed_lease(self, cli: Cli, url: str) -> None:
        """The OWNER column names the engine holding the lease, marked when that lease has lapsed."""
        now = time.time()
        records = [
            RunRecord(
                run_id=run_id,
                flow="cli-line",
                state=FlowState.RUNNING,
                owner=owner,
                lease_expires=now + delta,
                created_at=now - 10 + i,
                updated_at=now,
            )
            for i, (run_id, owner, delta) in enumerate([("live", "host:1:aa", 60.0), ("dead", "host:2:bb", -90.0)])
        ]
        anyio.run(_seed, url, records)
        table = {r[0]: r[-1] for r in rows(cli("runs", "--store", url).out)}
        assert table == {"live": "host:1:aa", "dead": "host:2:bb (lapsed)"}
        assert re.search(
            r"^owner\s+host:2:bb \(lease lapsed 1m3\ds ago\)$", cli("show", "dead", "--store", url).out, re.M
        )
        live = cli("show", "live", "--store", url).out
        assert re.search(rf"^owner\s+host:1:aa \(lease until {TIME}, in (59|60)\.\ds\)$", live, re.M)

    def test_no_match(self, cli: Cli, url: str) -> None:
        """A filter that matches nothing prints nothing on stdout and says so on stderr."""
        finished(url)
        done = cli("runs", "--store", url, "--state", "FAILURE")
        assert (done.status, done.out) == (0, "")
        assert "No runs" in done.err

    def test_bad_state_is_a_usage_error(self, cli: Cli, url: str) -> None:
        """An unknown --state exits 2."""
        assert cli("runs", "--store", url, "--state", "DONE").status == 2


class TestShow:
    """`ckflow show RUN`: everything the store holds about one run."""

    def test_run_tasks_and_checkpoints(self, cli: Cli, url: str) -> None:
        """`show` prints the run's record, its tasks in flow order with failures, and its checkpoints."""
        finished(url)
        done = cli("show", "flaky-1", "--store", url, *IMPORT)
        assert done.status == 0
        out = done.out
        assert re.search(r"^state\s+REVERTED$", out, re.M)
        assert re.search(r"^flow\s+cli-flaky$", out, re.M)
        assert re.search(r"^owner\s+none", out, re.M)
        assert re.search(rf"^ended\s+{TIME} \(took ", out, re.M)
        assert '"url":"http://example.com"' in out
        tasks = out.split("\n\n")[1]
        assert [r[0] for r in rows(tasks)] == ["fetch", "parse", "index"]
        parse = next(r for r in rows(tasks) if r[0] == "parse")
        assert parse[1:3] == ["REVERTED", "2"]
        # the failure on one line, its newline folded
        assert parse[-1] == "ValueError: cannot parse <html>http:/: unexpected end of input at line 1"
        checkpoints = out.split("\n\n")[2]
        assert rows(checkpoints)[0][:5] == ["parsing", "1", "active", "2", "1"]
        assert re.search(r"^rows\s+tasks 3, checkpoints \d+, regions \d+, events \d+, requests 0$", out, re.M)
        assert re.search(r"^requests\s+none pending$", out, re.M)

    def test_tasks_not_yet_run_are_listed_with_the_flow(self, cli: Cli, url: str) -> None:
        """With the flow registered, tasks without a record yet show as PENDING, in the flow's order."""
        left(url, "held-1", at="prepare")
        done = cli("show", "held-1", "--store", url, *IMPORT)
        tasks = rows(done.out.split("\n\n")[1])
        assert [r[:2] for r in tasks] == [["prepare", "PENDING"], ["build", "PENDING"], ["ship", "PENDING"]]

    def test_pending_requests(self, cli: Cli, url: str) -> None:
        """A control request not yet carried out is listed with its operation and who asked."""
        left(url, "held-1")

        async def ask() -> None:
            async with open_store(url) as store:
                request = ControlRequest(
                    request_id="req-1",
                    run_id="held-1",
                    op="goto",
                    checkpoint="work",
                    requested_at=time.time(),
                    requested_by="someone",
                )
                await store.request(request)

        anyio.run(ask)
        done = cli("show", "held-1", "--store", url)
        assert re.search(r"^req-1\s+goto work\s+" + TIME + r"\s+someone$", done.out, re.M)

    def test_json(self, cli: Cli, url: str) -> None:
        """--json prints the run's ckflow.RunView: the run, its tasks with UTC times, its inputs and outputs as JSON."""
        finished(url)
        done = cli("show", "ok-1", "--store", url, "--json")
        doc = json.loads(done.out)
        assert set(ckflow.RunView.model_json_schema()["properties"]) == set(doc)
        assert doc["state"] == "SUCCESS"
        assert {t["name"]: t["state"] for t in doc["tasks"]} == {
            "prepare": "SUCCESS",
            "build": "SUCCESS",
            "ship": "SUCCESS",
        }
        assert isinstance(doc["inputs"], dict)
        assert isinstance(doc["outputs"], dict)
        for t in doc["tasks"]:
            assert datetime.fromisoformat(t["started_at"]).utcoffset() == timedelta(0)
            assert t["duration"] >= 0

    def test_unknown_run(self, cli: Cli, url: str) -> None:
        """An unknown run id is an error (exit 1) that says how to list the runs."""
        finished(url)
        done = cli("show", "nope", "--store", url)
        assert done.status == 1
        assert done.err.startswith("ckflow: error: No run has id 'nope' in store ")
        assert done.err.endswith("; list the runs with `ckflow runs`.\n")
        assert done.out == ""


class TestEvents:
    """`ckflow events RUN`: the run's event history, and with --follow its new events."""

    def test_in_order(self, cli: Cli, url: str) -> None:
        """`events` prints every event in sequence order, with transitions, attempts and failures."""
        finished(url)
        done = cli("events", "flaky-1", "--store", url)
        assert done.status == 0
        lines = done.out.splitlines()
        assert lines[0].split() == ["SEQ", "TIME", "EVENT", "TASK", "CHANGE", "ATTEMPT", "CHECKPOINT", "DETAIL"]
        seqs = [int(line.split()[0]) for line in lines[1:]]
        assert seqs == list(range(len(seqs)))
        assert re.match(rf"0\s+{TIME}\.\d\d\d\s+run\.running\s+PENDING->RUNNING$", lines[1])
        failure = next(line for line in lines if "task.failure" in line)
        assert re.search(r"parse\s+RUNNING->FAILURE\s+1\s+parsing\s+ValueError: cannot parse", failure)
        assert "retry: parse" in done.out  # the walker's region, with its action and members
        assert lines[-1].split()[3:5] == ["run.reverted", "RUNNING->REVERTED"]

    def test_after(self, cli: Cli, url: str) -> None:
        """--after SEQ starts after that sequence number."""
        finished(url)
        done = cli("events", "ok-1", "--store", url, "--after", "4")
        assert [int(line.split()[0]) for line in done.out.splitlines()[1:]] == [5, 6, 7]

    def test_json_lines(self, cli: Cli, url: str) -> None:
        """--json prints one event per line, in order."""
        finished(url)
        done = cli("events", "ok-1", "--store", url, "--json")
        events = [ckflow.Event.model_validate(json.loads(line)) for line in done.out.splitlines()]
        assert [e.seq for e in events] == list(range(len(events)))
        assert events[-1].name == "ckflow.run.success"

    async def test_follow_until_the_run_ends(
        self, url: str, cli_thread: CliThread, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """--follow prints the events so far, then new ones as they are written, and stops when the run ends."""
        out = Watched()
        monkeypatch.setattr(sys, "stdout", out)
        gate = cli_flows.GATES["ship"] = anyio.Event()
        started = cli_flows.STARTED["ship"] = anyio.Event()
        async with Engine(store=url, id="owner", heartbeat=BEAT, lease_ttl=2) as engine:
            run = await engine.start("cli-line", inputs={"size": 1}, run_id="r")
            await started.wait()
            async with anyio.create_task_group() as tg:
                follow: list[Done] = []

                async def follower() -> None:
                    follow.append(await cli_thread("events", "r", "--store", url, "--follow"))

                tg.start_soon(follower)
                # The command has printed ship RUNNING: only then does the run go on (and end).
                printed = out.seen(r"ship\s+PENDING->RUNNING")
                await anyio.to_thread.run_sync(printed.wait)
                assert "run.success" not in out.getvalue()
                gate.set()
                assert (await run.wait()).state is FlowState.SUCCESS
        assert follow[0].status == 0
        lines = out.getvalue().splitlines()
        assert lines[-1].split()[3] == "run.success"
        assert [int(line.split()[0]) for line in lines[1:]] == list(range(len(lines) - 1))
        assert follow[0].err.startswith("r: SUCCESS (")

    def test_unknown_run(self, cli: Cli, url: str) -> None:
        """Events of an unknown run: exit 1 with a clear message."""
        created(url)
        done = cli("events", "nope", "--store", url)
        assert done.status == 1
        assert "No run has id 'nope'" in done.err


# -- graph and flows ------------------------------------------------------------------------


class TestGraph:
    """`ckflow graph`: Mermaid text of a registered flow or of a run's flow."""

    def test_registered_flow(self, cli: Cli) -> None:
        """`graph NAME` prints the registered flow as Mermaid text, checkpoints as subgraphs."""
        done = cli("graph", "cli-line", *IMPORT)
        assert done.status == 0
        assert done.out == ckflow.to_mermaid(cli_flows.build_line())
        assert 'subgraph cp1["checkpoint work"]' in done.out
        assert "class " not in done.out

    def test_run_coloured_by_its_task_states(self, cli: Cli, url: str) -> None:
        """`graph --run RUN` draws the run's flow, each task coloured by its stored state."""
        finished(url)
        done = cli("graph", "--run", "flaky-1", "--store", url, *IMPORT)
        assert done.status == 0
        assert done.out.startswith("flowchart TD\n")
        assert re.search(r'n(\d+)\["parse"\]', done.out)
        assert "classDef reverted" in done.out
        assert "classDef success" not in done.out

    def test_json(self, cli: Cli) -> None:
        """--json wraps the Mermaid text in a document with the flow's name."""
        doc = json.loads(cli("graph", "cli-line", "--json", *IMPORT).out)
        assert doc["flow"] == "cli-line"
        assert doc["mermaid"].startswith("flowchart TD")

    def test_unregistered_flow(self, cli: Cli) -> None:
        """A name nobody registered is an error (exit 1) that points at --import."""
        done = cli("graph", "nope", *IMPORT)
        assert done.status == 1
        assert "No flow is registered as 'nope'" in done.err
        assert "--import MODULE" in done.err

    def test_name_or_run(self, cli: Cli, url: str) -> None:
        """NAME or --run is needed (exit 2 without either), and --run needs a store (exit 2)."""
        assert cli("graph").status == 2
        assert cli("graph", "--run", "r").status == 2
        assert cli("graph", "cli-line", "--run", "r").status == 2

    def test_name_and_run(self, cli: Cli, url: str) -> None:
        """`graph NAME --run RUN` (as the README writes it) draws the run when NAME is the run's flow."""
        finished(url)
        both = cli("graph", "cli-flaky", "--run", "flaky-1", "--store", url, *IMPORT)
        assert both.status == 0, both.err
        assert both.out == cli("graph", "--run", "flaky-1", "--store", url, *IMPORT).out
        assert "classDef reverted" in both.out

    def test_name_that_is_not_the_runs_flow(self, cli: Cli, url: str) -> None:
        """`graph NAME --run RUN` with another flow's NAME is an error (exit 1) naming the run's flow."""
        finished(url)
        done = cli("graph", "cli-line", "--run", "flaky-1", "--store", url, *IMPORT)
        assert done.status == 1
        assert "Run 'flaky-1' is a run of flow 'cli-flaky', not 'cli-line'" in done.err
        assert done.out == ""


class TestFlows:
    """`ckflow flows`: what `--import` registered."""

    def test_lists_registered_flows(self, cli: Cli) -> None:
        """`flows` lists every registered flow with its task count and checkpoints."""
        done = cli("flows", *IMPORT)
        assert done.status == 0
        table = {r[0]: r[1:] for r in rows(done.out)}
        assert table["cli-line"] == ["3", "work"]
        assert table["cli-flaky"] == ["3", "parsing"]

    def test_a_flow_that_does_not_compile_is_listed_with_what_is_wrong(
        self, cli: Cli, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """One broken registration does not hide the others: it is listed, with the compile error."""
        from ckflow import _registry

        @ckflow.task
        async def early(x: int) -> None: ...

        @ckflow.task(provides="x")
        async def late() -> int:
            return 1

        monkeypatch.setattr(_registry, "_FACTORIES", {})
        monkeypatch.setattr(_registry, "_BUILT", {})
        ckflow.register_flow("cli-broken", ckflow.Linear("cli-broken", early, late))
        ckflow.register_flow("cli-fine", ckflow.Linear("cli-fine", late))
        done = cli("flows", "--json")
        assert done.status == 0
        found = {f["name"]: f for f in json.loads(done.out)}
        assert "provider 'late' comes later" in found["cli-broken"]["error"]
        assert "error" not in found["cli-fine"]
        table = {r[0]: r[1:] for r in rows(cli("flows").out)}
        assert table["cli-broken"][1].startswith("does not compile")

    def test_none_registered(self, cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
        """With no flow registered, `flows` prints nothing and says how to register one."""
        from ckflow import _registry

        monkeypatch.setattr(_registry, "_FACTORIES", {})
        monkeypatch.setattr(_registry, "_BUILT", {})
        done = cli("flows")
        assert (done.status, done.out) == (0, "")
        assert "pass --import MODULE naming a module that calls ckflow.register_flow()" in done.err

    def test_json(self, cli: Cli) -> None:
        """--json prints the flows as one document with their tasks and checkpoints."""
        doc = json.loads(cli("flows", "--json", *IMPORT).out)
        line = next(f for f in doc if f["name"] == "cli-line")
        assert line == {"name": "cli-line", "tasks": ["prepare", "build", "ship"], "checkpoints": ["work"]}


# -- prune ----------------------------------------------------------------------------------


class TestPrune:
    """`ckflow prune`: deleting runs that ended before a cutoff."""

    def seeded(self, url: str) -> None:
        seed(
            url,
            ("old-ok", "SUCCESS", 40),
            ("old-failed", "FAILURE", 35),
            ("old-reverted", "REVERTED", 31),
            ("recent-ok", "SUCCESS", 1 / 24),
            ("old-suspended", "SUSPENDED", None),
        )

    def ids(self, url: str) -> set[str]:
        async def read() -> set[str]:
            async with open_store(url) as store:
                return {r.run_id for r in await store.list_runs()}

        return anyio.run(read)

    def test_dry_run_lists_and_deletes_nothing(self, cli: Cli, url: str) -> None:
        """--dry-run lists the runs that ended before the cutoff and leaves the store as it was."""
        self.seeded(url)
        done = cli("prune", "--store", url, "--dry-run")
        assert done.status == 0
        assert {r[0] for r in rows(done.out)} == {"old-ok", "old-failed", "old-reverted"}
        assert "Would delete 3 SUCCESS/REVERTED/FAILURE runs that ended before" in done.err
        assert len(self.ids(url)) == 5

    def test_deletes_ended_runs_older_than_the_cutoff(self, cli: Cli, url: str) -> None:
        """By default prune deletes runs that ended more than 30 days ago; recent and live runs stay."""
        self.seeded(url)
        done = cli("prune", "--store", url, "--yes")
        assert done.status == 0
        assert self.ids(url) == {"recent-ok", "old-suspended"}
        assert re.fullmatch(r"Deleted 3 SUCCESS/REVERTED/FAILURE runs that ended before .*\.\n", done.err)
        assert "\r" not in done.err  # no progress drawn when stderr is not a terminal

    def test_older_than_and_state(self, cli: Cli, url: str) -> None:
        """--older-than sets the cutoff and --state narrows the ended states."""
        self.seeded(url)
        assert cli("prune", "--store", url, "--yes", "--older-than", "36d", "--state", "SUCCESS").status == 0
        assert "old-ok" not in self.ids(url)
        assert cli("prune", "--store", url, "--yes", "--older-than", "30m", "--state", "success").status == 0
        assert self.ids(url) == {"old-failed", "old-reverted", "old-suspended"}

    def test_asks_before_deleting(self, cli: Cli, url: str, monkeypatch: pytest.MonkeyPatch) -> None:
        """Without --yes and without a terminal to ask on, prune refuses (exit 1) and deletes nothing."""
        self.seeded(url)
        monkeypatch.setattr(sys, "stdin", io.StringIO("y\n"))
        done = cli("prune", "--store", url)
        assert done.status == 1
        assert "pass --yes" in done.err
        assert len(self.ids(url)) == 5

    def test_progress_on_a_terminal(self, cli: Cli, url: str, monkeypatch: pytest.MonkeyPatch) -> None:
        """On a terminal prune draws its progress chunk by chunk, then leaves a one-line summary."""
        seed(url, *[(f"old-{i}", "SUCCESS", 40) for i in range(5)])
        monkeypatch.setattr("ckflow._cli._runs.PRUNE_CHUNK", 2)
        err = Terminal()
        monkeypatch.setattr(sys, "stderr", err)
        assert cli("prune", "--store", url, "--yes").status == 0
        drawn = err.getvalue()
        assert re.findall(r"deleting runs: (\d/5)", drawn) == ["0/5", "2/5", "4/5", "5/5"]
        summary = r"\r\x1b\[KDeleted 5 SUCCESS/REVERTED/FAILURE runs that ended before [^\n]* from "
        assert re.search(summary + re.escape(url) + r"\.\n$", drawn)
        assert self.ids(url) == set()

    def test_bad_arguments(self, cli: Cli, url: str) -> None:
        """A duration without a unit, or a state that has not ended, is a usage error (exit 2)."""
        assert cli("prune", "--store", url, "--older-than", "30").status == 2
        assert cli("prune", "--store", url, "--state", "RUNNING").status == 2


# -- control of a run that nobody owns ----------------------------------------------------


class TestTakeOver:
    """Control of a run that no live engine owns: the command takes it over and runs it in the foreground."""

    def test_resume_runs_it_to_its_end(self, cli: Cli, url: str) -> None:
        """`resume` runs a run nobody owns here to its end; exit 0 for SUCCESS."""
        left(url, "r")
        done = cli("resume", "r", "--store", url, *IMPORT)
        assert done.status == 0
        assert done.err.startswith("r: SUCCESS (3/3 tasks done) after ")
        record, tasks = stored(url, "r")
        assert (record.state, record.owner) == (FlowState.SUCCESS, None)
        assert cli_flows.LOG == ["ship"]  # prepare and build succeeded before: not executed again
        assert tasks["ship"].attempts == 2  # it was running when its engine stopped

    def test_resume_shows_progress_on_a_terminal(self, cli: Cli, url: str, monkeypatch: pytest.MonkeyPatch) -> None:
        """On a terminal the run's state changes and a tasks-done line are drawn on stderr."""
        left(url, "r")
        err = Terminal()
        monkeypatch.setattr(sys, "stderr", err)
        assert cli("resume", "r", "--store", url, *IMPORT).status == 0
        drawn = err.getvalue()
        assert "r: RUNNING -> SUCCESS\n" in drawn
        assert drawn.endswith("r: SUCCESS (3/3 tasks done) after " + drawn.rsplit("after ", 1)[1])

    def pending_flaky(self, url: str) -> None:
        """A run of "cli-flaky" recorded but never started (its engine died at once): it will end REVERTED."""
        now = time.time()
        record = RunRecord(
            run_id="f", flow="cli-flaky", state=FlowState.PENDING, inputs='{"url": "u"}', created_at=now, updated_at=now
        )
        anyio.run(_seed, url, [record])

    def test_resume_to_a_failure(self, cli: Cli, url: str) -> None:
        """A resumed run that does not succeed exits 1; ckflow's warnings go to stderr, never to stdout."""
        self.pending_flaky(url)
        done = cli("resume", "f", "--store", url, *IMPORT)
        assert done.status == 1
        assert done.out == ""
        assert "[warning  ] ckflow.task.failure" in done.err
        assert done.err.splitlines()[-1].startswith("f: REVERTED (0/3 tasks done) after ")
        assert done.err.endswith(
            "; last failure: parse: ValueError: cannot parse <html>u</htm: unexpected end of input at line 1\n"
        )

    def test_progress_replaces_the_engine_log(self, cli: Cli, url: str, monkeypatch: pytest.MonkeyPatch) -> None:
        """On a terminal, task failures and reverts appear as progress lines instead of ckflow's log lines."""
        self.pending_flaky(url)
        err = Terminal()
        monkeypatch.setattr(sys, "stderr", err)
        assert cli("resume", "f", "--store", url, *IMPORT).status == 1
        drawn = err.getvalue()
        assert "ckflow.task.failure" not in drawn
        assert drawn.count("  parse failed (attempt 1): ValueError: cannot parse") == 1
        assert "  parse failed (attempt 2): ValueError: cannot parse" in drawn
        assert "  reverting back to checkpoint 'parsing' (retry): parse\n" in drawn
        assert "  reverting back to checkpoint 'cli-flaky' (end): fetch, index, parse\n" in drawn

    def test_resume_needs_the_flow(self, cli: Cli, url: str, monkeypatch: pytest.MonkeyPatch) -> None:
        """Resuming without the flow registered is an error (exit 1) that says to use --import."""
        left(url, "r")
        unregister(monkeypatch, "cli-line")
        done = cli("resume", "r", "--store", url)
        assert done.status == 1
        assert "No flow is registered as 'cli-line'" in done.err
        assert "--import MODULE" in done.err
        assert stored(url, "r")[0].state is FlowState.RUNNING

    def test_resume_of_an_ended_run(self, cli: Cli, url: str) -> None:
        """Resuming a run that has ended runs nothing: exit 0 if it succeeded, 1 otherwise."""
        finished(url)
        ok = cli("resume", "ok-1", "--store", url, *IMPORT)
        assert (ok.status, ok.err) == (0, "Run 'ok-1' has already ended (SUCCESS); there is nothing to resume.\n")
        assert cli("resume", "flaky-1", "--store", url, *IMPORT).status == 1

    def test_suspend_in_the_store(self, cli: Cli, url: str, monkeypatch: pytest.MonkeyPatch) -> None:
        """Without the flow, `suspend` marks the run SUSPENDED in its store and runs nothing."""
        left(url, "r")
        unregister(monkeypatch, "cli-line")
        done = cli("suspend", "r", "--store", url)
        assert done.status == 0
        assert done.err == "r: SUSPENDED (suspend: done in its store, as no engine runs it)\n"
        assert stored(url, "r")[0].state is FlowState.SUSPENDED
        assert cli_flows.LOG == []

    def test_suspend_then_resume(self, cli: Cli, url: str) -> None:
        """With the flow, `suspend` takes the run over, which stays SUSPENDED; `resume` then ends it."""
        left(url, "r")
        suspended = cli("suspend", "r", "--store", url, *IMPORT)
        assert suspended.status == 0
        assert "r: SUSPENDED" in suspended.err
        assert "ckflow.run.stopped" not in suspended.err  # the engine's warning is not the command's business
        assert stored(url, "r")[0].state is FlowState.SUSPENDED
        assert cli("resume", "r", "--store", url, *IMPORT).status == 0
        assert stored(url, "r")[0].state is FlowState.SUCCESS

    def test_cancel_reverts_everything(self, cli: Cli, url: str) -> None:
        """`cancel` takes the run over and reverts what ran, in the foreground; exit 0 once REVERTED."""
        left(url, "r")
        done = cli("cancel", "r", "--store", url, *IMPORT)
        assert done.status == 0
        assert done.err.startswith("r: REVERTED (0/3 tasks done)")
        record, tasks = stored(url, "r")
        assert record.state is FlowState.REVERTED
        assert tasks["build"].state is TaskState.REVERTED
        assert "undo build" in cli_flows.LOG

    def test_goto_forward(self, cli: Cli, url: str) -> None:
        """`goto` runs forward up to the checkpoint and leaves the run SUSPENDED there."""
        left(url, "r", at="prepare")
        done = cli("goto", "r", "work", "--store", url, *IMPORT)
        assert done.status == 0
        assert "r: SUSPENDED (1/3 tasks done)" in done.err
        assert "ckflow resume r" in done.err
        assert stored(url, "r")[0].state is FlowState.SUSPENDED
        assert cli_flows.LOG == ["prepare"]
        assert cli("resume", "r", "--store", url, *IMPORT).status == 0
        assert cli_flows.LOG == ["prepare", "build", "ship"]

    def test_revert_to_without_retry(self, cli: Cli, url: str) -> None:
        """`revert-to --no-retry` reverts the checkpoint's scope and parks the run SUSPENDED there."""
        left(url, "r")
        done = cli("revert-to", "r", "work", "--no-retry", "--store", url, *IMPORT)
        assert done.status == 0
        record, tasks = stored(url, "r")
        assert record.state is FlowState.SUSPENDED
        assert tasks["prepare"].state is TaskState.SUCCESS
        assert tasks["build"].state is TaskState.REVERTED
        assert cli_flows.LOG == ["undo build"]

    def test_revert_to_with_retry(self, cli: Cli, url: str) -> None:
        """`revert-to` reverts the scope and runs it again to the run's end; exit 0 for SUCCESS."""
        left(url, "r")
        done = cli("revert-to", "r", "work", "--store", url, *IMPORT)
        assert done.status == 0
        record, tasks = stored(url, "r")
        assert record.state is FlowState.SUCCESS
        assert tasks["build"].attempts == 2
        assert cli_flows.LOG == ["undo build", "build", "ship"]

    def test_unknown_checkpoint(self, cli: Cli, url: str) -> None:
        """An unknown checkpoint is an error (exit 1) listing the flow's checkpoints; the run is untouched."""
        left(url, "r")
        for command in ("goto", "revert-to"):
            done = cli(command, "r", "nope", "--store", url, *IMPORT)
            assert done.status == 1
            assert "has no checkpoint 'nope'; its checkpoints are ['work']" in done.err
        assert stored(url, "r")[0].state is FlowState.RUNNING

    def test_unknown_run(self, cli: Cli, url: str) -> None:
        """Every control command on an unknown run id exits 1 with a clear message."""
        finished(url)
        for argv in (("resume", "x"), ("suspend", "x"), ("cancel", "x"), ("goto", "x", "work")):
            done = cli(*argv, "--store", url, *IMPORT)
            assert done.status == 1
            assert "ckflow: error: No run has id 'x'" in done.err

    def test_cancel_of_an_ended_run(self, cli: Cli, url: str) -> None:
        """Cancelling a run that has ended changes nothing; exit 1 unless it was REVERTED already."""
        finished(url)
        done = cli("cancel", "ok-1", "--store", url, *IMPORT)
        assert (done.status, done.err) == (1, "Run 'ok-1' has already ended (SUCCESS); there is nothing to cancel.\n")
        assert cli("cancel", "flaky-1", "--store", url, *IMPORT).status == 0

    def test_goto_and_revert_to_of_an_ended_run_are_refused(self, cli: Cli, url: str) -> None:
        """goto and revert-to of a run that has ended are refused (exit 1), whatever state it ended in."""
        finished(url)
        for argv in (("goto", "ok-1", "work"), ("revert-to", "ok-1", "work"), ("revert-to", "flaky-1", "work")):
            done = cli(*argv, "--store", url, *IMPORT)
            assert done.status == 1, argv
            assert f"Run {argv[1]!r} cannot " in done.err
            assert "it has already ended" in done.err

    def test_json(self, cli: Cli, url: str) -> None:
        """With --json a control command prints the run's record once it is done."""
        left(url, "r")
        done = cli("resume", "r", "--store", url, "--json", *IMPORT)
        assert RunRecord.model_validate(json.loads(done.out)).state is FlowState.SUCCESS


# -- control of a run that another engine runs ------------------------------------------------


def on_event(run: ckflow.Run, name: str) -> anyio.Event:
    """Set once the (local) run emits an event called ``name``."""
    seen = anyio.Event()
    run.subscribe(lambda event: seen.set() if event.name == name else None)
    return seen


class TestThroughTheOwner:
    """Control of a run that a live engine runs: the command asks, and that engine carries it out."""

    async def test_suspend_and_resume(self, url: str, cli_thread: CliThread) -> None:
        """`suspend` and `resume` of a run another engine runs are carried out by that engine."""
        gate = cli_flows.GATES["build"] = anyio.Event()
        started = cli_flows.STARTED["build"] = anyio.Event()
        async with Engine(store=url, id="owner", heartbeat=BEAT, lease_ttl=2) as owner:
            run = await owner.start("cli-line", inputs={"size": 1}, run_id="r")
            await started.wait()
            run.subscribe(lambda event: gate.set() if event.name == "ckflow.control.suspend" else None)
            done = await cli_thread("suspend", "r", "--store", url, *IMPORT)
            assert done.status == 0
            assert done.err == "r: SUSPENDED (suspend: carried out by engine owner, which runs it)\n"
            assert run.state is FlowState.SUSPENDED
            assert cli_flows.LOG == ["prepare", "build"]  # build finished; ship did not start

            resumed = await cli_thread("resume", "r", "--store", url, *IMPORT)
            assert resumed.status == 0
            assert "carried out by engine owner" in resumed.err
            assert (await run.wait()).state is FlowState.SUCCESS
        assert cli_flows.LOG == ["prepare", "build", "ship"]

    async def test_resume_of_a_running_run_is_refused(self, url: str, cli_thread: CliThread) -> None:
        """`resume` of a run that a live engine runs (not suspended) is an error naming that engine."""
        cli_flows.GATES["build"] = gate = anyio.Event()
        started = cli_flows.STARTED["build"] = anyio.Event()
        async with Engine(store=url, id="owner", heartbeat=BEAT, lease_ttl=2) as owner:
            run = await owner.start("cli-line", inputs={"size": 1}, run_id="r")
            await started.wait()
            done = await cli_thread("resume", "r", "--store", url, *IMPORT)
            assert done.status == 1
            assert "Run 'r' is RUNNING in engine 'owner', whose lease on it is live" in done.err
            gate.set()
            assert (await run.wait()).state is FlowState.SUCCESS

    async def test_goto(self, url: str, cli_thread: CliThread) -> None:
        """`goto` through the owner: the run goes on to the checkpoint and is SUSPENDED there."""
        gate = cli_flows.GATES["prepare"] = anyio.Event()
        started = cli_flows.STARTED["prepare"] = anyio.Event()
        async with Engine(store=url, id="owner", heartbeat=BEAT, lease_ttl=2) as owner:
            run = await owner.start("cli-line", inputs={"size": 1}, run_id="r")
            await started.wait()
            run.subscribe(lambda event: gate.set() if event.name == "ckflow.control.goto" else None)
            done = await cli_thread("goto", "r", "work", "--store", url, *IMPORT)
            assert done.status == 0
            assert done.err.startswith("r: SUSPENDED (go to 'work': carried out by engine owner")
            assert run.state is FlowState.SUSPENDED
            assert run.tasks["build"].state is TaskState.PENDING
            await run.resume()
            assert (await run.wait()).state is FlowState.SUCCESS

    async def test_revert_to_without_retry(self, url: str, cli_thread: CliThread) -> None:
        """`revert-to --no-retry` through the owner: the scope is reverted and the run parked there."""
        cli_flows.GATES["ship"] = anyio.Event()
        started = cli_flows.STARTED["ship"] = anyio.Event()
        async with Engine(store=url, id="owner", heartbeat=BEAT, lease_ttl=2) as owner:
            run = await owner.start("cli-line", inputs={"size": 1}, run_id="r")
            await started.wait()
            parked = on_event(run, "ckflow.walker.parked")
            done = await cli_thread("revert-to", "r", "work", "--no-retry", "--store", url, *IMPORT)
            assert done.status == 0
            assert "r: SUSPENDED (revert to 'work': carried out by engine owner" in done.err
            await parked.wait()
            assert run.tasks["build"].state is TaskState.REVERTED
            assert "undo build" in cli_flows.LOG
            del cli_flows.GATES["ship"]
            await run.resume()
            assert (await run.wait()).state is FlowState.SUCCESS

    async def test_cancel(self, url: str, cli_thread: CliThread) -> None:
        """`cancel` through the owner starts the revert of everything; the run ends REVERTED."""
        cli_flows.GATES["ship"] = anyio.Event()
        started = cli_flows.STARTED["ship"] = anyio.Event()
        async with Engine(store=url, id="owner", heartbeat=BEAT, lease_ttl=2) as owner:
            run = await owner.start("cli-line", inputs={"size": 1}, run_id="r")
            await started.wait()
            done = await cli_thread("cancel", "r", "--store", url, *IMPORT)
            assert done.status == 0
            assert "(cancel: carried out by engine owner, which runs it)" in done.err
            assert (await run.wait()).state is FlowState.REVERTED
        assert "undo build" in cli_flows.LOG

    async def test_unknown_checkpoint(self, url: str, cli_thread: CliThread) -> None:
        """An unknown checkpoint is refused before anything is asked of the owner."""
        gate = cli_flows.GATES["build"] = anyio.Event()
        started = cli_flows.STARTED["build"] = anyio.Event()
        async with Engine(store=url, id="owner", heartbeat=BEAT, lease_ttl=2) as owner:
            run = await owner.start("cli-line", inputs={"size": 1}, run_id="r")
            await started.wait()
            done = await cli_thread("goto", "r", "nope", "--store", url, *IMPORT)
            assert done.status == 1
            assert "has no checkpoint 'nope'" in done.err
            store = owner.store
            assert store is not None
            assert await store.requests("r") == []
            gate.set()
            assert (await run.wait()).state is FlowState.SUCCESS


# -- a store that is not there --------------------------------------------------------------

#: every command over a store that does not start runs: none of them may create the store
NOT_CREATING = [
    ("runs",),
    ("show", "r1"),
    ("events", "r1"),
    ("events", "r1", "--follow"),
    ("graph", "--run", "r1", *IMPORT),
    ("graph", "cli-line", "--run", "r1", *IMPORT),
    ("prune", "--yes"),
    ("prune", "--dry-run"),
    ("resume", "r1", *IMPORT),
    ("suspend", "r1"),
    ("cancel", "r1"),
    ("goto", "r1", "work"),
    ("revert-to", "r1", "work"),
    ("revert-to", "r1", "work", "--no-retry"),
]


class TestNoStore:
    """A command that only reads or acts on existing runs, given a store that is not there, creates none."""

    @pytest.mark.parametrize("argv", NOT_CREATING, ids=lambda argv: "-".join(a for a in argv if a != IMPORT[1]))
    def test_missing_sqlite_file(self, cli: Cli, tmp_path: Path, argv: tuple[str, ...]) -> None:
        """Exit 1, one line on stderr naming the path, nothing on stdout, and no file (nor -wal, -shm) made."""
        done = cli(*argv, "--store", f"sqlite:///{tmp_path}/typo.db")
        assert done.status == 1
        assert done.out == ""
        assert done.err.count("\n") == 1
        assert done.err.startswith(f"ckflow: error: Store 'sqlite:///{tmp_path}/typo.db' cannot be opened: no store")
        assert f"the file '{tmp_path}/typo.db' does not exist" in done.err
        assert list(tmp_path.iterdir()) == []

    def test_from_the_environment(self, cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """A store named by $CKFLOW_STORE is not created either."""
        monkeypatch.setenv("CKFLOW_STORE", f"sqlite:///{tmp_path}/typo.db")
        done = cli("runs")
        assert done.status == 1
        assert "no store is there" in done.err
        assert list(tmp_path.iterdir()) == []

    def test_path_is_escaped(self, cli: Cli, tmp_path: Path) -> None:
        """The path in the message has its control characters escaped, like the CLI's other messages."""
        done = cli("runs", "--store", f"sqlite:///{tmp_path}/typo\x1b[31m.db")
        assert done.status == 1
        assert "\x1b" not in done.err
        assert "typo\\x1b[31m.db" in done.err
        assert list(tmp_path.iterdir()) == []

    def test_file_without_ckflow_tables(self, cli: Cli, tmp_path: Path) -> None:
        """An empty file is no store either: exit 1, and the file is left empty, with no -wal or -shm."""
        (tmp_path / "empty.db").write_bytes(b"")
        done = cli("runs", "--store", f"sqlite:///{tmp_path}/empty.db")
        assert done.status == 1
        assert "holds no ckflow tables" in done.err
        assert [p.name for p in tmp_path.iterdir()] == ["empty.db"]
        assert (tmp_path / "empty.db").read_bytes() == b""

    @pytest.mark.parametrize("argv", [("runs",), ("show", "r1"), ("cancel", "r1")], ids=["runs", "show", "cancel"])
    def test_missing_postgres_schema(self, cli: Cli, postgres_dsn: str, argv: tuple[str, ...]) -> None:
        """On PostgreSQL, a schema without ckflow's tables: exit 1, and neither schema nor tables are created."""
        import asyncpg

        schema = f"ckflow_test_{uuid.uuid4().hex[:12]}"
        done = cli(*argv, "--store", f"{postgres_dsn}?schema={schema}")
        assert done.status == 1
        assert f"no store is there (schema '{schema}' holds no ckflow tables)" in done.err

        async def exists() -> bool:
            conn = await asyncpg.connect(postgres_dsn)
            try:
                found = await conn.fetchval("SELECT 1 FROM pg_catalog.pg_namespace WHERE nspname = $1", schema)
            finally:
                await conn.close()
            return found is not None

        assert not anyio.run(exists)

    def test_existing_empty_store_is_read(self, cli: Cli, url: str) -> None:
        """A store that is there, with no runs, is read as before: exit 0."""
        created(url)
        done = cli("runs", "--store", url)
        assert done.status == 0
        assert done.err.startswith("No runs in ")

    def test_python_dash_m(self, tmp_path: Path) -> None:
        """`python -m ckflow runs --store sqlite:///typo.db` in a process of its own: exit 1, no file."""
        proc = subprocess.run(
            [sys.executable, "-m", "ckflow", "runs", "--store", "sqlite:///typo.db"],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            timeout=60,
            check=False,
        )
        assert proc.returncode == 1
        assert "no store is there" in proc.stderr
        assert "Traceback" not in proc.stderr
        assert list(tmp_path.iterdir()) == []


# -- start ----------------------------------------------------------------------------------


class TestStart:
    """`ckflow start FLOW --inputs JSON`: a new run, recorded in the store and run here."""

    def test_start_then_show(self, cli: Cli, url: str) -> None:
        """start prints the run id first, creates the store, runs the run to SUCCESS; show reads it back."""
        done = cli("start", "cli-line", "--inputs", '{"size": 3}', "--run-id", "s1", "--store", url, *IMPORT)
        assert done.status == 0, done.err
        assert done.out == "s1\n"
        assert "s1: SUCCESS (3/3 tasks done)" in done.err
        assert cli_flows.LOG == ["prepare", "build", "ship"]
        record, tasks = stored(url, "s1")
        assert record.state is FlowState.SUCCESS
        assert record.flow == "cli-line"
        assert {name: t.state for name, t in tasks.items()} == dict.fromkeys(("prepare", "build", "ship"), "SUCCESS")
        shown = cli("show", "s1", "--store", url, "--json")
        assert shown.status == 0
        doc = json.loads(shown.out)
        assert doc["state"] == "SUCCESS"
        assert doc["inputs"] == {"size": 3}

    def test_generated_run_id(self, cli: Cli, url: str) -> None:
        """Without --run-id the run gets an id of its own, printed on stdout and listed by `runs`."""
        done = cli("start", "cli-line", "--inputs", '{"size": 1}', "--store", url, *IMPORT)
        assert done.status == 0, done.err
        run_id = done.out.strip()
        assert run_id
        assert [r[0] for r in rows(cli("runs", "--store", url).out)] == [run_id]

    def test_json(self, cli: Cli, url: str) -> None:
        """--json prints the run's record as one JSON document, as other commands do."""
        done = cli("start", "cli-line", "--inputs", '{"size": 3}', "--run-id", "j1", "--store", url, "--json", *IMPORT)
        assert done.status == 0, done.err
        doc = json.loads(done.out)
        assert doc["run_id"] == "j1"
        assert doc["state"] == "SUCCESS"

    def test_run_that_fails(self, cli: Cli, url: str) -> None:
        """A run that ends REVERTED exits 1 and stays in the store."""
        done = cli("start", "cli-flaky", "--inputs", '{"url": "u"}', "--run-id", "f1", "--store", url, *IMPORT)
        assert done.status == 1
        assert stored(url, "f1")[0].state is FlowState.REVERTED

    @pytest.mark.parametrize("inputs", ['{"size": 3', "size=3", "[3]", '"x"'])
    def test_bad_inputs(self, cli: Cli, tmp_path: Path, inputs: str) -> None:
        """--inputs that is not a JSON object is a usage error (exit 2) naming --inputs; no store is created."""
        done = cli("start", "cli-line", "--inputs", inputs, "--store", f"sqlite:///{tmp_path}/new.db", *IMPORT)
        assert done.status == 2
        assert "argument --inputs:" in done.err
        assert list(tmp_path.iterdir()) == []

    @pytest.mark.parametrize(
        ("inputs", "named"), [('{"size": "abc"}', "'size'"), ("{}", "'size'"), ('{"size": [3]}', "'size'")]
    )
    def test_inputs_that_do_not_fit_the_flow(self, cli: Cli, tmp_path: Path, inputs: str, named: str) -> None:
        """Inputs that are missing or do not fit a task's annotation are an error (exit 1) naming the input;
        no store is created (they are checked before the store is opened)."""
        done = cli("start", "cli-line", "--inputs", inputs, "--store", f"sqlite:///{tmp_path}/new.db", *IMPORT)
        assert done.status == 1
        assert named in done.err
        assert list(tmp_path.iterdir()) == []
        assert cli_flows.LOG == []

    def test_unknown_flow(self, cli: Cli, tmp_path: Path) -> None:
        """An unregistered FLOW is an error (exit 1) pointing at --import; no store is created."""
        done = cli("start", "nope", "--store", f"sqlite:///{tmp_path}/new.db", *IMPORT)
        assert done.status == 1
        assert "No flow is registered as 'nope'" in done.err
        assert list(tmp_path.iterdir()) == []

    def test_run_id_taken(self, cli: Cli, url: str) -> None:
        """A --run-id already in the store is an error (exit 1); the stored run is untouched."""
        finished(url)
        done = cli("start", "cli-line", "--inputs", '{"size": 9}', "--run-id", "ok-1", "--store", url, *IMPORT)
        assert done.status == 1
        assert "ok-1" in done.err
        assert stored(url, "ok-1")[0].inputs == '{"size":3}'

    def test_needs_a_store(self, cli: Cli) -> None:
        """start without --store or $CKFLOW_STORE is a usage error (exit 2)."""
        assert cli("start", "cli-line", *IMPORT).status == 2

    def test_help_says_it_runs_in_the_foreground(self, cli: Cli) -> None:
        """`start --help` says where the run runs and how to go on with it after an interruption."""
        done = cli("start", "--help")
        assert done.status == 0
        text = " ".join(done.out.split())
        assert "in the foreground" in text
        assert "ckflow resume RUN" in text
        assert "--inputs JSON" in text


# -- the demo's closing hint ----------------------------------------------------------------


class TestDemoHint:
    """The demo's last line names a command that works as printed."""

    def test_interpreter_under_the_current_directory(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """After the Quick start (.venv not activated, no `ckflow` on PATH): `.venv/bin/python -m ckflow`."""
        from ckflow._cli import _demo

        monkeypatch.chdir(tmp_path)
        monkeypatch.setattr(sys, "executable", str(tmp_path / ".venv" / "bin" / "python"))
        monkeypatch.setattr(_demo.shutil, "which", lambda name: None)
        assert _demo.ckflow_command() == ".venv/bin/python -m ckflow"

    def test_ckflow_on_path(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """When this installation's `ckflow` script is on PATH, the hint says `ckflow`."""
        from ckflow._cli import _demo

        bin_dir = tmp_path / "bin"
        monkeypatch.setattr(sys, "executable", str(bin_dir / "python"))
        monkeypatch.setattr(_demo.shutil, "which", lambda name: str(bin_dir / name))
        assert _demo.ckflow_command() == "ckflow"

    def test_another_ckflow_on_path(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """A `ckflow` of another installation on PATH is not named: this interpreter is."""
        from ckflow._cli import _demo

        monkeypatch.chdir(tmp_path)
        monkeypatch.setattr(sys, "executable", "/opt/py/bin/python3")
        monkeypatch.setattr(_demo.shutil, "which", lambda name: "/usr/local/bin/ckflow")
        assert _demo.ckflow_command() == "/opt/py/bin/python3 -m ckflow"

    def test_printed_command_works(self, tmp_path: Path) -> None:
        """Run the demo with no `ckflow` on PATH, then the command its last line names, pasted into a shell."""
        env = {**os.environ, "NO_COLOR": "1", "PATH": os.defpath}
        demo = subprocess.run(
            [sys.executable, "-m", "ckflow", "demo", "--fast"],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            env=env,
            timeout=120,
            check=False,
        )
        assert demo.returncode == 0, demo.stderr
        match = re.search(r"look at them with `([^`]+)`", demo.stdout.splitlines()[-1])
        assert match is not None
        assert not match.group(1).startswith("ckflow ")
        look = subprocess.run(
            match.group(1), shell=True, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=60, check=False
        )
        assert look.returncode == 0, look.stderr
        assert look.stdout.count("provision") == 3
