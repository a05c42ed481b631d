"""The SQL stores' schema, as each migration step creates it, in each dialect.

These statements are history: a store made by an older ckflow is migrated by running the steps it has
not run yet, so a step, once released, never changes. A new schema version adds a step here (and one
line per new column to the tables' declarations in ``_columns``).
"""

from __future__ import annotations

from typing import Final

__all__ = ["POSTGRES_V1", "POSTGRES_V2", "POSTGRES_V3", "SQLITE_V1", "SQLITE_V2", "SQLITE_V3"]

# -- the schema, version 1, in each dialect ---------------------------------------------------------
# The same tables and columns in both, but for how SQLite keys the rows written with every task; indexes
# for runs by state and creation, tasks by run and name, events by run and seq, failure events, and the
# requests of a run not yet done.

#: SQLite. A commit writes every page it changed to the WAL, whole, and a task's write is mostly pages:
#: the rows written with every task (tasks, events) are keyed by the run's integer ``run_key`` rather than
#: its id, so that their index entries take a few bytes (fewer pages to split and to write), and the
#: tables are plain rowid tables, appended to. A key is never given twice (AUTOINCREMENT): no row left
#: behind by a deleted run could ever belong to a new one. A batch that changes nothing of its run but its progress
#: leaves the run's row as it is: its last event carries the progress (``run_updated_at``, and its seq),
#: which the view ``ckflow_run_records`` reads back.
SQLITE_V1: Final = (
    "CREATE TABLE ckflow_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    """CREATE TABLE ckflow_runs (
        run_key INTEGER PRIMARY KEY AUTOINCREMENT,
        run_id TEXT NOT NULL UNIQUE,
        flow TEXT NOT NULL,
        state TEXT NOT NULL,
        inputs TEXT NOT NULL,
        owner TEXT,
        lease_expires REAL,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        ended_at REAL,
        halted INTEGER NOT NULL,
        goto TEXT,
        next_seq INTEGER NOT NULL
    )""",
    "CREATE INDEX ckflow_runs_by_state ON ckflow_runs (state, created_at)",
    "CREATE INDEX ckflow_runs_by_created ON ckflow_runs (created_at)",
    # tasks, regions and requests are read back in the order they were first written (their rowid)
    """CREATE TABLE ckflow_tasks (
        run_key INTEGER NOT NULL,
        task TEXT NOT NULL,
        state TEXT NOT NULL,
        attempts INTEGER NOT NULL,
        retries TEXT NOT NULL,
        iteration INTEGER NOT NULL,
        result TEXT,
        failure TEXT,
        started_at REAL,
        ended_at REAL,
        revert_started_at REAL,
        revert_ended_at REAL
    )""",
    "CREATE UNIQUE INDEX ckflow_tasks_by_run ON ckflow_tasks (run_key, task)",
    """CREATE TABLE ckflow_checkpoints (
        run_id TEXT NOT NULL,
        checkpoint TEXT NOT NULL,
        pass_no INTEGER NOT NULL,
        state TEXT NOT NULL,
        attempts INTEGER NOT NULL,
        history TEXT NOT NULL,
        first_failure_at REAL,
        snapshot TEXT,
        tasks TEXT NOT NULL,
        started_at REAL,
        completed_at REAL,
        next_at REAL,
        first_seq INTEGER NOT NULL,
        PRIMARY KEY (run_id, checkpoint, pass_no)
    )""",
    """CREATE TABLE ckflow_regions (
        run_id TEXT NOT NULL,
        region_id INTEGER NOT NULL,
        checkpoint TEXT NOT NULL,
        action TEXT NOT NULL,
        members TEXT NOT NULL,
        cause TEXT,
        failures TEXT NOT NULL,
        auto_resume INTEGER NOT NULL,
        parked INTEGER NOT NULL,
        PRIMARY KEY (run_id, region_id)
    )""",
    # ``run_updated_at`` is set on the last event of a batch whose run's ``next_seq`` follows it: the run's
    # ``updated_at`` then, which stands for the run's row's if the batch left it as it was (see ``ckflow_run_records``)
    """CREATE TABLE ckflow_events (
        run_key INTEGER NOT NULL,
        seq INTEGER NOT NULL,
        checkpoint TEXT,
        failure_kind TEXT,
        body TEXT NOT NULL,
        run_updated_at REAL
    )""",
    "CREATE UNIQUE INDEX ckflow_events_by_run ON ckflow_events (run_key, seq)",
    "CREATE INDEX ckflow_events_failures ON ckflow_events (run_key, seq) "
    "WHERE failure_kind IS NOT NULL AND failure_kind <> 'cancelled'",
    # The runs as the store reads them: a run's row, or the progress its last event carries if that is newer.
    # (Such an event comes after every change of the row: its seq is at least the row's next_seq.)
    """CREATE VIEW ckflow_run_records AS SELECT
        r.run_id AS run_id, r.flow AS flow, r.state AS state, r.inputs AS inputs, r.owner AS owner,
        r.lease_expires AS lease_expires, r.created_at AS created_at,
        coalesce(p.run_updated_at, r.updated_at) AS updated_at,
        r.ended_at AS ended_at, r.halted AS halted, r.goto AS goto,
        coalesce(p.seq + 1, r.next_seq) AS next_seq
    FROM ckflow_runs AS r LEFT JOIN ckflow_events AS p
        ON p.run_key = r.run_key
        AND p.seq = (SELECT max(seq) FROM ckflow_events WHERE run_key = r.run_key)
        AND p.seq >= r.next_seq
        AND p.run_updated_at IS NOT NULL""",
    """CREATE TABLE ckflow_requests (
        request_id TEXT PRIMARY KEY,
        run_id TEXT NOT NULL,
        op TEXT NOT NULL,
        checkpoint TEXT,
        retry INTEGER NOT NULL,
        requested_at REAL NOT NULL,
        requested_by TEXT NOT NULL,
        done_at REAL,
        error TEXT
    )""",
    "CREATE INDEX ckflow_requests_by_run ON ckflow_requests (run_id, requested_at)",
    "CREATE INDEX ckflow_requests_pending ON ckflow_requests (run_id) WHERE done_at IS NULL",
)

# PostgreSQL: keys are COLLATE "C" so that names sort by code point, as MemoryStore sorts them, whatever
# the database's collation; ``pos`` keeps the order in which rows were first written.
#: Version 2 (both dialects): the run's ``trace``, the W3C traceparent of its OpenTelemetry span, written
#: when the run is created and never changed, so that every resumption of the run continues its trace.
SQLITE_V2: Final = (
    "ALTER TABLE ckflow_runs ADD COLUMN trace TEXT",
    "DROP VIEW ckflow_run_records",
    """CREATE VIEW ckflow_run_records AS SELECT
        r.run_id AS run_id, r.flow AS flow, r.state AS state, r.inputs AS inputs, r.owner AS owner,
        r.lease_expires AS lease_expires, r.created_at AS created_at,
        coalesce(p.run_updated_at, r.updated_at) AS updated_at,
        r.ended_at AS ended_at, r.halted AS halted, r.goto AS goto,
        coalesce(p.seq + 1, r.next_seq) AS next_seq, r.trace AS trace
    FROM ckflow_runs AS r LEFT JOIN ckflow_events AS p
        ON p.run_key = r.run_key
        AND p.seq = (SELECT max(seq) FROM ckflow_events WHERE run_key = r.run_key)
        AND p.seq >= r.next_seq
        AND p.run_updated_at IS NOT NULL""",
)
POSTGRES_V2: Final = ("ALTER TABLE ckflow_runs ADD COLUMN trace text",)

POSTGRES_V1: Final = (
    'CREATE TABLE ckflow_meta (key text COLLATE "C" PRIMARY KEY, value text NOT NULL)',
    """CREATE TABLE ckflow_runs (
        run_id text COLLATE "C" PRIMARY KEY,
        flow text NOT NULL,
        state text NOT NULL,
        inputs text NOT NULL,
        owner text,
        lease_expires double precision,
        created_at double precision NOT NULL,
        updated_at double precision NOT NULL,
        ended_at double precision,
        halted boolean NOT NULL,
        goto text,
        next_seq bigint NOT NULL
    )""",
    "CREATE INDEX ckflow_runs_by_state ON ckflow_runs (state, created_at)",
    "CREATE INDEX ckflow_runs_by_created ON ckflow_runs (created_at)",
    """CREATE TABLE ckflow_tasks (
        pos bigint GENERATED ALWAYS AS IDENTITY,
        run_id text COLLATE "C" NOT NULL,
        task text COLLATE "C" NOT NULL,
        state text NOT NULL,
        attempts bigint NOT NULL,
        retries text NOT NULL,
        iteration bigint NOT NULL,
        result text,
        failure text,
        started_at double precision,
        ended_at double precision,
        revert_started_at double precision,
        revert_ended_at double precision,
        PRIMARY KEY (run_id, task)
    )""",
    """CREATE TABLE ckflow_checkpoints (
        run_id text COLLATE "C" NOT NULL,
        checkpoint text COLLATE "C" NOT NULL,
        pass_no bigint NOT NULL,
        state text NOT NULL,
        attempts bigint NOT NULL,
        history text NOT NULL,
        first_failure_at double precision,
        snapshot text,
        tasks text NOT NULL,
        started_at double precision,
        completed_at double precision,
        next_at double precision,
        first_seq bigint NOT NULL,
        PRIMARY KEY (run_id, checkpoint, pass_no)
    )""",
    """CREATE TABLE ckflow_regions (
        pos bigint GENERATED ALWAYS AS IDENTITY,
        run_id text COLLATE "C" NOT NULL,
        region_id bigint NOT NULL,
        checkpoint text NOT NULL,
        action text NOT NULL,
        members text NOT NULL,
        cause text,
        failures text NOT NULL,
        auto_resume boolean NOT NULL,
        parked boolean NOT NULL,
        PRIMARY KEY (run_id, region_id)
    )""",
    """CREATE TABLE ckflow_events (
        run_id text COLLATE "C" NOT NULL,
        seq bigint NOT NULL,
        checkpoint text COLLATE "C",
        failure_kind text,
        body text NOT NULL,
        PRIMARY KEY (run_id, seq)
    )""",
    "CREATE INDEX ckflow_events_failures ON ckflow_events (run_id, seq) "
    "WHERE failure_kind IS NOT NULL AND failure_kind <> 'cancelled'",
    """CREATE TABLE ckflow_requests (
        pos bigint GENERATED ALWAYS AS IDENTITY,
        request_id text COLLATE "C" PRIMARY KEY,
        run_id text COLLATE "C" NOT NULL,
        op text NOT NULL,
        checkpoint text,
        retry boolean NOT NULL,
        requested_at double precision NOT NULL,
        requested_by text NOT NULL,
        done_at double precision,
        error text
    )""",
    "CREATE INDEX ckflow_requests_by_run ON ckflow_requests (run_id, requested_at)",
    "CREATE INDEX ckflow_requests_pending ON ckflow_requests (run_id) WHERE done_at IS NULL",
)

#: Version 3 (both dialects): a submitted run's ``queue`` and ``priority`` (``engine.submit``), written when the
#: run is created and never changed. PostgreSQL also gets what workers claim by: an index of the QUEUED runs of
#: each queue in the order they are claimed (a run leaves it when it is claimed; the runs under way are found
#: through ``ckflow_runs_by_state``), and ``ckflow_queues``, each queue's limit on the runs under way at once across
#: all workers (no row, or a NULL limit: no limit).
SQLITE_V3: Final = (
    "ALTER TABLE ckflow_runs ADD COLUMN queue TEXT",
    "ALTER TABLE ckflow_runs ADD COLUMN priority INTEGER NOT NULL DEFAULT 0",
    "DROP VIEW ckflow_run_records",
    """CREATE VIEW ckflow_run_records AS SELECT
        r.run_id AS run_id, r.flow AS flow, r.state AS state, r.inputs AS inputs, r.owner AS owner,
        r.lease_expires AS lease_expires, r.created_at AS created_at,
        coalesce(p.run_updated_at, r.updated_at) AS updated_at,
        r.ended_at AS ended_at, r.halted AS halted, r.goto AS goto,
        coalesce(p.seq + 1, r.next_seq) AS next_seq, r.trace AS trace, r.queue AS queue, r.priority AS priority
    FROM ckflow_runs AS r LEFT JOIN ckflow_events AS p
        ON p.run_key = r.run_key
        AND p.seq = (SELECT max(seq) FROM ckflow_events WHERE run_key = r.run_key)
        AND p.seq >= r.next_seq
        AND p.run_updated_at IS NOT NULL""",
)
POSTGRES_V3: Final = (
    'ALTER TABLE ckflow_runs ADD COLUMN queue text COLLATE "C", ADD COLUMN priority bigint NOT NULL DEFAULT 0',
    "CREATE INDEX ckflow_runs_queued ON ckflow_runs (queue, priority DESC, created_at, run_id) WHERE state = 'QUEUED'",
    'CREATE TABLE ckflow_queues (name text COLLATE "C" PRIMARY KEY, concurrency bigint)',
)
