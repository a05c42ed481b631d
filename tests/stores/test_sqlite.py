"""What only the SQLite store does: its file, its schema versions, its thread, its commits on the loop."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import threading
from typing import TYPE_CHECKING, Any

import anyio
import pytest
from tests.stores import OWNER, T0, event, failure, run_record, task_record

from ckflow._errors import SchemaVersionError, StoreUnavailableError
from ckflow._records import Batch
from ckflow._states import TaskState
from ckflow.stores import SCHEMA_VERSION, _sqlite_commit, _sqlite_conn, _sqlite_ops, open_store
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


def session(store: SQLiteStore) -> _sqlite_commit.Session:
    """The open store's thread and its side of the loop."""
    found = store._session
    assert found is not None
    return found


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
        future = self.store._call(_sqlite_commit.READ, self._hold, None)
        assert self.entered.wait(10)
        return future

    def queued(self) -> int:
        """How many calls wait behind the gate."""
        return session(self.store).worker._jobs.qsize()


class TestUrl:
    """The URL says where the file is and how it syncs."""

    def test_relative_and_absolute_paths(self, tmp_path: Path) -> None:
        """Three slashes introduce a relative path, four an absolute one."""
        assert _sqlite_conn.parse("sqlite:///runs/a.db") == ("runs/a.db", "NORMAL")
        assert _sqlite_conn.parse("sqlite:////var/lib/a.db?synchronous=full") == ("/var/lib/a.db", "FULL")

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
            assert await store._call(_sqlite_commit.READ, pragma, None) == 2
        async with SQLiteStore(url_of(db)) as store:
            assert await store._call(_sqlite_commit.READ, pragma, None) == 1


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

    async def test_new_file_has_small_pages_and_an_old_one_keeps_its_own(self, db: Path, tmp_path: Path) -> None:
        """A new store's pages are 1 KiB (cheaper commits); a database made elsewhere keeps its page size."""
        async with SQLiteStore(url_of(db)):
            pass
        old = tmp_path / "old.db"
        with sqlite3.connect(old) as conn:
            conn.execute("PRAGMA page_size = 8192")
            conn.execute("CREATE TABLE theirs (x)")
        conn.close()
        async with SQLiteStore(url_of(old)):
            pass
        for path, size in ((db, _sqlite_conn.PAGE_SIZE), (old, 8192)):
            with sqlite3.connect(path) as conn:
                assert conn.execute("PRAGMA page_size").fetchone()[0] == size
            conn.close()
        assert _sqlite_conn.PAGE_SIZE == 1024

    async def test_a_batch_of_progress_alone_leaves_the_run_row(self, db: Path) -> None:
        """A batch that changes only updated_at and next_seq reads the run's row (the fence) without writing
        it: the progress goes on the batch's last event, and another store on the file reads it from there."""
        run = run_record(next_seq=0)
        async with SQLiteStore(url_of(db)) as store:
            await store.create_run(run)
            moved = run.model_copy(update={"updated_at": T0 + 7, "next_seq": 2})
            await store.write(Batch(run=moved, owner=OWNER, events=[event("run-1", 0), event("run-1", 1)]))
        with sqlite3.connect(db) as conn:
            row = conn.execute("SELECT updated_at, next_seq FROM ckflow_runs").fetchone()
            carried = conn.execute("SELECT seq, run_updated_at FROM ckflow_events ORDER BY seq").fetchall()
        conn.close()
        assert row == (T0, 0)
        assert carried == [(0, None), (1, T0 + 7)]
        async with SQLiteStore(url_of(db)) as other:
            assert await other.get_run("run-1") == moved

    async def test_batches_of_progress_alone_read_back_as_the_memory_store_has_them(self, db: Path) -> None:
        """A batch of progress alone binds the run's key its fence found, and its tasks and events go in without
        binding NULL when they can (one statement for up to three events): batches of one to four events, with
        and without failures, checkpoint names and a task that failed and was reverted, read back alike."""
        run = run_record(next_seq=0)
        batches: list[Batch] = []
        seq = 0
        for count, failed in ((1, False), (2, False), (3, False), (4, False), (2, True), (3, True), (1, True)):
            events = [
                event("run-1", s, checkpoint=None if s % 3 else "cp", failure=failure() if failed and s % 2 else None)
                for s in range(seq, seq + count)
            ]
            seq += count
            task = f"t{seq}"
            done = task_record("run-1", task, started_at=T0 + seq, ended_at=T0 + seq + 0.5)
            if failed:
                done = task_record(
                    "run-1",
                    task,
                    state=TaskState.REVERTED,
                    failure=failure(task),
                    revert_started_at=T0 + seq,
                    revert_ended_at=T0 + seq + 1,
                )
            moved = run.model_copy(update={"updated_at": T0 + seq, "next_seq": seq})
            batches.append(Batch(run=moved, owner=OWNER, tasks=[done], events=events))
        memory = open_store("memory://")
        async with SQLiteStore(url_of(db)) as store:
            for one in (store, memory):
                await one.create_run(run)
                for batch in batches:
                    await one.write(batch)
            for one in (store, memory):
                await one.write(Batch(run=run, owner=OWNER, tasks=[task_record("run-1", "t1", attempts=2)]))
            assert await store.tasks("run-1") == await memory.tasks("run-1")
            assert await store.events("run-1") == await memory.events("run-1")
            assert await store.get_run("run-1") == await memory.get_run("run-1")
        with sqlite3.connect(db) as conn:
            nulls = conn.execute("SELECT count(*) FROM ckflow_events WHERE failure_kind IS NULL").fetchone()[0]
        conn.close()
        assert nulls == sum(1 for batch in batches for e in batch.events if e.failure is None)

    async def test_a_run_key_is_never_given_twice(self, db: Path) -> None:
        """Tasks and events are kept by the run's integer key: a run made again after a delete gets a new one,
        so that nothing left under the old key could belong to it."""

        def key() -> int:
            with sqlite3.connect(db) as conn:
                found = int(conn.execute("SELECT run_key FROM ckflow_runs WHERE run_id = 'run-1'").fetchone()[0])
            conn.close()
            return found

        async with SQLiteStore(url_of(db)) as store:
            await store.create_run(run_record())
            await store.write(Batch(run=run_record(), owner=OWNER, tasks=[task_record("run-1", "t")]))
            first = key()
            assert await store.delete_runs(["run-1"]) == 1
            await store.create_run(run_record())
            assert key() > first
            assert await store.tasks("run-1") == []

    async def test_second_store_on_the_file_sees_writes(self, db: Path) -> None:
        """Two stores on one file (two processes, say) see each other's writes and fences."""
        async with SQLiteStore(url_of(db)) as first, SQLiteStore(url_of(db)) as second:
            run = run_record()
            await first.create_run(run)
            await first.write(Batch(run=run, owner=OWNER, tasks=[task_record("run-1", "t")]))
            assert [t.task for t in await second.tasks("run-1")] == ["t"]
            await second.release("run-1", OWNER)
            assert (await first.get_run("run-1")).owner is None


