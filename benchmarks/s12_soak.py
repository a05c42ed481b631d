"""S12: memory soak: RSS while one engine runs 100,000 small runs one after the other, a fresh process per store."""

from __future__ import annotations

import asyncio
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from benchmarks._harness import Table

#: growth of RSS from the first sample kept to the last one, in MB, that counts as flat
TARGET_MB = 5.0
TASKS_PER_RUN = 3
#: (runs at which RSS is sampled, index of the sample the growth is measured from). The growth starts once
#: the bounded caches are full: the engine's 1,000 ended runs, SQLite's page caches (some 5,000 runs here),
#: the PostgreSQL pool's connections (some 4,000 runs)
FULL = ((1_000, 10_000, 50_000, 100_000), 1)
QUICK = ((1_000, 2_000, 5_000, 10_000), 2)
#: PostgreSQL takes 4 to 7 ms a run here (a round trip per commit), so 100,000 runs would take 7 to 11
#: minutes: 20,000 take one or two and still show a slope (the row says so)
POSTGRES_FULL = ((1_000, 5_000, 10_000, 20_000), 1)
POSTGRES_QUICK = ((1_000, 2_000, 4_000, 6_000), 2)

NO_STORE = "no store (Engine())"
MEMORY = "memory://?keep_ended=1000"
SQLITE = "SQLite file, WAL: the store's defaults"
POSTGRES = "PostgreSQL, fresh schema"


def _rss_kib() -> int:
    """This process's resident set (VmRSS) in KiB."""
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status (S12 needs Linux)")


async def _soak(url: str | None, marks: list[int]) -> dict[str, object]:
    """In the fresh process: run ``marks[-1]`` runs one after the other, sampling RSS at each mark."""
    import ckflow
    from benchmarks.s1_linear import build_ckflow

    flow = build_ckflow(TASKS_PER_RUN)
    flow.compile()
    samples: list[dict[str, float]] = []
    t0 = time.perf_counter()
    async with ckflow.Engine(store=url) as engine:
        base = _rss_kib()
        done = 0
        for mark in marks:
            while done < mark:
                run = await engine.start(flow)
                result = await run.wait()
                assert result.state == ckflow.FlowState.SUCCESS, result.state
                done += 1
            gc.collect()
            samples.append(
                {
                    "runs": done,
                    "rss_kib": _rss_kib(),
                    "blocks": sys.getallocatedblocks(),
                    "seconds": time.perf_counter() - t0,
                }
            )
    return {"base_kib": base, "samples": samples}


