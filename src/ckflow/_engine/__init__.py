"""The engine: ``Engine``, ``run()`` and the ``Run`` handle (a private package; ckflow re-exports them).

Modules, each importing only the ones listed before it:

    _cores       building a run's RunCore (from a flow, or from its store); finding a stored run's flow
    _handles     ``Run`` and its backends: ``_Local`` (the one reader of a running RunCore) and ``_Stored``
                 (a run through its store, which reaches the engine only through ``EngineServices``)
    _reads       reading a run from its store: task summaries, its result, its events
    _ownership   leases, the heartbeat, requests from other processes, taking runs over
    _lifecycle   ``Engine`` (its ``EngineState``s as an async context manager), ``run()``
    _worker      ``Worker``: an engine that claims submitted runs from the queues of a shared store
"""

from __future__ import annotations

from ckflow._engine._handles import Run as Run
from ckflow._engine._lifecycle import Engine as Engine
from ckflow._engine._lifecycle import run as run
from ckflow._engine._worker import Worker as Worker

__all__ = ["Engine", "Run", "Worker", "run"]
