# SPDX-License-Identifier: GPL-3.0-or-later
"""Connections to the index: opening, creating, upgrading, and small query helpers.

One writer at a time (the engine), any number of read-only connections (the FUSE tree,
listings). The database is in WAL mode, so readers never block the writer and the
writer never blocks readers; each statement a reader runs in autocommit mode sees the
newest committed state, so a checkpoint committed by the writer shows up in a mounted
tree without reopening anything. The helpers here always read result sets to the end:
a half-read cursor would pin its reader to an old snapshot.

Every call is synchronous; the caller decides which thread runs it. A connection may be
used from several threads (APSW serialises calls), but a transaction belongs to
whichever code opened it.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from importlib import resources
from pathlib import Path
from typing import Any

import apsw

from durafs.errors import CatalogError
from durafs.format.header import FORMAT_VERSION

log = logging.getLogger(__name__)

#: The schema version this code reads and writes (PRAGMA user_version).
SCHEMA_VERSION = 4

#: How long a statement waits for a lock held by another connection, in milliseconds.
#: Only the writer ever waits (for another writer); WAL readers do not take locks.
BUSY_TIMEOUT_MS = 10_000

#: Page cache per connection, in KiB (negative cache_size). Big enough that the index
#: pages of a large tree stay cached while a checkpoint is written.
CACHE_KIB = 8_192

#: Upgrades of the schema: MIGRATIONS[n] turns a version-n index into version n + 1.
#: Each runs inside the upgrade transaction; open_index sets user_version afterwards.
MIGRATIONS: dict[int, Callable[[Index], None]] = {}

Params = Sequence[Any] | dict[str, Any]


class IndexConstraintError(CatalogError):
    """A statement broke a UNIQUE, CHECK or FOREIGN KEY constraint of the schema."""


class IndexDamagedError(CatalogError):
    """SQLite found the index file damaged (a page it read is not what it wrote)."""


class Index:
    """One APSW connection to the index, with S3QL-style helpers.

    Errors from SQLite come out as `CatalogError` (`IndexConstraintError` for broken
    constraints). Use `transaction` around every group of writes that must be atomic.
    """

    def __init__(self, conn: apsw.Connection, path: Path, *, readonly: bool) -> None:
        self.conn = conn
        self.path = path
        self.readonly = readonly
        self._depth = 0

    # -- statements ---------------------------------------------------------------

    def execute(self, sql: str, params: Params = ()) -> int:
        """Run *sql* (one or more statements); return the rows changed by the last one."""
        with _translated(sql, self.path):
            for _ in self.conn.execute(sql, params):
                pass
            return self.conn.changes()

    def executemany(self, sql: str, rows: Iterator[Params] | Sequence[Params]) -> None:
        """Run one statement once per parameter set in *rows*."""
        with _translated(sql, self.path):
            for _ in self.conn.executemany(sql, rows):
                pass

    def query(self, sql: str, params: Params = ()) -> list[tuple[Any, ...]]:
        """Return every row *sql* yields (read to the end, so no snapshot stays pinned)."""
        with _translated(sql, self.path):
            return self.conn.execute(sql, params).fetchall()

    def get_row(self, sql: str, params: Params = ()) -> tuple[Any, ...] | None:
        """Return the only row of *sql*, or None; more than one row is a bug."""
        rows = self.query(sql, params)
        if len(rows) > 1:
            raise CatalogError(f"query returned {len(rows)} rows, expected one: {sql}")
        return rows[0] if rows else None

    def get_val(self, sql: str, params: Params = ()) -> Any:
        """Return the first column of the only row of *sql*; no row is an error."""
        row = self.get_row(sql, params)
        if row is None:
            raise CatalogError(f"query returned no row: {sql}")
        return row[0]

    @property
    def in_transaction(self) -> bool:
        return bool(self.conn.in_transaction)

    # -- transactions ---------------------------------------------------------------

    @contextmanager
    def transaction(self, *, immediate: bool = True) -> Iterator[None]:
        """Make the writes inside the block atomic: all committed, or none on an exception.

        The outermost level is ``BEGIN IMMEDIATE``: it takes the write lock at once, so the
        block never fails half-way for a lock. ``immediate=False`` begins a deferred
        transaction instead, for blocks that write only TEMP tables and so must not lock
        out the real writer. Nested levels are savepoints.
        """
        if self.readonly:
            raise CatalogError(f"{self.path}: index is open read-only")
        if self._depth:
            yield from self._savepoint()
            return
        begin = "BEGIN IMMEDIATE" if immediate else "BEGIN"
        with _translated(begin, self.path):
            self.conn.execute(begin)
        self._depth = 1
        try:
            yield
        except BaseException:
            self._depth = 0
            self.conn.execute("ROLLBACK")
            raise
        self._depth = 0
        try:
            with _translated("COMMIT", self.path):
                self.conn.execute("COMMIT")
        except BaseException:
            if self.conn.in_transaction:
                self.conn.execute("ROLLBACK")
            raise

    def _savepoint(self) -> Iterator[None]:
        name = f"durafs_sp{self._depth}"
        self.conn.execute(f"SAVEPOINT {name}")
        self._depth += 1
        try:
            yield
        except BaseException:
            self.conn.execute(f"ROLLBACK TO {name}; RELEASE {name}")
            raise
        finally:
            self._depth -= 1
        self.conn.execute(f"RELEASE {name}")

    # -- whole database -------------------------------------------------------------

    def last_id(self, table: str) -> int:
        """The highest id an AUTOINCREMENT *table* ever gave out (0 if none).

        Inside a write transaction, ids above it are free: bulk inserts assign them
        themselves instead of reading each one back.
        """
        row = self.get_row("SELECT seq FROM sqlite_sequence WHERE name = ?", (table,))
        return int(row[0]) if row else 0

    @property
    def user_version(self) -> int:
        return int(self.get_val("PRAGMA user_version"))

    def damage(self) -> list[str]:
        """What SQLite's own checks find wrong with the file: its page and index
        structure (``quick_check``, one pass over the file) and rows that point at rows
        that do not exist (``foreign_key_check``). Empty if the index is sound."""
        found = [row[0] for row in self.query("PRAGMA quick_check") if row[0] != "ok"]
        dangling = self.query("PRAGMA foreign_key_check")
        if dangling:
            table, rowid, parent, _ = dangling[0]
            found.append(f"{len(dangling)} rows point at rows that do not exist (the first:"
                         f" {table} row {rowid}, pointing into {parent})")
        return found

    def snapshot(self, dest: str | os.PathLike[str]) -> None:
        """Write a consistent, compacted copy of the index to *dest* (for index volumes)."""
        self.execute("VACUUM INTO ?", (os.fspath(dest),))

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> Index:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


#: What to do about a damaged index: every fact in it but media locations is on the media.
REBUILD = ("rebuild it from the media with `durafs recover --path MEDIUM` in an empty "
           "catalog directory (keep the damaged one for its media locations)")


@contextmanager
def _translated(sql: str, path: Path) -> Iterator[None]:
    """Turn SQLite errors into durafs errors that say what happened."""
    try:
        yield
    except apsw.ConstraintError as exc:
        raise IndexConstraintError(f"index constraint failed: {exc}") from exc
    except apsw.BusyError as exc:
        raise CatalogError("index is locked by another writer (is durafsd running?)") from exc
    except (apsw.CorruptError, apsw.NotADBError) as exc:
        raise IndexDamagedError(f"the index {path} is damaged ({exc}): {REBUILD}") from exc
    except apsw.Error as exc:
        raise CatalogError(f"index error: {exc} (in: {sql.split(chr(10))[0][:80]})") from exc


def open_index(
    path: str | os.PathLike[str], *, readonly: bool = False, create: bool = True
) -> Index:
    """Open the index at *path*, creating it (when writable and *create*) or upgrading it.

    A read-only connection never changes the file itself: an index that needs an upgrade
    is upgraded first through a connection of its own, where the file may be written
    (the first command after an update of durafs may well be a read-only one), else
    refused. An index whose schema is newer than this durafs is refused either way.
    """
    path = Path(path)
    if not path.exists() and (readonly or not create):
        raise CatalogError(f"{path}: no index there")
    flags = (
        apsw.SQLITE_OPEN_READONLY
        if readonly
        else (apsw.SQLITE_OPEN_READWRITE | apsw.SQLITE_OPEN_CREATE)
    )
    try:
        conn = apsw.Connection(str(path), flags=flags)
    except apsw.Error as exc:
        raise CatalogError(f"{path}: cannot open index: {exc}") from exc
    index = Index(conn, path, readonly=readonly)
    try:
        _configure(index)
        if readonly and 0 < index.user_version < SCHEMA_VERSION and os.access(path, os.W_OK):
            open_index(path, create=False).close()  # upgrades it
        _check_version(index)
    except BaseException:
        index.close()
        raise
    return index


def _configure(index: Index) -> None:
    index.conn.set_busy_timeout(BUSY_TIMEOUT_MS)
    index.execute(f"PRAGMA foreign_keys = ON; PRAGMA cache_size = -{CACHE_KIB}")
    if index.readonly:
        index.execute("PRAGMA query_only = ON")
        return
    # WAL is a property of the file, set once; NORMAL is durable across application
    # crashes and loses at most the last transactions on power loss, never consistency.
    mode = index.get_val("PRAGMA journal_mode = WAL")
    if mode != "wal":
        raise CatalogError(f"{index.path}: cannot switch the index to WAL mode ({mode})")
    index.execute("PRAGMA synchronous = NORMAL")


def _check_version(index: Index) -> None:
    version = index.user_version
    if version > SCHEMA_VERSION:
        raise CatalogError(
            f"index schema version {version} is newer than this durafs ({SCHEMA_VERSION})"
        )
    if version == SCHEMA_VERSION:
        return
    if index.readonly:
        raise CatalogError(
            f"{index.path}: index schema version {version} needs an upgrade by a writer"
        )
    with index.transaction():
        # Read again under the write lock: another process may have done the work.
        version = index.user_version
        if version == 0:
            _create(index)
        elif version < SCHEMA_VERSION:
            migrate(index, version, SCHEMA_VERSION, MIGRATIONS)


def _create(index: Index) -> None:
    tables = index.get_val("SELECT count(*) FROM sqlite_schema")
    if tables:
        raise CatalogError(f"{index.path}: not a durafs index (tables but no version)")
    schema = resources.files("durafs.index").joinpath("schema.sql").read_text("utf-8")
    index.execute(schema)
    if index.user_version != SCHEMA_VERSION:
        raise CatalogError("schema.sql and durafs.index.db disagree on the schema version")
    index.executemany(
        "INSERT INTO meta (key, value) VALUES (?, ?)",
        [
            ("catalog_id", str(uuid.uuid4())),
            ("created_ns", time.time_ns()),
            ("format_version", FORMAT_VERSION),
            ("encryption", "none"),
        ],
    )
    log.info("created index %s", index.path)


def migrate(
    index: Index, version: int, target: int, migrations: dict[int, Callable[[Index], None]]
) -> None:
    """Upgrade *index* from schema *version* to *target*, one step at a time.

    Must run inside a transaction, so a failed step leaves the index as it was.
    """
    if not index.in_transaction:
        raise CatalogError("migrate() must run inside a transaction")
    while version < target:
        step = migrations.get(version)
        if step is None:
            raise CatalogError(f"no upgrade from index schema version {version}")
        log.info("upgrading index %s from schema %d to %d", index.path, version, version + 1)
        step(index)
        version += 1
        index.execute(f"PRAGMA user_version = {int(version)}")


def _new_table(ddl: str) -> Callable[[Index], None]:
    """A migration step that adds one table (as schema.sql declares it then)."""
    def step(index: Index) -> None:
        index.execute(ddl)
    return step


# Schema 1 → 2: the `lost_volumes` table; 2 → 3: the `damaged_chunks` table; 3 → 4: the
# `fpos` column of `chunks` (packs, volume format 2: every chunk before them is at 0).
MIGRATIONS[1] = _new_table(
    "CREATE TABLE lost_volumes (volume_id INTEGER PRIMARY KEY REFERENCES volumes (id),"
    " since_ns INTEGER NOT NULL) STRICT")
MIGRATIONS[2] = _new_table(
    "CREATE TABLE damaged_chunks (chunk_id INTEGER PRIMARY KEY REFERENCES chunks (id),"
    " since_ns INTEGER NOT NULL) STRICT")


def _add_chunk_fpos(index: Index) -> None:
    index.execute(
        "ALTER TABLE chunks ADD COLUMN fpos INTEGER NOT NULL DEFAULT 0 CHECK (fpos >= 0)")


MIGRATIONS[3] = _add_chunk_fpos
