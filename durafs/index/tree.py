# SPDX-License-Identifier: GPL-3.0-or-later
"""Plans, checkpoints and reading checkpoint trees (restore, ls, find, the FUSE tree).

A tree is addressed by (plan id, checkpoint seq). Every read here (but `deleted_paths`,
once per checkpoint) is one or a few indexed queries whose cost does not grow with the
number of files or checkpoints: the version of a path at a seq is the one with the
greatest ``first_seq <= seq``, found in the ``versions_path_seq`` index, and then checked
for not having ended before seq.
Committed trees never change (a new checkpoint only closes versions at the previous seq),
so a reader may combine answers of separate queries without a transaction.

A seq given to a tree read must be that of a committed checkpoint (from `checkpoints`);
the answer for any other seq is unspecified (past the newest it is the newest tree).
"""

from __future__ import annotations

import array
import json
import os
import time
from collections.abc import Iterator, Mapping
from typing import Any

import apsw

from durafs.errors import CatalogError, UsageError
from durafs.index.db import Index
from durafs.index.namematch import name_pattern
from durafs.index.rows import (
    VERSION_COLUMNS,
    CheckpointRow,
    ChunkRow,
    FilePiece,
    PlanRow,
    VersionRow,
    unpack_pieces,
)
from durafs.index.store import chunks_by_id

#: The checkpoint name that means "the newest one".
LATEST = "latest"

#: Rows fetched per query when a directory is listed page by page.
PAGE = 1000

# The id of the version of path {path} with the greatest first_seq <= :seq: one seek in
# versions_path_seq. It is valid at :seq unless it ended before (checked by _VALID).
_VERSION_ID = """(SELECT id FROM versions WHERE path_id = {path} AND first_seq <= :seq
                 ORDER BY first_seq DESC LIMIT 1)"""
_VALID = "(v.last_seq IS NULL OR v.last_seq >= :seq)"

# No JOINs in these hot queries: with the SQLite that APSW bundles (3.54), a lookup
# written as a join took ~40 us per call where these nested subqueries take ~4 us
# (measured; the difference is a per-execution, per-column cost, not the search).
_CHILD_ID = "(SELECT id FROM paths WHERE parent_id = :parent AND name = :name)"
_LOOKUP = f"""
    SELECT {VERSION_COLUMNS} FROM versions v
    WHERE v.id = {_VERSION_ID.format(path=_CHILD_ID)} AND {_VALID}"""

_VERSION_AT = f"""
    SELECT {VERSION_COLUMNS} FROM versions v
    WHERE v.id = {_VERSION_ID.format(path=":path")} AND {_VALID}"""

# The versions at :seq of the paths whose ids are bound as a carray.
_VERSIONS_AT = f"""
    SELECT {VERSION_COLUMNS} FROM versions v
    WHERE v.id IN (SELECT {_VERSION_ID.format(path="ids.value")} FROM carray(:ids) AS ids)
      AND {_VALID}"""

_CHILDREN = """
    SELECT id, name FROM paths WHERE parent_id = :dir AND name > :after
    ORDER BY name LIMIT :limit"""

_PLAN = """
    SELECT pl.id, pl.name, pl.config, pl.last_seq, pl.created_ns, p.id
    FROM plans pl JOIN paths p ON p.plan_id = pl.id AND p.parent_id IS NULL"""

_CHECKPOINT = """
    SELECT c.id, c.plan_id, pl.name, c.seq, c.name, c.created_ns, c.finished_ns, c.state,
           c.sources, c.stats
    FROM checkpoints c JOIN plans pl ON pl.id = c.plan_id"""

_PATH_OF = """
    WITH RECURSIVE up (id, parent_id, name, depth) AS (
        SELECT id, parent_id, name, 0 FROM paths WHERE id = ?
        UNION ALL
        SELECT p.id, p.parent_id, p.name, up.depth + 1 FROM paths p JOIN up ON p.id = up.parent_id
    )
    SELECT name FROM up ORDER BY depth DESC"""

