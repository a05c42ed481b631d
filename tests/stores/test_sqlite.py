"""What only the SQLite store does: its file, its schema versions, its thread and its group commit."""

from __future__ import annotations

import os
import sqlite3
import threading
from typing import TYPE_CHECKING, Any

import anyio
import pytest
from tests.stores import OWNER, T0, event, run_record, task_record

from ckflow._errors import SchemaVersionError, StoreUnavailableError
from ckflow._records import Batch
from ckflow.stores import SCHEMA_VERSION, open_store
from ckflow.stores import sqlite as sqlite_store
from ckflow.stores.sqlite import SQLiteStore

if TYPE_CHECKING:
    from pathlib import Path


def url_of(path: Path, query: str = "") -> str:
    return f"sqlite:///{path}{query}"


def read_file(path: Path) -> bytes:
    return path.read_bytes()


def write_file(path: Path, content: bytes) -> None:
    path.write_bytes(content)


def schema_version(path: Path) -> str:
    with sqlite3.connect(path) as conn:
        return str(conn.execute("SELECT value FROM ckflow_meta WHERE key = 'schema_version'").fetchone()[0])


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "runs.db"


class Gate:
    """Holds the store's thread in a job until opened, so that calls queue up behind it."""

    def __init__(self, store: SQLiteStore) -> None:
        self.store = store
        self.entered = threading.Event()
        self.release = threading.Event()

    def _hold(self, conn: Any, arg: Any) -> None:
        self.entered.set()
        self.release.wait(10)

    def hold(self) -> Any:
        """Start the blocking job and wait until the thread runs it; await the result once released."""
        future = self.store._call(sqlite_store._READ, self._hold, None)
        assert self.entered.wait(10)
        return future

    def queued(self) -> int:
        """How many calls wait behind the gate."""
        worker = self.store._worker
        assert worker is not None
        return worker._jobs.qsize()


