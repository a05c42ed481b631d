"""A durable run's last write gives its lease back (``Batch.release``): no ``release`` call of its own."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

import ckflow
from ckflow import Engine, Linear, task

if TYPE_CHECKING:
    from ckflow.stores import Store


@task
async def one() -> int:
    return 1


@task
async def two() -> int:
    return 2


@task
async def broken() -> int:
    raise RuntimeError("no")


@pytest.mark.parametrize("last", [two, broken], ids=["success", "failure"])
async def test_an_ended_run_is_released_by_its_last_write(
    store: Store, monkeypatch: pytest.MonkeyPatch, last: Any
) -> None:
    """Once a run ended (SUCCESS, or FAILURE after its reverts), the store holds it with no owner nor lease,
    and the engine made no ``release`` call for it: the write of its end gave the lease up."""
    released: list[str] = []
    plain = type(store).release

    async def counted(self: Store, run_id: str, owner: str) -> None:
        released.append(run_id)
        await plain(self, run_id, owner)  # type: ignore[arg-type]

    monkeypatch.setattr(type(store), "release", counted)
    async with Engine(store=store) as engine:
        run = await engine.start(Linear("released", one, last))
        result = await run.wait()
        assert result.state in (ckflow.FlowState.SUCCESS, ckflow.FlowState.REVERTED, ckflow.FlowState.FAILURE)
        stored = await store.get_run(run.id)
    assert stored.state == result.state
    assert (stored.owner, stored.lease_expires) == (None, None)
    assert released == []
