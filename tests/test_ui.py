"""The live run page and the runs list (``GET /ui/runs/{id}``, ``GET /ui/runs``) of ``ckflow.fastapi.router()``.

The browser tests drive the system's Chromium (Debian's ``chromium``) with playwright against the router under a
prefix on a real uvicorn on loopback, in the test's own event loop: the flow's tasks wait on anyio Events that
the test sets, and each step waits for what the page shows (playwright's ``expect``), never for time. Without
Chromium they are skipped, except under ``CI=true``, where that is a failure. Screenshots of the run page
and of the runs list are kept in ``$CKFLOW_TEST_ARTIFACTS`` (default ``tests/artifacts/``).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import httpx
import pytest
from fastapi import FastAPI
from playwright.async_api import Page, async_playwright, expect
from tests.test_fastapi import served

import ckflow
import ckflow.fastapi
from ckflow import Checkpoint, FlowState, Linear, TaskState, task
from ckflow._fastapi_ui import EVENT_NAMES

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from playwright.async_api import Locator, Request

#: Chromium's flags for a sandbox-less machine with no network to reach (nothing is downloaded or synced)
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SOURCE = Path(__file__).parent.parent / "src" / "ckflow"
_names = itertools.count()


@pytest.fixture
def chromium() -> str:
    """The system's Chromium; missing, the test is skipped, or fails under CI=true (.ci/run installs it)."""
    found = shutil.which("chromium")
    if found is None:
        if os.environ.get("CI") == "true":
            pytest.fail("Chromium is not installed: `apt-get install chromium` (.ci/run does it)")
        pytest.skip("Chromium is not installed (`apt-get install chromium`); under CI=true this fails")
    return found


