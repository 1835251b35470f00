# SPDX-License-Identifier: GPL-3.0-or-later
"""Recording a new checkpoint's tree: unchanged entries cost no write at all.

The engine feeds every entry of the new checkpoint in walk order (a directory before
anything in it, "/" first) and calls `TreeWriter.finish`. An entry whose attributes and
content equal those of the path's open version (the one in the plan's newest
checkpoint) leaves that version open; any other entry gets a new version, and at
`finish` every open version of the plan whose path was not kept is closed at the seq of
that newest checkpoint (this covers both changed and deleted paths) in one set-based
UPDATE.

Nothing touches the real tables before `finish`: entries are staged in TEMP tables of
the writer's own connection, in batches, without taking the index's write lock, so the
engine keeps committing volumes and chunks on its connection meanwhile. New paths and
versions get provisional negative ids while staged; `finish` turns them into real ids
(above the AUTOINCREMENT high-water mark, under the write lock) and applies everything
in one transaction: the checkpoint and its tree appear together or not at all.

Memory stays bounded whatever the tree's size: two LRU caches (directories' path ids,
and the previous checkpoint's listing of recently used directories), the staging
batches, and one entry per hard-link group.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Hashable
from operator import attrgetter
from pathlib import Path
from typing import Any

from durafs.errors import CatalogError
from durafs.index.db import Index, IndexConstraintError, open_index
from durafs.index.rows import VERSION_COLUMNS, CheckpointRow, Entry, VersionRow, name_text
from durafs.index.tree import TreeCatalog, dump_json

log = logging.getLogger(__name__)

#: Staged rows kept in Python before they are written to the TEMP tables.
BATCH = 20_000
#: Directories whose path ids are cached (a miss costs one query per path component).
DIR_CACHE = 4_096
#: Directories whose previous listing is cached, and the rows they may hold in total
#: (~20 MB at most). The engine's PrevTree reads the same listings during its scan, which
#: may run thousands of entries ahead of what it feeds here (entries wait for their
#: chunks): a smaller cache made every directory's listing be read twice.
LISTING_CACHE = 4_096
LISTING_ROWS = 40_000

# A row of the previous checkpoint's listing: (path id, VERSION_COLUMNS tuple or None).
_Prev = tuple[int, tuple[Any, ...] | None]
# Where an entry goes: (parent ref, name, path ref or None, previous version or None).
_Loc = tuple[int | None, bytes, int | None, tuple[Any, ...] | None]
_NEW: tuple[None, None] = (None, None)
_BAD_NAMES = frozenset({b"", b".", b".."})
_NEW_LOC: _Loc = (None, b"", None, None)

_STAGING = """
    CREATE TEMP TABLE tw_seen (       -- existing paths fed to this checkpoint
        ref    INTEGER PRIMARY KEY,   -- paths.id
        kept   INTEGER NOT NULL,      -- 1: its open version stays open
        is_dir INTEGER NOT NULL);
    CREATE TEMP TABLE tw_paths (      -- new paths
        ref        INTEGER PRIMARY KEY,  -- provisional id, < 0
        parent_ref INTEGER NOT NULL,     -- paths.id, or provisional id
        name       BLOB NOT NULL,
        text       TEXT NOT NULL,        -- for path_names
        is_dir     INTEGER NOT NULL);
    CREATE UNIQUE INDEX temp.tw_paths_child ON tw_paths (parent_ref, name);
    CREATE TEMP TABLE tw_versions (   -- new versions, columns as in versions
        vref INTEGER PRIMARY KEY, ref INTEGER NOT NULL, type, mode, uid, gid, uname, gname,
        size, mtime_ns, atime_ns, ctime_ns, ino, dev, nlink, rdev, target, xattrs,
        hardlink_ref, chunks, blake3);
    PRAGMA temp.cache_size = -8192;
