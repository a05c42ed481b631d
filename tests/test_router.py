"""ckflow.fastapi.router(): the HTTP surface over the app's engine (DESIGN §12), on a SQLite store.

Driven in process through ``httpx.ASGITransport`` with the lifespan entered by the test. Runs that must be caught
mid-way block on anyio Events; the order of a control request and a task's progress is fixed by the run's own
events (a task's gate opens on the ``ckflow.control.*`` event), never by sleeping.
"""

from __future__ import annotations

import contextlib
import itertools
from typing import TYPE_CHECKING, Any

import anyio
import httpx
import pytest
from fastapi import Depends, FastAPI, HTTPException
from pydantic import BaseModel

import ckflow
import ckflow.fastapi
from ckflow import Checkpoint, Engine, FlowState, Linear, RunView, TaskState, task

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

_names = itertools.count()


class Order(BaseModel):
    sku: str
    quantity: int = 1


def provisioning(log: list[str], started: anyio.Event, gate: anyio.Event) -> Linear:
    """create(size) -> [checkpoint disk] attach (sets started, waits for gate) -> boot; registered afresh."""

    @task(provides="volume")
    async def create(size: int) -> int:
        log.append("create")
        return size

    @create.revert
    async def _(result: object) -> None:
        log.append("undo create")

    @task(provides="attachment")
    async def attach(volume: int) -> int:
        log.append("attach")
        started.set()
        await gate.wait()
        return volume + 1

    @attach.revert
    async def _(result: object) -> None:
        log.append("undo attach")

    @task(provides="booted")
    async def boot(attachment: int) -> int:
        log.append("boot")
        return attachment

    flow = Linear(f"router-{next(_names)}", create, Linear("disk-branch", Checkpoint("disk"), attach, boot))
    ckflow.register_flow(flow.name, flow)
    return flow


def quick_flow() -> Linear:
    """A flow of one task that needs no inputs, registered afresh."""

    @task
    async def noop() -> None:
        pass

    flow = Linear(f"quick-{next(_names)}", noop)
    ckflow.register_flow(flow.name, flow)
    return flow


@contextlib.asynccontextmanager
async def api(tmp_path: Path, **router_options: Any) -> AsyncIterator[tuple[httpx.AsyncClient, Engine]]:
    """An app with the router under /ckflow on a SQLite store, its lifespan entered; yields a client and engine."""
    app = FastAPI(lifespan=ckflow.fastapi.lifespan(f"sqlite:///{tmp_path / 'runs.db'}"))
    app.include_router(ckflow.fastapi.router(**router_options), prefix="/ckflow")
    with anyio.fail_after(10):
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://app/ckflow") as client:
                yield client, app.state.ckflow


async def post_run(client: httpx.AsyncClient, flow: Linear, run_id: str) -> httpx.Response:
    """POST /runs for a run of ``flow`` (size 1) under ``run_id``."""
    return await client.post("/runs", json={"flow": flow.name, "inputs": {"size": 1}, "run_id": run_id})


def opened_on(run: ckflow.Run, name: str, gate: anyio.Event) -> None:
    """Open ``gate`` when the run emits the event ``name`` (a control request has been taken in)."""
    run.subscribe(lambda event: gate.set() if event.name == name else None)


