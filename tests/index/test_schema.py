# SPDX-License-Identifier: GPL-3.0-or-later
"""Creating, opening, upgrading and locking the index."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from importlib import resources
from pathlib import Path

import apsw
import pytest

from durafs.errors import CatalogError
from durafs.index import db as dbmod
from durafs.index.db import SCHEMA_VERSION, Index, open_index

TABLES = {
    "meta",
    "pools",
    "media",
    "volumes",
    "lost_volumes",
    "damaged_chunks",
    "chunks",
    "plans",
    "checkpoints",
    "paths",
    "versions",
    "path_names",
}
CONSTRAINT_WORDS = ("CHECK", "UNIQUE", "PRIMARY", "FOREIGN", "CONSTRAINT")


def schema_text() -> str:
    return resources.files("durafs.index").joinpath("schema.sql").read_text("utf-8")


def test_create_gives_a_sound_index(index_path: Path) -> None:
    with open_index(index_path) as index:
        names = {row[0] for row in index.query("SELECT name FROM sqlite_schema")}
        assert names >= TABLES
        assert index.user_version == SCHEMA_VERSION == 4
        assert index.get_val("PRAGMA integrity_check") == "ok"
        assert index.query("PRAGMA foreign_key_check") == []
        assert index.get_val("PRAGMA journal_mode") == "wal"
        assert index.get_val("PRAGMA foreign_keys") == 1
        meta = dict(index.query("SELECT key, value FROM meta"))
    assert set(meta) == {"catalog_id", "created_ns", "format_version", "encryption"}
    assert uuid.UUID(meta["catalog_id"])
    assert meta["encryption"] == "none"


def test_reopening_keeps_the_catalog(index_path: Path) -> None:
    with open_index(index_path) as index:
        catalog_id = index.get_val("SELECT value FROM meta WHERE key = 'catalog_id'")
    with open_index(index_path) as index:
        assert index.get_val("SELECT value FROM meta WHERE key = 'catalog_id'") == catalog_id


def test_every_column_is_commented() -> None:
    """Each line that starts a column definition carries a `--` comment."""
    uncommented = []
    for body in re.findall(
        r"CREATE (?:VIRTUAL )?TABLE \w+ (?:USING \w+ )?\((.*?)\n\)", schema_text(), re.S
    ):
        for line in body.splitlines():
            text = line.strip()
            if not text or text.startswith(("--", "tokenize")) or text.startswith(CONSTRAINT_WORDS):
                continue
            if "--" not in text:
                uncommented.append(text)
    assert uncommented == []
    # And the parse above did see every table.
    assert len(re.findall(r"CREATE (?:VIRTUAL )?TABLE", schema_text())) == len(TABLES)


def test_schema_file_declares_the_code_version() -> None:
    declared = re.search(r"PRAGMA user_version = (\d+);", schema_text())
    assert declared is not None
    assert int(declared.group(1)) == SCHEMA_VERSION


def test_newer_schema_is_refused(index_path: Path) -> None:
    open_index(index_path).close()
    raw = apsw.Connection(str(index_path))
    raw.execute("PRAGMA user_version = 7")
    raw.close()
    message = f"index schema version 7 is newer than this durafs ({SCHEMA_VERSION})"
    with pytest.raises(CatalogError, match=re.escape(message)):
        open_index(index_path)
    with pytest.raises(CatalogError, match=re.escape(message)):
        open_index(index_path, readonly=True)


def test_migrations_run_step_by_step(index: Index) -> None:
    def add_notes(ix: Index) -> None:
        ix.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, text TEXT)")

    def add_colour(ix: Index) -> None:
        ix.execute("ALTER TABLE notes ADD COLUMN colour TEXT")

    with index.transaction():
        dbmod.migrate(index, 1, 3, {1: add_notes, 2: add_colour})
    assert index.user_version == 3
    assert [row[1] for row in index.query("PRAGMA table_info(notes)")] == ["id", "text", "colour"]


def test_missing_migration_changes_nothing(index: Index) -> None:
    def add_notes(ix: Index) -> None:
        ix.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY)")

    with (
        pytest.raises(CatalogError, match="no upgrade from index schema version 2"),
        index.transaction(),
    ):
        dbmod.migrate(index, 1, 3, {1: add_notes})
    assert index.user_version == SCHEMA_VERSION  # as it was
    assert index.query("SELECT name FROM sqlite_schema WHERE name = 'notes'") == []


@pytest.mark.parametrize("readonly", [False, True])
def test_a_version_1_index_gains_the_lost_volumes_table(index_path: Path, readonly: bool) -> None:
    """Upgraded by whichever command opens it first: after an update of durafs that may be
    a read-only one (ls, restore, mount)."""
    with open_index(index_path) as index, index.transaction():
        index.execute("DROP TABLE lost_volumes")
        index.execute("DROP TABLE damaged_chunks")
        index.execute("ALTER TABLE chunks DROP COLUMN fpos")
        index.execute("PRAGMA user_version = 1")
    with open_index(index_path, readonly=readonly) as index:
        assert index.user_version == SCHEMA_VERSION
        columns = [row[1] for row in index.query("PRAGMA table_info(lost_volumes)")]
        assert columns == ["volume_id", "since_ns"]
        columns = [row[1] for row in index.query("PRAGMA table_info(damaged_chunks)")]
        assert columns == ["chunk_id", "since_ns"]  # and then 2 -> 3
        assert "fpos" in [row[1] for row in index.query("PRAGMA table_info(chunks)")]
        assert index.get_val("PRAGMA integrity_check") == "ok"


def test_a_version_3_index_keeps_its_chunks_at_fpos_0(index_path: Path) -> None:
    """Schema 4 added `chunks.fpos` (packs): every chunk recorded before is a frame of its
    own, at 0 of it."""
    with open_index(index_path) as index, index.transaction():
        index.execute("ALTER TABLE chunks DROP COLUMN fpos")
        index.execute("PRAGMA user_version = 3")
        index.execute("INSERT INTO pools (name, kind, volume_size, created_ns)"
                      " VALUES ('p', 'dir', 1000000, 0)")
        index.execute("INSERT INTO media (pool_id, uuid, label, kind, created_ns)"
                      " VALUES (1, 'm', 'M', 'dir', 0)")
        index.execute("INSERT INTO volumes (medium_id, uuid, kind, seq, plain_size,"
                      " stored_size, created_ns) VALUES (1, 'v', 'data', 1, 10, 10, 0)")
        index.execute("INSERT INTO chunks (pool_id, cid, volume_id, offset, length, size, raw)"
                      " VALUES (1, zeroblob(32), 1, 1536, 9, 4, 0)")
    with open_index(index_path) as index:
        assert index.user_version == SCHEMA_VERSION
        assert index.query("SELECT offset, length, size, fpos FROM chunks") == [(1536, 9, 4, 0)]
        with pytest.raises(CatalogError):
            index.execute("UPDATE chunks SET fpos = -1")


def test_migrate_needs_a_transaction(index: Index) -> None:
    with pytest.raises(CatalogError, match="inside a transaction"):
        dbmod.migrate(index, 1, 2, {1: lambda ix: None})


def test_readonly_needs_an_existing_index(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="no index there"):
        open_index(tmp_path / "missing.sqlite", readonly=True)
    with pytest.raises(CatalogError, match="no index there"):
        open_index(tmp_path / "missing.sqlite", create=False)
    assert not (tmp_path / "missing.sqlite").exists()


def test_readonly_connection_cannot_write(index_path: Path) -> None:
    open_index(index_path).close()
    with open_index(index_path, readonly=True) as reader:
        with pytest.raises(CatalogError, match="read-only"), reader.transaction():
            pass
        with pytest.raises(CatalogError):
            reader.execute("INSERT INTO meta (key, value) VALUES ('x', 1)")


def test_foreign_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.sqlite"
    raw = apsw.Connection(str(path))
    raw.execute("CREATE TABLE t (x)")
    raw.close()
    with pytest.raises(CatalogError, match="not a durafs index"):
        open_index(path)


def test_transaction_commits_or_rolls_back(index: Index) -> None:
    with index.transaction():
        index.execute("INSERT INTO meta (key, value) VALUES ('a', 1)")
    with pytest.raises(RuntimeError), index.transaction():
        index.execute("INSERT INTO meta (key, value) VALUES ('b', 2)")
        raise RuntimeError("boom")
    assert dict(index.query("SELECT key, value FROM meta WHERE key IN ('a', 'b')")) == {"a": 1}
    assert not index.in_transaction


def test_nested_transaction_is_a_savepoint(index: Index) -> None:
    with index.transaction():
        index.execute("INSERT INTO meta (key, value) VALUES ('outer', 1)")
        with pytest.raises(RuntimeError), index.transaction():
            index.execute("INSERT INTO meta (key, value) VALUES ('inner', 2)")
            raise RuntimeError("boom")
        with index.transaction():
            index.execute("INSERT INTO meta (key, value) VALUES ('inner2', 3)")
    rows = dict(
        index.query("SELECT key, value FROM meta WHERE key LIKE '%inner%' OR key = 'outer'")
    )
    assert rows == {"outer": 1, "inner2": 3}


def test_second_writer_is_told_the_index_is_locked(index_path: Path) -> None:
    with open_index(index_path) as first, open_index(index_path) as second:
        second.conn.set_busy_timeout(50)
        with (
            first.transaction(),
            pytest.raises(CatalogError, match="locked by another writer"),
            second.transaction(),
        ):
            pass
        with second.transaction():
            pass


def test_constraint_errors_are_catalog_errors(index: Index) -> None:
    with pytest.raises(dbmod.IndexConstraintError):
        index.execute(
            "INSERT INTO pools (name, kind, volume_size, created_ns) VALUES ('p', 'floppy', 1, 1)"
        )


def test_get_val_and_get_row(index: Index) -> None:
    assert index.get_row("SELECT 1 WHERE 0") is None
    with pytest.raises(CatalogError, match="no row"):
        index.get_val("SELECT 1 WHERE 0")
    with pytest.raises(CatalogError, match="expected one"):
        index.get_row("SELECT 1 UNION ALL SELECT 2")


def test_snapshot_is_a_complete_copy(index: Index, tmp_path: Path) -> None:
    index.execute("INSERT INTO meta (key, value) VALUES ('x', 42)")
    index.snapshot(tmp_path / "copy.sqlite")
    with open_index(tmp_path / "copy.sqlite", readonly=True) as copy:
        assert copy.get_val("SELECT value FROM meta WHERE key = 'x'") == 42
        assert copy.get_val("PRAGMA integrity_check") == "ok"


@pytest.fixture
def index(index_path: Path) -> Iterator[Index]:
    ix = open_index(index_path)
    yield ix
    ix.close()
