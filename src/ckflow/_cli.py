"""The ``ckflow`` command line (stdlib ``argparse``, so it needs no extra dependency).

Each subcommand is a function taking the parsed arguments and returning an
exit status; add one by writing it and registering it in ``_parser()``.
"""

from __future__ import annotations

import argparse
import logging
from typing import TYPE_CHECKING

import anyio

from ckflow._version import __version__

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["main"]


def _demo(args: argparse.Namespace) -> int:
    import structlog

    from ckflow._demo import run_demo

    # The demo prints every event itself; as an application it may quiet ckflow's own log output.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    fast: bool = args.fast
    return anyio.run(lambda: run_demo(fast=fast))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ckflow",
        description="ckflow: asyncio-native orchestration with checkpoints and partial revert.",
    )
    parser.add_argument("--version", action="version", version=f"ckflow {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = commands.add_parser(
        "demo",
        help="provision a server: watch one branch be reverted and retried while the others run",
        description="Run a provisioning flow twice (a transient failure, then a permanent one), printing every event.",
    )
    demo.add_argument("--fast", action="store_true", help="no sleeps and no retry delays (for tests)")
    demo.set_defaults(handler=_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``ckflow`` command line with ``argv`` (default: ``sys.argv[1:]``); returns the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    status: int = args.handler(args)
    return status