class TestFlows:
    async def test_lists_registered_flows_with_their_required_inputs(self, tmp_path: Path) -> None:
        flow = provisioning([], anyio.Event(), anyio.Event())
        async with api(tmp_path) as (client, _):
            response = await client.get("/flows")
        assert response.status_code == 200
        found = {f["name"]: f for f in response.json()}
        assert found[flow.name]["required_inputs"] == {"size": ["create"]}
        assert found[flow.name]["input_schema"] == {
            "title": flow.name,
            "type": "object",
            "properties": {"size": {"type": "integer"}},
            "required": ["size"],
        }

    async def test_the_input_schema_types_models_and_leaves_out_defaults_and_provided_values(
        self, tmp_path: Path
    ) -> None:
        """Each input read from the run's inputs is a property typed by its annotation (a model in $defs); one
        with a default is optional, a value a task provides is not an input, and an unannotated one is any value."""

        @task(provides="address")
        async def place(order: Order, note: str = "", tag=None) -> str:  # type: ignore[no-untyped-def]
            return f"{order.sku} {note} {tag}"

        @task
        async def ship(address: str, order: Order, rush: bool, note: str = "") -> None:
            pass

        flow = Linear(f"schema-{next(_names)}", place, ship)
        ckflow.register_flow(flow.name, flow)
        async with api(tmp_path) as (client, _):
            response = await client.get("/flows")
        schema = {f["name"]: f for f in response.json()}[flow.name]["input_schema"]
        assert schema == {
            "title": flow.name,
            "type": "object",
            "properties": {
                "order": {"$ref": "#/$defs/Order"},
                "note": {"type": "string"},
                "tag": {},
                "rush": {"type": "boolean"},
            },
            "required": ["order", "rush"],
            "$defs": {"Order": Order.model_json_schema()},
        }

    async def test_differing_annotations_of_one_input_are_all_of_them(self, tmp_path: Path) -> None:
        """Two tasks reading one input under different annotations: the value must fit both (allOf)."""

        @task
        async def first(n: int) -> None:
            pass

        @task
        async def second(n: int | None) -> None:
            pass

        flow = Linear(f"both-{next(_names)}", first, second)
        ckflow.register_flow(flow.name, flow)
        async with api(tmp_path) as (client, _):
            response = await client.get("/flows")
        schema = {f["name"]: f for f in response.json()}[flow.name]["input_schema"]
        either = {"anyOf": [{"type": "integer"}, {"type": "null"}]}
        assert schema["properties"] == {"n": {"allOf": [{"type": "integer"}, either]}}


class TestStart:
    async def test_201_with_the_view_without_waiting_for_the_end(self, tmp_path: Path) -> None:
        log: list[str] = []
        started, gate = anyio.Event(), anyio.Event()
        flow = provisioning(log, started, gate)
        async with api(tmp_path) as (client, engine):
            response = await client.post("/runs", json={"flow": flow.name, "inputs": {"size": 2}, "run_id": "r1"})
            assert response.status_code == 201
            view = RunView.model_validate(response.json())
            assert (view.run_id, view.flow, view.inputs) == ("r1", flow.name, {"size": 2})
            assert view.state in {FlowState.PENDING, FlowState.RUNNING}
            await started.wait()
            gate.set()
            assert (await engine.get_run("r1").wait()).state is FlowState.SUCCESS
            got = await client.get("/runs/r1")
        assert got.status_code == 200
        assert RunView.model_validate(got.json()).outputs == {"volume": 2, "attachment": 3, "booted": 3}

    async def test_unknown_flow_is_404(self, tmp_path: Path) -> None:
        async with api(tmp_path) as (client, _):
            response = await client.post("/runs", json={"flow": "no-such-flow"})
        assert response.status_code == 404
        assert "no-such-flow" in response.json()["detail"]

    async def test_an_input_that_does_not_fit_is_422_naming_the_field(self, tmp_path: Path) -> None:
        log: list[str] = []
        flow = provisioning(log, anyio.Event(), anyio.Event())
        async with api(tmp_path) as (client, _):
            response = await client.post("/runs", json={"flow": flow.name, "inputs": {"size": "big"}})
        assert response.status_code == 422
        [error] = response.json()["detail"]
        assert error["loc"][:3] == ["body", "inputs", "size"]
        assert error["type"] == "int_parsing"
        assert log == []

    async def test_a_missing_input_is_422_naming_it(self, tmp_path: Path) -> None:
        flow = provisioning([], anyio.Event(), anyio.Event())
        async with api(tmp_path) as (client, _):
            response = await client.post("/runs", json={"flow": flow.name})
        assert response.status_code == 422
        assert [(e["loc"], e["type"]) for e in response.json()["detail"]] == [(["body", "inputs", "size"], "missing")]

    async def test_a_taken_run_id_is_409(self, tmp_path: Path) -> None:
        started, gate = anyio.Event(), anyio.Event()
        flow = provisioning([], started, gate)
        body = {"flow": flow.name, "inputs": {"size": 1}, "run_id": "same"}
        async with api(tmp_path) as (client, _):
            assert (await client.post("/runs", json=body)).status_code == 201
            response = await client.post("/runs", json=body)
            gate.set()
        assert response.status_code == 409
        assert "same" in response.json()["detail"]

    async def test_an_invalid_run_id_is_422(self, tmp_path: Path) -> None:
        flow = provisioning([], anyio.Event(), anyio.Event())
        async with api(tmp_path) as (client, _):
            response = await post_run(client, flow, "a\x00b")
        assert response.status_code == 422
        assert response.json()["detail"][0]["loc"] == ["body", "run_id"]

    async def test_a_flow_that_does_not_compile_is_422_in_the_validation_error_shape(self, tmp_path: Path) -> None:
        """The 422's detail is a list of errors as the OpenAPI document says for every 422, not a string (found by
        reading the router when schemathesis's 422 checks passed); GET /flows gives no input schema for it."""

        @task(provides="x")
        async def late() -> int:
            return 1

        @task
        async def early(x: int) -> None:
            pass

        broken = Linear(f"broken-{next(_names)}", early, late)
        ckflow.register_flow(broken.name, broken)
        async with api(tmp_path) as (client, _):
            response = await client.post("/runs", json={"flow": broken.name})
            flows = (await client.get("/flows")).json()
        assert response.status_code == 422
        [error] = response.json()["detail"]
        assert (error["loc"], error["type"]) == (["body", "flow"], "value_error")
        assert broken.name in error["msg"]
        assert {f["name"]: f for f in flows}[broken.name]["input_schema"] is None

    async def test_an_empty_run_id_is_refused_by_the_body_schema(self, tmp_path: Path) -> None:
        """The run id rule is in the body's schema (schemathesis: a schema-valid "" was refused), so it is 422."""
        flow = provisioning([], anyio.Event(), anyio.Event())
        async with api(tmp_path) as (client, _):
            response = await post_run(client, flow, "")
        assert response.status_code == 422
        [error] = response.json()["detail"]
        assert (error["loc"], error["type"]) == (["body", "run_id"], "string_too_short")

    async def test_a_body_that_is_not_utf8_is_400(self, tmp_path: Path) -> None:
        """FastAPI's answer to a body it cannot decode (schemathesis: undocumented 400; now in the document)."""
        async with api(tmp_path) as (client, _):
            response = await client.post("/runs", content=b"\xff,", headers={"content-type": "application/json"})
        assert response.status_code == 400


