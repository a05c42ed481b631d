"""The tables' column declarations (``_columns``): they match the schema, and rows map to records both ways."""

from __future__ import annotations

import sqlite3
from typing import TYPE_CHECKING, Any

import pytest
from tests.stores import (
    checkpoint_record,
    control_request,
    event,
    failure,
    full_checkpoint,
    region_record,
    run_record,
    task_record,
)

from ckflow.stores import _columns as _c
from ckflow.stores.postgres import PostgresStore
from ckflow.stores.sqlite import SQLiteStore

if TYPE_CHECKING:
    from pathlib import Path

TABLES: list[_c.Table[Any]] = [_c.RUNS, _c.TASKS, _c.CHECKPOINTS, _c.REGIONS, _c.EVENTS, _c.REQUESTS]
#: what SQLite keeps otherwise than the declarations say: tasks and events by the run's integer key; the
#: progress an event carries; the runs' own key
SQLITE_ONLY: dict[str, tuple[str, ...]] = {"ckflow_runs": ("run_key",), "ckflow_events": ("run_updated_at",)}


def _sqlite_names(table: _c.Table[Any]) -> list[str]:
    keyed = table.name in ("ckflow_tasks", "ckflow_events")
    names = ["run_key" if keyed and name == "run_id" else name for name in table.names]
    return sorted([*names, *SQLITE_ONLY.get(table.name, ())])


@pytest.mark.parametrize(
    ("table", "record"),
    [
        (_c.RUNS, run_record(owner="engine-a", lease_expires=5.0, trace="00-abc-def-01")),
        (_c.TASKS, task_record("run-1", "attach", retries={"x": 2}, failure=failure())),
        (_c.CHECKPOINTS, full_checkpoint("run-1", "cp", 2)),
        (_c.CHECKPOINTS, checkpoint_record("run-1", "cp", 1)),
        (_c.REGIONS, region_record("run-1", 3, auto_resume=True)),
        (_c.EVENTS, event("run-1", 4)),
        (_c.REQUESTS, control_request("run-1", "req-1", 7.0)),
    ],
    ids=lambda value: getattr(value, "name", ""),
)
def test_a_row_read_by_name_gives_the_record_back(table: _c.Table[Any], record: Any) -> None:
    row = table.row(record)
    assert len(row) == len(table.names)
    expected = record.model_dump(mode="json")  # (a failure made here keeps its exception; one read back does not)
    assert table.record(dict(zip(table.names, row, strict=True))).model_dump(mode="json") == expected
    # the columns are read by name, whatever their order in the row
    backwards = dict(reversed(list(zip(table.names, row, strict=True))))
    assert table.record(backwards).model_dump(mode="json") == expected


def test_row_is_keyed_by_the_run_given() -> None:
    row = _c.TASKS.row(task_record("other", "attach"), "run-1", ("more",))
    assert dict(zip(_c.TASKS.names, row[:-1], strict=True))["run_id"] == "run-1"
    assert row[-1] == "more"


async def test_sqlite_tables_have_the_declared_columns(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    async with SQLiteStore(f"sqlite:///{path}"):
        pass
    with sqlite3.connect(path) as conn:
        for table in TABLES:
            found = sorted(row[1] for row in conn.execute(f"PRAGMA table_info({table.name})"))
            assert found == _sqlite_names(table), table.name
        view = sorted(row[1] for row in conn.execute("PRAGMA table_info(ckflow_run_records)"))
        assert view == sorted(_c.RUNS.read)
    conn.close()


async def test_postgres_tables_have_the_declared_columns_and_types(postgres_url: str) -> None:
    types = {"text": "text", "int8": "bigint", "float8": "double precision", "bool": "boolean"}
    async with PostgresStore(postgres_url) as store, store._open_pool().acquire() as conn:
        for table in TABLES:
            rows = await conn.fetch(
                "SELECT column_name, data_type FROM information_schema.columns "
                "WHERE table_schema = $1 AND table_name = $2 AND column_name <> 'pos'",
                store.schema,
                table.name,
            )
            found = {row["column_name"]: row["data_type"] for row in rows}
            assert found == {c.name: types[c.pg] for c in table.columns}, table.name
