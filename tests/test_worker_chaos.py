"""Workers in production shape: several ``ckflow worker`` processes on one PostgreSQL store, killed and paused.

Three worker processes claim submitted runs of ``tests.chaos_flow`` (a checkpoint that retries, and runs
that end REVERTED) from two queues, one of them limited. While they work, a random worker is SIGKILLed
and restarted again and again, and one is SIGSTOPped past its lease and then SIGCONTinued. Then:

- every run ends in the state its input decides (a retry counted twice, or a step lost, would change it);
- no task whose success was committed executes again (the store's ``ckflow.task.success`` events against
  the processes' ledgers);
- no two owners interleave on a run: once another process has started something of a run, the one before
  never starts anything of it again (the lease fence);
- the limited queue never has more runs under way than its limit (sampled in the database throughout, and
  from the ledgers: the spans from a run's first start to its last start never overlap more than that).

500 runs and 30 kills take some 20 s on two cores; ``CKFLOW_CHAOS_RUNS`` and ``CKFLOW_CHAOS_KILLS`` change them.

A second test cuts one worker off from the database (its connections go through a TCP proxy that stops
forwarding, both ways, sockets left open, then forwards again: a partition that heals) for longer than its
lease, while another worker takes its runs over; the same checks hold. The partition heals once the other
worker has taken a run over (and three leases have passed), not after a fixed time: on a loaded machine a
worker process may take longer than that to start, and the cut-off worker would renew its lapsed leases.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

import anyio
import anyio.abc
import asyncpg
import pytest
from tests import chaos_flow
from tests.stores import with_query, without_query
from tests.stores.conftest import drop_schema

from ckflow import Engine, FlowState
from ckflow.stores import open_store

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

ROOT = Path(__file__).resolve().parent.parent
RUNS = int(os.environ.get("CKFLOW_CHAOS_RUNS", "500"))
KILLS = int(os.environ.get("CKFLOW_CHAOS_KILLS", "30"))
WORKERS = 3
LIMITED, LIMIT = "limited", 3
LEASE_TTL = 1.0


@pytest.fixture
async def url(postgres_dsn: str) -> AsyncIterator[str]:
    url = with_query(postgres_dsn, schema=f"ckflow_chaos_{uuid.uuid4().hex[:12]}")
    yield url
    await drop_schema(url)


class Workers:
    """The worker processes, each started with ``ckflow worker`` and its output in a file of its own."""

    def __init__(self, url: str, ledger: Path, logs: Path) -> None:
        self.url = url
        self.ledger = ledger
        self.logs = logs
        self.procs: list[subprocess.Popen[bytes]] = []
        self.kills = 0
        self.stopped = 0

    def spawn(self) -> subprocess.Popen[bytes]:
        command = [
            sys.executable, "-m", "ckflow", "worker", "--store", self.url, "--import", "tests.chaos_flow",
            "--queue", LIMITED, "--queue", "default", "--limit", f"{LIMITED}={LIMIT}", "--concurrency", "8",
            "--lease-ttl", str(LEASE_TTL), "--poll-interval", "0.2", "--grace", "1",
        ]  # fmt: skip
        env = {**os.environ, "CKFLOW_CHAOS_LEDGER": str(self.ledger)}
        out = (self.logs / f"worker-{len(self.procs)}.log").open("wb")
        proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        out.close()
        self.procs.append(proc)
        return proc

    def live(self) -> list[subprocess.Popen[bytes]]:
        return [p for p in self.procs if p.poll() is None]

    def working(self) -> list[subprocess.Popen[bytes]]:
        """The live workers that have started some task (a kill then hits runs, not a process starting up)."""
        return [p for p in self.live() if (self.ledger / f"{p.pid}.log").exists()]

    async def until_working(self) -> None:
        while True:
            if self.working():
                return
            await anyio.sleep(0.05)

    def kill_one(self, rng: random.Random) -> None:
        victim = rng.choice(self.working())
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        self.kills += 1
        self.spawn()

    async def pause_one(self, rng: random.Random) -> None:
        """SIGSTOP a worker for twice its lease, then SIGCONT it: its runs are taken over meanwhile."""
        victim = rng.choice(self.working())
        victim.send_signal(signal.SIGSTOP)
        await anyio.sleep(LEASE_TTL * 2.5)
        victim.send_signal(signal.SIGCONT)
        self.stopped += 1

    def stop_all(self) -> None:
        for proc in self.live():
            proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def read_ledger(ledger: Path) -> list[tuple[float, str, str, str, int, int]]:
    """(time, kind, run, task, attempt, pid) of every line of every process, by time."""
    lines = []
    for path in ledger.glob("*.log"):
        for line in path.read_text().splitlines():
            t, kind, run, name, attempt, pid = line.split()
            lines.append((float(t), kind, run, name, int(attempt), int(pid)))
    return sorted(lines)


async def sample_limit(url: str, peak: list[int]) -> None:
    """Record the most runs of the limited queue under way at once, as the database has them."""
    schema = url.split("schema=")[1].split("&")[0]
    conn = await asyncpg.connect(without_query(url, "schema"))
    try:
        while True:
            n = await conn.fetchval(
                f"SELECT count(*) FROM \"{schema}\".ckflow_runs WHERE queue = $1 AND state IN ('PENDING', 'RUNNING')",
                LIMITED,
            )
            peak[0] = max(peak[0], n)
            await anyio.sleep(0.02)
    finally:
        await conn.close()


async def chaos(workers: Workers, url: str, runs: dict[str, int]) -> None:
    """Kill workers until KILLS have been killed and one paused, and every run has ended."""
    rng = random.Random(13)
    pause_at = KILLS // 2
    async with open_store(url) as store:
        while True:
            await anyio.sleep(rng.uniform(0.1, 0.4))
            if not workers.working():
                continue
            if workers.kills == pause_at and not workers.stopped:
                await workers.pause_one(rng)
            elif workers.kills < KILLS:
                workers.kill_one(rng)
                continue
            unfinished = await store.list_runs(states=[FlowState.QUEUED, FlowState.PENDING, FlowState.RUNNING])
            if not unfinished:
                return


def check_owners(ledger: list[tuple[float, str, str, str, int, int]]) -> int:
    """Once another process started something of a run, the one before never starts anything of it again;
    returns how many runs went through more than one process."""
    order: dict[str, list[int]] = defaultdict(list)
    for _, kind, run, _, _, pid in ledger:
        if kind in ("start", "revert") and (not order[run] or order[run][-1] != pid):
            assert pid not in order[run], f"run {run}: process {pid} started again after {order[run]}"
            order[run].append(pid)
    return sum(1 for pids in order.values() if len(pids) > 1)


async def check_successes(url: str, ledger: list[tuple[float, str, str, str, int, int]], ids: list[str]) -> None:
    """No task executes again once its success is committed (the store's success events)."""
    starts: dict[tuple[str, str], list[float]] = defaultdict(list)
    for t, kind, run, name, _, _ in ledger:
        if kind == "start":
            starts[run, name].append(t)
    async with open_store(url) as store:
        for run_id in ids:
            successes = [e for e in await store.events(run_id) if e.name == "ckflow.task.success"]
            by_task = defaultdict(list)
            for e in successes:
                by_task[e.task].append(e.wall)
            for name, walls in by_task.items():
                assert len(walls) == 1, f"run {run_id}: {name} succeeded {len(walls)} times"
                later = [t for t in starts[run_id, name] if t > walls[0]]
                assert not later, f"run {run_id}: {name} executed again after its committed success"


def check_spans(ledger: list[tuple[float, str, str, str, int, int]], limited: set[str]) -> int:
    """The most runs of the limited queue whose spans (first start to last start) overlap.

    Starts only: each happens while its process holds the run's live lease, so while the run is under way;
    an execute that was already running in a paused process may still end after the run has moved on.
    """
    spans: dict[str, list[float]] = {}
    for t, kind, run, _, _, _ in ledger:
        if run in limited and kind in ("start", "revert"):
            span = spans.setdefault(run, [t, t])
            span[1] = t
    edges = sorted(
        [(s, 1) for s, _ in spans.values()] + [(e, -1) for _, e in spans.values()], key=lambda x: (x[0], x[1])
    )
    most = now = 0
    for _, step in edges:
        now += step
        most = max(most, now)
    return most


#: the suite's hang guard (pytest-timeout, 60 s) would cut these short on a loaded machine, where some 20 s
#: become a minute or more; their own deadlines (anyio.fail_after) bound each of their waits
LONG = pytest.mark.timeout(420)


@LONG
async def test_workers_survive_kills_and_pauses(url: str, tmp_path: Path) -> None:
    ledger = tmp_path / "ledger"
    ledger.mkdir()
    runs: dict[str, int] = {}
    async with Engine(store=url) as engine:
        for k in range(RUNS):
            queue = LIMITED if k % 4 == 0 else "default"
            run = await engine.submit("chaos", {"k": k}, f"run-{k}", queue=queue, priority=k % 3)
            runs[run.id] = k
    workers = Workers(url, ledger, tmp_path)
    peak = [0]
    started = time.monotonic()
    try:
        for _ in range(WORKERS):
            workers.spawn()
        async with anyio.create_task_group() as tg:
            tg.start_soon(sample_limit, url, peak)
            with anyio.fail_after(300):
                await chaos(workers, url, runs)
            tg.cancel_scope.cancel()
    finally:
        workers.stop_all()
    elapsed = time.monotonic() - started
    async with open_store(url) as store:
        states = {r.run_id: str(r.state) for r in await store.list_runs()}
    wrong = {
        rid: (states[rid], chaos_flow.expected(k)) for rid, k in runs.items() if states[rid] != chaos_flow.expected(k)
    }
    assert not wrong, f"runs in the wrong state: {wrong}"
    entries = read_ledger(ledger)
    moved = check_owners(entries)
    await check_successes(url, entries, list(runs))
    limited = {rid for rid, k in runs.items() if k % 4 == 0}
    assert peak[0] <= LIMIT
    assert check_spans(entries, limited) <= LIMIT
    assert workers.kills >= KILLS
    assert workers.stopped == 1
    assert moved > 0, "no run was taken over: the kills missed every run"
    print(
        f"chaos: {RUNS} runs, {workers.kills} kills, {moved} runs taken over, {elapsed:.1f} s, peak {peak[0]}/{LIMIT}"
    )


class Partition:
    """A TCP proxy to the database that can stop forwarding (both ways, connections left open) and resume."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.open = anyio.Event()
        self.open.set()

    async def serve(self, listener: anyio.abc.SocketListener) -> None:
        await listener.serve(self._relay)

    async def _relay(self, client: anyio.abc.SocketStream) -> None:
        async with client, await anyio.connect_tcp(*self.target) as server, anyio.create_task_group() as tg:
            tg.start_soon(self._pump, client, server, tg)
            await self._pump(server, client, tg)

    async def _pump(self, src: anyio.abc.SocketStream, dst: anyio.abc.SocketStream, tg: anyio.abc.TaskGroup) -> None:
        try:
            async for chunk in src:
                await self.open.wait()  # cut off: the bytes wait here, nothing is lost, nothing arrives
                await dst.send(chunk)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            pass
        tg.cancel_scope.cancel()

    def cut(self) -> None:
        self.open = anyio.Event()

    def heal(self) -> None:
        self.open.set()


async def taken_over(ledger: Path, pid: int) -> None:
    """Return once another process has started something of a run that process ``pid`` started."""
    while True:
        started = [(run, p) for _, kind, run, _, _, p in read_ledger(ledger) if kind in ("start", "revert")]
        theirs = {run for run, p in started if p == pid}
        if any(p != pid and run in theirs for run, p in started):
            return
        await anyio.sleep(0.05)


async def all_ended(url: str) -> None:
    async with open_store(url) as store:
        while True:
            if not await store.list_runs(states=[FlowState.QUEUED, FlowState.PENDING, FlowState.RUNNING]):
                return
            await anyio.sleep(0.2)


@LONG
async def test_a_worker_cut_off_from_the_database_stops_before_another_takes_over(url: str, tmp_path: Path) -> None:
    ledger = tmp_path / "ledger"
    ledger.mkdir()
    runs: dict[str, int] = {}
    async with Engine(store=url) as engine:
        for k in range(60):
            runs[(await engine.submit("chaos", {"k": k}, f"run-{k}")).id] = k
    parts = urlsplit(url)
    partition = Partition(parts.hostname or "127.0.0.1", parts.port or 5432)
    async with await anyio.create_tcp_listener(local_host="127.0.0.1") as listener, anyio.create_task_group() as tg:
        tg.start_soon(partition.serve, listener)
        port = listener.extra(anyio.abc.SocketAttribute.local_port)
        proxied = urlunsplit(parts._replace(netloc=f"{parts.username}@127.0.0.1:{port}"))
        cut_off = Workers(proxied, ledger, tmp_path)
        direct = Workers(url, ledger, tmp_path / "direct")
        (tmp_path / "direct").mkdir()
        try:
            victim = cut_off.spawn()
            with anyio.fail_after(60):
                await cut_off.until_working()  # it has started a task: it holds runs
            partition.cut()
            cut_at = time.time()
            direct.spawn()
            with anyio.fail_after(60):
                await taken_over(ledger, victim.pid)  # however long the other worker takes to start up
            await anyio.sleep(max(0.0, cut_at + LEASE_TTL * 3 - time.time()))  # the cut lasts three leases at least
            partition.heal()
            healed_at = time.time()
            with anyio.fail_after(120):
                await all_ended(url)
        finally:
            cut_off.stop_all()
            direct.stop_all()
            tg.cancel_scope.cancel()
    async with open_store(url) as store:
        states = {r.run_id: str(r.state) for r in await store.list_runs()}
    assert {rid: states[rid] for rid in runs} == {rid: chaos_flow.expected(k) for rid, k in runs.items()}
    entries = read_ledger(ledger)
    moved = check_owners(entries)
    await check_successes(url, entries, list(runs))
    assert moved > 0, "the other worker took none of the cut-off worker's runs"
    # Its last renewal was sent before the cut: its leases lapsed by LEASE_TTL after it, by its own clock, and
    # from then on until the partition healed it may start nothing (before that, its leases are its own).
    lapsed = cut_at + LEASE_TTL + 0.05
    late = [
        t - cut_at
        for t, kind, _, _, _, pid in entries
        if pid == victim.pid and kind in ("start", "revert") and lapsed < t < healed_at
    ]
    assert not late, f"the cut-off worker started or reverted a task {late} s after it was cut off"