class TestRead:
    async def test_an_unknown_run_is_404(self, tmp_path: Path) -> None:
        async with api(tmp_path) as (client, _):
            for path in ("/runs/nope", "/runs/nope/graph"):
                response = await client.get(path)
                assert response.status_code == 404, path
                assert "nope" in response.json()["detail"]

    async def test_list_filters_by_state_and_flow_and_pages_with_a_cursor(self, tmp_path: Path) -> None:
        done, other = anyio.Event(), anyio.Event()
        done.set()
        flow = provisioning([], anyio.Event(), done)
        parked = provisioning([], anyio.Event(), other)
        async with api(tmp_path) as (client, engine):
            for n in range(3):
                await client.post("/runs", json={"flow": flow.name, "inputs": {"size": n}, "run_id": f"s{n}"})
                await engine.get_run(f"s{n}").wait()
            await client.post("/runs", json={"flow": parked.name, "inputs": {"size": 0}, "run_id": "p"})
            await client.post("/runs/p/goto", json={"checkpoint": "disk"})
            everything = (await client.get("/runs")).json()
            by_state = (await client.get("/runs", params={"state": "SUSPENDED"})).json()
            first = (await client.get("/runs", params={"flow": flow.name, "limit": 2})).json()
            rest = await client.get("/runs", params={"flow": flow.name, "limit": 2, "cursor": first["next_cursor"]})
        assert {r["run_id"] for r in everything["runs"]} == {"s0", "s1", "s2", "p"}
        assert everything["next_cursor"] is None
        assert [(r["run_id"], r["state"]) for r in by_state["runs"]] == [("p", "SUSPENDED")]
        pages = [r["run_id"] for r in first["runs"]] + [r["run_id"] for r in rest.json()["runs"]]
        assert sorted(pages) == ["s0", "s1", "s2"]
        assert len(first["runs"]) == 2
        assert isinstance(first["next_cursor"], str)
        assert rest.json()["next_cursor"] is None

    @pytest.mark.parametrize("path", ["/runs/a%01b", "/runs/a%C2%8Db/graph", "/runs/a%7Fb/cancel"])
    async def test_a_run_id_in_the_path_with_a_control_character_is_422_at_the_path(
        self, tmp_path: Path, path: str
    ) -> None:
        """Schemathesis: a run id the document allowed was refused with loc ["body", "run_id"]; the rule is now the
        path parameter's, and the 422 names the path."""
        async with api(tmp_path) as (client, _):
            response = await (client.post if path.endswith("cancel") else client.get)(path)
        assert response.status_code == 422
        [error] = response.json()["detail"]
        assert error["loc"] == ["path", "run_id"]

    async def test_paging_through_25_runs_by_10_gives_each_run_once_newest_first(self, tmp_path: Path) -> None:
        """Three pages (10, 10, 5), the last without a next_cursor; together every run once, in the list's order."""
        flow = quick_flow()
        async with api(tmp_path) as (client, engine):
            for n in range(25):
                await client.post("/runs", json={"flow": flow.name, "run_id": f"q{n:02}"})
                await engine.get_run(f"q{n:02}").wait()
            whole = [r["run_id"] for r in (await client.get("/runs")).json()["runs"]]
            pages: list[list[str]] = []
            cursor = None
            while True:
                params: dict[str, Any] = {"limit": 10} if cursor is None else {"limit": 10, "cursor": cursor}
                page = (await client.get("/runs", params=params)).json()
                pages.append([r["run_id"] for r in page["runs"]])
                cursor = page["next_cursor"]
                if cursor is None:
                    break
        assert [len(p) for p in pages] == [10, 10, 5]
        assert [run_id for p in pages for run_id in p] == whole
        assert sorted(whole) == [f"q{n:02}" for n in range(25)]

    @pytest.mark.parametrize(
        "cursor",
        [
            "not base64!",
            "bm90IGpzb24=",  # base64 of "not json"
            "WzEuNSwgMl0=",  # [1.5, 2]: the run id is not a string
            "WyJ4IiwgInkiXQ==",  # ["x", "y"]: the time is not a number
            "WzEuNV0=",  # [1.5]
            "W251bGwsICJyIl0=",  # [null, "r"]: a cursor of an engine without a store
            "é",
        ],
    )
    async def test_an_invalid_cursor_is_422(self, tmp_path: Path, cursor: str) -> None:
        async with api(tmp_path) as (client, _):
            response = await client.get("/runs", params={"cursor": cursor})
        assert response.status_code == 422
        [error] = response.json()["detail"]
        assert error["loc"] == ["query", "cursor"]
        assert "next_cursor" in error["msg"]

    async def test_graph_is_mermaid_text_and_404_for_an_unregistered_flow(self, tmp_path: Path) -> None:
        done = anyio.Event()
        done.set()
        flow = provisioning([], anyio.Event(), done)

        @task
        async def lone() -> None:
            pass

        async with api(tmp_path) as (client, engine):
            await post_run(client, flow, "g")
            await engine.get_run("g").wait()
            await (await engine.start(Linear("not-registered", lone), run_id="u")).wait()
            graph = await client.get("/runs/g/graph")
            unregistered = await client.get("/runs/u/graph")
        assert graph.status_code == 200
        assert graph.headers["content-type"].startswith("text/plain")
        assert graph.text.startswith("flowchart TD")
        assert "attach" in graph.text
        assert unregistered.status_code == 404
        assert "not-registered" in unregistered.json()["detail"]


