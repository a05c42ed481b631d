"""S9: ``POST /runs`` of a 20-task flow through ``ckflow.fastapi.router()`` under uvicorn, against a bare handler.

The app (``benchmarks/_s9_app.py``) runs in a uvicorn process of its own per store; the load comes from ``wrk``
(Debian's package) in another process: a fixed number of keep-alive connections, each sending the next request as
soon as the last one is answered. Both routes are served by the same app and loaded in the same rounds.
"""

# The tables print typographic symbols (micro sign, en dash, times sign) on purpose.
# ruff: noqa: RUF001

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from benchmarks._harness import Stat, Table

ROOT = Path(__file__).resolve().parent.parent
CONNECTIONS = 32
BARE = "bare FastAPI handler (no ckflow)"
NO_STORE = "ckflow router, no store"
SQLITE = "ckflow router, SQLite file (WAL)"
#: how long the runs started in one round may take to end, after the load stops
DRAIN_LIMIT = 120.0

_WRK_SCRIPT = """
wrk.method = "POST"
wrk.body = '{"flow": "s9", "inputs": {}}'
wrk.headers["Content-Type"] = "application/json"
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('{"requests": %d, "duration_us": %d, "non2xx": %d, "socket_errors": %d, '
    .. '"p50_us": %d, "p99_us": %d}\\n', summary.requests, summary.duration, e.status,
    e.connect + e.read + e.write + e.timeout, latency:percentile(50), latency:percentile(99)))
end
"""
_RUNNING_ON = re.compile(r"Uvicorn running on http://127\.0\.0\.1:(\d+)")


class Server:
    """``python -m uvicorn benchmarks._s9_app:app`` on port 0 of loopback, on the store ``store`` (None: none)."""

    def __init__(self, store: str | None, log: Path) -> None:
        env = {**os.environ, "S9_STORE": store or ""}
        command = [sys.executable, "-m", "uvicorn", "benchmarks._s9_app:app", "--host", "127.0.0.1", "--port", "0"]
        with log.open("wb") as out:
            self.process = subprocess.Popen([*command, "--no-access-log"], cwd=ROOT, env=env, stdout=out, stderr=out)
        deadline = time.monotonic() + 60
        while not (found := _RUNNING_ON.search(log.read_text())):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.process.kill()
                raise RuntimeError(f"uvicorn did not start:\n{log.read_text()}")
            time.sleep(0.02)
        self.url = f"http://127.0.0.1:{found[1]}"

    def runs(self) -> dict[str, int]:
        with urllib.request.urlopen(f"{self.url}/bench/runs", timeout=10) as response:
            got: dict[str, int] = json.load(response)
            return got

    def drain(self) -> float:
        """Seconds until the engine has no unfinished run left."""
        t0 = time.perf_counter()
        while self.runs()["unfinished"]:
            if time.perf_counter() - t0 > DRAIN_LIMIT:
                raise RuntimeError(f"S9: runs still unfinished {DRAIN_LIMIT} s after the load: {self.runs()}")
            time.sleep(0.005)
        return time.perf_counter() - t0

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


def wrk(url: str, script: Path, seconds: int) -> dict[str, float]:
    """One load of ``seconds`` on ``url``: requests/s, p50 and p99 (ms), and the count of answers that were 201."""
    command = ["wrk", "-t1", f"-c{CONNECTIONS}", f"-d{seconds}s", "--latency", "-s", str(script), url]
    out = subprocess.run(command, capture_output=True, text=True, check=True, timeout=seconds + 60).stdout
    got = json.loads([line for line in out.splitlines() if line.startswith("{")][-1])
    if got["non2xx"] or got["socket_errors"]:
        raise RuntimeError(f"S9: wrk on {url} saw errors: {got}")
    return {
        "rps": got["requests"] / (got["duration_us"] / 1e6),
        "p50": got["p50_us"] / 1e3,
        "p99": got["p99_us"] / 1e3,
        "requests": got["requests"],
    }


