"""Stores: where durable runs are kept.

Pick one by URL with ``ckflow.Engine(store=...)`` or ``open_store(url)``:

- ``memory://``: in this process only (``memory://name`` is shared by the engines of the process);
- ``sqlite:///path/to/runs.db``: one file, WAL, the embedded default for anything durable;
- ``postgresql://user@host:5432/db``: shared by many processes and machines (``pip install 'ckflow[postgres]'``).

Every store implements the ``Store`` protocol over the pydantic records below.
"""

from __future__ import annotations

from ckflow._records import Batch as Batch
from ckflow._records import CheckpointRecord as CheckpointRecord
from ckflow._records import ControlOp as ControlOp
from ckflow._records import ControlRequest as ControlRequest
from ckflow._records import RegionRecord as RegionRecord
from ckflow._records import Renewal as Renewal
from ckflow._records import Retention as Retention
from ckflow._records import RunRecord as RunRecord
from ckflow._records import StoredRun as StoredRun
from ckflow._records import TaskOutline as TaskOutline
from ckflow._records import TaskRecord as TaskRecord
from ckflow.stores._protocol import SCHEMA_VERSION as SCHEMA_VERSION
from ckflow.stores._protocol import QueueStore as QueueStore
from ckflow.stores._protocol import Store as Store
from ckflow.stores._protocol import open_store as open_store
from ckflow.stores.memory import MemoryStore as MemoryStore

__all__ = (
    "SCHEMA_VERSION",
    "Batch",
    "CheckpointRecord",
    "ControlOp",
    "ControlRequest",
    "MemoryStore",
    "QueueStore",
    "RegionRecord",
    "Renewal",
    "Retention",
    "RunRecord",
    "Store",
    "StoredRun",
    "TaskOutline",
    "TaskRecord",
    "open_store",
)