"""

# Under the write lock: :pb and :vb are the paths and versions id high-water marks, so
# provisional id -k becomes :pb + k (resp. :vb + k), in walk order. :prev is the seq of
# the plan's newest checkpoint, the last one the closed versions are in.
_APPLY = """
    INSERT INTO paths (id, plan_id, parent_id, name)
        SELECT :pb - ref, :plan, iif(parent_ref < 0, :pb - parent_ref, parent_ref), name
        FROM temp.tw_paths ORDER BY ref DESC;
    INSERT INTO path_names (rowid, name)
        SELECT :pb - ref, text FROM temp.tw_paths ORDER BY ref DESC;
    UPDATE versions SET last_seq = :prev
        WHERE plan_id = :plan AND last_seq IS NULL AND NOT EXISTS (
            SELECT 1 FROM temp.tw_seen s WHERE s.ref = versions.path_id AND s.kept);
    INSERT INTO versions (id, plan_id, path_id, first_seq, last_seq, type, mode, uid, gid,
                          uname, gname, size, mtime_ns, atime_ns, ctime_ns, ino, dev, nlink,
                          rdev, target, xattrs, hardlink_id, chunks, blake3)
        SELECT :vb - vref, :plan, iif(ref < 0, :pb - ref, ref), :seq, NULL, type, mode, uid,
               gid, uname, gname, size, mtime_ns, atime_ns, ctime_ns, ino, dev, nlink, rdev,
               target, xattrs, iif(hardlink_ref < 0, :vb - hardlink_ref, hardlink_ref),
               chunks, blake3
        FROM temp.tw_versions ORDER BY vref DESC;
