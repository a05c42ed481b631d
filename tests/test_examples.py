"""The demo (`python -m ckflow demo`) and every script in examples/ run, as users would run them.

The FastAPI example serves until stopped: its app is driven in-process (httpx's ASGI transport), and once as
`python examples/fastapi_service.py` on loopback; tests/test_fastapi_crash.py serves it with uvicorn too.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent
#: examples that serve until stopped: tested below (and by tests/test_fastapi_crash.py) instead of run to their end
SERVICES = ("fastapi_service.py",)
EXAMPLES = sorted(p for p in (ROOT / "examples").glob("*.py") if p.name not in SERVICES)


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NO_COLOR": "1"}
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=60, cwd=ROOT, env=env, check=False
    )


def _demo(tmp_path: Path) -> subprocess.CompletedProcess[str]:
    return _run("-m", "ckflow", "demo", "--fast", "--store", f"sqlite:///{tmp_path}/demo.db")


class TestDemo:
    def test_demo_fast_succeeds_and_shows_the_retry(self, tmp_path: Path) -> None:
        """The demo exits 0; attach_volume is reverted and retried, the others are not, the run succeeds."""
        proc = _demo(tmp_path)
        assert proc.returncode == 0, proc.stderr
        out = proc.stdout
        first, _, second = out.partition("2. boot fails for good")
        assert "attach_volume      FAILURE → REVERTING" in first
        assert "walker: retry attach_volume at checkpoint 'disk', attempt 2" in first
        assert "result: SUCCESS" in first
        assert "attach_volume      SUCCESS     executed 2 times" in first
        assert "never reverted: create_volume, configure_network, boot" in first
        assert "create_volume      SUCCESS → REVERTING" not in first
        assert "configure_network  SUCCESS → REVERTING" not in first
        assert "result: REVERTED" in second
        assert "\033[" not in out  # no colour when stdout is not a TTY

    def test_demo_keeps_its_runs_and_resumes_one_from_the_store(self, tmp_path: Path) -> None:
        """The demo's runs are in its SQLite file; the third is resumed there without running create_volume again."""
        proc = _demo(tmp_path)
        assert proc.returncode == 0, proc.stderr
        third = proc.stdout.partition("3. the engine stops at checkpoint 'disk'")[2]
        assert "run resumed from the store" in third
        assert "create_volume      SUCCESS     executed once" in third
        assert "result: SUCCESS" in third
        assert (tmp_path / "demo.db").exists()
        runs = _run("-m", "ckflow", "runs", "--store", f"sqlite:///{tmp_path}/demo.db")
        assert runs.returncode == 0, runs.stderr
        assert runs.stdout.count("provision") == 3

    def test_permanent_failure_reverts_in_reverse_order(self, tmp_path: Path) -> None:
        """In the second scenario boot is reverted first and create_volume last."""
        proc = _demo(tmp_path)
        second = proc.stdout.partition("2. boot fails for good")[2]
        order = [
            line.split()[2]
            for line in second.splitlines()
            if line.strip().endswith("→ REVERTING") and line.split()[1] == "ms"
        ]
        assert order[0] == "boot"
        assert order[-1] == "create_volume"
        assert set(order) == {"boot", "attach_volume", "configure_network", "create_volume"}

    def test_cli_without_command_prints_help(self) -> None:
        """`python -m ckflow` without a subcommand prints usage and exits 2."""
        proc = _run("-m", "ckflow")
        assert proc.returncode == 2
        assert "demo" in proc.stdout


