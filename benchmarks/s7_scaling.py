"""S7: random DAGs with V tasks and E ≈ 3V data edges: compile and run time, fitted growth exponent."""

# The tables print typographic symbols (micro sign, en dash, times sign) on purpose.
# ruff: noqa: RUF001

from __future__ import annotations

import asyncio
import gc
import math
import random
import time

import ckflow
from benchmarks._harness import Stat, Table

DEGREE = 3


@ckflow.task
async def _f0() -> int:
    return 0


@ckflow.task
async def _f1(a: int) -> int:
    return a


@ckflow.task
async def _f2(a: int, b: int) -> int:
    return a


@ckflow.task
async def _f3(a: int, b: int, c: int) -> int:
    return a


_BASES = (_f0, _f1, _f2, _f3)
_ARGS = ("a", "b", "c")


def build(v: int, seed: int = 7) -> tuple[ckflow.Graph, int]:
    """A Graph of ``v`` tasks; task i reads the outputs of up to 3 distinct random earlier tasks."""
    rng = random.Random(seed)
    items = []
    edges = 0
    for i in range(v):
        k = min(DEGREE, i)
        preds = rng.sample(range(i), k) if k else []
        edges += k
        rebind = {_ARGS[j]: f"v{p}" for j, p in enumerate(preds)}
        items.append(_BASES[k].with_options(name=f"t{i}", provides=f"v{i}", rebind=rebind))
    return ckflow.Graph("s7", *items), edges


def exponent(xs: list[int], ys: list[float]) -> float:
    """Least-squares slope of log(y) on log(x)."""
    lx = [math.log(x) for x in xs]
    ly = [math.log(y) for y in ys]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly, strict=True)) / sum((a - mx) ** 2 for a in lx)


def _compile_gc_off(v: int) -> float:
    """Compile time with the cyclic GC paused: what is left is the algorithm plus cache misses."""
    flow, _ = build(v)
    gc.collect()
    gc.disable()
    try:
        t0 = time.perf_counter()
        flow.compile()
        return time.perf_counter() - t0
    finally:
        gc.enable()


async def _one(v: int) -> tuple[float, float, float, float]:
    gc.collect()
    t0 = time.perf_counter()
    flow, _ = build(v)
    t1 = time.perf_counter()
    flow.compile()
    t2 = time.perf_counter()
    result = await ckflow.run(flow)
    t3 = time.perf_counter()
    assert result.state == ckflow.FlowState.SUCCESS, result.state
    del flow, result
    return t1 - t0, t2 - t1, t3 - t2, _compile_gc_off(v)


def run(quick: bool = False) -> Table:
    sizes = [1_000, 10_000] if quick else [1_000, 10_000, 100_000]
    table = Table(
        f"S7 — random DAG (Graph, E ≈ {DEGREE}V data edges): ms, median (min–max)",
        [
            "V",
            "E",
            "build (Graph(...))",
            "compile",
            "compile, GC paused",
            "run (compiled)",
            "compile µs/task",
            "run µs/task",
        ],
    )
    compiles: list[float] = []
    compiles_nogc: list[float] = []
    runs: list[float] = []

    async def all_sizes() -> None:
        await _one(100)  # warm-up
        for v in sizes:
            repeat = 3 if v >= 100_000 else 5
            samples = [await _one(v) for _ in range(repeat)]
            b, c, r, cg = (Stat([s[j] for s in samples]) for j in range(4))
            compiles.append(c.median)
            compiles_nogc.append(cg.median)
            runs.append(r.median)
            table.add(
                f"{v:,}",
                f"{build(v)[1]:,}" if v < 100_000 else f"≈{DEGREE * v:,}",
                b.scaled(1e3).fmt(1),
                c.scaled(1e3).fmt(1),
                cg.scaled(1e3).fmt(1),
                r.scaled(1e3).fmt(1),
                f"{c.median / v * 1e6:.1f}",
                f"{r.median / v * 1e6:.1f}",
            )

    asyncio.run(all_sizes())
    ec, er = exponent(sizes, compiles), exponent(sizes, runs)
    table.target("S7 compile growth exponent ≤1.1", ec <= 1.1, f"{ec:.3f}")
    table.notes.append(f"compile exponent with the GC paused: {exponent(sizes, compiles_nogc):.3f}.")
    table.target("S7 run growth exponent ≤1.1", er <= 1.1, f"{er:.3f}")
    table.notes.append(
        "100,000 uses 3 repeats. Edges are data edges: each task rebinds up to 3 inputs to random earlier "
        "providers, as a Graph is written in practice (explicit Graph.link() edges are the exception)."
    )
    return table
