"""What workers ask of a PostgreSQL store: claiming queued runs, queue limits, and waking workers up.

A submitted run is a row of ``ckflow_runs`` in state QUEUED, with its ``queue`` and ``priority``. A worker
claims runs in one transaction per queue, in the order of its queues:

1. runs of the queue that were under way and that nobody holds any more (their worker drained and released
   them, or its lease lapsed): taken over as they are, state and progress kept;
2. QUEUED runs, highest priority first, then oldest: made PENDING and owned by the worker.

Both select with ``FOR UPDATE SKIP LOCKED``, so that workers claiming at once never wait for each other
nor take one run twice. A queue with a limit (``ckflow_queues.concurrency``) is claimed under a
transaction-scoped advisory lock of its own: the runs under way in it (PENDING or RUNNING, whoever runs them)
are counted inside the lock, and only the slots left are claimed, so that the limit holds across all
workers (two claims of one queue never count at once; a run that ends only frees a slot). Runs taken over
were counted already and take no new slot. The lock is tried, never waited for: a claim that finds it held
takes the queue's runs to take over and leaves its QUEUED runs to the next claim, so that a worker cut off
from the server in the middle of its claim (its transaction and lock kept until the server notices) cannot
stop the other workers' claims, nor their take-over of its runs.

A submit notifies the store's channel with the run's queue (``pg_notify``, delivered at commit), and a
worker listens on it through a connection of its own; polling is the fallback.
"""

from __future__ import annotations

import zlib
from typing import TYPE_CHECKING, Any, Final

from ckflow.stores import _columns as _c
from ckflow.stores import _sql

if TYPE_CHECKING:
    from collections.abc import Sequence

    from ckflow._records import RunRecord

__all__ = [
    "INSERT_QUEUED",
    "LIVE_OWNERS",
    "SET_LIMIT",
    "channel",
    "claim_queue",
]

_NOW: Final = "extract(epoch from clock_timestamp())::float8"
_RUN_COLUMNS: Final = _sql.columns(_c.RUNS.read, "r.")
#: first key of the per-queue advisory locks ("ckq")
_QUEUE_LOCK: Final = 0x636B71

#: a submitted run, and a notification of its queue to the workers (sent when the transaction commits)
INSERT_QUEUED: Final = (
    f"WITH ins AS ({_sql.INSERT_RUN} RETURNING queue) SELECT pg_notify(${len(_c.RUNS.names) + 1}, queue) FROM ins"
)
SET_LIMIT: Final = (
    "INSERT INTO ckflow_queues (name, concurrency) VALUES ($1, $2) "
    "ON CONFLICT (name) DO UPDATE SET concurrency = excluded.concurrency"
)
_LIMIT: Final = "SELECT concurrency FROM ckflow_queues WHERE name = $1"
_UNDER_WAY: Final = "SELECT count(*) FROM ckflow_runs WHERE queue = $1 AND state IN ('PENDING', 'RUNNING')"
#: runs of the queue under way that nobody holds: released, or their lease lapsed
_ORPHANS: Final = (
    "SELECT run_id FROM ckflow_runs WHERE queue = $1 AND state IN ('PENDING', 'RUNNING') AND NOT halted "
    f"AND (owner IS NULL OR coalesce(lease_expires, 0) <= {_NOW}) AND flow = ANY($2::text[]) "
    "AND NOT run_id = ANY($3::text[]) ORDER BY priority DESC, created_at, run_id LIMIT $4 FOR UPDATE SKIP LOCKED"
)
_QUEUED: Final = (
    "SELECT run_id FROM ckflow_runs WHERE queue = $1 AND state = 'QUEUED' AND NOT halted AND owner IS NULL "
    "AND flow = ANY($2::text[]) AND NOT run_id = ANY($3::text[]) "
    "ORDER BY priority DESC, created_at, run_id LIMIT $4 FOR UPDATE SKIP LOCKED"
)
#: the rows selected above are locked by this transaction: the update takes them as they are
_TAKE: Final = (
    f"WITH now AS (SELECT {_NOW} AS t) UPDATE ckflow_runs AS r SET owner = $2, lease_expires = now.t + $3, "
    "state = CASE WHEN r.state = 'QUEUED' THEN 'PENDING' ELSE r.state END "
    f"FROM now WHERE r.run_id = ANY($1::text[]) RETURNING {_RUN_COLUMNS}"
)
#: one statement for the common case, a queue without a limit: the runs to take over, then QUEUED ones, at most
#: ``$4`` in all, claimed for ``$5`` for ``$6`` seconds; QUEUED runs only if the queue has no limit (``limited``
#: says whether it has, and then the caller claims them under the queue's lock). The first row may be all NULLs
#: but ``limited`` (nothing claimed).
_CLAIM_UNLIMITED: Final = (
    f"WITH now AS (SELECT {_NOW} AS t), "
    "limited AS (SELECT 1 FROM ckflow_queues WHERE name = $1 AND concurrency IS NOT NULL), "
    f"orphans AS ({_ORPHANS}), "
    f"queued AS ({_QUEUED.replace('AND NOT halted', 'AND NOT EXISTS (SELECT 1 FROM limited) AND NOT halted')}), "
    "picked AS (SELECT run_id FROM (SELECT run_id, 0 AS k FROM orphans UNION ALL SELECT run_id, 1 FROM queued) AS u "
    "ORDER BY k LIMIT $4), "
    "took AS (UPDATE ckflow_runs AS r SET owner = $5, lease_expires = now.t + $6, "
    "state = CASE WHEN r.state = 'QUEUED' THEN 'PENDING' ELSE r.state END "
    f"FROM now WHERE r.run_id IN (SELECT run_id FROM picked) RETURNING {_RUN_COLUMNS}) "
    "SELECT EXISTS (SELECT 1 FROM limited) AS limited, took.* FROM (SELECT 1) AS one LEFT JOIN took ON true"
)
#: runs of these queues under way whose owner holds a live lease (the worker checks which owners are dead)
LIVE_OWNERS: Final = (
    "SELECT run_id, owner FROM ckflow_runs WHERE queue = ANY($1::text[]) AND state IN ('PENDING', 'RUNNING') "
    f"AND NOT halted AND owner IS NOT NULL AND owner <> $2 AND lease_expires > {_NOW} AND flow = ANY($3::text[])"
)