class TestUrl:
    """The URL says where the file is and how it syncs."""

    def test_relative_and_absolute_paths(self, tmp_path: Path) -> None:
        """Three slashes introduce a relative path, four an absolute one."""
        assert sqlite_store._parse("sqlite:///runs/a.db") == ("runs/a.db", "NORMAL")
        assert sqlite_store._parse("sqlite:////var/lib/a.db?synchronous=full") == ("/var/lib/a.db", "FULL")

    @pytest.mark.parametrize(
        "url", ["sqlite://runs.db", "sqlite:///", "sqlite:///a.db?journal=wal", "sqlite:///a.db?synchronous=fast"]
    )
    def test_bad_url_raises_value_error(self, url: str) -> None:
        """A URL without a path, or with an unknown option or value, is refused where it is written."""
        with pytest.raises(ValueError, match="SQLite"):
            SQLiteStore(url)

    async def test_url_property_and_relative_path(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """store.url is the URL given; a relative path is taken from the working directory."""
        monkeypatch.chdir(tmp_path)
        store = open_store("sqlite:///sub.db")
        assert store.url == "sqlite:///sub.db"
        async with store:
            await store.create_run(run_record())
        assert (tmp_path / "sub.db").exists()

    async def test_synchronous_option_is_applied(self, db: Path) -> None:
        """?synchronous=FULL sets the connection's synchronous pragma (2 is FULL), NORMAL (1) by default."""

        def pragma(conn: sqlite3.Connection, _: None) -> int:
            return int(conn.execute("PRAGMA synchronous").fetchone()[0])

        async with SQLiteStore(url_of(db, "?synchronous=FULL")) as store:
            assert await store._call(sqlite_store._READ, pragma, None) == 2
        async with SQLiteStore(url_of(db)) as store:
            assert await store._call(sqlite_store._READ, pragma, None) == 1


class TestFile:
    """What open() does to files that are, or are not, ckflow stores."""

    @pytest.mark.parametrize(
        "content",
        [os.urandom(4096), b"SQLite format 2\x00" + bytes(200), b"SQLite", b"not a database at all\n" * 50],
        ids=["random", "wrong-header", "truncated-header", "text"],
    )
    async def test_not_a_database_is_refused_and_untouched(self, db: Path, content: bytes) -> None:
        """A file that is not a SQLite database raises StoreUnavailableError and keeps its bytes."""
        write_file(db, content)
        with pytest.raises(StoreUnavailableError) as info:
            await SQLiteStore(url_of(db)).open()
        assert "not a SQLite database" in info.value.problem
        assert read_file(db) == content
        assert sorted(p.name for p in db.parent.iterdir()) == ["runs.db"]

    async def test_corrupt_database_is_refused_and_untouched(self, db: Path) -> None:
        """A SQLite header over garbage raises StoreUnavailableError and keeps its bytes."""
        content = b"SQLite format 3\x00" + os.urandom(8192)
        write_file(db, content)
        with pytest.raises(StoreUnavailableError):
            await SQLiteStore(url_of(db)).open()
        assert read_file(db) == content

    async def test_missing_directory_is_unavailable(self, tmp_path: Path) -> None:
        """A path in a directory that does not exist raises StoreUnavailableError naming the directory."""
        with pytest.raises(StoreUnavailableError, match="does not exist"):
            await SQLiteStore(url_of(tmp_path / "missing" / "runs.db")).open()
        assert not (tmp_path / "missing").exists()

    async def test_directory_path_is_unavailable(self, tmp_path: Path) -> None:
        """A path that is a directory raises StoreUnavailableError."""
        with pytest.raises(StoreUnavailableError, match="directory"):
            await SQLiteStore(url_of(tmp_path)).open()

    async def test_newer_schema_is_refused_and_untouched(self, db: Path) -> None:
        """A store written by a newer ckflow raises SchemaVersionError and keeps its bytes."""
        with sqlite3.connect(db) as conn:
            conn.execute("CREATE TABLE ckflow_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            conn.execute("INSERT INTO ckflow_meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION + 1),))
        conn.close()
        content = read_file(db)
        with pytest.raises(SchemaVersionError) as info:
            await SQLiteStore(url_of(db)).open()
        assert (info.value.found, info.value.supported) == (SCHEMA_VERSION + 1, SCHEMA_VERSION)
        assert read_file(db) == content

    async def test_empty_file_is_migrated(self, db: Path) -> None:
        """An empty file becomes a store at the current schema version."""
        write_file(db, b"")
        async with SQLiteStore(url_of(db)) as store:
            await store.create_run(run_record())
        assert schema_version(db) == str(SCHEMA_VERSION)

    async def test_foreign_tables_are_kept(self, db: Path) -> None:
        """A database with other tables but no ckflow_meta gets ckflow's tables beside its own."""
        with sqlite3.connect(db) as conn:
            conn.execute("CREATE TABLE app (x INTEGER)")
            conn.execute("INSERT INTO app VALUES (42)")
        conn.close()
        async with SQLiteStore(url_of(db)) as store:
            await store.create_run(run_record())
        with sqlite3.connect(db) as conn:
            assert conn.execute("SELECT x FROM app").fetchall() == [(42,)]
        conn.close()
        assert schema_version(db) == str(SCHEMA_VERSION)

    async def test_reopening_keeps_the_runs(self, db: Path) -> None:
        """A store closed and opened again holds what was written, and is not migrated twice."""
        async with SQLiteStore(url_of(db)) as store:
            await store.create_run(run_record())
        async with SQLiteStore(url_of(db)) as store:
            assert (await store.get_run("run-1")).run_id == "run-1"

    async def test_wal_mode(self, db: Path) -> None:
        """The file is in WAL mode once opened."""
        async with SQLiteStore(url_of(db)):
            pass
        with sqlite3.connect(db) as conn:
            assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        conn.close()

    async def test_second_store_on_the_file_sees_writes(self, db: Path) -> None:
        """Two stores on one file (two processes, say) see each other's writes and fences."""
        async with SQLiteStore(url_of(db)) as first, SQLiteStore(url_of(db)) as second:
            run = run_record()
            await first.create_run(run)
            await first.write(Batch(run=run, owner=OWNER, tasks=[task_record("run-1", "t")]))
            assert [t.task for t in await second.tasks("run-1")] == ["t"]
            await second.release("run-1", OWNER)
            assert (await first.get_run("run-1")).owner is None