class TestControl:
    async def test_suspend_then_resume(self, tmp_path: Path) -> None:
        """suspend answers once the run is SUSPENDED (the running task finished); resume lets it go on to the end."""
        log: list[str] = []
        started, gate = anyio.Event(), anyio.Event()
        flow = provisioning(log, started, gate)
        async with api(tmp_path) as (client, engine):
            await post_run(client, flow, "s")
            await started.wait()
            run = engine.get_run("s")
            opened_on(run, "ckflow.control.suspend", gate)
            suspended = await client.post("/runs/s/suspend")
            assert suspended.status_code == 200
            assert RunView.model_validate(suspended.json()).state is FlowState.SUSPENDED
            assert log == ["create", "attach"]  # boot did not start
            resumed = await client.post("/runs/s/resume")
            assert resumed.status_code == 200
            assert (await run.wait()).state is FlowState.SUCCESS
        assert log == ["create", "attach", "boot"]

    async def test_cancel_reverts_the_run(self, tmp_path: Path) -> None:
        log: list[str] = []
        started, gate = anyio.Event(), anyio.Event()
        flow = provisioning(log, started, gate)
        async with api(tmp_path) as (client, engine):
            await post_run(client, flow, "c")
            await started.wait()
            response = await client.post("/runs/c/cancel")
            assert response.status_code == 200
            assert RunView.model_validate(response.json()).run_id == "c"
            assert (await engine.get_run("c").wait()).state is FlowState.REVERTED
        assert log == ["create", "attach", "undo attach", "undo create"]

    async def test_goto_parks_the_run_at_the_checkpoint(self, tmp_path: Path) -> None:
        log: list[str] = []
        started, gate = anyio.Event(), anyio.Event()
        flow = provisioning(log, started, gate)
        async with api(tmp_path) as (client, _):
            await post_run(client, flow, "g")
            await started.wait()
            response = await client.post("/runs/g/goto", json={"checkpoint": "disk"})
        assert response.status_code == 200
        view = RunView.model_validate(response.json())
        assert view.state is FlowState.SUSPENDED
        assert {t.name: t.state for t in view.tasks} == {
            "create": TaskState.SUCCESS,
            "attach": TaskState.REVERTED,
            "boot": TaskState.PENDING,
        }

    async def test_revert_to_without_retry_parks_the_run(self, tmp_path: Path) -> None:
        log: list[str] = []
        started, gate = anyio.Event(), anyio.Event()
        flow = provisioning(log, started, gate)
        async with api(tmp_path) as (client, _):
            await post_run(client, flow, "v")
            await started.wait()
            response = await client.post("/runs/v/revert_to", json={"checkpoint": "disk", "retry": False})
        assert response.status_code == 200
        assert RunView.model_validate(response.json()).state is FlowState.SUSPENDED
        assert log == ["create", "attach", "undo attach"]

    @pytest.mark.parametrize("path", ["goto", "revert_to"])
    async def test_an_unknown_checkpoint_is_404(self, tmp_path: Path, path: str) -> None:
        started, gate = anyio.Event(), anyio.Event()
        flow = provisioning([], started, gate)
        async with api(tmp_path) as (client, _):
            await post_run(client, flow, "k")
            await started.wait()
            response = await client.post(f"/runs/k/{path}", json={"checkpoint": "nowhere"})
            gate.set()
        assert response.status_code == 404
        assert "nowhere" in response.json()["detail"]

    @pytest.mark.parametrize("path", ["goto", "revert_to"])
    async def test_a_run_that_has_ended_is_409(self, tmp_path: Path, path: str) -> None:
        done = anyio.Event()
        done.set()
        flow = provisioning([], anyio.Event(), done)
        async with api(tmp_path) as (client, engine):
            await post_run(client, flow, "e")
            await engine.get_run("e").wait()
            response = await client.post(f"/runs/e/{path}", json={"checkpoint": "disk"})
        assert response.status_code == 409
        assert "SUCCESS" in response.json()["detail"]

    @pytest.mark.parametrize("path", ["suspend", "resume", "cancel"])
    async def test_control_of_a_run_that_has_ended_is_409(self, tmp_path: Path, path: str) -> None:
        done = anyio.Event()
        done.set()
        flow = provisioning([], anyio.Event(), done)
        async with api(tmp_path) as (client, engine):
            await post_run(client, flow, "e")
            await engine.get_run("e").wait()
            response = await client.post(f"/runs/e/{path}")
        assert response.status_code == 409
        assert "SUCCESS" in response.json()["detail"]

    @pytest.mark.parametrize("path", ["suspend", "resume", "cancel"])
    async def test_control_of_an_unknown_run_is_404(self, tmp_path: Path, path: str) -> None:
        async with api(tmp_path) as (client, _):
            response = await client.post(f"/runs/nope/{path}")
        assert response.status_code == 404