def channel(schema: str) -> str:
    """The notification channel of the store in ``schema`` (channels are per database, not per schema)."""
    return f"ckflow_queued_{zlib.crc32(schema.encode()):08x}"


def _lock_key(queue: str) -> int:
    key = zlib.crc32(queue.encode())
    return key - (1 << 32) if key >= 1 << 31 else key


async def claim_queue(
    conn: Any, queue: str, owner: str, ttl: float, n: int, flows: Sequence[str], skip: Sequence[str]
) -> list[RunRecord]:
    """Claim up to ``n`` runs of ``queue`` for ``owner`` (runs to take over first, then QUEUED ones); only runs
    of ``flows``, never those of ``skip``. One statement, unless the queue has a limit: then its QUEUED runs are
    claimed in a transaction under the queue's lock."""
    rows = await conn.fetch(_CLAIM_UNLIMITED, queue, flows, skip, n, owner, ttl)
    claimed = [_c.RUNS.record(row) for row in rows if row["run_id"] is not None]
    if rows[0]["limited"] and len(claimed) < n:
        claimed += await _claim_limited(conn, queue, owner, ttl, n - len(claimed), flows, skip)
    return claimed


async def _claim_limited(
    conn: Any, queue: str, owner: str, ttl: float, n: int, flows: Sequence[str], skip: Sequence[str]
) -> list[RunRecord]:
    async with conn.transaction():
        ids = [row[0] for row in await conn.fetch(_ORPHANS, queue, flows, skip, n)]
        room = n - len(ids)
        if room > 0:
            limit = await conn.fetchval(_LIMIT, queue)
            if limit is not None:
                # Not waited for: its holder may be a worker cut off from the server in the middle of its claim,
                # whose transaction (and lock) the server keeps until it notices; waiting would stop this
                # worker's claims of every queue, runs to take over included. The queue's QUEUED runs wait for
                # the next claim instead.
                locked = await conn.fetchval("SELECT pg_try_advisory_xact_lock($1, $2)", _QUEUE_LOCK, _lock_key(queue))
                room = min(room, limit - await conn.fetchval(_UNDER_WAY, queue)) if locked else 0
            if room > 0:
                ids += [row[0] for row in await conn.fetch(_QUEUED, queue, flows, skip, room)]
        if not ids:
            return []
        rows = await conn.fetch(_TAKE, ids, owner, ttl)
    return [_c.RUNS.record(row) for row in rows]