class TestThread:
    """One thread per store runs every call; writes queued together commit together."""

    async def test_closed_store_refuses_calls(self, db: Path) -> None:
        """A store not opened, or closed, raises StoreUnavailableError; closing twice is no error."""
        store = SQLiteStore(url_of(db))
        with pytest.raises(StoreUnavailableError, match="not open"):
            await store.get_run("run-1")
        await store.open()
        await store.close()
        await store.close()
        with pytest.raises(StoreUnavailableError, match="not open"):
            await store.list_runs()

    async def test_close_ends_the_thread(self, db: Path) -> None:
        """The store runs on one thread of its own, which close() ends."""
        before = set(threading.enumerate())
        async with SQLiteStore(url_of(db)):
            [thread] = set(threading.enumerate()) - before
            assert thread.name == f"ckflow-sqlite {db}"
        thread.join(10)
        assert not thread.is_alive()

    async def test_queued_writes_commit_in_one_transaction(self, db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """Writes that queue while the thread is busy are applied as one group."""
        groups: list[int] = []
        apply_group = sqlite_store._write_group

        def recording(conn: sqlite3.Connection, group: list[Any], done: list[Any]) -> None:
            groups.append(len(group))
            apply_group(conn, group, done)

        monkeypatch.setattr(sqlite_store, "_write_group", recording)
        async with SQLiteStore(url_of(db)) as store:
            runs = [run_record(f"r{i}") for i in range(50)]
            for run in runs:
                await store.create_run(run)
            gate = Gate(store)
            held = gate.hold()
            async with anyio.create_task_group() as tg:
                for run in runs:
                    tg.start_soon(store.write, Batch(run=run, owner=OWNER, tasks=[task_record(run.run_id, "t")]))
                await anyio.wait_all_tasks_blocked()  # every write() waits for its job
                assert gate.queued() == len(runs)
                gate.release.set()
            await held
            assert groups == [50]
            for run in runs:
                assert [t.task for t in await store.tasks(run.run_id)] == ["t"]

    async def test_cancelled_write_still_completes(self, db: Path) -> None:
        """A write whose caller is cancelled while it waits is still applied whole, and the store goes on."""
        async with SQLiteStore(url_of(db)) as store:
            run = run_record()
            await store.create_run(run)
            gate = Gate(store)
            held = gate.hold()
            batch = Batch(run=run, owner=OWNER, tasks=[task_record("run-1", "t")], events=[event("run-1", 0)])
            with anyio.CancelScope() as scope:
                scope.cancel()
                await store.write(batch)
            assert scope.cancelled_caught
            gate.release.set()
            await held
            assert [t.task for t in await store.tasks("run-1")] == ["t"]
            assert [e.seq for e in await store.events("run-1")] == [0]
            await store.write(Batch(run=run, owner=OWNER, events=[event("run-1", 1)]))
            assert [e.seq for e in await store.events("run-1")] == [0, 1]

    async def test_cancelled_open_leaves_no_thread(self, db: Path) -> None:
        """An open() cancelled while the thread opens the file leaves no thread or connection behind."""
        before = set(threading.enumerate())
        store = SQLiteStore(url_of(db))
        with anyio.CancelScope() as scope:
            scope.cancel()
            await store.open()
        with pytest.raises(StoreUnavailableError, match="not open"):
            await store.get_run("x")
        for thread in set(threading.enumerate()) - before:
            thread.join(10)
            assert not thread.is_alive()
        async with SQLiteStore(url_of(db)) as store:
            await store.create_run(run_record())

    async def test_failed_batch_in_a_group_is_rolled_back_alone(self, db: Path) -> None:
        """In one group, a batch that raises midway leaves nothing behind, and the others commit."""
        async with SQLiteStore(url_of(db)) as store:
            good, bad = run_record("good"), run_record("bad")
            await store.create_run(good)
            await store.create_run(bad)
            gate = Gate(store)
            held = gate.hold()
            results: dict[str, BaseException | None] = {}

            async def write(name: str, batch: Batch) -> None:
                try:
                    await store.write(batch)
                except Exception as exc:
                    results[name] = exc
                else:
                    results[name] = None

            # the bad batch's second event has no seq: its insert fails after its task was written
            broken = event("bad", 1).model_copy(update={"seq": None})
            async with anyio.create_task_group() as tg:
                tg.start_soon(write, "good", Batch(run=good, owner=OWNER, tasks=[task_record("good", "t")]))
                tg.start_soon(
                    write,
                    "bad",
                    Batch(
                        run=bad.model_copy(update={"updated_at": T0 + 9}),
                        owner=OWNER,
                        tasks=[task_record("bad", "t")],
                        events=[event("bad", 0), broken],
                    ),
                )
                await anyio.wait_all_tasks_blocked()
                assert gate.queued() == 2
                gate.release.set()
            await held
            assert results["good"] is None
            assert isinstance(results["bad"], sqlite3.IntegrityError)
            assert [t.task for t in await store.tasks("good")] == ["t"]
            assert await store.tasks("bad") == []
            assert await store.events("bad") == []
            assert (await store.get_run("bad")).updated_at == T0