async def test_router_options_reach_the_api_router(tmp_path: Path) -> None:
    """dependencies=[...] guard every endpoint (an auth dependency refusing is the app's status, here 401)."""

    def deny() -> None:
        raise HTTPException(401, "who are you")

    async with api(tmp_path, dependencies=[Depends(deny)]) as (client, _):
        response = await client.get("/flows")
    assert response.status_code == 401


async def test_without_a_store_the_list_is_the_engines_runs() -> None:
    """An engine without a store lists the runs it runs or keeps (no times), and finds them by id."""
    done = anyio.Event()
    done.set()
    flow = provisioning([], anyio.Event(), done)
    app = FastAPI(lifespan=ckflow.fastapi.lifespan(None))
    app.include_router(ckflow.fastapi.router())
    with anyio.fail_after(10):
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
                await post_run(client, flow, "m")
                await app.state.ckflow.get_run("m").wait()
                listed = (await client.get("/runs", params={"state": "SUCCESS"})).json()
                one = await client.get("/runs/m")
                missing = await client.get("/runs/other")
    assert [(r["run_id"], r["state"], r["created_at"]) for r in listed["runs"]] == [("m", "SUCCESS", None)]
    assert one.json()["state"] == "SUCCESS"
    assert missing.status_code == 404


async def test_without_a_store_the_engines_runs_page_with_a_cursor() -> None:
    """Pages of an engine's own runs, in its order, each run once."""
    flow = quick_flow()
    app = FastAPI(lifespan=ckflow.fastapi.lifespan(None))
    app.include_router(ckflow.fastapi.router())
    with anyio.fail_after(10):
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
                for run_id in ("m1", "m2", "m3"):
                    await client.post("/runs", json={"flow": flow.name, "run_id": run_id})
                    await app.state.ckflow.get_run(run_id).wait()
                first = (await client.get("/runs", params={"limit": 2})).json()
                rest = (await client.get("/runs", params={"limit": 2, "cursor": first["next_cursor"]})).json()
    pages = [r["run_id"] for r in first["runs"]] + [r["run_id"] for r in rest["runs"]]
    assert sorted(pages) == ["m1", "m2", "m3"]
    assert (len(first["runs"]), rest["next_cursor"]) == (2, None)


