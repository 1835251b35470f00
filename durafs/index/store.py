# SPDX-License-Identifier: GPL-3.0-or-later
"""Where data is: meta facts, pools, media, volumes and chunk locations.

Single-row writes here are atomic on their own; a caller that writes a volume and its
chunks wraps both in ``index.transaction()`` so a crash never leaves chunks pointing at
a volume the index does not know (or a volume without its chunks).
"""

from __future__ import annotations

import array
import json
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import apsw

from durafs.errors import CatalogError, UsageError
from durafs.index.db import Index, IndexConstraintError
from durafs.index.rows import ChunkRow, MediumRow, NewChunk, PoolRow, VolumeRow

_POOL = "SELECT id, name, kind, config, volume_size, created_ns FROM pools"

_MEDIUM = """
    SELECT m.id, m.pool_id, p.name, m.uuid, m.label, m.kind, m.path, m.location, m.capacity,
           m.used, m.state, m.last_seen_ns, m.created_ns
    FROM media m JOIN pools p ON p.id = m.pool_id"""

_VOLUME = """
    SELECT v.id, v.medium_id, v.uuid, v.kind, v.seq, v.name, v.plain_size, v.stored_size,
           v.tape_file, v.tape_block, v.created_ns
    FROM volumes v"""

_CHUNK = """
    SELECT c.id, c.pool_id, c.cid, c.volume_id, c.offset, c.length, c.size, c.raw,
           (SELECT medium_id FROM volumes WHERE id = c.volume_id), c.fpos
    FROM chunks c"""

# Id lists are bound with carray as one value: one statement however many ids, each id
# one index probe. (No JOIN: see durafs.index.tree on what a join costs per execution.)
_CHUNKS_BY_CID = f"{_CHUNK} WHERE c.pool_id = ? AND c.cid IN carray(?)"
# The same, without the chunks of lost volumes or found damaged (a backup stores those
# again).
_USABLE_CHUNKS_BY_CID = (f"{_CHUNKS_BY_CID} AND c.volume_id NOT IN"
                         " (SELECT volume_id FROM lost_volumes)"
                         " AND c.id NOT IN (SELECT chunk_id FROM damaged_chunks)")
_CHUNKS_BY_ID = f"{_CHUNK} WHERE c.id IN carray(?)"
_CHUNK_BY_ID = f"{_CHUNK} WHERE c.id = ?"
# One seek in chunks_volume (its entries are ordered by volume, then id).
_CHUNKS_AFTER = f"{_CHUNK} WHERE c.volume_id = ? AND c.id > ? ORDER BY c.id LIMIT ?"

#: Columns of `media` that `update_medium` may change.
MEDIUM_FIELDS = frozenset({"used", "state", "path", "location", "capacity", "last_seen_ns"})

#: The catalog's facts (table ``meta``) that are fixed once the index exists.
FIXED_META = frozenset({"catalog_id", "created_ns"})


def _pool_row(row: tuple[Any, ...]) -> PoolRow:
    return PoolRow(row[0], row[1], row[2], json.loads(row[3]), row[4], row[5])


def _chunk_row(row: tuple[Any, ...]) -> ChunkRow:
    id_, pool_id, cid, volume_id, offset, length, size, raw, medium_id, fpos = row
    return ChunkRow(id_, pool_id, cid, volume_id, offset, length, size, bool(raw), medium_id,
                    fpos)


def chunks_by_id(db: Index, ids: Sequence[int]) -> dict[int, ChunkRow]:
    """Chunk rows by chunks.id, with their media; unknown ids are left out."""
    if not ids:
        return {}
    if len(ids) == 1:  # most files are one chunk: binding a plain id costs half a carray
        row = db.get_row(_CHUNK_BY_ID, (ids[0],))
        return {row[0]: _chunk_row(row)} if row else {}
    rows = db.query(_CHUNKS_BY_ID, (apsw.carray(array.array("q", ids)),))
    return {row[0]: _chunk_row(row) for row in rows}