@pytest.mark.parametrize("script", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_runs(script: Path) -> None:
    """Every example script finishes with exit status 0."""
    proc = _run(str(script))
    assert proc.returncode == 0, proc.stderr


def test_there_are_examples() -> None:
    """examples/ is not empty, so the parametrized test above checks something."""
    assert len(EXAMPLES) >= 2


def _order(order_id: str, card: str = "4242424242424242", quantity: int = 2) -> dict[str, object]:
    return {"order_id": order_id, "sku": "mug", "quantity": quantity, "amount_cents": 1800, "card": card}


@pytest.fixture
def service(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """examples/fastapi_service.py loaded afresh (its stock full again) on a SQLite file in ``tmp_path``."""
    monkeypatch.setenv("ORDERS_STORE", f"sqlite:///{tmp_path / 'orders.db'}")
    spec = importlib.util.spec_from_file_location("fastapi_service_under_test", ROOT / "examples" / SERVICES[0])
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@contextlib.asynccontextmanager
async def _client(service: ModuleType) -> AsyncIterator[httpx.AsyncClient]:
    """The example's app in-process, its lifespan entered as a server would."""
    app = service.app
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://orders") as client:
            yield client


class TestOrderService:
    """examples/fastapi_service.py: POST /orders runs the order inline; a failed order is undone."""

    async def test_an_order_goes_through(self, service: ModuleType) -> None:
        """201 with the run's view: every task SUCCESS, the tracking number among the outputs, stock taken."""
        async with _client(service) as client:
            response = await client.post("/orders", json=_order("o-1"))
        assert response.status_code == 201, response.text
        view = response.json()
        assert (view["run_id"], view["state"]) == ("order-o-1", "SUCCESS")
        assert view["outputs"]["tracking"] == "trk-o-1"
        assert [t["name"] for t in view["tasks"]] == ["reserve_stock", "charge", "ship"]
        assert service.stock["mug"] == 8
        assert service.payments == {"o-1": 1800}

    async def test_a_declined_card_undoes_the_order(self, service: ModuleType) -> None:
        """402 with the run REVERTED: nothing charged, the stock released, the decline named in the failures."""
        async with _client(service) as client:
            response = await client.post("/orders", json=_order("o-2", card=service.DECLINED))
        assert response.status_code == 402, response.text
        view = response.json()["detail"]
        assert view["state"] == "REVERTED"
        assert view["failures"][0]["type"].endswith("CardDeclined")
        assert service.stock["mug"] == 10
        assert service.payments == {}

    async def test_a_gateway_time_out_is_retried_at_the_payment_checkpoint(self, service: ModuleType) -> None:
        """The flaky card's first charge fails; the checkpoint retries it, the order goes through, stock taken once."""
        async with _client(service) as client:
            response = await client.post("/orders", json=_order("o-3", card=service.FLAKY))
        assert response.status_code == 201, response.text
        tasks = {t["name"]: t for t in response.json()["tasks"]}
        assert (tasks["charge"]["attempts"], tasks["reserve_stock"]["attempts"]) == (2, 1)
        assert service.stock["mug"] == 8

    async def test_an_order_id_is_placed_once_and_bad_bodies_are_422(self, service: ModuleType) -> None:
        """The same order id again is 409; a quantity of 0 is refused by the body model before anything runs."""
        async with _client(service) as client:
            assert (await client.post("/orders", json=_order("o-4"))).status_code == 201
            again = await client.post("/orders", json=_order("o-4"))
            assert again.status_code == 409, again.text
            assert "order-o-4" in again.json()["detail"]
            bad = await client.post("/orders", json=_order("o-5", quantity=0))
            assert bad.status_code == 422
            assert bad.json()["detail"][0]["loc"] == ["body", "quantity"]
            runs = (await client.get("/ckflow/runs")).json()["runs"]
        assert [r["run_id"] for r in runs] == ["order-o-4"]
        assert service.stock["mug"] == 8


def test_the_service_serves_when_run_as_a_script(tmp_path: Path) -> None:
    """`python examples/fastapi_service.py` serves the app on $PORT; an order placed there goes through."""
    with socket.socket() as probe:  # a port that was free a moment ago (uvicorn.run takes no socket)
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "PORT": str(port), "ORDERS_STORE": f"sqlite:///{tmp_path / 'orders.db'}"}
    log = tmp_path / "service.log"
    with log.open("wb") as out:
        server = subprocess.Popen(
            [sys.executable, str(ROOT / "examples" / SERVICES[0])], cwd=tmp_path, env=env, stdout=out, stderr=out
        )
    try:
        deadline = time.monotonic() + 30
        while "Uvicorn running on" not in log.read_text():
            assert server.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.02)
        response = httpx.post(f"http://127.0.0.1:{port}/orders", json=_order("o-1"), timeout=10)
        assert response.status_code == 201, response.text
    finally:
        server.terminate()
        server.wait(timeout=10)
    assert (tmp_path / "orders.db").exists()
