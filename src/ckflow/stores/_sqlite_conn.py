"""The connections of a SQLite store: how a ``sqlite:///`` URL becomes a checked, set-up, migrated file.

``connect`` runs in the store's thread (``_sqlite_commit``) when the store opens. It refuses, before
it writes anything, a file that is not a ckflow store or whose schema is newer than this ckflow's;
sets the pragmas (WAL, ``synchronous``, ``busy_timeout``, no foreign keys); migrates the schema in one
transaction; and, where a commit needs no fsync, turns automatic checkpoints off and opens
``LoopSide``: the connection that commits on the event loop, with the pin and the lock that keep a
WAL restart off it.

``rollback`` and ``is_busy`` live here because every module that runs a transaction needs them: this
is the bottom of the SQLite store's modules, and imports none of the others.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from typing import TYPE_CHECKING, Final, final
from urllib.parse import parse_qsl, quote, unquote

from ckflow._errors import SchemaVersionError, StoreCorruptError, StoreNotFoundError, StoreUnavailableError
from ckflow.stores import _schema
from ckflow.stores._protocol import SCHEMA_VERSION

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = [
    "BUSY_TIMEOUT_MS",
    "FILE_MODE",
    "LoopSide",
    "commit_mark",
    "connect",
    "damaged",
    "is_busy",
    "parse",
    "rollback",
]

#: how long the thread waits for another connection's write lock before failing with "database is locked"
BUSY_TIMEOUT_MS: Final = 5000
_SYNCHRONOUS: Final = frozenset({"OFF", "NORMAL", "FULL", "EXTRA"})
#: the levels at which a commit in WAL mode does not fsync, and so may run on the loop
_COMMIT_WITHOUT_SYNC: Final = frozenset({"OFF", "NORMAL"})
_HEADER: Final = b"SQLite format 3\x00"
#: the page size of a new store. A commit writes each page it changed, whole, to the WAL (a task's write
#: changes 5 to 8), so smaller pages make each commit cheaper: 1 KiB rather than SQLite's default 4 KiB
#: takes S5's write transaction from some 40 to 33 µs on a 2-core VM. Reading a large run costs more
#: (some 25 % for 100,000 events, 60 % for tasks with 8 KB results), which is rarer than writing it
PAGE_SIZE: Final = 1024
#: the permissions of a new store file: it holds the runs' inputs and results, so only its owner reads it (SQLite
#: gives its -wal and -shm files the same); ``chmod`` it to share it, ckflow never changes an existing file's mode
FILE_MODE: Final = 0o600
#: SQLITE_CORRUPT and SQLITE_NOTADB: "database disk image is malformed", "file is not a database"
_DAMAGED: Final = frozenset({sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB})
#: prepared statements kept per connection. The store runs some 30 distinct statements (its parameters are
#: bound, never spelled into the SQL), so the cache never churns. With SQLite's default page cache (2,000 KiB
#: a connection) and the WAL kept under some 9 MB by the store's checkpoints (its index, the -shm file
#: mapped by each connection, under 100 KiB), what a store keeps in memory is bounded: S12 measures
#: SQLite's heap (``sqlite3_memory_used``) at 0.5 to 1.6 MB, and the process flat from some 5,000 runs on
_CACHED_STATEMENTS: Final = 256
#: UPSERT needs 3.24; ``json_each`` (lists of ids) needs JSON1, built in since 3.38
_MIN_SQLITE: Final = (3, 24, 0)

_READ_VERSION: Final = "SELECT value FROM ckflow_meta WHERE key = 'schema_version'"
#: a commit that changes a page, whatever the file holds: SQLite skips rows rewritten with equal bytes
_MARK_WAL: Final = (
    "INSERT INTO ckflow_meta (key, value) VALUES ('wal_restarts', '1') "
    "ON CONFLICT (key) DO UPDATE SET value = CAST(value AS INTEGER) + 1"
)
_SET_VERSION: Final = (
    "INSERT INTO ckflow_meta (key, value) VALUES ('schema_version', ?1) "
    "ON CONFLICT (key) DO UPDATE SET value = excluded.value"
)

# -- migrations (the schema itself is in _schema) --------------------------------------------


def _create_v1(conn: sqlite3.Connection) -> None:
    for statement in _schema.SQLITE_V1:
        conn.execute(statement)


#: ``_MIGRATIONS[n]`` brings a store from schema version ``n`` to ``n + 1``, inside the open transaction;
#: a new version is one more function here (and ``SCHEMA_VERSION`` raised by one).
def _to_v2(conn: sqlite3.Connection) -> None:
    for statement in _schema.SQLITE_V2:
        conn.execute(statement)


def _to_v3(conn: sqlite3.Connection) -> None:
    for statement in _schema.SQLITE_V3:
        conn.execute(statement)


_MIGRATIONS: Final[tuple[Callable[[sqlite3.Connection], None], ...]] = (_create_v1, _to_v2, _to_v3)
assert len(_MIGRATIONS) == SCHEMA_VERSION, "one migration step per schema version"

# -- transactions ----------------------------------------------------------------------------


def rollback(conn: sqlite3.Connection) -> None:
    if conn.in_transaction:
        try:
            conn.execute("ROLLBACK")
        except sqlite3.Error:
            pass  # the transaction is gone either way


def damaged(exc: BaseException, url: str, path: str) -> BaseException:
    """``StoreCorruptError`` for SQLite's error on a damaged file (caused by ``exc``); else ``exc`` itself."""
    if isinstance(exc, sqlite3.DatabaseError) and exc.sqlite_errorcode & 0xFF in _DAMAGED:
        error = StoreCorruptError(url, path, str(exc))
        error.__cause__ = exc
        return error
    return exc


