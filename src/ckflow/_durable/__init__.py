"""Durable runs: what a run writes to its store as it goes, and rebuilding a run from there (private)."""
