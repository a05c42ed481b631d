"""`open_store(url, create=False)`: a store that is not there is refused, and nothing is created."""

from __future__ import annotations

import os
import sqlite3
import uuid
from typing import TYPE_CHECKING

import asyncpg
import pytest
from tests.stores import run_record, without_query
from tests.stores.conftest import url_of_kind

from ckflow import StoreNotFoundError, StoreUnavailableError
from ckflow.stores import open_store

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path


@pytest.fixture(params=["memory", "sqlite", "postgres"])
async def missing_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """The URL of a store that does not exist yet, of each kind (a PostgreSQL schema dropped afterwards)."""
    async with url_of_kind(request, tmp_path, f"memory://ckflow-test-{uuid.uuid4().hex[:12]}") as url:
        yield url


async def _schema_exists(url: str) -> bool:
    from urllib.parse import parse_qs, urlsplit

    schema = parse_qs(urlsplit(url).query)["schema"][0]
    conn = await asyncpg.connect(without_query(url, "schema"))
    try:
        return await conn.fetchval("SELECT 1 FROM pg_catalog.pg_namespace WHERE nspname = $1", schema) is not None
    finally:
        await conn.close()


class TestCreateFalse:
    """Tools that only read open stores with create=False; a store that is not there is an error."""

    async def test_missing_store_is_not_found(self, missing_url: str, tmp_path: Path) -> None:
        """Opening a missing store raises StoreNotFoundError (a StoreUnavailableError) and creates nothing."""
        with pytest.raises(StoreNotFoundError) as info:
            await open_store(missing_url, create=False).open()
        assert isinstance(info.value, StoreUnavailableError)
        assert "no store is there" in str(info.value)
        assert info.value.where
        if missing_url.startswith("sqlite"):
            assert os.listdir(tmp_path) == []  # no file, no -wal, no -shm
        elif missing_url.startswith("postgres"):
            assert not await _schema_exists(missing_url)
        with pytest.raises(StoreNotFoundError):  # still not there: the first attempt made none
            await open_store(missing_url, create=False).open()

    async def test_existing_store_opens(self, missing_url: str) -> None:
        """Once a store exists (created by a default open), create=False opens it and reads its runs."""
        async with open_store(missing_url) as store:
            await store.create_run(run_record("r1"))
        async with open_store(missing_url, create=False) as store:
            assert [r.run_id for r in await store.list_runs()] == ["r1"]

    @pytest.mark.parametrize("kind", ["empty", "other-tables"])
    async def test_sqlite_file_without_ckflow_tables(self, tmp_path: Path, kind: str) -> None:
        """A SQLite file with no ckflow tables is no store: StoreNotFoundError, the file left as it was."""
        db = tmp_path / "other.db"
        if kind == "empty":
            db.write_bytes(b"")
        else:
            with sqlite3.connect(db) as conn:
                conn.execute("CREATE TABLE notes (body TEXT)")
            conn.close()
        before = db.read_bytes()
        with pytest.raises(StoreNotFoundError, match="holds no ckflow tables"):
            await open_store(f"sqlite:///{db}", create=False).open()
        assert db.read_bytes() == before
        assert os.listdir(tmp_path) == ["other.db"]