def is_busy(exc: BaseException) -> bool:
    """SQLITE_BUSY (and its extended codes): another connection holds the lock that was asked for."""
    return isinstance(exc, sqlite3.OperationalError) and exc.sqlite_errorcode & 0xFF == sqlite3.SQLITE_BUSY


# -- opening -----------------------------------------------------------------------------


def parse(url: str) -> tuple[str, str]:
    """(path, synchronous) of a ``sqlite:///path`` URL."""
    scheme, sep, rest = url.partition("://")
    rest, _, query = rest.partition("?")
    if scheme.lower() != "sqlite" or not sep or not rest.startswith("/") or len(rest) < 2:
        raise ValueError(
            f"A SQLite store URL is 'sqlite:///relative/path.db' or 'sqlite:////absolute/path.db', got {url!r}."
        )
    synchronous = "NORMAL"
    for key, value in parse_qsl(query, keep_blank_values=True):
        if key != "synchronous":
            raise ValueError(f"Unknown option {key!r} in SQLite store URL {url!r}; the only one is 'synchronous'.")
        synchronous = value.upper()
        if synchronous not in _SYNCHRONOUS:
            raise ValueError(f"SQLite store URL {url!r}: synchronous={value!r} is not one of {sorted(_SYNCHRONOUS)}.")
    return unquote(rest[1:]), synchronous


def _check_file(url: str, path: str) -> None:
    """Refuse, before SQLite touches it, a file that is not a SQLite database, or a missing directory."""
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise StoreUnavailableError(url, f"the directory {directory!r} does not exist.")
    try:
        with open(path, "rb") as file:
            head = file.read(len(_HEADER))
    except FileNotFoundError:
        return  # a new store
    except IsADirectoryError:
        raise StoreUnavailableError(url, f"{path!r} is a directory, not a SQLite file.") from None
    except OSError as exc:
        raise StoreUnavailableError(url, f"{path!r} cannot be read ({exc.strerror}).") from exc
    if head and head != _HEADER:
        raise StoreUnavailableError(url, f"{path!r} is not a SQLite database (it lacks the SQLite header).")