class Groups:
    """Records each group of changes applied: where (on the loop or in the thread), how many, and how it went."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.loop_thread = threading.get_ident()
        self.calls: list[tuple[str, int, str]] = []
        #: set when the thread begins a group (before it asks for the write lock)
        self.in_thread = threading.Event()
        apply = _sqlite_commit._write_group

        def recording(cur: sqlite3.Cursor, changes: Any, *, on_loop: bool) -> Any:
            where = "loop" if threading.get_ident() == self.loop_thread else "thread"
            assert on_loop == (where == "loop")
            if where == "thread":
                self.in_thread.set()
            try:
                results = apply(cur, changes, on_loop=on_loop)
            except _sqlite_commit._Busy:
                self.calls.append((where, len(changes), "busy"))
                raise
            self.calls.append((where, len(changes), "ok"))
            return results

        monkeypatch.setattr(_sqlite_commit, "_write_group", recording)


def wal_header(db: Path) -> bytes:
    """The WAL's checkpoint sequence and salts: a commit that restarts the WAL writes new ones (and syncs them)."""
    with open(f"{db}-wal", "rb") as file:
        return file.read(24)[12:]


def queued(store: SQLiteStore) -> int:
    return session(store).worker._jobs.qsize()


class TestThread:
    """One thread per store reads, checkpoints, deletes, and commits what cannot commit on the loop."""

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

    async def test_full_commits_in_the_thread(self, db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """With ?synchronous=FULL every commit fsyncs, so every change commits in the thread, none on the loop."""
        groups = Groups(monkeypatch)
        async with SQLiteStore(url_of(db, "?synchronous=FULL")) as store:
            assert session(store).side is None
            run = run_record()
            await store.create_run(run)
            await store.write(Batch(run=run, owner=OWNER, tasks=[task_record("run-1", "t")]))
            await store.release("run-1", OWNER)
            assert [t.task for t in await store.tasks("run-1")] == ["t"]
        assert groups.calls == [("thread", 1, "ok")] * 3

    async def test_memory_database_commits_in_the_thread(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """sqlite:///:memory: is one connection's database, so its changes commit in the thread that owns it."""
        groups = Groups(monkeypatch)
        async with SQLiteStore("sqlite:///:memory:") as store:
            assert session(store).side is None
            await store.create_run(run_record())
            assert (await store.get_run("run-1")).run_id == "run-1"
        assert groups.calls == [("thread", 1, "ok")]

    async def test_queued_writes_commit_in_one_transaction(self, db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """Writes that queue while the thread is busy are applied as one group."""
        groups = Groups(monkeypatch)
        async with SQLiteStore(url_of(db, "?synchronous=FULL")) as store:
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
            assert groups.calls[-1] == ("thread", 50, "ok")
            for run in runs:
                assert [t.task for t in await store.tasks(run.run_id)] == ["t"]

    async def test_cancelled_write_still_completes(self, db: Path) -> None:
        """A write whose caller is cancelled while it waits is still applied whole, and the store goes on."""
        async with SQLiteStore(url_of(db, "?synchronous=FULL")) as store:
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

    async def test_renew_commits_in_the_thread(self, db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """renew, whose transaction grows with the engine's runs, commits in the thread, not on the loop."""
        groups = Groups(monkeypatch)
        async with SQLiteStore(url_of(db)) as store:
            await store.create_run(run_record())
            renewal = await store.renew(OWNER, ["run-1", "gone"], 60)
            assert renewal.lost == ["gone"]
        assert groups.calls == [("loop", 1, "ok"), ("thread", 1, "ok")]

    async def test_delete_runs_commits_a_chunk_at_a_time(self, db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """delete_runs deletes _DELETE_CHUNK runs per transaction, in the thread, so it never holds the lock long."""
        monkeypatch.setattr(sqlite_store, "_DELETE_CHUNK", 2)
        loop_thread = threading.get_ident()
        chunks: list[tuple[bool, int]] = []
        delete_chunk = _sqlite_ops.delete_chunk

        def recording(conn: sqlite3.Connection, ids: str) -> int:
            chunks.append((threading.get_ident() != loop_thread, len(json.loads(ids))))
            return delete_chunk(conn, ids)

        monkeypatch.setattr(_sqlite_ops, "delete_chunk", recording)
        async with SQLiteStore(url_of(db)) as store:
            names = [f"r{i}" for i in range(5)]
            for name in names:
                run = run_record(name)
                await store.create_run(run)
                await store.write(Batch(run=run, owner=OWNER, tasks=[task_record(name, "t")], events=[event(name, 0)]))
            assert await store.delete_runs([*names, "missing"]) == 5
            assert chunks == [(True, 2), (True, 2), (True, 2)]
            assert await store.list_runs() == []
            assert await store.row_counts("r4") == dict.fromkeys(
                ("tasks", "checkpoints", "regions", "events", "requests"), 0
            )

    @pytest.mark.parametrize("where", ["loop", "thread"])
    async def test_failed_batch_in_a_group_is_rolled_back_alone(
        self, db: Path, monkeypatch: pytest.MonkeyPatch, where: str
    ) -> None:
        """In one group, on the loop or in the thread, a batch that raises midway leaves nothing; the others commit."""
        groups = Groups(monkeypatch)
        async with SQLiteStore(url_of(db, "" if where == "loop" else "?synchronous=FULL")) as store:
            first, good, bad = run_record("first"), run_record("good"), run_record("bad")
            for run in (first, good, bad):
                await store.create_run(run)
            gate = Gate(store)
            held = gate.hold() if where == "thread" else None
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
                # on the loop, the first change of the iteration commits alone, the next ones together
                tg.start_soon(write, "first", Batch(run=first, owner=OWNER, tasks=[task_record("first", "t")]))
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
                if held is not None:
                    assert gate.queued() == 3
                    gate.release.set()
            if held is not None:
                await held
            assert groups.calls[-1] == (where, 2 if where == "loop" else 3, "ok")
            assert results["first"] is None
            assert results["good"] is None
            assert isinstance(results["bad"], sqlite3.IntegrityError)
            assert [t.task for t in await store.tasks("good")] == ["t"]
            assert await store.tasks("bad") == []
            assert await store.events("bad") == []
            assert (await store.get_run("bad")).updated_at == T0


class TestLoopCommits:
    """Changes commit on the loop, without ever waiting there; whatever would wait goes to the thread."""

    async def test_changes_of_one_iteration_share_a_transaction(
        self, db: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The first change of an iteration commits at once; those other tasks make in it share one transaction."""
        groups = Groups(monkeypatch)
        async with SQLiteStore(url_of(db)) as store:
            runs = [run_record(f"r{i}") for i in range(50)]
            for run in runs:
                await store.create_run(run)
            assert groups.calls == [("loop", 1, "ok")] * 50  # one task, one change after the other
            groups.calls.clear()
            async with anyio.create_task_group() as tg:
                for run in runs:
                    tg.start_soon(store.write, Batch(run=run, owner=OWNER, tasks=[task_record(run.run_id, "t")]))
            assert groups.calls == [("loop", 1, "ok"), ("loop", 49, "ok")]
            for run in runs:
                assert [t.task for t in await store.tasks(run.run_id)] == ["t"]

    async def test_a_change_alone_never_suspends(self, db: Path) -> None:
        """A change no other task competes with is committed before write() returns, without a suspension."""
        async with SQLiteStore(url_of(db)) as store:
            run = run_record()
            await store.create_run(run)
            with anyio.CancelScope() as scope:
                scope.cancel()  # a suspension would raise here
                await store.write(Batch(run=run, owner=OWNER, tasks=[task_record("run-1", "t")]))
            assert not scope.cancelled_caught
            assert [t.task for t in await store.tasks("run-1")] == ["t"]

    async def test_a_task_that_never_suspends_lets_the_loop_go_round(
        self, db: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """After _ALONE_MAX changes committed at once, a task's next change waits for the loop to go round."""
        monkeypatch.setattr(_sqlite_commit, "_ALONE_MAX", 4)
        async with SQLiteStore(url_of(db)) as store:
            run = run_record()
            await store.create_run(run)
            await anyio.lowlevel.checkpoint()  # the loop goes round: the count starts again
            written = 0
            with anyio.CancelScope() as scope:
                scope.cancel()  # delivered at the first suspension
                for seq in range(10):
                    written += 1
                    await store.write(Batch(run=run, owner=OWNER, events=[event("run-1", seq)]))
            assert scope.cancelled_caught
            assert written == 5
            await anyio.lowlevel.checkpoint()  # the fifth commits in the next iteration, cancelled or not
            assert [e.seq for e in await store.events("run-1")] == [0, 1, 2, 3, 4]

    async def test_busy_hands_changes_to_the_thread_in_order(self, db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """A change that meets another's write lock goes to the thread; later ones follow it there, in order."""
        groups = Groups(monkeypatch)
        async with SQLiteStore(url_of(db)) as store:
            first, second = run_record("r1"), run_record("r2")
            await store.create_run(first)
            await store.create_run(second)
            groups.calls.clear()
            running = Batch(
                run=first.model_copy(update={"updated_at": T0 + 1}),
                owner=OWNER,
                tasks=[task_record("r1", "t", state=TaskState.RUNNING)],
                events=[event("r1", 0)],
            )
            succeeded = Batch(
                run=first.model_copy(update={"updated_at": T0 + 2}),
                owner=OWNER,
                tasks=[task_record("r1", "t")],
                events=[event("r1", 1)],
            )
            other = Batch(run=second, owner=OWNER, tasks=[task_record("r2", "t")])
            holder = sqlite3.connect(db, isolation_level=None)
            try:
                holder.execute("BEGIN IMMEDIATE")
                a = asyncio.ensure_future(store.write(running))
                # the thread has the group and waits for the lock
                assert await anyio.to_thread.run_sync(groups.in_thread.wait, 10)
                assert groups.calls == [("loop", 1, "busy")]
                b = asyncio.ensure_future(store.write(succeeded))
                c = asyncio.ensure_future(store.write(other))
                await anyio.wait_all_tasks_blocked()
                assert queued(store) == 2  # both went to the thread, behind the first, without trying the loop
                b.cancel()
            finally:
                holder.rollback()
                holder.close()
            await a
            await c
            with pytest.raises(asyncio.CancelledError):
                await b
            await store.get_run("r1")  # a read queued behind them: the thread has committed them all
            assert groups.calls == [("loop", 1, "busy"), ("thread", 1, "ok"), ("thread", 2, "ok")]
            assert [(t.task, t.state) for t in await store.tasks("r1")] == [("t", TaskState.SUCCESS)]
            assert [e.seq for e in await store.events("r1")] == [0, 1]
            assert (await store.get_run("r1")).updated_at == T0 + 2
            assert [t.task for t in await store.tasks("r2")] == ["t"]
            await store.write(Batch(run=first, owner=OWNER, events=[event("r1", 2)]))
            assert groups.calls[-1] == ("loop", 1, "ok")

    async def test_restarting_defers_a_commit_without_waiting(self, db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """While the thread holds `restarting`, a change waits for a later iteration of the loop, which goes on."""
        groups = Groups(monkeypatch)
        async with SQLiteStore(url_of(db)) as store:
            run = run_record()
            await store.create_run(run)
            side = session(store).side
            assert side is not None
            groups.calls.clear()
            with side.restarting:
                write = asyncio.ensure_future(
                    store.write(Batch(run=run, owner=OWNER, tasks=[task_record("run-1", "t")]))
                )
                await anyio.wait_all_tasks_blocked()
                assert await store.tasks("run-1") == []  # the loop goes on: this read went through the thread
                assert not write.done()
            await write
            assert groups.calls == [("loop", 1, "ok")]
            assert [t.task for t in await store.tasks("run-1")] == ["t"]

    async def test_checkpoints_run_in_the_thread_and_restart_the_wal_there(
        self, db: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The thread checkpoints the WAL and restarts it: no commit on the loop writes (and syncs) a WAL header."""
        monkeypatch.setattr(_sqlite_commit, "_CHECKPOINT_EVERY", 4)
        loop_thread = threading.get_ident()
        checkpoints: list[tuple[bool, tuple[int, int, int]]] = []
        checkpoint = _sqlite_commit._checkpoint

        def recording(conn: sqlite3.Connection, side: Any) -> tuple[int, int, int]:
            result = checkpoint(conn, side)
            checkpoints.append((threading.get_ident() != loop_thread, result))
            return result

        monkeypatch.setattr(_sqlite_commit, "_checkpoint", recording)
        headers: list[tuple[bytes, bytes]] = []  # the WAL header around each commit on the loop
        apply = _sqlite_commit._write_group

        def watching(cur: sqlite3.Cursor, changes: Any, *, on_loop: bool) -> Any:
            before = wal_header(db)
            try:
                return apply(cur, changes, on_loop=on_loop)
            finally:
                if on_loop:
                    headers.append((before, wal_header(db)))

        monkeypatch.setattr(_sqlite_commit, "_write_group", watching)
        async with SQLiteStore(url_of(db)) as store:
            side = session(store).side
            assert side is not None
            assert side.conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
            opened = wal_header(db)
            run = run_record()
            await store.create_run(run)
            for seq in range(20):
                await store.write(Batch(run=run, owner=OWNER, events=[event("run-1", seq)]))
                job = session(store).checkpoint_job
                if job is not None:
                    await job
            assert len(checkpoints) == 5
            assert all(
                in_thread and busy == 0 and frames == copied for in_thread, (busy, frames, copied) in checkpoints
            )
            assert wal_header(db) != opened  # the thread restarted the WAL
            assert len(headers) == 21
            assert all(before == after for before, after in headers)  # no commit on the loop did
            assert [e.seq for e in await store.events("run-1")] == list(range(20))

    async def test_a_checkpoint_restarts_the_wal_though_commits_came_during_it(self, db: Path) -> None:
        """Frames committed while the checkpoint copied are copied too, and the WAL restarts.

        (S12: under a steady stream of commits the WAL never restarted, and it and its index grew without bound.)
        """
        async with SQLiteStore(url_of(db)) as store:
            run = run_record()
            await store.create_run(run)
            for seq in range(50):
                await store.write(Batch(run=run, owner=OWNER, events=[event("run-1", seq)]))
            side = session(store).side
            assert side is not None
            other = sqlite3.connect(db, isolation_level=None, check_same_thread=False)

            class CommitDuringCheckpoint:
                """The thread's connection, with another connection committing right after the first checkpoint."""

                def __init__(self, conn: sqlite3.Connection) -> None:
                    self.conn = conn
                    self.first = True

                def execute(self, sql: str, *args: Any) -> Any:
                    cursor = self.conn.execute(sql, *args)
                    if self.first and sql.startswith("PRAGMA wal_checkpoint"):
                        self.first = False
                        row = cursor.fetchone()
                        other.execute("BEGIN IMMEDIATE")
                        _sqlite_conn.commit_mark(other)
                        return type("Rows", (), {"fetchone": lambda _: row})()
                    return cursor

            def checkpoint(conn: sqlite3.Connection, side: Any) -> tuple[int, int, int]:
                return _sqlite_commit._checkpoint(CommitDuringCheckpoint(conn), side)  # type: ignore[arg-type]

            try:
                busy, frames, copied = await session(store).worker.submit(_sqlite_commit.RAW, checkpoint, side)
                assert busy == 0
                assert frames == copied > 50
                # the WAL restarted: it holds only the restarting commit's frames
                busy, frames, copied = other.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                assert (busy, frames) == (0, copied)
                assert frames <= 2
            finally:
                other.close()
            assert [e.seq for e in await store.events("run-1")] == list(range(50))
