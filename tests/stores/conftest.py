"""Stores to run the contract suite on: memory, SQLite (a file in tmp_path) and PostgreSQL (a fresh schema)."""

from __future__ import annotations

import contextlib
import uuid
from typing import TYPE_CHECKING

import pytest
from tests.stores import with_query, without_query

from ckflow.stores import open_store

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    from ckflow.stores import Store


async def drop_schema(url: str) -> None:
    """Drop the schema named by ``url``'s ``?schema=`` and everything in it."""
    from urllib.parse import parse_qs, urlsplit

    import asyncpg

    schema = parse_qs(urlsplit(url).query)["schema"][0]
    conn = await asyncpg.connect(without_query(url, "schema"))
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


@contextlib.asynccontextmanager
async def url_of_kind(request: pytest.FixtureRequest, tmp_path: Path, memory: str) -> AsyncIterator[str]:
    """The URL of an empty store of the kind ``request.param`` names ("memory": ``memory``; "sqlite": a file in
    ``tmp_path``; "postgres": a schema of its own on the test server, dropped afterwards)."""
    if request.param == "memory":
        yield memory
    elif request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'runs.db'}"
    else:
        dsn: str = request.getfixturevalue("postgres_dsn")
        url = with_query(dsn, schema=f"ckflow_test_{uuid.uuid4().hex[:12]}")
        try:
            yield url
        finally:
            await drop_schema(url)


@pytest.fixture
async def postgres_url(postgres_dsn: str) -> AsyncIterator[str]:
    """A store URL on a schema of its own, dropped after the test."""
    url = with_query(postgres_dsn, schema=f"ckflow_test_{uuid.uuid4().hex[:12]}")
    yield url
    await drop_schema(url)


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The URL of an empty store of each kind."""
    if request.param == "memory":
        return "memory://"
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'runs.db'}"
    dsn: str = request.getfixturevalue("postgres_dsn")
    return with_query(dsn, schema=f"ckflow_test_{uuid.uuid4().hex[:12]}")


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[Store]:
    """An opened, empty store of each kind."""
    opened = open_store(store_url)
    try:
        async with opened:
            yield opened
    finally:
        if store_url.startswith("postgres"):
            await drop_schema(store_url)