def _create_private(url: str, path: str) -> None:
    """Create a new store's file readable by its owner only (``FILE_MODE``), before SQLite creates it 0644.

    An existing file is left as it is. The process's umask is not touched (it is the whole process's).
    """
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY | getattr(os, "O_CLOEXEC", 0), FILE_MODE)
    except FileExistsError:
        return
    except OSError as exc:
        raise StoreUnavailableError(url, f"{path!r} cannot be created ({exc.strerror}).") from exc
    os.close(fd)


def _schema_version(conn: sqlite3.Connection, url: str) -> int:
    """The store's schema version; 0 for a database without ckflow's tables."""
    if conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'ckflow_meta'").fetchone() is None:
        return 0
    row = conn.execute(_READ_VERSION).fetchone()
    try:
        return int(row["value"])
    except (TypeError, ValueError):
        raise StoreUnavailableError(url, "its ckflow_meta table holds no valid schema_version.") from None


def _migrate(conn: sqlite3.Connection, url: str) -> None:
    """Bring the schema to ``SCHEMA_VERSION`` in one transaction, or raise and change nothing."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        # read again under the write lock: another process may have migrated the file meanwhile
        version = _schema_version(conn, url)
        if version > SCHEMA_VERSION:
            raise SchemaVersionError(url, version, SCHEMA_VERSION)
        if version < SCHEMA_VERSION:
            for step in _MIGRATIONS[version:]:
                step(conn)
            conn.execute(_SET_VERSION, (str(SCHEMA_VERSION),))
        conn.execute("COMMIT")
    except BaseException:
        rollback(conn)
        raise


def _open_file(url: str, path: str, *, create: bool) -> sqlite3.Connection:
    """The thread's connection to ``path``; without ``create``, to an existing file only (``mode=rw``)."""
    target, uri = path, False
    if path != ":memory:":
        _check_file(url, path)
        if create:
            _create_private(url, path)
        else:
            if not os.path.exists(path):
                raise StoreNotFoundError(url, f"the file {os.path.abspath(path)!r} does not exist")
            # mode=rw: SQLite fails rather than create the file, should it vanish after the look above
            target, uri = f"file:{quote(os.path.abspath(path))}?mode=rw", True
    try:
        return sqlite3.connect(
            target,
            timeout=BUSY_TIMEOUT_MS / 1000,
            isolation_level=None,
            cached_statements=_CACHED_STATEMENTS,
            uri=uri,
        )
    except sqlite3.Error as exc:
        if not create and not os.path.exists(path):
            raise StoreNotFoundError(url, f"the file {os.path.abspath(path)!r} does not exist") from exc
        raise StoreUnavailableError(url, f"SQLite cannot open {path!r} ({exc}).") from exc


