"""ckflow benchmarks: scenarios S1-S7 of /work/shared/BENCHMARKS.md, peers side by side.

Run ``python -m benchmarks [--quick] [--only S1,S2] [--out FILE]``.
"""