def run(quick: bool = False) -> Table:
    rounds, seconds = (3, 2) if quick else (5, 4)
    table = Table(
        f"S9 — POST /runs of a Linear of 20 no-op tasks under uvicorn, {CONNECTIONS} connections "
        f"(median (min–max) of {rounds} rounds of {seconds:g} s)",
        ["route", "requests/s", "÷ bare", "p50 (ms)", "p99 (ms)", "p99 / p50", "load end → all runs ended (ms)"],
    )
    if shutil.which("wrk") is None:
        table.notes.append("skipped: S9's load client is wrk, which is not installed (apt-get install wrk)")
        return table
    with tempfile.TemporaryDirectory(prefix="ckflow-bench-s9-") as tmp:
        work = Path(tmp)
        script = work / "post.lua"
        script.write_text(_WRK_SCRIPT)
        plain = Server(None, work / "plain.log")
        durable = Server(f"sqlite:///{work / 's9.db'}", work / "sqlite.log")
        try:
            routes = {
                BARE: (plain, f"{plain.url}/bare/runs"),
                NO_STORE: (plain, f"{plain.url}/ckflow/runs"),
                SQLITE: (durable, f"{durable.url}/ckflow/runs"),
            }
            samples, drains, started = _rounds(routes, script, rounds, seconds)
            ended = {name: server.runs()["ended"] for name, server in (("plain", plain), ("sqlite", durable))}
        finally:
            plain.stop()
            durable.stop()
    _report(table, samples, drains)
    table.notes.append(
        f"Load: wrk 4 (`wrk -t1 -c{CONNECTIONS} -d{seconds:g}s --latency`, a Lua script POSTing "
        '`{"flow": "s9", "inputs": {}}` as JSON) in its own process, on keep-alive connections; each route gets '
        "the same load in every round, the order rotating, after a warm-up round of 1 s each. Server: "
        "`python -m uvicorn benchmarks._s9_app:app` (uvicorn with h11 and asyncio, as `pip install uvicorn` "
        "brings it; one worker process), one process per store; the bare handler reads the same pydantic "
        "body and answers 201 with a trivial JSON. requests/s = 201 answers ÷ wrk's duration; latency is wrk's "
        "(send → full response). 2 cores shared: the server's event loop, wrk, and the SQLite store's thread."
    )
    table.notes.append(
        "POST /runs answers 201 once the run has started (with a store, once it is recorded), not at its end: "
        "after each round the benchmark waits until the engine has no unfinished run (last column), and at the "
        f"end {ended['plain']:,} runs had ended on the no-store server and {ended['sqlite']:,} on SQLite, for "
        f"{started['plain']:,} and {started['sqlite']:,} 201 answers (wrk drops the requests in flight when its "
        "time is up: a run started by one ends but its answer is not counted)."
    )
    return table


def _rounds(
    routes: dict[str, tuple[Server, str]], script: Path, rounds: int, seconds: int
) -> tuple[dict[str, list[dict[str, float]]], dict[str, list[float]], dict[str, int]]:
    """Load every route once per round (after a warm-up round), waiting for the runs to end after each load."""
    samples: dict[str, list[dict[str, float]]] = {name: [] for name in routes}
    drains: dict[str, list[float]] = {name: [] for name in routes if name != BARE}
    started = {"plain": 0, "sqlite": 0}
    names = list(routes)
    for i in range(rounds + 1):
        shift = i % len(names)
        for name in names[shift:] + names[:shift]:
            server, url = routes[name]
            got = wrk(url, script, 1 if i == 0 else seconds)
            if name != BARE:
                started["sqlite" if name == SQLITE else "plain"] += int(got["requests"])
            drain = server.drain()
            if i > 0:
                samples[name].append(got)
                if name in drains:
                    drains[name].append(drain)
    return samples, drains, started


def _report(table: Table, samples: dict[str, list[dict[str, float]]], drains: dict[str, list[float]]) -> None:
    bare_rps = [s["rps"] for s in samples[BARE]]
    ratios: dict[str, Stat] = {}
    spreads: dict[str, Stat] = {}
    for name, got in samples.items():
        rps = Stat([s["rps"] for s in got])
        ratio = Stat([s["rps"] / b for s, b in zip(got, bare_rps, strict=True)])
        spread = Stat([s["p99"] / s["p50"] for s in got])
        ratios[name], spreads[name] = ratio, spread
        drain = Stat(drains[name]).scaled(1e3).fmt(1) if name in drains else "—"
        p50, p99 = Stat([s["p50"] for s in got]), Stat([s["p99"] for s in got])
        table.add(name, rps.fmt(0), f"{ratio.median:.2f}×", p50.fmt(2), p99.fmt(2), f"{spread.fmt(2)}×", drain)
    for name in (NO_STORE, SQLITE):
        table.target(
            f"S9 ≥50 % of the bare handler's requests/s ({name.removeprefix('ckflow router, ')})",
            ratios[name].median >= 0.5,
            f"{ratios[name].median:.0%} (per round: {', '.join(f'{r:.0%}' for r in ratios[name].samples)})",
        )
        table.target(
            f"S9 p99 ≤3× p50 ({name.removeprefix('ckflow router, ')})",
            spreads[name].median <= 3,
            f"{spreads[name].median:.2f}× (bare handler: {spreads[BARE].median:.2f}×)",
        )
