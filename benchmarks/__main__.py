"""``python -m benchmarks [--quick] [--only S1,S2] [--out FILE]``: run the scenarios, print a markdown table."""

from __future__ import annotations

import argparse
import datetime
import importlib
import os
import platform
import sys
import time

from benchmarks._harness import quiet_peers

SCENARIOS = {
    "S1": "benchmarks.s1_linear",
    "S2": "benchmarks.s2_parallel",
    "S3": "benchmarks.s3_seed",
    "S4": "benchmarks.s4_branches",
    "S5": "benchmarks.s5_stores",
    "S6": "benchmarks.s6_memory",
    "S7": "benchmarks.s7_scaling",
    "S8": "benchmarks.s8_concurrent",
    "S9": "benchmarks.s9_fastapi",
    "S10": "benchmarks.s10_workers",
    "S11": "benchmarks.s11_recovery",
    "S12": "benchmarks.s12_soak",
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller sizes, no slow TaskFlow sizes")
    parser.add_argument("--only", default="", help="comma-separated scenario ids, e.g. S1,S3")
    parser.add_argument("--out", default=None, help="also write the markdown to this file")
    args = parser.parse_args(argv)
    quiet_peers()

    wanted = [s.strip().upper() for s in args.only.split(",") if s.strip()] or list(SCENARIOS)
    unknown = [s for s in wanted if s not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario(s): {', '.join(unknown)}; choose from {', '.join(SCENARIOS)}")

    import ckflow

    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    head = (
        f"ckflow {ckflow.__version__} benchmarks, {now}; Python {platform.python_version()}, "
        f"{platform.machine()}, {os.cpu_count()} cores{' (--quick)' if args.quick else ''}\n"
    )
    parts = [head]
    print(head, flush=True)
    t_all = time.perf_counter()
    for sid in wanted:
        t0 = time.perf_counter()
        module = importlib.import_module(SCENARIOS[sid])
        md = module.run(quick=args.quick).markdown()
        md += f"\n_{sid} took {time.perf_counter() - t0:.1f} s._\n"
        parts.append(md)
        print(md, flush=True)
    tail = f"Total {time.perf_counter() - t_all:.1f} s.\n"
    parts.append(tail)
    print(tail)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as fh:
            fh.write("\n".join(parts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