def connect(_: None, arg: tuple[str, str, str, bool]) -> tuple[sqlite3.Connection, LoopSide | None]:
    """In the thread: open the file, refuse what is not a ckflow store, set it up and migrate it.

    Without ``create`` (the last of ``arg``), a missing file, or one without ckflow's tables, is
    ``StoreNotFoundError``, and neither is created nor written.

    Returns the thread's connection and, where commits need no fsync, what lets changes commit on the loop.
    """
    url, path, synchronous, create = arg
    if sqlite3.sqlite_version_info < _MIN_SQLITE:
        found = sqlite3.sqlite_version
        raise StoreUnavailableError(url, f"ckflow needs SQLite 3.24 or newer; this Python has {found}.")
    conn = _open_file(url, path, create=create)
    conn.row_factory = sqlite3.Row  # rows are read by column name (``_columns.Table.record``)
    side: LoopSide | None = None
    try:
        # Read before anything is written, so that a file we refuse is left as it was.
        version = _schema_version(conn, url)
        if version > SCHEMA_VERSION:
            raise SchemaVersionError(url, version, SCHEMA_VERSION)
        if version == 0 and not create and path != ":memory:":
            raise StoreNotFoundError(url, f"the file {os.path.abspath(path)!r} holds no ckflow tables")
        try:
            conn.execute("SELECT json_valid('[]')")
        except sqlite3.OperationalError:
            raise StoreUnavailableError(
                url, f"this SQLite ({sqlite3.sqlite_version}) was built without JSON functions, which ckflow needs."
            ) from None
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        if version == 0:
            conn.execute(f"PRAGMA page_size = {PAGE_SIZE}")  # a new file only: it takes effect before its first write
        wal = str(conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]).lower() == "wal"
        conn.execute(f"PRAGMA synchronous = {synchronous}")
        # Rows are tied to their run by the write fence and removed by delete_runs, not by foreign keys,
        # which would cost a lookup of the run per row written.
        conn.execute("PRAGMA foreign_keys = OFF")
        if version < SCHEMA_VERSION:
            _migrate(conn, url)
        if wal and synchronous in _COMMIT_WITHOUT_SYNC and path != ":memory:":
            conn.execute("PRAGMA wal_autocheckpoint = 0")  # the store runs checkpoints itself
            side = LoopSide(path, synchronous)
            try:
                _mark_wal(conn)
            except sqlite3.OperationalError as exc:
                if not is_busy(exc):
                    raise  # else another process writes: its commit synced the WAL's header, or the loop's will
    except sqlite3.Error as exc:
        _close(conn, side)
        if exc.sqlite_errorcode & 0xFF == sqlite3.SQLITE_CORRUPT:
            # a ckflow store whose pages are damaged; a file SQLite does not read at all (NOTADB) is no store
            raise damaged(exc, url, path) from exc
        raise StoreUnavailableError(url, f"{path!r} is not a usable ckflow store ({exc}).") from exc
    except BaseException:
        _close(conn, side)
        raise
    return conn, side


def _close(conn: sqlite3.Connection, side: LoopSide | None) -> None:
    if side is not None:
        side.close()
    conn.close()


def _mark_wal(conn: sqlite3.Connection) -> None:
    """In the thread: commit a one-row change.

    The first commit into a fresh WAL (an empty one, or one that a checkpoint copied whole into the
    database) writes the WAL's header and fsyncs it, even with ``synchronous=NORMAL``: this makes that
    commit here rather than on the loop.
    """
    conn.execute("BEGIN IMMEDIATE")
    commit_mark(conn)


def commit_mark(conn: sqlite3.Connection) -> None:
    """In a write transaction already begun: change one row (``_MARK_WAL``) and commit, or roll back and raise."""
    try:
        conn.execute(_MARK_WAL)
        conn.execute("COMMIT")
    except BaseException:
        rollback(conn)
        raise


@final
class LoopSide:
    """What lets changes commit on the loop: the loop's connection, and what keeps a WAL restart off it."""

    __slots__ = ("conn", "cursor", "path", "pin", "restarting")

    def __init__(self, path: str, synchronous: str) -> None:
        self.path = path
        #: used on the loop only, between two of its iterations; opened and closed in the thread
        self.conn = sqlite3.connect(
            path, timeout=0, isolation_level=None, cached_statements=_CACHED_STATEMENTS, check_same_thread=False
        )
        self.conn.row_factory = sqlite3.Row  # before its cursor: rows are read by column name
        try:
            self.conn.execute("PRAGMA wal_autocheckpoint = 0")
            self.conn.execute(f"PRAGMA synchronous = {synchronous}")
            self.conn.execute("PRAGMA foreign_keys = OFF")
            #: one cursor for every change: ``conn.execute`` would make one per statement
            self.cursor = self.conn.cursor()
            #: used in the thread only, by ``_sqlite_commit._checkpoint``
            self.pin = sqlite3.connect(path, timeout=0, isolation_level=None)
        except BaseException:
            self.conn.close()
            raise
        #: held by the thread, never for a wait, while no commit may begin on the loop
        self.restarting = threading.Lock()

    def close(self) -> None:
        """In the thread (closing a connection may checkpoint)."""
        self.pin.close()
        self.conn.close()