def measure(url: str | None, marks: tuple[int, ...]) -> dict[str, object]:
    """Run the soak in a fresh process, logging left unconfigured as a fresh install has it.

    structlog's default then prints every run's and task's event to stdout (eight lines a run): the
    child's stdout goes to /dev/null, and its figures come back through a file.
    """
    with tempfile.TemporaryDirectory(prefix="ckflow-bench-s12-out-") as tmp:
        out = Path(tmp) / "soak.json"
        subprocess.run(
            [sys.executable, "-m", "benchmarks.s12_soak", url or "", ",".join(map(str, marks)), str(out)],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        return json.loads(out.read_text(encoding="utf-8"))


def _mb(kib: float) -> str:
    return f"{kib / 1024:,.1f}"


def run(quick: bool = False) -> Table:
    from benchmarks.s5_stores import (
        DEFAULT_DSN,
        DSN_ENV,
        _drop_schema,
        _postgres_unavailable,
        _public,
        _with_query,
        remove_sqlite,
    )

    marks, since = QUICK if quick else FULL
    pg_marks, pg_since = POSTGRES_QUICK if quick else POSTGRES_FULL
    dsn = os.environ.get(DSN_ENV, DEFAULT_DSN)
    table = Table(
        f"S12 — memory soak: RSS while one engine runs small runs one after the other (Linear of {TASKS_PER_RUN} "
        "no-op tasks each), a fresh process per store (MB)",
        [
            "store",
            *(f"RSS at {m:,} runs" for m in marks),
            f"growth {marks[since]:,} → {marks[-1]:,} runs",
            "per 1,000 runs",
            "Python blocks growth",
            "runs/s",
        ],
    )
    verdict: list[tuple[str, float, str]] = []

    def add(name: str, got: dict[str, object], used: tuple[int, ...], start: int) -> None:
        samples = got["samples"]
        assert isinstance(samples, list)
        first, last = samples[start], samples[-1]
        growth = last["rss_kib"] - first["rss_kib"]
        per_1000 = growth / ((last["runs"] - first["runs"]) / 1_000)
        label = name
        if used != marks:
            label += f" (fewer runs, RSS at {', '.join(f'{m:,}' for m in used)}; growth {used[start]:,} → {used[-1]:,})"
        rate = last["runs"] / last["seconds"]
        table.add(
            label,
            *(_mb(s["rss_kib"]) for s in samples),
            f"{growth / 1024:+,.1f}",
            f"{per_1000 / 1024:+,.2f}",
            f"{last['blocks'] - first['blocks']:+,}",
            f"{rate:,.0f}",
        )
        verdict.append((name, growth / 1024, f"{growth / 1024:+,.1f} MB"))

    add(NO_STORE, measure(None, marks), marks, since)
    add(MEMORY, measure(MEMORY, marks), marks, since)
    with tempfile.TemporaryDirectory(prefix="ckflow-bench-s12-") as tmp:
        path = Path(tmp) / "s12.db"
        try:
            add(SQLITE, measure(f"sqlite:///{path}", marks), marks, since)
        finally:
            remove_sqlite(path)
    why = asyncio.run(_postgres_unavailable(dsn))
    if why is None:
        schema = f"ckflow_s12_{uuid.uuid4().hex[:12]}"
        try:
            add(POSTGRES, measure(_with_query(dsn, schema=schema), pg_marks), pg_marks, pg_since)
        except subprocess.CalledProcessError as exc:
            table.add(POSTGRES, *("—" for _ in marks), f"failed: {exc.stderr.strip().splitlines()[-1]}", "—", "—", "—")
        finally:
            asyncio.run(_drop_schema(dsn, schema))
    else:
        table.add(POSTGRES, *("—" for _ in marks), f"skipped: {why}", "—", "—", "—")

    table.target(
        f"S12 flat within {TARGET_MB:g} MB ({marks[since]:,} → {marks[-1]:,} runs)",
        all(mb <= TARGET_MB for _, mb, _ in verdict),
        ", ".join(f"{name}: {detail}" for name, _, detail in verdict),
    )
    table.notes.append(
        "Each store runs in a fresh Python process that does not configure logging (a fresh install's cost): one "
        "`async with ckflow.Engine(store=URL)`, the flow compiled once, then `await engine.start(flow)` and "
        "`await run.wait()` one run after the other. RSS is VmRSS from /proc/self/status after a `gc.collect()`; "
        "'Python blocks' is `sys.getallocatedblocks()` (the small objects, up to 512 bytes, that Python's "
        "allocator holds): RSS growing while it stays flat is native memory (SQLite's, a driver's) or large "
        "objects."
    )
    table.notes.append(
        f"PostgreSQL: {_public(dsn)} (env {DSN_ENV}), a fresh schema dropped afterwards, and fewer runs: at 4 to "
        "7 ms a run (a loopback round trip per commit) 100,000 would take 7 to 11 minutes."
    )
    table.notes.append(
        "No store: the engine keeps its last `keep_ended` (100) ended runs and those a caller holds. memory:// keeps "
        "every run it is given until `delete_runs` unless told otherwise: measured with `?keep_ended=1000`, the "
        "retention a long-lived process would set. SQLite and PostgreSQL keep runs on disk or on the server, so "
        "their process must stay flat."
    )
    return table


if __name__ == "__main__":
    _url, _marks, _out = sys.argv[1], [int(m) for m in sys.argv[2].split(",")], Path(sys.argv[3])
    _out.write_text(json.dumps(asyncio.run(_soak(_url or None, _marks))), encoding="utf-8")