def chunks_after(db: Index, volume_id: int, after_id: int, limit: int) -> list[ChunkRow]:
    """Up to *limit* chunks of volume *volume_id* recorded after chunk *after_id*, by id.

    A volume's chunks are recorded in the order they were written, so this is also
    their order in the volume: what a reader of small files in backup order wants next.
    """
    rows = db.query(_CHUNKS_AFTER, (volume_id, after_id, limit))
    return [_chunk_row(row) for row in rows]


class StoreCatalog:
    """Meta facts, pools, media, volumes and chunks over one `Index` connection."""

    def __init__(self, db: Index) -> None:
        self.db = db

    # -- meta -----------------------------------------------------------------------

    def get_meta(self, key: str, default: Any = None) -> Any:
        row = self.db.get_row("SELECT value FROM meta WHERE key = ?", (key,))
        return row[0] if row else default

    def set_meta(self, key: str, value: str | int) -> None:
        """Set a fact about the catalog; catalog_id and created_ns never change."""
        if key in FIXED_META:
            raise UsageError(f"meta {key!r} is fixed when the index is created")
        self.db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    @property
    def catalog_id(self) -> str:
        return str(self.get_meta("catalog_id"))

    # -- pools ----------------------------------------------------------------------

    def add_pool(
        self,
        name: str,
        kind: str,
        *,
        volume_size: int,
        config: Mapping[str, Any] | None = None,
        created_ns: int | None = None,
    ) -> PoolRow:
        """Add a pool; a duplicate name is a `UsageError`."""
        params = (name, kind, json.dumps(config or {}), volume_size, created_ns or time.time_ns())
        try:
            self.db.execute(
                "INSERT INTO pools (name, kind, config, volume_size, created_ns)"
                " VALUES (?, ?, ?, ?, ?)",
                params,
            )
        except IndexConstraintError as exc:
            if self.pool(name) is not None:
                raise UsageError(f"a pool named {name!r} exists already") from exc
            raise UsageError(f"bad pool {name!r} (kind {kind!r}, size {volume_size})") from exc
        return self._pool_by_id(self.db.conn.last_insert_rowid())

    def set_volume_size(self, pool_id: int, volume_size: int) -> None:
        """The target size of the pool's next data volumes."""
        self.db.execute("UPDATE pools SET volume_size = ? WHERE id = ?", (volume_size, pool_id))

    def pool(self, name: str) -> PoolRow | None:
        row = self.db.get_row(f"{_POOL} WHERE name = ?", (name,))
        return _pool_row(row) if row else None

    def _pool_by_id(self, pool_id: int) -> PoolRow:
        row = self.db.get_row(f"{_POOL} WHERE id = ?", (pool_id,))
        if row is None:
            raise CatalogError(f"no pool with id {pool_id}")
        return _pool_row(row)

    def pools(self) -> list[PoolRow]:
        return [_pool_row(row) for row in self.db.query(f"{_POOL} ORDER BY name")]

    # -- media ----------------------------------------------------------------------

    def add_medium(
        self,
        pool_id: int,
        *,
        uuid: str,
        label: str,
        path: str | None = None,
        location: str = "",
        capacity: int | None = None,
        created_ns: int | None = None,
    ) -> MediumRow:
        """Record a newly labelled medium of pool *pool_id* (kind = the pool's kind)."""
        pool = self._pool_by_id(pool_id)
        try:
            self.db.execute(
                "INSERT INTO media (pool_id, uuid, label, kind, path, location, capacity,"
                " created_ns) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    pool_id,
                    uuid,
                    label,
                    pool.kind,
                    path,
                    location,
                    capacity,
                    created_ns or time.time_ns(),
                ),
            )
        except IndexConstraintError as exc:
            raise UsageError(self._medium_clash(uuid, label)) from exc
        return self._one_medium("m.id = ?", self.db.conn.last_insert_rowid())

    def _medium_clash(self, uuid: str, label: str) -> str:
        """Why a medium could not be recorded: which one already holds its id or label."""
        for known, what in ((self.medium_by_uuid(uuid), "id"),
                            (self.medium_by_label(label), "label")):
            if known is not None:
                seen = f", last seen at {known.path}" if known.path else ""
                return (f"medium {label!r} ({uuid}): its {what} is already that of medium "
                        f"{known.label} ({known.uuid}) of pool {known.pool}{seen}")
        return f"medium {label!r} ({uuid}): not a valid medium record"

    def medium(self, medium_id: int) -> MediumRow | None:
        return self._medium_where("m.id = ?", medium_id)

    def medium_by_label(self, label: str) -> MediumRow | None:
        return self._medium_where("m.label = ?", label)

    def medium_by_uuid(self, uuid: str) -> MediumRow | None:
        return self._medium_where("m.uuid = ?", uuid)

    def media(self, pool_id: int | None = None) -> list[MediumRow]:
        """Media of pool *pool_id* (or all), by pool name and label."""
        rows = self.db.query(
            f"{_MEDIUM} WHERE ? IS NULL OR m.pool_id = ? ORDER BY p.name, m.label",
            (pool_id, pool_id),
        )
        return [MediumRow(*row) for row in rows]

    def update_medium(self, medium_id: int, **fields: Any) -> MediumRow:
        """Change some of `MEDIUM_FIELDS` of a medium; return the updated row."""
        unknown = set(fields) - MEDIUM_FIELDS
        if unknown:
            raise UsageError(f"cannot update medium fields {sorted(unknown)}")
        if fields:
            # Column names come from MEDIUM_FIELDS only, never from outside.
            assignments = ", ".join(f"{name} = ?" for name in fields)
            try:
                changed = self.db.execute(
                    f"UPDATE media SET {assignments} WHERE id = ?", (*fields.values(), medium_id)
                )
            except IndexConstraintError as exc:
                raise UsageError(f"invalid medium update {fields!r}") from exc
            if not changed:
                raise CatalogError(f"no medium with id {medium_id}")
        return self._one_medium("m.id = ?", medium_id)

    def _medium_where(self, condition: str, value: Any) -> MediumRow | None:
        row = self.db.get_row(f"{_MEDIUM} WHERE {condition}", (value,))
        return MediumRow(*row) if row else None

    def _one_medium(self, condition: str, value: Any) -> MediumRow:
        medium = self._medium_where(condition, value)
        if medium is None:
            raise CatalogError(f"no medium with {condition.replace('?', repr(value))}")
        return medium

    # -- volumes --------------------------------------------------------------------

    def add_volume(
        self,
        medium_id: int,
        *,
        uuid: str,
        kind: str,
        seq: int,
        name: str | None,
        plain_size: int,
        stored_size: int,
        tape_file: int | None = None,
        tape_block: int | None = None,
        created_ns: int | None = None,
    ) -> VolumeRow:
        """Record a volume that is now safely on medium *medium_id*."""
        params = (
            medium_id,
            uuid,
            kind,
            seq,
            name,
            plain_size,
            stored_size,
            tape_file,
            tape_block,
            created_ns or time.time_ns(),
        )
        try:
            self.db.execute(
                "INSERT INTO volumes (medium_id, uuid, kind, seq, name, plain_size,"
                " stored_size, tape_file, tape_block, created_ns)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                params,
            )
        except IndexConstraintError as exc:
            raise CatalogError(f"cannot record volume {uuid} (seq {seq}): {exc}") from exc
        volume = self.volume(self.db.conn.last_insert_rowid())
        assert volume is not None
        return volume

    def volume(self, volume_id: int) -> VolumeRow | None:
        row = self.db.get_row(f"{_VOLUME} WHERE v.id = ?", (volume_id,))
        return VolumeRow(*row) if row else None

    def volume_by_uuid(self, uuid: str) -> VolumeRow | None:
        row = self.db.get_row(f"{_VOLUME} WHERE v.uuid = ?", (uuid,))
        return VolumeRow(*row) if row else None

    def volumes(
        self, *, medium_id: int | None = None, pool_id: int | None = None, kind: str | None = None
    ) -> list[VolumeRow]:
        """Volumes matching every filter given, by medium and seq."""
        rows = self.db.query(
            f"""{_VOLUME} JOIN media m ON m.id = v.medium_id
                WHERE (:medium IS NULL OR v.medium_id = :medium)
                  AND (:pool IS NULL OR m.pool_id = :pool)
                  AND (:kind IS NULL OR v.kind = :kind)
                ORDER BY v.medium_id, v.seq""",
            {"medium": medium_id, "pool": pool_id, "kind": kind},
        )
        return [VolumeRow(*row) for row in rows]

    def next_volume_seq(self, medium_id: int) -> int:
        """The seq the next volume written to *medium_id* gets."""
        return int(
            self.db.get_val(
                "SELECT coalesce(max(seq), 0) + 1 FROM volumes WHERE medium_id = ?", (medium_id,)
            )
        )

    # -- chunks ---------------------------------------------------------------------

    def has_chunks(self, pool_id: int) -> bool:
        """Whether pool *pool_id* stores any chunk at all."""
        row = self.db.get_row("SELECT 1 FROM chunks WHERE pool_id = ? LIMIT 1", (pool_id,))
        return row is not None

    def lookup_chunks(
        self, pool_id: int, cids: Sequence[bytes], *, usable: bool = False,
    ) -> dict[bytes, ChunkRow]:
        """The chunks of *cids* already stored in pool *pool_id* (the dedup check, with
        *usable*: then those in lost volumes or found damaged are left out, to be stored
        again).

        One indexed probe per id in a single statement: 100 000 ids take a fraction of a
        second.
        """
        if not cids:
            return {}
        sql = _USABLE_CHUNKS_BY_CID if usable else _CHUNKS_BY_CID
        rows = self.db.query(sql, (pool_id, apsw.carray(tuple(cids))))
        return {row[2]: _chunk_row(row) for row in rows}

    def add_chunks(
        self, pool_id: int, volume_id: int, chunks: Iterable[NewChunk]
    ) -> dict[bytes, int]:
        """Record the chunks of volume *volume_id*; return chunks.id for every cid given.

        A cid the pool has already keeps its first location (and its id is returned),
        unless that is in a lost volume or found damaged: then its row moves here
        (`_move_lost`).
        """
        chunks = list(chunks)
        with self.db.transaction():
            self._check_volume_pool(volume_id, pool_id)
            known = self.lookup_chunks(pool_id, [c.cid for c in chunks])
            ids = {cid: row.id for cid, row in known.items()}
            self._move_lost(volume_id, known, chunks)
            # Ids are assigned here rather than read back one by one (single writer,
            # inside the write transaction, above every id AUTOINCREMENT gave out).
            next_id = self.db.last_id("chunks")
            rows = []
            for c in chunks:
                if c.cid not in ids:
                    next_id += 1
                    ids[c.cid] = next_id
                    rows.append(
                        (next_id, pool_id, c.cid, volume_id, c.offset, c.length, c.size,
                         int(c.raw), c.fpos)
                    )
            self.db.executemany(
                "INSERT INTO chunks (id, pool_id, cid, volume_id, offset, length, size, raw,"
                " fpos) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
        return ids

    def _move_lost(
        self, volume_id: int, known: dict[bytes, ChunkRow], chunks: list[NewChunk],
    ) -> None:
        """Point the rows of *known* chunks that are in lost volumes or found damaged at
        their new copies in *volume_id*: every checkpoint using them reads those from now
        on. A lost volume stays recorded, chunks or not: its seq is never given again."""
        lost = self.lost_volume_ids()
        if volume_id in lost:  # a stand-in for lost chunks (recover) takes none over
            return
        damaged = self.damaged_chunk_ids([row.id for row in known.values()])
        moved = [(volume_id, c.offset, c.length, int(c.raw), c.fpos, known[c.cid].id)
                 for c in chunks if c.cid in known
                 and (known[c.cid].volume_id in lost or known[c.cid].id in damaged)]
        self.db.executemany(
            "UPDATE chunks SET volume_id = ?, offset = ?, length = ?, raw = ?, fpos = ?"
            " WHERE id = ?",
            moved)
        self.set_chunks_damaged([row[-1] for row in moved], False)  # sound copies now

    def lost_volume_ids(self) -> set[int]:
        """The volumes found missing from their media (table ``lost_volumes``)."""
        return {row[0] for row in self.db.query("SELECT volume_id FROM lost_volumes")}

    def set_volume_lost(self, volume_id: int, lost: bool) -> None:
        """Record that volume *volume_id* is missing from its medium, or is there again."""
        if lost:
            self.db.execute(
                "INSERT OR IGNORE INTO lost_volumes (volume_id, since_ns) VALUES (?, ?)",
                (volume_id, time.time_ns()))
        else:
            self.db.execute("DELETE FROM lost_volumes WHERE volume_id = ?", (volume_id,))

    def volume_has_chunks(self, volume_id: int) -> bool:
        """Whether any chunk row is in volume *volume_id*."""
        return self.db.get_row(
            "SELECT 1 FROM chunks WHERE volume_id = ? LIMIT 1", (volume_id,)) is not None

    def lost_chunk_ids(self, pool_id: int) -> set[int]:
        """chunks.id of pool *pool_id*'s chunks in lost volumes or found damaged (a backup
        reads again the files using them, so their chunks are stored again)."""
        return {row[0] for row in self.db.query(
            "SELECT c.id FROM chunks c JOIN lost_volumes l ON l.volume_id = c.volume_id"
            " WHERE c.pool_id = ? UNION SELECT c.id FROM chunks c JOIN damaged_chunks d"
            " ON d.chunk_id = c.id WHERE c.pool_id = ?", (pool_id, pool_id))}

    def damaged_chunk_ids(self, among: Sequence[int] | None = None) -> set[int]:
        """The chunks found damaged (table ``damaged_chunks``), or those of *among*."""
        if among is None:
            return {row[0] for row in self.db.query("SELECT chunk_id FROM damaged_chunks")}
        if not among:
            return set()
        return {row[0] for row in self.db.query(
            "SELECT chunk_id FROM damaged_chunks WHERE chunk_id IN carray(?)",
            (apsw.carray(array.array("q", among)),))}

    def note_damaged(self, found: Iterable[tuple[int, int]]) -> None:
        """Record the chunks of *found* (chunk id, volume id) as damaged, each only if its
        row still points into that volume (a backup may have moved it to a new copy)."""
        now = time.time_ns()
        self.db.executemany(
            "INSERT OR IGNORE INTO damaged_chunks (chunk_id, since_ns)"
            " SELECT id, ? FROM chunks WHERE id = ? AND volume_id = ?",
            [(now, chunk_id, volume_id) for chunk_id, volume_id in found])

    def set_chunks_damaged(self, chunk_ids: Iterable[int], damaged: bool) -> None:
        """Record that the chunks of *chunk_ids* were found damaged, or sound again."""
        if damaged:
            now = time.time_ns()
            self.db.executemany(
                "INSERT OR IGNORE INTO damaged_chunks (chunk_id, since_ns) VALUES (?, ?)",
                [(i, now) for i in chunk_ids])
        else:
            self.db.executemany("DELETE FROM damaged_chunks WHERE chunk_id = ?",
                                [(i,) for i in chunk_ids])

    def _check_volume_pool(self, volume_id: int, pool_id: int) -> None:
        row = self.db.get_row(
            "SELECT m.pool_id FROM volumes v JOIN media m ON m.id = v.medium_id WHERE v.id = ?",
            (volume_id,),
        )
        if row is None:
            raise CatalogError(f"no volume with id {volume_id}")
        if row[0] != pool_id:
            raise CatalogError(f"volume {volume_id} is not in pool {pool_id}")

    def chunk_by_rowid(self, ids: Iterable[int]) -> dict[int, ChunkRow]:
        """Chunk rows by chunks.id (as packed in versions.chunks); unknown ids left out."""
        return chunks_by_id(self.db, list(ids))