"""


class TreeWriter:
    """Stages one new checkpoint of a plan and commits it atomically in `finish`.

    Use as a context manager: leaving the block without `finish` (an exception, or
    simply not calling it) discards everything. Open it with `Catalog.tree_writer`.

    It owns a private connection to the index, so it is independent of the caller's
    transactions, and it can be fed while the engine commits volumes and chunks. But
    `finish` takes the index's write lock: calling it while the same thread holds a
    transaction open on another connection waits out the busy timeout and fails.
    One thread at a time may use a TreeWriter.
    """

    def __init__(
        self, path: Path, plan_id: int, seq: int, name: str, *, created_ns: int, sources: Any
    ) -> None:
        self._db: Index = open_index(path, create=False)
        self.plan_id = plan_id
        self.seq = seq
        self.name = name
        self._created_ns = created_ns
        self._sources = dump_json(sources)
        self._open = True
        self._entries = self._kept = self._staged = 0
        row = self._db.get_row(
            "SELECT p.id, pl.last_seq FROM plans pl JOIN paths p ON p.plan_id = pl.id"
            " AND p.parent_id IS NULL WHERE pl.id = ?",
            (plan_id,),
        )
        if row is None:
            self._db.close()
            raise CatalogError(f"no plan with id {plan_id}")
        self._root_id, self._base_seq = row
        if seq <= self._base_seq:
            self._db.close()
            raise CatalogError(f"checkpoint seq {seq} of plan {plan_id} is already used")
        self._dirs: OrderedDict[bytes, int] = OrderedDict()
        self._loc_path: bytes | None = None
        self._loc: _Loc = _NEW_LOC
        self._cur_dir: bytes | None = None
        self._cur_ref = 0
        self._cur_listing: dict[bytes, _Prev] = {}
        self._listings: OrderedDict[int, dict[bytes, _Prev]] = OrderedDict()
        self._listing_rows = 0
        self._groups: dict[Hashable, int] = {}
        self._last_path_ref = 0
        self._last_vref = 0
        self._seen: list[tuple[int, bool, bool]] = []
        self._paths: list[tuple[int, int, bytes, str, bool]] = []
        self._versions: list[tuple[Any, ...]] = []
        self._db.execute(_STAGING)

    # -- the walk -------------------------------------------------------------------

    def prev_version(self, path: bytes) -> VersionRow | None:
        """The version *path* has in the plan's newest checkpoint, or None.

        This is what the new entry is compared with: an engine that finds size,
        mtime_ns, ctime_ns, ino and dev unchanged can reuse its chunks and blake3 without
        reading the file. The parent directory of *path* must have been added already.
        """
        prev = self._locate(path)[3]
        return VersionRow(*prev) if prev else None

    def add(self, entry: Entry) -> bool:
        """Stage *entry* (see `Entry`) as part of the new checkpoint. Returns whether the
        path's open version is kept (True: unchanged, no new version; a delta catalog
        volume leaves it out)."""
        parent_ref, name, ref, prev = self._locate(entry.path)
        is_dir = entry.type == "d"
        if ref is None:
            assert parent_ref is not None
            ref = self._new_path(parent_ref, name, is_dir)
        if entry.hardlink_key is not None:
            kept = self._add_linked(ref, entry, prev)
        elif prev is not None and prev[20] is None and _same(entry, prev):
            kept = True
        else:
            kept = False
            self._new_version(ref, entry, None)
        self._staged_entry(entry.path, ref, kept, is_dir)
        return kept

    def keep(self, path: bytes) -> None:
        """Stage *path* unchanged: its version in the plan's newest checkpoint goes on into
        this one. What `add` does for an entry equal to that version (and not hard-linked),
        for callers that compared it without building the Entry."""
        _parent, _name, ref, prev = self._locate(path)
        if ref is None or prev is None or prev[20] is not None:
            raise CatalogError(f"{path!r} has no version of its own to keep")
        self._staged_entry(path, ref, True, prev[4] == "d")

    def _staged_entry(self, path: bytes, ref: int, kept: bool, is_dir: bool) -> None:
        self._entries += 1
        self._kept += kept
        if ref > 0:
            self._seen.append((ref, kept, is_dir))
            self._staged += 1
        if is_dir:
            self._dirs[path] = ref
            if len(self._dirs) > DIR_CACHE:
                self._dirs.popitem(last=False)
        if self._staged >= BATCH:
            self._flush()

    def _add_linked(self, ref: int, entry: Entry, prev: tuple[Any, ...] | None) -> bool:
        """Stage a member of a hard-link group; return whether its version is kept.

        The group's first member (in walk order) links to itself, the others to it; a
        member is kept only if it still links to the same version.
        """
        key = entry.hardlink_key
        assert key is not None
        first = self._groups.get(key)
        if first is None:
            if prev is not None and prev[20] == prev[0] and _same(entry, prev):
                self._groups[key] = prev[0]
                return True
            self._groups[key] = self._new_version(ref, entry, None, self_link=True)
            return False
        kept = prev is not None and prev[20] == first and _same(entry, prev)
        if not kept:
            self._new_version(ref, entry, first)
        return kept

    def _new_path(self, parent_ref: int, name: bytes, is_dir: bool) -> int:
        self._last_path_ref -= 1
        self._paths.append((self._last_path_ref, parent_ref, name, name_text(name), is_dir))
        self._staged += 1
        return self._last_path_ref

    def _new_version(
        self, ref: int, entry: Entry, link: int | None, *, self_link: bool = False
    ) -> int:
        """Stage a new version of path *ref*; return its provisional id."""
        self._last_vref -= 1
        vid = self._last_vref
        self._versions.append(_version_tuple(vid, ref, entry, vid if self_link else link))
        self._staged += 1
        return vid

    @property
    def counts(self) -> dict[str, int]:
        """For the engine's stats: entries fed, versions kept unchanged, new versions."""
        return {"entries": self._entries, "kept": self._kept, "new": -self._last_vref}

    # -- finding the previous state ---------------------------------------------------

    @property
    def root_ref(self) -> int:
        """The path id of the plan's root "/"."""
        return int(self._root_id)

    def previous_children(self, dir_ref: int) -> dict[bytes, _Prev]:
        """Name -> (path id, VERSION_COLUMNS tuple or None) of every child name the plan
        ever had in directory *dir_ref*, the tuple being its version in the plan's newest
        checkpoint (None: not in it). From a bounded cache: do not keep it long."""
        if not self._open:
            raise CatalogError("this TreeWriter is finished or discarded")
        return self._listing(dir_ref)

    def _locate(self, path: bytes) -> _Loc:
        """(parent ref, name, path ref or None if new, previous version tuple or None)."""
        if not self._open:
            raise CatalogError("this TreeWriter is finished or discarded")
        if path == self._loc_path:  # the usual prev_version(p) then add(p)
            return self._loc
        if path == b"/":
            loc: _Loc = (None, b"", self._root_id, self._root_prev())
        else:
            loc = self._locate_child(path)
        self._loc_path, self._loc = path, loc
        return loc

    def _locate_child(self, path: bytes) -> _Loc:
        parent, _, name = path.rpartition(b"/")
        if not path.startswith(b"/") or name in _BAD_NAMES or b"\0" in name:
            raise CatalogError(f"{path!r} is not an absolute, normalised path")
        parent = parent or b"/"
        if parent != self._cur_dir:  # entries of one directory mostly come together
            parent_ref = self._dirs.get(parent)
            if parent_ref is None:
                parent_ref = self._resolve_dir(parent)
            else:
                self._dirs.move_to_end(parent)
            listing = self._listing(parent_ref) if parent_ref > 0 else {}
            self._cur_dir, self._cur_ref, self._cur_listing = parent, parent_ref, listing
        ref, prev = self._cur_listing.get(name, _NEW)
        return self._cur_ref, name, ref, prev

    def _root_prev(self) -> tuple[Any, ...] | None:
        return self._db.get_row(
            f"SELECT {VERSION_COLUMNS} FROM versions v WHERE v.plan_id = ? AND v.path_id = ?"
            " AND v.last_seq IS NULL",
            (self.plan_id, self._root_id),
        )

    def _listing(self, dir_ref: int) -> dict[bytes, _Prev]:
        """The previous checkpoint's children of *dir_ref*, with the path ids of every
        child name the plan ever had there (so a re-added name reuses its path)."""
        listing = self._listings.get(dir_ref)
        if listing is not None:
            self._listings.move_to_end(dir_ref)
            return listing
        children = self._db.query("SELECT name, id FROM paths WHERE parent_id = ?", (dir_ref,))
        # Two plain queries rather than a join (see durafs.index.tree on joins).
        rows = self._db.query(
            f"""SELECT {VERSION_COLUMNS} FROM versions v
                WHERE v.plan_id = ? AND v.last_seq IS NULL
                  AND v.path_id IN (SELECT id FROM paths WHERE parent_id = ?)""",
            (self.plan_id, dir_ref),
        )
        current = {row[1]: row for row in rows}
        listing = {name: (path_id, current.get(path_id)) for name, path_id in children}
        self._listings[dir_ref] = listing
        self._listing_rows += len(listing)
        while len(self._listings) > 1 and (
            len(self._listings) > LISTING_CACHE or self._listing_rows > LISTING_ROWS
        ):
            self._listing_rows -= len(self._listings.popitem(last=False)[1])
        return listing

    def _resolve_dir(self, path: bytes) -> int:
        """Ref of directory *path*, which must have been added: the slow way, through
        the staged rows (a miss in the directory cache)."""
        self._flush()
        ref, is_dir = self._staged_root()
        walked = b""
        for name in path.split(b"/")[1:] if path != b"/" else []:
            walked += b"/" + name
            row = self._db.get_row(
                "SELECT ref, is_dir FROM temp.tw_paths WHERE parent_ref = ? AND name = ?",
                (ref, name),
            )
            if row is None and ref > 0:
                row = self._db.get_row(
                    "SELECT s.ref, s.is_dir FROM paths p JOIN temp.tw_seen s ON s.ref = p.id"
                    " WHERE p.parent_id = ? AND p.name = ?",
                    (ref, name),
                )
            if row is None:
                raise CatalogError(f"{walked!r} must be added before the paths inside it")
            ref, is_dir = row
        if not is_dir:
            raise CatalogError(f"{path!r} was added as a non-directory but has entries")
        self._dirs[path] = ref
        return int(ref)

    def _staged_root(self) -> tuple[int, int]:
        row = self._db.get_row("SELECT is_dir FROM temp.tw_seen WHERE ref = ?", (self._root_id,))
        if row is None:
            raise CatalogError("the root b'/' must be the first entry of a checkpoint")
        return self._root_id, int(row[0])

    # -- staging and committing ---------------------------------------------------------

    def _flush(self) -> None:
        """Write the staged batches to the TEMP tables (no lock on the real tables)."""
        if not (self._seen or self._paths or self._versions):
            return
        try:
            with self._db.transaction(immediate=False):
                self._db.executemany("INSERT INTO temp.tw_seen VALUES (?, ?, ?)", self._seen)
                self._db.executemany(
                    "INSERT INTO temp.tw_paths VALUES (?, ?, ?, ?, ?)", self._paths
                )
                self._db.executemany(
                    f"INSERT INTO temp.tw_versions VALUES ({', '.join(['?'] * 21)})",
                    self._versions,
                )
        except IndexConstraintError as exc:
            raise CatalogError(f"a path was added twice to checkpoint {self.name}") from exc
        self._seen.clear()
        self._paths.clear()
        self._versions.clear()
        self._staged = 0

    def finish(
        self, *, stats: dict[str, Any] | None = None, finished_ns: int | None = None
    ) -> CheckpointRow:
        """Commit the checkpoint and its tree in one transaction and close the writer."""
        self._check_open()
        self._flush()
        self._staged_root()
        started = time.perf_counter()
        db = self._db
        with db.transaction():
            last_seq = db.get_val("SELECT last_seq FROM plans WHERE id = ?", (self.plan_id,))
            if last_seq != self._base_seq:
                # Entries were compared with a tree that is no longer the newest one.
                raise CatalogError(
                    f"plan {self.plan_id} got checkpoint {last_seq} while {self.name} was staged"
                )
            params = {
                "plan": self.plan_id,
                "seq": self.seq,
                "prev": last_seq,
                "pb": db.last_id("paths"),
                "vb": db.last_id("versions"),
            }
            db.execute(_APPLY, params)
            self._insert_checkpoint(stats, finished_ns)
        log.debug(
            "checkpoint %s (seq %d): %r, committed in %.3f s",
            self.name,
            self.seq,
            self.counts,
            time.perf_counter() - started,
        )
        checkpoint = TreeCatalog(db).checkpoint_by_seq(self.plan_id, self.seq)
        self.close()
        assert checkpoint is not None
        return checkpoint

    def _insert_checkpoint(self, stats: dict[str, Any] | None, finished_ns: int | None) -> None:
        try:
            self._db.execute(
                "INSERT INTO checkpoints (plan_id, seq, name, created_ns, finished_ns, sources,"
                " stats) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    self.plan_id,
                    self.seq,
                    self.name,
                    self._created_ns,
                    finished_ns or time.time_ns(),
                    self._sources,
                    dump_json(stats or {}),
                ),
            )
        except IndexConstraintError as exc:
            raise CatalogError(f"checkpoint {self.name!r} exists already in the plan") from exc
        self._db.execute("UPDATE plans SET last_seq = ? WHERE id = ?", (self.seq, self.plan_id))

    def close(self) -> None:
        """Discard whatever was not committed by `finish` and release the connection."""
        if self._open:
            self._open = False
            self._db.close()

    def _check_open(self) -> None:
        if not self._open:
            raise CatalogError("this TreeWriter is finished or discarded")

    def __enter__(self) -> TreeWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _same(entry: Entry, prev: tuple[Any, ...]) -> bool:
    """Whether *entry* equals a previous version (VERSION_COLUMNS order) in everything
    but atime_ns and the hard-link group, which the caller compares."""
    return (
        entry.mtime_ns == prev[11]
        and entry.ctime_ns == prev[13]
        and entry.size == prev[10]
        and entry.ino == prev[14]
        and entry.blake3 == prev[22]
        and entry.chunks == prev[21]
        and (entry.type, entry.mode, entry.uid, entry.gid, entry.uname, entry.gname) == prev[4:10]
        and (entry.dev, entry.nlink, entry.rdev, entry.target, entry.xattrs) == prev[15:20]
    )


# The columns of tw_versions that come straight from an Entry, in order.
_ENTRY_ATTRS = attrgetter(
    "type", "mode", "uid", "gid", "uname", "gname", "size", "mtime_ns", "atime_ns", "ctime_ns",
    "ino", "dev", "nlink", "rdev", "target", "xattrs",
)  # fmt: skip


def _version_tuple(vref: int, ref: int, e: Entry, link: int | None) -> tuple[Any, ...]:
    """A tw_versions row for entry *e*."""
    return (vref, ref, *_ENTRY_ATTRS(e), link, e.chunks, e.blake3)
