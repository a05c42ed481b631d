"""Bad input gets a typed ckflow error, raised early, the same on every store; never a driver error or a traceback.

Each class is one kind of input (run ids, values that cannot be stored, store URLs, damaged SQLite files,
what the command line prints, the files it creates, what it imports); each test states its rule. Tests
that involve a store run on memory, SQLite and PostgreSQL (skipped without a server, as in tests/stores).
"""

from __future__ import annotations

import json
import os
import random
import sqlite3
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import pytest
from tests.stores import run_record
from tests.stores.conftest import url_of_kind

import ckflow
from ckflow import Engine, InvalidRunIdError, Linear, ResultNotSerializableError, StoreCorruptError, task
from ckflow._cli import main
from ckflow.stores import open_store

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

ROOT = Path(__file__).resolve().parent.parent

#: (id, what the message says about it)
BAD_IDS: list[tuple[object, str]] = [
    ("", "is empty"),
    ("a\x00b", "control character '\\x00'"),
    ("x" * 201, "over the limit of 200"),
    ("x" * 1_000_000, "over the limit of 200"),
    ("run\x1b]0;pwned\x07", "control character '\\x1b'"),
    ("run\x7f", "control character '\\x7f'"),
    ("run\x85", "control character '\\x85'"),
    ("run\ud800", "lone surrogate"),
    (42, "is int, not a string"),
]
BAD_ID_NAMES = ["empty", "nul", "201-chars", "1-MB", "esc", "del", "c1", "surrogate", "int"]


@task(provides="echoed")
async def echo(text: str) -> str:
    return text


@task(provides="broken")
async def returns_surrogate() -> str:
    return "half a pair: \ud800"


@task
async def fails_with_surrogate() -> None:
    raise ValueError("cannot read \udcff")


@task
async def fails_with_escape() -> None:
    raise ValueError("\x1b[2J\x1b]0;pwned\x07screen cleared")


@pytest.fixture(params=["memory", "sqlite", "postgres"])
async def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """An empty store of each kind (a PostgreSQL schema of its own, dropped afterwards)."""
    async with url_of_kind(request, tmp_path, "memory://") as url:
        yield url


@dataclass
class Done:
    status: int
    out: str
    err: str


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Callable[..., Done]:
    """Run `ckflow ARGS...` in this process; returns its exit status, stdout and stderr."""
    monkeypatch.delenv("CKFLOW_STORE", raising=False)

    def run(*argv: str) -> Done:
        capsys.readouterr()
        status = main(list(argv))
        captured = capsys.readouterr()
        return Done(status, captured.out, captured.err)

    return run


def ckflow_process(*argv: str, cwd: Path = ROOT, python: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    """`python -m ckflow ARGS...` in a process of its own, importing this checkout's ckflow."""
    path = [str(ROOT / "src"), str(ROOT), os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in path if p)}
    env.pop("CKFLOW_STORE", None)
    return subprocess.run(
        [sys.executable, *python, "-m", "ckflow", *argv],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=60,
        check=False,
    )


class TestRunIds:
    """A run id is a non-empty str of at most 200 characters, without control characters or lone surrogates."""

    @pytest.mark.parametrize(("run_id", "rule"), BAD_IDS, ids=BAD_ID_NAMES)
    async def test_run_refuses_it(self, run_id: Any, rule: str) -> None:
        """ckflow.run(run_id=...) raises InvalidRunIdError naming the id and the rule, before any task runs."""
        with pytest.raises(InvalidRunIdError) as caught:
            await ckflow.run(Linear("ids", echo), {"text": "hi"}, run_id=run_id)
        assert caught.value.run_id == run_id
        assert rule in str(caught.value)
        assert isinstance(caught.value, ValueError | ckflow.RunStateError)

    @pytest.mark.parametrize(("run_id", "rule"), BAD_IDS, ids=BAD_ID_NAMES)
    async def test_start_refuses_it_on_every_store(self, store_url: str, run_id: Any, rule: str) -> None:
        """Engine.start(run_id=...) raises InvalidRunIdError on every store alike, and records nothing."""
        async with Engine(store=store_url) as engine:
            with pytest.raises(InvalidRunIdError, match="200 printable characters"):
                await engine.start(Linear("ids", echo), {"text": "hi"}, run_id=run_id)
            assert engine.store is not None
            assert await engine.store.list_runs() == []

    @pytest.mark.parametrize(("run_id", "rule"), BAD_IDS, ids=BAD_ID_NAMES)
    async def test_lookups_refuse_it_on_every_store(self, store_url: str, run_id: Any, rule: str) -> None:
        """Engine.resume, attach and get_run raise InvalidRunIdError, not a driver error or RunNotFoundError."""
        async with Engine(store=store_url) as engine:
            with pytest.raises(InvalidRunIdError):
                await engine.resume(run_id)
            with pytest.raises(InvalidRunIdError):
                await engine.attach(run_id)
            with pytest.raises(InvalidRunIdError):
                engine.get_run(run_id)

    def test_message_is_short_for_a_long_id(self) -> None:
        """The message of a 1 MB id shows its start and end and its length, not the whole id."""
        with pytest.raises(InvalidRunIdError) as caught:
            anyio.run(lambda: ckflow.run(Linear("ids", echo), {"text": "hi"}, run_id="y" * 1_000_000))
        message = str(caught.value)
        assert len(message) < 400
        assert "(1000000 characters)" in message


