"""The README's Quick start is exactly two commands, and the second is what CI runs."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _quick_start() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Quick start", 1)[1]
    match = re.search(r"```sh\n(.*?)```", section, re.DOTALL)
    assert match is not None, "the Quick start needs a ```sh block"
    return [line for line in match.group(1).splitlines() if line.strip()]


class TestQuickStart:
    def test_exactly_two_commands(self) -> None:
        """The Quick start block holds two one-line commands."""
        lines = _quick_start()
        assert len(lines) == 2
        assert not any(line.rstrip().endswith("\\") for line in lines)

    def test_first_command_runs_the_demo(self) -> None:
        """The first command installs ckflow and runs the demo."""
        assert _quick_start()[0].endswith(".venv/bin/python -m ckflow demo")

    def test_second_command_is_the_ci_command(self) -> None:
        """The second command is byte-identical to the last line of .ci/run."""
        ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").rstrip("\n").splitlines()[-1]
        assert _quick_start()[1] == ci