def test_the_openapi_schema_has_the_paths_and_the_run_view() -> None:
    app = FastAPI()
    app.include_router(ckflow.fastapi.router(), prefix="/ckflow")
    schema = app.openapi()
    assert {"/ckflow/flows", "/ckflow/runs", "/ckflow/runs/{run_id}", "/ckflow/runs/{run_id}/goto"} <= set(
        schema["paths"]
    )
    assert "RunView" in schema["components"]["schemas"]


def test_the_openapi_schema_documents_every_status_the_routes_give() -> None:
    """Schemathesis found 404, 409 and 400 answers the document did not list; the run id rule is in it too."""
    app = FastAPI()
    app.include_router(ckflow.fastapi.router())
    paths = app.openapi()["paths"]
    statuses = {(path, method): set(op["responses"]) for path, ops in paths.items() for method, op in ops.items()}
    assert statuses[("/flows", "get")] == {"200"}
    assert statuses[("/runs", "post")] == {"201", "400", "404", "409", "422"}
    assert statuses[("/runs", "get")] == {"200", "422"}
    assert statuses[("/runs/{run_id}", "get")] == {"200", "404", "422"}
    assert statuses[("/runs/{run_id}/graph", "get")] == {"200", "404", "422"}
    for verb in ("suspend", "resume", "cancel"):
        assert statuses[(f"/runs/{{run_id}}/{verb}", "post")] == {"200", "404", "409", "422"}
    for verb in ("goto", "revert_to"):
        assert statuses[(f"/runs/{{run_id}}/{verb}", "post")] == {"200", "400", "404", "409", "422"}
    assert statuses[("/runs/{run_id}/events", "get")] == {"200", "404", "422"}
    assert statuses[("/ui/runs/{run_id}", "get")] == {"200", "404", "422"}
    assert set(paths["/ui/runs/{run_id}"]["get"]["responses"]["404"]["content"]) == {"text/html"}
    [run_id] = paths["/runs/{run_id}"]["get"]["parameters"]
    assert (run_id["schema"]["minLength"], run_id["schema"]["maxLength"]) == (1, 200)


def test_the_events_routes_parameters_offer_no_null() -> None:
    """Schemathesis sent ``Last-Event-ID: null``, which the schema offered (an optional int) and FastAPI refused:
    a header or query value cannot be JSON null, so "not given" is the default -1, an integer."""
    app = FastAPI()
    app.include_router(ckflow.fastapi.router())
    parameters = app.openapi()["paths"]["/runs/{run_id}/events"]["get"]["parameters"]
    schemas = {p["name"]: p["schema"] for p in parameters if p["in"] in {"header", "query"}}
    assert schemas == {
        "last-event-id": {"type": "integer", "minimum": -1, "default": -1, "title": "Last-Event-Id"},
        "after": {"type": "integer", "minimum": -1, "default": -1, "title": "After"},
    }