def artifacts() -> Path:
    folder = Path(os.environ.get("CKFLOW_TEST_ARTIFACTS", Path(__file__).parent / "artifacts"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def shipping(gates: dict[str, anyio.Event]) -> Linear:
    """prepare(size) -> [checkpoint ship] pack -> send; prepare and pack wait for their gates; registered afresh."""

    @task(provides="parcel")
    async def prepare(size: int) -> int:
        await gates["prepare"].wait()
        return size

    @task(provides="packed")
    async def pack(parcel: int) -> int:
        await gates["pack"].wait()
        return parcel

    @task(provides="sent")
    async def send(packed: int) -> int:
        return packed

    flow = Linear(f"shipping-{next(_names)}", prepare, Linear("shipping", Checkpoint("ship"), pack, send))
    ckflow.register_flow(flow.name, flow)
    return flow


def app_on(tmp_path: Path) -> FastAPI:
    """An app with the router under /ckflow, on a SQLite store."""
    app = FastAPI(lifespan=ckflow.fastapi.lifespan(f"sqlite:///{tmp_path / 'runs.db'}"))
    app.include_router(ckflow.fastapi.router(), prefix="/ckflow")
    return app


def failed(request: Request, errors: list[str]) -> None:
    """Note a failed request, except the event stream the page closes itself once it has the ``end`` event
    (the browser aborts it when the close comes before the server's)."""
    if not (request.url.endswith("/events") and request.failure == "net::ERR_ABORTED"):
        errors.append(f"request: {request.url} {request.failure}")


@contextlib.asynccontextmanager
async def browser_page(chromium: str) -> AsyncIterator[tuple[Page, list[str]]]:
    """A page in a fresh headless Chromium, and the list its script errors and failed requests go to."""
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page(viewport={"width": 1100, "height": 1000})
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(f"script: {error}"))
            page.on("console", lambda msg: errors.append(f"console: {msg.text}") if msg.type == "error" else None)
            page.on("requestfailed", lambda request: failed(request, errors))
            page.on("response", lambda r: errors.append(f"{r.status}: {r.url}") if r.status >= 400 else None)
            yield page, errors
        finally:
            await browser.close()


def cell(page: Page, task_name: str, column: int) -> Locator:
    """The task's cell in the table: 1 its state, 2 its attempts, 5 its duration."""
    return page.locator(f'#tasks tr[data-task="{task_name}"] td').nth(column)


class TestRunPage:
    async def test_the_page_follows_the_run_and_its_button_suspends_it(self, tmp_path: Path, chromium: str) -> None:
        """The page draws the graph, shows a task go RUNNING -> SUCCESS live, and Suspend suspends the run."""
        gates = {"prepare": anyio.Event(), "pack": anyio.Event()}
        flow = shipping(gates)
        app = app_on(tmp_path)
        with anyio.fail_after(45):
            async with served(app) as base, browser_page(chromium) as (page, errors):
                engine = app.state.ckflow
                await engine.start(flow, {"size": 3}, run_id="order-1")
                await page.goto(f"{base}/ckflow/ui/runs/order-1")

                # the graph: one node per task, the checkpoint as a group
                for name in ("prepare", "pack", "send"):
                    await expect(page.locator("#graph svg g.node", has_text=name)).to_have_count(1)
                await expect(page.locator("#graph svg g.cluster", has_text="checkpoint ship")).to_have_count(1)
                await expect(page.locator("#run-id")).to_have_text("order-1")
                await expect(page.locator("#live")).to_have_text("live")

                # a task goes RUNNING -> SUCCESS on the page (table and graph) as the run goes
                await expect(cell(page, "prepare", 1)).to_have_text("RUNNING")
                await expect(page.locator("#graph svg g.node.running", has_text="prepare")).to_have_count(1)
                gates["prepare"].set()
                await expect(cell(page, "prepare", 1)).to_have_text("SUCCESS")
                await expect(page.locator("#graph svg g.node.success", has_text="prepare")).to_have_count(1)
                await expect(cell(page, "prepare", 2)).to_have_text("1")
                await expect(cell(page, "prepare", 5)).not_to_be_empty()  # its duration
                await expect(cell(page, "pack", 1)).to_have_text("RUNNING")

                # Suspend: the engine takes the request (its event reaches the page), pack finishes, the run halts
                await page.get_by_role("button", name="Suspend").click()
                await expect(page.locator("#events td", has_text="ckflow.control.suspend")).to_have_count(1)
                gates["pack"].set()
                await expect(page.locator("#message")).to_have_text("suspend: the run is SUSPENDED.")
                await expect(page.locator("#run-state")).to_have_text("SUSPENDED")
                async with httpx.AsyncClient(base_url=f"{base}/ckflow") as client:
                    view = (await client.get("/runs/order-1")).json()
                assert view["state"] == FlowState.SUSPENDED
                assert {t["name"]: t["state"] for t in view["tasks"]} == {
                    "prepare": TaskState.SUCCESS,
                    "pack": TaskState.SUCCESS,
                    "send": TaskState.PENDING,
                }
                await page.screenshot(path=artifacts() / "run_page.png", full_page=True)

                # Resume: the run ends, the stream's end is shown and the controls are off
                await page.get_by_role("button", name="Resume").click()
                await expect(page.locator("#run-state")).to_have_text("SUCCESS")
                await expect(page.locator("#live")).to_have_text("ended")
                await expect(cell(page, "send", 1)).to_have_text("SUCCESS")
                await expect(page.locator("#graph svg g.node.success")).to_have_count(3)
                await expect(page.get_by_role("button", name="Cancel")).to_be_disabled()
                assert errors == []

    async def test_an_error_of_a_control_call_is_shown(self, tmp_path: Path, chromium: str) -> None:
        """A control call the server refuses (409: the run has ended) shows its status and detail on the page."""
        gates = {"prepare": anyio.Event(), "pack": anyio.Event()}
        for gate in gates.values():
            gate.set()
        flow = shipping(gates)
        app = app_on(tmp_path)
        with anyio.fail_after(45):
            async with served(app) as base, browser_page(chromium) as (page, _):
                run = await app.state.ckflow.start(flow, {"size": 3}, run_id="done")
                await run.wait()
                await page.goto(f"{base}/ckflow/ui/runs/done")
                cancel = page.get_by_role("button", name="Cancel")
                await expect(cancel).to_be_disabled()
                await cancel.evaluate("button => { button.disabled = false; }")  # a page that missed the end
                await cancel.click()
                await expect(page.locator("#message.error")).to_have_text(
                    re.compile(r"^cancel failed: 409 Run 'done' has already ended \(SUCCESS\)")
                )
                await expect(cancel).to_be_disabled()


class TestRunsPage:
    async def test_lists_runs_filters_by_state_and_links_to_each_page(self, tmp_path: Path, chromium: str) -> None:
        """The list shows the runs, the state filter narrows it, and a run's link opens its live page."""
        closed = {"prepare": anyio.Event(), "pack": anyio.Event()}
        opened = {"prepare": anyio.Event(), "pack": anyio.Event()}
        for gate in opened.values():
            gate.set()
        app = app_on(tmp_path)
        with anyio.fail_after(45):
            async with served(app) as base, browser_page(chromium) as (page, errors):
                engine = app.state.ckflow
                await engine.start(shipping(closed), {"size": 1}, run_id="waiting")
                await (await engine.start(shipping(opened), {"size": 2}, run_id="finished")).wait()

                await page.goto(f"{base}/ckflow/ui/runs")
                await expect(page.locator("#runs tbody tr")).to_have_count(2)
                await expect(page.locator('#runs tr[data-run="finished"] td').nth(2)).to_have_text("SUCCESS")
                await page.screenshot(path=artifacts() / "runs_page.png", full_page=True)

                await page.locator("#state").select_option("SUCCESS")
                await page.get_by_role("button", name="Show").click()
                await expect(page).to_have_url(re.compile(r"state=SUCCESS"))
                await expect(page.locator("#runs tbody tr")).to_have_count(1)

                await page.get_by_role("link", name="finished").click()
                await expect(page).to_have_url(f"{base}/ckflow/ui/runs/finished")
                await expect(page.locator("#run-state")).to_have_text("SUCCESS")
                await expect(page.locator("#graph svg")).to_have_count(1)
                assert errors == []


class TestServing:
    """What the server sends, read without a browser (httpx on the app, its lifespan entered)."""

    @staticmethod
    @contextlib.asynccontextmanager
    async def client(tmp_path: Path) -> AsyncIterator[tuple[httpx.AsyncClient, FastAPI]]:
        app = app_on(tmp_path)
        with anyio.fail_after(10):
            async with app.router.lifespan_context(app):
                transport = httpx.ASGITransport(app=app)
                async with httpx.AsyncClient(transport=transport, base_url="http://app/ckflow") as client:
                    yield client, app

    async def test_an_unknown_run_is_a_404_page(self, tmp_path: Path) -> None:
        """GET /ui/runs/{id} of no run is 404 with an HTML page that names the run, escaped."""
        async with self.client(tmp_path) as (client, _):
            response = await client.get("/ui/runs/%3Cb%3Enope")
        assert response.status_code == 404
        assert response.headers["content-type"].startswith("text/html")
        assert "&lt;b&gt;nope" in response.text
        assert "<b>" not in response.text

    async def test_the_run_page_carries_its_data_escaped_and_only_relative_urls(self, tmp_path: Path) -> None:
        """The run id and checkpoints reach the page as a JSON island no run id can break out of."""
        gates = {"prepare": anyio.Event(), "pack": anyio.Event()}
        for gate in gates.values():
            gate.set()
        flow = shipping(gates)
        async with self.client(tmp_path) as (client, app):
            await (await app.state.ckflow.start(flow, {"size": 1}, run_id="a<!--b&c>'\"")).wait()
            response = await client.get("/ui/runs/a%3C!--b%26c%3E'%22")
        assert response.status_code == 200
        assert "default-src 'self'" in response.headers["content-security-policy"]
        island = response.text.split('id="ckflow-run">', 1)[1].split("</script>", 1)[0]
        assert not set("<>&") & set(island)
        assert '"checkpoints": ["ship"]' in island
        assert "ckflow.task.success" in island
        assert not re.search(r"""(?:src|href)=["']?(?:/|https?:)""", response.text)

    @pytest.mark.parametrize(
        ("name", "media_type"),
        [
            ("run.js", "text/javascript"),
            ("runs.js", "text/javascript"),
            ("common.js", "text/javascript"),
            ("ckflow.css", "text/css"),
            ("mermaid.min.js", "text/javascript"),
            ("mermaid.LICENSE", "text/plain"),
        ],
    )
    async def test_static_files_are_served_with_their_types(self, tmp_path: Path, name: str, media_type: str) -> None:
        """Every file the pages load is served from the package with its media type, and may be cached."""
        async with self.client(tmp_path) as (client, _):
            response = await client.get(f"/ui/static/{name}")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith(media_type)
        assert "max-age" in response.headers["cache-control"]
        assert response.content == (SOURCE / "_ui" / name).read_bytes()

    @pytest.mark.parametrize("name", ["README.md", "run.html", "..%2F_view.py", "nothing.js"])
    async def test_no_other_file_is_served(self, tmp_path: Path, name: str) -> None:
        """Only the listed files: 404 for anything else in the folder, or outside it."""
        async with self.client(tmp_path) as (client, _):
            response = await client.get(f"/ui/static/{name}")
        assert response.status_code == 404


def test_the_page_listens_to_every_event_the_engine_emits() -> None:
    """EventSource hears named events only: every fixed event name in the engine's code is in EVENT_NAMES."""
    emitted = set()
    for path in SOURCE.rglob("*.py"):
        emitted |= set(re.findall(r"""\.event\(\s*"(ckflow\.[a-z_.]+)\"""", path.read_text()))
    assert emitted  # the pattern still finds the engine's calls
    assert emitted <= set(EVENT_NAMES)
