"""SQLite's schema version 4 (events in a table keyed by run and seq): a store of version 3 migrated and resumed."""

from __future__ import annotations

import re
import sqlite3
from typing import TYPE_CHECKING, Any

import pytest
from tests.support import Crash, WatchedStore

import ckflow
from ckflow import Checkpoint, Engine, FlowState, Linear, Retry, TaskState, task
from ckflow.stores import _schema, _sqlite_ops
from ckflow.stores._sqlite_conn import SCHEMA_VERSION
from ckflow.stores.sqlite import SQLiteStore

if TYPE_CHECKING:
    from pathlib import Path

    from ckflow._records import Batch

#: what each table of version 3 holds, column by column (version 4 has the same columns)
_V3_COLUMNS = {
    "ckflow_runs": "run_key, run_id, flow, state, inputs, owner, lease_expires, created_at, updated_at, ended_at, "
    "halted, goto, next_seq, trace, queue, priority",
    "ckflow_tasks": "rowid, run_key, task, state, attempts, retries, iteration, result, failure, started_at, ended_at, "
    "revert_started_at, revert_ended_at",
    "ckflow_checkpoints": "*",
    "ckflow_regions": "*",
    "ckflow_events": "run_key, seq, checkpoint, failure_kind, body, run_updated_at",
    "ckflow_requests": "*",
}

#: how each read or write of a run's events finds them in version 4: by the table's key, or the failures' index
_PLANS = {
    _sqlite_ops._SAME_RUN_UNDER_WAY: "ckflow_events USING PRIMARY KEY (run_key=? AND seq>?)",
    _sqlite_ops.EVENTS: "ckflow_events USING PRIMARY KEY (run_key=? AND seq>?)",
    _sqlite_ops._RETAIN_EVENTS: "ckflow_events USING PRIMARY KEY (run_key=? AND seq<?)",
    _sqlite_ops._DROP_PROGRESS: "ckflow_events USING PRIMARY KEY (run_key=? AND seq>?)",
    _sqlite_ops._SELECT_RUN: "p USING PRIMARY KEY (run_key=? AND seq=?)",
    _sqlite_ops._DELETE[3]: "ckflow_events USING PRIMARY KEY (run_key=?)",
    _sqlite_ops._SELECT_FAILURES: "ckflow_events USING INDEX ckflow_events_failures (run_key=?)",
}


def flow(log: list[str]) -> ckflow.Linear:
    """first -> [checkpoint c, Retry(2)] flaky (fails once) -> last."""

    @task(provides="a")
    async def first(x: int) -> int:
        log.append("first")
        return x + 1

    @task(provides="b")
    async def flaky(a: int) -> int:
        log.append("flaky")
        if ckflow.current().attempt == 1:
            raise RuntimeError("not yet")
        return a * 10

    @task(provides="c")
    async def last(b: int) -> int:
        log.append("last")
        return b + 5

    return Linear("m", first, Checkpoint("c", retry=Retry(attempts=2)), flaky, last)


async def write_runs(path: Path) -> None:
    """Two runs in a new store at ``path``: "done" ended, "cut" cut short as its last task ends."""
    async with Engine(store=f"sqlite:///{path}") as engine:
        await (await engine.start(flow([]), {"x": 1}, run_id="done")).wait()
    store = WatchedStore(SQLiteStore(f"sqlite:///{path}"))

    def crash_at_the_end(batch: Batch) -> None:
        if any(t.task == "last" and t.state is TaskState.SUCCESS for t in batch.tasks):
            store.dead = True
            raise Crash("crash before the last task's success is recorded")

    store.on_write = crash_at_the_end
    async with Engine(store=store) as engine:
        with pytest.raises(Crash):
            await (await engine.start(flow([]), {"x": 2}, run_id="cut")).wait()
    await store.inner.close()


def as_version_3(new: Path, old: Path) -> None:
    """Copy what the store at ``new`` holds into a store made at ``old`` by the steps of version 3, as v3 wrote it."""
    with sqlite3.connect(old) as conn:
        conn.execute("PRAGMA page_size = 1024")
        conn.execute("PRAGMA journal_mode = WAL")
        for statement in (*_schema.SQLITE_V1, *_schema.SQLITE_V2, *_schema.SQLITE_V3):
            conn.execute(statement)
        conn.execute("INSERT INTO ckflow_meta VALUES ('schema_version', '3')")
        conn.execute("ATTACH DATABASE ? AS new", (str(new),))
        for table, columns in _V3_COLUMNS.items():
            into = "" if columns == "*" else f" ({columns})"
            order = "run_key, seq" if table == "ckflow_events" else "rowid"  # v4's events have no rowid
            conn.execute(f"INSERT INTO {table}{into} SELECT {columns} FROM new.{table} ORDER BY {order}")
        assert conn.execute("SELECT count(*) FROM ckflow_events").fetchone()[0] > 10
    conn.close()


def dump(record: Any) -> Any:
    return record.model_dump(mode="json")


async def everything(url: str) -> dict[str, Any]:
    """What the store at ``url`` reads back of both runs."""
    read: dict[str, Any] = {}
    async with SQLiteStore(url) as store:
        for run_id in ("done", "cut"):
            loaded = await store.load(run_id)
            read[run_id] = (
                [
                    dump(loaded.run),
                    *map(dump, loaded.tasks),
                    *map(dump, loaded.checkpoints),
                    *map(dump, loaded.regions),
                ],
                [dump(f) for f in loaded.failures],
                [e.model_dump(mode="json") for e in await store.events(run_id)],
                [e.model_dump(mode="json") for e in await store.events(run_id, after=3, limit=4)],
                [c.model_dump(mode="json") for c in await store.checkpoints(run_id)],
                await store.row_counts(run_id),
            )
        read["list"] = [r.model_dump(mode="json") for r in await store.list_runs()]
    return read


async def test_a_version_3_store_is_migrated_read_and_resumed(tmp_path: Path) -> None:
    new, old = tmp_path / "new.db", tmp_path / "old.db"
    await write_runs(new)
    as_version_3(new, old)
    expected = await everything(f"sqlite:///{new}")
    assert expected["cut"][0] != expected["done"][0]

    assert await everything(f"sqlite:///{old}") == expected
    with sqlite3.connect(old) as conn:
        assert conn.execute("SELECT value FROM ckflow_meta WHERE key = 'schema_version'").fetchone() == ("4",)
        assert SCHEMA_VERSION == 4
        indexes = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
        assert "ckflow_events_by_run" not in indexes
        assert "ckflow_events_failures" in indexes
        sql = conn.execute("SELECT sql FROM sqlite_master WHERE name = 'ckflow_events'").fetchone()[0]
        assert sql.endswith("WITHOUT ROWID")
        for statement, plan in _PLANS.items():
            params = ["cut"] * max(int(n) for n in re.findall(r"\?(\d+)", statement))
            found = [row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {statement}", params)]
            assert any(step.startswith(f"SEARCH {plan}") for step in found), found
        conn.execute("UPDATE ckflow_runs SET lease_expires = 0 WHERE run_id = 'cut'")  # its engine is long gone
    conn.close()

    log: list[str] = []
    async with Engine(store=f"sqlite:///{old}") as engine:
        assert (await (await engine.attach("done")).wait()).outputs == {"a": 2, "b": 20, "c": 25}
        result = await (await engine.resume("cut", flow=flow(log))).wait()
    assert result.state is FlowState.SUCCESS
    assert result.outputs == {"a": 3, "b": 30, "c": 35}
    assert log == ["last"]  # what was stored as done is not done again
