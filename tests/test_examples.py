"""The demo (`python -m ckflow demo`) and every script in examples/ run, as users would run them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples").glob("*.py"))


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
