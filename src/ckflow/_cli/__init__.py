"""The ``ckflow`` command line: an application of the library, private to it.

Its modules, each importing only the ones below it:

    _main       the parser, the global options and the dispatch of a command
    _start      ``ckflow start``: the one command over a store that creates it, as it starts a run
    _control    the commands that resume and control runs: resume, suspend, cancel, goto, revert-to
    _runs       the commands that read a store: runs, show, events, prune, graph, flows
    _format     what the commands print: tables, durations, the status line, JSON output
    _demo       ``ckflow demo``: a provisioning flow that shows a revert and a retry
    _bench      ``ckflow bench``: revert and retry latency of a registered flow, with failures injected
"""

from __future__ import annotations

from ckflow._cli._main import main

__all__ = ["main"]