class TestUnencodableValues:
    """A value with a lone surrogate cannot be stored as UTF-8: a typed error naming the input or the task."""

    async def test_input_value(self, store_url: str) -> None:
        """An input holding a lone surrogate raises ResultNotSerializableError naming the input, on every store."""
        async with Engine(store=store_url) as engine:
            with pytest.raises(ResultNotSerializableError, match="lone surrogate") as caught:
                await engine.start(Linear("values", echo), {"text": "a\ud800b"})
        assert caught.value.input == "text"

    async def test_input_name(self, store_url: str) -> None:
        """An input whose name holds a lone surrogate raises ResultNotSerializableError naming it, not TypeError."""
        async with Engine(store=store_url) as engine:
            with pytest.raises(ResultNotSerializableError, match="lone surrogate") as caught:
                await engine.start(Linear("values", echo), {"text": "ok", "bad\udc80": 1})
        assert caught.value.input == "bad\udc80"

    async def test_task_result(self, store_url: str) -> None:
        """A task that returns a lone surrogate fails through ResultNotSerializableError, which says why."""
        async with Engine(store=store_url) as engine:
            result = await (await engine.start(Linear("values", returns_surrogate))).wait()
        assert result.state == "REVERTED"
        (failure,) = result.failures
        assert failure.task == "returns_surrogate"
        assert failure.exc_type == "ckflow.ResultNotSerializableError"
        assert "lone surrogate" in failure.message

    async def test_failure_message(self, store_url: str) -> None:
        """A task failing with a message that holds a lone surrogate is recorded escaped; the run goes on."""
        async with Engine(store=store_url) as engine:
            run = await engine.start(Linear("values", fails_with_surrogate))
            result = await run.wait()
            assert result.state == "REVERTED"
            (failure,) = result.failures
            assert failure.message == "cannot read \\udcff"
            assert engine.store is not None
            assert (await engine.store.get_run(run.id)).state == "REVERTED"


class TestStoreUrls:
    """A store URL's port is a number from 1 to 65535; the command line says so on one line."""

    @pytest.mark.parametrize(
        "url",
        [
            "postgresql://db.example:99999/app",
            "postgresql://db.example:0/app",
            "postgresql://db.example:http/app",
            "postgresql://a.example:5432,b.example:70000/app",
            "postgresql://[::1]:99999/app",
            "postgresql://db.example/app?port=65536",
        ],
        ids=["too-big", "zero", "not-a-number", "second-host", "ipv6", "query"],
    )
    def test_open_store_refuses_the_port(self, url: str) -> None:
        """open_store raises ValueError naming the port at once, before any connection is tried."""
        with pytest.raises(ValueError, match="is not a number from 1 to 65535"):
            open_store(url)

    def test_cli_prints_one_line(self) -> None:
        """`ckflow runs --store postgresql://127.0.0.1:99999/db` prints one error line, exit 1, no traceback."""
        proc = ckflow_process("runs", "--store", "postgresql://127.0.0.1:99999/db")
        assert proc.returncode == 1
        assert proc.stderr.startswith("ckflow: error: PostgreSQL store URL")
        assert len(proc.stderr.splitlines()) == 1


def _damaged_store(tmp_path: Path) -> str:
    """A SQLite store with 40 ended runs whose pages after the first are overwritten with garbage."""
    url = f"sqlite:///{tmp_path / 'runs.db'}"

    async def fill() -> None:
        async with Engine(store=url) as engine:
            for i in range(40):
                await (await engine.start(Linear("filled", echo), {"text": "x" * 500}, run_id=f"run-{i}")).wait()

    anyio.run(fill)
    path = tmp_path / "runs.db"
    size = path.stat().st_size
    garbage = random.Random(7)
    with path.open("r+b") as file:
        for offset in range(1024, size, 1024):
            file.seek(offset)
            file.write(garbage.randbytes(1024))
    return url