# Paths of checkpoint :prev that the next checkpoint, :seq, does not have: their versions
# were closed at :prev and none starts at :seq. No index covers last_seq of closed versions,
# so this one reads every version row (measured: 0.1 s per million rows, cached): it runs
# once per checkpoint, for its catalog volume, never per path.
_DELETED = """
    SELECT v.path_id FROM versions v
    WHERE v.plan_id = :plan AND v.last_seq = :prev AND NOT EXISTS (
        SELECT 1 FROM versions n WHERE n.path_id = v.path_id AND n.first_seq = :seq)"""

# The versions of the paths whose names match :pattern (of plan :plan, or of every plan):
# one row per version, however many checkpoints it is in (`find` expands them).
_FIND = """
    SELECT p.plan_id, p.id, p.name, n.name, v.first_seq, v.last_seq FROM path_names n
    JOIN paths p ON p.id = n.rowid
    JOIN versions v ON v.path_id = p.id
    WHERE n.name GLOB :pattern
      AND (:plan IS NULL OR p.plan_id = (SELECT id FROM plans WHERE name = :plan))
    ORDER BY p.id, v.first_seq"""


def _in_checkpoints(
    versions: dict[int, list[tuple[int, int, int | None]]], checkpoints: list[CheckpointRow],
) -> Iterator[tuple[CheckpointRow, list[int]]]:
    """Each of *checkpoints* (by plan and seq) with the path ids, in order, of the
    *versions* ((first_seq, path id, last_seq or None) by plan id) it holds. One sweep per
    plan: a version joins at its first checkpoint and leaves after its last, so the work
    is what is given out, not checkpoints times versions."""
    pending = {plan_id: sorted(rows, reverse=True) for plan_id, rows in versions.items()}
    live: dict[int, dict[int, int | None]] = {plan_id: {} for plan_id in versions}
    for checkpoint in checkpoints:
        rows, here = pending.get(checkpoint.plan_id), live.get(checkpoint.plan_id)
        if rows is None or here is None:
            continue
        while rows and rows[-1][0] <= checkpoint.seq:
            _first, path_id, last = rows.pop()
            here[path_id] = last
        for path_id in [p for p, last in here.items() if last is not None
                        and last < checkpoint.seq]:
            del here[path_id]
        if here:
            yield checkpoint, sorted(here)


def dump_json(value: Any) -> str:
    """Compact, stable JSON for the index's JSON columns (ASCII: any str survives)."""
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


def plan_row(row: tuple[Any, ...]) -> PlanRow:
    return PlanRow(row[0], row[1], json.loads(row[2]), row[3], row[4], row[5])


def checkpoint_row(row: tuple[Any, ...]) -> CheckpointRow:
    id_, plan_id, plan, seq, name, created_ns, finished_ns, state, sources, stats = row
    return CheckpointRow(
        id_, plan_id, plan, seq, name, created_ns, finished_ns, state,
        json.loads(sources), json.loads(stats),
    )  # fmt: skip


def join_path(parent: bytes, name: bytes) -> bytes:
    """Path of *name* inside directory *parent* (both absolute bytes paths)."""
    return parent + name if parent == b"/" else parent + b"/" + name


def split_path(path: bytes) -> list[bytes]:
    """Components of an absolute, normalised path; ``b"/"`` has none."""
    if not path.startswith(b"/") or b"\0" in path:
        raise UsageError(f"{os.fsdecode(path)}: not an absolute path")
    parts = path.split(b"/")[1:]
    if parts == [b""]:
        return []
    if any(part in (b"", b".", b"..") for part in parts):
        raise UsageError(
            f"{os.fsdecode(path)}: not a normalised path (no empty, '.' or '..' components)")
    return parts


