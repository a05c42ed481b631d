"""memory:// with ``?keep_ended=N``: a store in a long-lived process that keeps only its last N ended runs."""

from __future__ import annotations

import pytest

import ckflow
from ckflow import Engine, Linear, task
from ckflow.stores import open_store


class TestKeepEnded:
    async def test_only_the_last_ended_runs_are_kept(self) -> None:
        """With keep_ended=2 the store forgets a run once two others have ended after it."""

        @task
        async def one() -> None: ...

        store = open_store("memory://?keep_ended=2")
        async with Engine(store=store) as engine:
            for i in range(4):
                await (await engine.start(Linear("small", one), run_id=f"r{i}")).wait()
        assert [r.run_id for r in await store.list_runs()] == ["r3", "r2"]
        with pytest.raises(ckflow.RunNotFoundError):
            await store.get_run("r0")

    @pytest.mark.parametrize("url", ["memory://?keep_ended=0", "memory://?keep_ended=x", "memory://?other=1"])
    def test_bad_option_is_refused(self, url: str) -> None:
        """Any other option, or a count below 1, is a ValueError naming the URL."""
        with pytest.raises(ValueError, match="keep_ended"):
            open_store(url)