class TestDamagedSqliteFile:
    """A damaged SQLite file is StoreCorruptError, which says how to check and recover it."""

    def test_store_raises_store_corrupt_error(self, tmp_path: Path) -> None:
        """Reading a damaged file raises StoreCorruptError naming the file and the recovery commands."""
        url = _damaged_store(tmp_path)

        async def read() -> None:
            async with open_store(url) as store:
                for run in await store.list_runs():
                    await store.load(run.run_id)

        with pytest.raises(StoreCorruptError) as caught:
            anyio.run(read)
        message = str(caught.value)
        assert caught.value.path == str(tmp_path / "runs.db")
        assert '"PRAGMA integrity_check"' in message
        assert '".recover" | sqlite3 NEW.db' in message
        assert "backup" in message

    def test_cli_prints_one_line(self, tmp_path: Path) -> None:
        """`ckflow runs` on a damaged file prints one error line with the recovery hint, exit 1, no traceback."""
        url = _damaged_store(tmp_path)
        proc = ckflow_process("runs", "--store", url)
        assert proc.returncode == 1
        assert "Traceback" not in proc.stderr
        assert len(proc.stderr.splitlines()) == 1
        assert proc.stderr.startswith(f"ckflow: error: Store {url!r} is damaged")


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX file modes")
class TestFileMode:
    """A new SQLite store file (and its -wal and -shm) is readable by its owner only; an existing one is left."""

    async def test_new_file_is_private(self, tmp_path: Path) -> None:
        """With umask 022, a new store's file, -wal and -shm are 0600; a file made beforehand keeps its mode."""
        before = os.umask(0o022)
        try:
            async with Engine(store=f"sqlite:///{tmp_path / 'new.db'}") as engine:
                await (await engine.start(Linear("mode", echo), {"text": "secret"})).wait()
                for name in ("new.db", "new.db-wal", "new.db-shm"):
                    assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o600, name
            sqlite3.connect(tmp_path / "old.db").close()
            (tmp_path / "old.db").chmod(0o640)
            async with Engine(store=f"sqlite:///{tmp_path / 'old.db'}"):
                pass
            assert stat.S_IMODE((tmp_path / "old.db").stat().st_mode) == 0o640
        finally:
            os.umask(before)


class TestCliOutput:
    """What the command line prints in human output has its control characters escaped; --json stays JSON."""

    async def test_stored_strings_are_escaped(self, tmp_path: Path, cli: Callable[..., Done]) -> None:
        """A run id, flow name and failure message holding ESC sequences print as \\x1b, never raw."""
        url = f"sqlite:///{tmp_path / 'runs.db'}"
        async with Engine(store=url) as engine:
            await (await engine.start(Linear("plain", fails_with_escape), run_id="failed-1")).wait()
            assert engine.store is not None
            # written through the store, as an older ckflow (or another program) could have
            await engine.store.create_run(run_record("evil\x1b]0;pwned\x07", flow="flow\x1b[2J", owner=None))
        listed = await anyio.to_thread.run_sync(cli, "runs", "--store", url)
        shown = await anyio.to_thread.run_sync(cli, "show", "failed-1", "--store", url)
        events = await anyio.to_thread.run_sync(cli, "events", "failed-1", "--store", url)
        for done in (listed, shown, events):
            assert done.status == 0, done.err
            assert "\x1b" not in done.out + done.err
            assert "\x07" not in done.out + done.err
        assert "evil\\x1b]0;pwned\\x07" in listed.out
        assert "flow\\x1b[2J" in listed.out
        assert "\\x1b[2J\\x1b]0;pwned\\x07screen cleared" in shown.out
        as_json = await anyio.to_thread.run_sync(cli, "runs", "--json", "--store", url)
        assert "evil\x1b]0;pwned\x07" in {json.loads(line)["run_id"] for line in as_json.out.splitlines()}

    @pytest.mark.parametrize(
        "argv",
        [
            ("show", "{id}"),
            ("events", "{id}"),
            ("resume", "{id}"),
            ("suspend", "{id}"),
            ("cancel", "{id}"),
            ("goto", "{id}", "work"),
            ("revert-to", "{id}", "work"),
            ("graph", "--run", "{id}"),
        ],
        ids=lambda argv: argv[0],
    )
    def test_run_arguments_are_checked(self, tmp_path: Path, cli: Callable[..., Done], argv: tuple[str, ...]) -> None:
        """A RUN argument that cannot be a run id is a usage error (exit 2), escaped, before the store is opened."""
        url = f"sqlite:///{tmp_path / 'runs.db'}"
        done = cli(*(a.format(id="run\x1b[2J") for a in argv), "--store", url)
        assert done.status == 2
        assert "holds the control character '\\x1b'" in done.err
        assert "\x1b" not in done.err
        assert not (tmp_path / "runs.db").exists()


class TestImportPath:
    """`--import` searches the current directory last, so it cannot shadow the standard library."""

    def test_current_directory_comes_last(self, tmp_path: Path) -> None:
        """A ./colorsys.py does not shadow the standard library's colorsys for an --import module."""
        (tmp_path / "colorsys.py").write_text("SHADOWED = True\n")
        (tmp_path / "myflows.py").write_text(
            "import colorsys, sys\n"
            "sys.stderr.write(f'shadowed={hasattr(colorsys, \"SHADOWED\")} last={sys.path[-1]}\\n')\n"
        )
        # -P: as the `ckflow` script runs, without `python -m` putting the current directory first itself
        proc = ckflow_process("flows", "--import", "myflows", cwd=tmp_path, python=("-P",))
        assert proc.returncode == 0, proc.stderr
        assert f"shadowed=False last={tmp_path}" in proc.stderr