class TreeCatalog:
    """Plans, checkpoints and tree reads over one `Index` connection."""

    def __init__(self, db: Index) -> None:
        self.db = db

    # -- plans ----------------------------------------------------------------------

    def ensure_plan(self, name: str, config: Mapping[str, Any] | None = None) -> PlanRow:
        """Return plan *name*, creating it (with its root path) if needed.

        A *config* that differs from the stored one replaces it.
        """
        with self.db.transaction():
            plan = self.plan(name)
            if plan is None:
                self._create_plan(name, config or {})
            elif config is not None and dict(config) != plan.config:
                self.db.execute(
                    "UPDATE plans SET config = ? WHERE id = ?", (dump_json(config), plan.id)
                )
            plan = self.plan(name)
        assert plan is not None
        return plan

    def _create_plan(self, name: str, config: Mapping[str, Any]) -> None:
        if not name or "/" in name or name in (".", ".."):
            raise UsageError(f"{name!r} cannot be a plan name (it is a directory name)")
        self.db.execute(
            "INSERT INTO plans (name, config, created_ns) VALUES (?, ?, ?)",
            (name, dump_json(config), time.time_ns()),
        )
        plan_id = self.db.conn.last_insert_rowid()
        self.db.execute(
            "INSERT INTO paths (plan_id, parent_id, name) VALUES (?, NULL, x'')", (plan_id,)
        )
        root_id = self.db.conn.last_insert_rowid()
        self.db.execute("INSERT INTO path_names (rowid, name) VALUES (?, '')", (root_id,))

    def drop_unused_plan(self, plan_id: int) -> None:
        """Forget a plan that never got a checkpoint (one a dry run created to look
        around in), so that it leaves no trace; a plan with any history stays."""
        with self.db.transaction():
            if self.db.get_val("SELECT last_seq FROM plans WHERE id = ?", (plan_id,)) != 0:
                return
            if self.db.get_val("SELECT count(*) FROM paths WHERE plan_id = ?", (plan_id,)) > 1:
                return
            root = self.root_id(plan_id)
            self.db.execute("DELETE FROM path_names WHERE rowid = ?", (root,))
            self.db.execute("DELETE FROM paths WHERE id = ?", (root,))
            self.db.execute("DELETE FROM plans WHERE id = ?", (plan_id,))

    def plan(self, name: str) -> PlanRow | None:
        row = self.db.get_row(f"{_PLAN} WHERE pl.name = ?", (name,))
        return plan_row(row) if row else None

    def plan_by_id(self, plan_id: int) -> PlanRow | None:
        row = self.db.get_row(f"{_PLAN} WHERE pl.id = ?", (plan_id,))
        return plan_row(row) if row else None

    def plans(self) -> list[PlanRow]:
        return [plan_row(row) for row in self.db.query(f"{_PLAN} ORDER BY pl.name")]

    def next_seq(self, plan_id: int) -> int:
        """The seq the plan's next checkpoint gets (never one used before)."""
        return int(self.db.get_val("SELECT last_seq + 1 FROM plans WHERE id = ?", (plan_id,)))

    # -- checkpoints ----------------------------------------------------------------

    def checkpoints(self, plan: str | None = None) -> list[CheckpointRow]:
        """Complete checkpoints, of *plan* or of all plans, by plan name and seq."""
        rows = self.db.query(
            f"{_CHECKPOINT} WHERE ? IS NULL OR pl.name = ? ORDER BY pl.name, c.seq",
            (plan, plan),
        )
        return [checkpoint_row(row) for row in rows]

    def checkpoint(self, plan: str, name: str) -> CheckpointRow | None:
        """Checkpoint *name* of *plan*; `LATEST` ("latest") is the newest one."""
        if name == LATEST:
            sql = f"{_CHECKPOINT} WHERE pl.name = ? ORDER BY c.seq DESC LIMIT 1"
            row = self.db.get_row(sql, (plan,))
        else:
            row = self.db.get_row(f"{_CHECKPOINT} WHERE pl.name = ? AND c.name = ?", (plan, name))
        return checkpoint_row(row) if row else None

    def checkpoint_by_seq(self, plan_id: int, seq: int) -> CheckpointRow | None:
        row = self.db.get_row(f"{_CHECKPOINT} WHERE c.plan_id = ? AND c.seq = ?", (plan_id, seq))
        return checkpoint_row(row) if row else None

    # -- trees ----------------------------------------------------------------------

    def root_id(self, plan_id: int) -> int:
        """Id of the plan's root path ("/")."""
        row = self.db.get_row(
            "SELECT id FROM paths WHERE plan_id = ? AND parent_id IS NULL", (plan_id,)
        )
        if row is None:
            raise CatalogError(f"plan {plan_id} has no root path")
        return int(row[0])

    def version(self, version_id: int) -> VersionRow | None:
        """The version with id *version_id* (what a mount's inode numbers come from)."""
        row = self.db.get_row(
            f"SELECT {VERSION_COLUMNS} FROM versions v WHERE v.id = ?", (version_id,)
        )
        return VersionRow(*row) if row else None

    def version_at(self, path_id: int, seq: int) -> VersionRow | None:
        """The version of path *path_id* in checkpoint *seq*, or None if it was not there."""
        row = self.db.get_row(_VERSION_AT, {"path": path_id, "seq": seq})
        return VersionRow(*row) if row else None

    def lookup(self, plan_id: int, seq: int, parent_id: int, name: bytes) -> VersionRow | None:
        """The version of *name* in directory *parent_id* at checkpoint *seq*, or None.

        Path ids belong to one plan, so *plan_id* is implied by *parent_id*; every tree
        read takes it so that a tree is always addressed the same way.
        """
        row = self.db.get_row(_LOOKUP, {"seq": seq, "parent": parent_id, "name": name})
        return VersionRow(*row) if row else None

    def listdir(
        self, plan_id: int, seq: int, path_id: int, *, after: bytes = b"", limit: int = -1
    ) -> list[tuple[bytes, VersionRow]]:
        """Entries of directory *path_id* at *seq*, sorted by name (bytewise).

        Only names greater than *after* are listed, at most *limit* (-1: all), so a caller
        can page through a huge directory with the last name it got.
        """
        if limit < 0:
            return self._page(seq, path_id, after, -1)[0]
        entries: list[tuple[bytes, VersionRow]] = []
        resume: bytes | None = after
        while resume is not None and len(entries) < limit:
            page, resume = self._page(seq, path_id, resume, limit - len(entries))
            entries += page
        return entries

    def iterdir(
        self, plan_id: int, seq: int, path_id: int, *, after: bytes = b"", page: int = PAGE
    ) -> Iterator[tuple[bytes, VersionRow]]:
        """Like `listdir`, one page of at most *page* paths per query, holding no cursor
        open between pages (so a slow consumer never pins an old snapshot)."""
        resume: bytes | None = after
        while resume is not None:
            entries, resume = self._page(seq, path_id, resume, page)
            yield from entries

    def _page(
        self, seq: int, dir_id: int, after: bytes, limit: int
    ) -> tuple[list[tuple[bytes, VersionRow]], bytes | None]:
        """Up to *limit* child paths of *dir_id* after *after*, as entries at *seq*, and the
        name to resume after (None at the end). A path row need not have a version at
        *seq* (deleted, or not yet created), so a page may hold fewer entries."""
        params = {"dir": dir_id, "after": after, "limit": limit}
        children = self.db.query(_CHILDREN, params)
        versions = self._versions_at([path_id for path_id, _ in children], seq)
        entries = [(name, versions[pid]) for pid, name in children if pid in versions]
        resume = children[-1][1] if children and len(children) == limit else None
        return entries, resume

    def _versions_at(self, path_ids: list[int], seq: int) -> dict[int, VersionRow]:
        if not path_ids:
            return {}
        ids = apsw.carray(array.array("q", path_ids))
        rows = self.db.query(_VERSIONS_AT, {"ids": ids, "seq": seq})
        return {row[1]: VersionRow(*row) for row in rows}

    def resolve(self, plan_id: int, seq: int, path: bytes) -> VersionRow | None:
        """The version of absolute *path* at *seq*, or None if it was not there."""
        version = self.version_at(self.root_id(plan_id), seq)
        for name in split_path(path):
            if version is None or version.type != "d":
                return None
            version = self.lookup(plan_id, seq, version.path_id, name)
        return version

    def walk(self, plan_id: int, seq: int, path_id: int) -> Iterator[tuple[bytes, VersionRow]]:
        """Path *path_id* and everything below it at *seq*: depth first, parents first,
        siblings in name order, each as (absolute path, version)."""
        top = self.version_at(path_id, seq)
        if top is None:
            return
        stack = [(self.path_of(path_id), top)]
        while stack:
            path, version = stack.pop()
            yield path, version
            if version.type == "d":
                children = self.listdir(plan_id, seq, version.path_id)
                stack.extend((join_path(path, name), v) for name, v in reversed(children))

    def deleted_paths(self, plan_id: int, prev_seq: int, seq: int) -> list[bytes]:
        """The paths of checkpoint *prev_seq* that checkpoint *seq*, the plan's next one,
        does not have, sorted. Unlike the other reads this scans the versions table (see
        _DELETED): for catalog volumes, once per checkpoint."""
        rows = self.db.query(_DELETED, {"plan": plan_id, "prev": prev_seq, "seq": seq})
        return sorted(self.path_of(row[0]) for row in rows)

    def path_of(self, path_id: int) -> bytes:
        """The absolute path of path row *path_id*."""
        names = [row[0] for row in self.db.query(_PATH_OF, (path_id,))]
        if not names:
            raise CatalogError(f"no path with id {path_id}")
        return b"/" + b"/".join(names[1:])

    def file_chunks(self, version: VersionRow) -> list[FilePiece]:
        """Where the content of file *version* is: its pieces in file order."""
        pieces = unpack_pieces(version.chunks)
        found: dict[int, ChunkRow] = chunks_by_id(self.db, [p[1] for p in pieces])
        try:
            return [FilePiece(off, found[cid], size) for off, cid, size in pieces]
        except KeyError as exc:
            raise CatalogError(f"version {version.id} refers to missing chunk {exc}") from exc

    def hardlink_group(self, hardlink_id: int, seq: int) -> list[VersionRow]:
        """Every version of hard-link group *hardlink_id* valid at *seq*, first member first.

        The group's size is what a mount reports as st_nlink for each member.
        """
        rows = self.db.query(
            f"""SELECT {VERSION_COLUMNS} FROM versions v WHERE v.hardlink_id = :hl
                AND v.first_seq <= :seq AND (v.last_seq IS NULL OR v.last_seq >= :seq)
                ORDER BY v.id = :hl DESC, v.id""",
            {"hl": hardlink_id, "seq": seq},
        )
        return [VersionRow(*row) for row in rows]

    # -- search ---------------------------------------------------------------------

    def find(self, pattern: str, plan: str | None = None) -> Iterator[tuple[str, str, bytes]]:
        """(plan, checkpoint name, absolute path) for every name matching *pattern*.

        A pattern with ``*``, ``?`` or ``[`` is a case-sensitive glob over the whole name
        (``*.jpg``); anything else matches as a case-sensitive substring. Each checkpoint
        a matching path is in gives one result, by plan, checkpoint and path id. A byte
        of a name that is not UTF-8 (a lone surrogate in *pattern*) matches only itself
        (see `durafs.index.namematch`).
        """
        match = name_pattern(pattern)
        # versions, not (path, checkpoint) pairs, are read: memory grows with the paths
        # found, not with the lines given (a path unchanged in 1000 checkpoints is 1 row)
        found: dict[int, list[tuple[int, int, int | None]]] = {}
        for plan_id, path_id, name, text, first, last in self.db.query(
            _FIND, {"pattern": match.glob, "plan": plan}
        ):
            if match.matches(name, text):
                found.setdefault(plan_id, []).append((first, path_id, last))
        paths: dict[int, bytes] = {}
        for checkpoint, path_ids in _in_checkpoints(found, self.checkpoints(plan)):
            for path_id in path_ids:
                if path_id not in paths:
                    paths[path_id] = self.path_of(path_id)
                yield checkpoint.plan, checkpoint.name, paths[path_id]
