from __future__ import annotations

import os
from typing import TYPE_CHECKING

import pytest

from ckflow.testing import set_testing

if TYPE_CHECKING:
    from collections.abc import Iterator


@pytest.fixture(autouse=True)
def _production_mode() -> Iterator[None]:
    """Every test starts with ckflow's test mode off; tests that want it turn it on."""
    set_testing(False)
    yield
    set_testing(False)


@pytest.fixture(scope="session")
def postgres_dsn() -> str:
    """The PostgreSQL server of ``CKFLOW_TEST_POSTGRES_DSN``; a missing server fails under CI=true, else skips."""
    import asyncio
    import concurrent.futures

    async def probe(dsn: str) -> None:
        import asyncpg

        conn = await asyncpg.connect(dsn, timeout=5)
        try:
            await conn.fetchval("SELECT 1")
        finally:
            await conn.close()

    dsn = os.environ.get("CKFLOW_TEST_POSTGRES_DSN", "")
    problem = None
    if not dsn:
        problem = "CKFLOW_TEST_POSTGRES_DSN is not set (e.g. postgresql://postgres@127.0.0.1:5432/test)"
    else:
        # In a thread of its own, so that a test's event loop is neither needed nor disturbed.
        with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
            try:
                pool.submit(asyncio.run, probe(dsn)).result()
            except Exception as exc:
                problem = f"{type(exc).__name__}: {exc}"
    if problem is not None:
        message = f"PostgreSQL tests need a server: {problem}"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return dsn
