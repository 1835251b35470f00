"""The catalog volume's tree, spooled while a backup walks (docs/FORMAT.md §4).

The backup already has every entry in walk order, so the tree lines are written as the
entries are recorded instead of re-reading the whole checkpoint from the index afterwards.
Files read by this run come with their chunk ids; the chunk row ids of unchanged files are
turned into chunk ids a batch at a time (one query per BATCH entries). Lines are compressed
in large blocks.

Most checkpoints change little, so the spool is usually a delta (`find_base` decides when
it is created, before any entry): it then keeps only the entries the TreeWriter gives a new
version, and an unchanged entry costs nothing here. The paths deleted since the base come
from the index when the volume is written (`catalogvol.write_catalog_volume`), which also
falls back to the full tree from the index when the delta cannot be used after all.
Problems of the walk do not make a delta unsafe: both what changed (the TreeWriter) and
what went (the index) are the index's own view, so a path left out for a problem is just
one more deleted path.
"""

from __future__ import annotations

import base64
import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from typing import IO

import zstandard

from durafs.format.catalog import (
    CHECKPOINT_MEMBER,
    TREE_MEMBER,
    CheckpointRecord,
    write_deleted,
)
from durafs.format.header import json_str
from durafs.format.writer import VolumeWriter
from durafs.index.catalog import Catalog
from durafs.index.rows import CheckpointRow, Entry, VolumeRow, unpack_pieces, unpack_xattrs
from durafs.serial import SerialWorker

BATCH = 2000
#: A file's chunk as the backup knows it: (offset in the file, chunk id, size).
ChunkPiece = tuple[int, bytes, int]
#: At most this many deltas follow a full catalog volume. A lost or damaged catalog volume
#: takes the checkpoints of the deltas after it (until the next full one) out of reach of
#: `durafs recover`, and rebuilding a tree reads the whole chain: this bounds both, for
#: about one full tree's size every MAX_DELTAS checkpoints.
MAX_DELTAS = 16

#: meta key recording which catalog volume holds a checkpoint in a pool.
META_KEY = "catalog_volume:{pool}:{checkpoint}"
#: meta key recording a catalog volume's depth: 0 for a full tree, else deltas since one.
DEPTH_KEY = "catalog_depth:{volume}"


@dataclass(frozen=True)
class Base:
    """The catalog volume a delta builds on: *checkpoint*'s, at *depth* in its chain."""

    checkpoint: CheckpointRow
    volume: VolumeRow
    depth: int


def catalog_volume_in_use(catalog: Catalog, volume_uuid: str) -> bool:
    """Whether the index names catalog volume *volume_uuid* as some checkpoint's."""
    return catalog.db.get_row(
        "SELECT 1 FROM meta WHERE key LIKE 'catalog\\_volume:%' ESCAPE '\\' AND value = ?",
        (volume_uuid,)) is not None


def find_base(
    catalog: Catalog, plan: str, pool: str, max_deltas: int = MAX_DELTAS
) -> Base | None:
    """The catalog volume the next checkpoint of *plan* in *pool* may be a delta of, or
    None when it must be a full tree: no previous checkpoint, or it was made to another
    pool, or its catalog volume is unknown (not written yet, or written before deltas
    existed), or the chain is *max_deltas* long (default `MAX_DELTAS`), or the base's
    medium takes no new volumes (every medium must stay readable on its own, so a delta
    lands next to its base)."""
    checkpoints = catalog.checkpoints(plan)
    if not checkpoints or checkpoints[-1].stats.get("pool") != pool:
        return None
    prev = checkpoints[-1]
    uuid = catalog.get_meta(META_KEY.format(pool=pool, checkpoint=prev.id))
    volume = catalog.volume_by_uuid(uuid) if uuid is not None else None
    if volume is None or volume.id in catalog.lost_volume_ids():
        return None
    depth = catalog.get_meta(DEPTH_KEY.format(volume=volume.uuid))
    if depth is None or int(depth) + 1 > max_deltas:
        return None
    medium = catalog.medium(volume.medium_id)
    if medium is None or medium.state != "active":
        return None
    return Base(prev, volume, int(depth))


class CatalogSpool:
    """Collects a checkpoint's tree as compressed JSON lines in a temporary file.

    With *plan* and *pool* it is a delta of the previous checkpoint's catalog volume when
    `find_base` finds one (`base`, at most *max_deltas* after a full volume); without, or
    when there is none, it holds the full tree.
    """

    def __init__(self, catalog: Catalog, plan: str | None = None,
                 pool: str | None = None, *, max_deltas: int = MAX_DELTAS) -> None:
        self.catalog = catalog
        self.base = find_base(catalog, plan, pool, max_deltas) if plan and pool else None
        self._file: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115 - closed by close()
        self._out = zstandard.ZstdCompressor(level=3, write_checksum=True).stream_writer(
            self._file, closefd=False)
        self._batch: list[tuple[Entry, bytes | None, list[ChunkPiece] | None]] = []
        self._lines = SerialWorker("durafs-catalog")
        self._size: int | None = None  # of the spooled tree, once complete

    @property
    def needs_kept(self) -> bool:
        """Whether kept entries go into the spool too (a full tree, not a delta)."""
        return self.base is None

    def add(self, entry: Entry, link: bytes | None = None, *, kept: bool = False,
            pieces: list[ChunkPiece] | None = None) -> None:
        """Record *entry*; *link* is the leader's path for a later hard-link member, *kept*
        what `TreeWriter.add` returned for it (a delta leaves kept entries out), *pieces*
        its chunks as (offset, chunk id, size) when the caller has them (else they are
        looked up by the row ids in ``entry.chunks``)."""
        if kept and self.base is not None:
            return
        self._batch.append((entry, link, pieces))
        if len(self._batch) >= BATCH:
            self._flush()

    def _flush(self) -> None:
        rowids = {rid for e, link, pieces in self._batch
                  if e.chunks and link is None and pieces is None
                  for _, rid, _ in unpack_pieces(e.chunks)}
        cids = {rid: row.cid for rid, row in self.catalog.chunk_by_rowid(rowids).items()}
        # the lines are made and compressed on a thread of their own: the walking thread
        # is the backup's critical path (entries are not changed once recorded)
        self._lines.submit(self._write_lines, self._batch, cids)
        self._batch = []

    def _write_lines(self, batch: list[tuple[Entry, bytes | None, list[ChunkPiece] | None]],
                     cids: dict[int, bytes]) -> None:
        lines = [_line(e, link, cids, pieces) for e, link, pieces in batch]
        self._out.write(("\n".join(lines) + "\n").encode("ascii"))

    def delta_base(self, checkpoint: CheckpointRow, medium_id: int) -> Base | None:
        """The base, if the spooled delta can be *checkpoint*'s catalog volume on medium
        *medium_id*: the TreeWriter compared the entries with the base's checkpoint (it is
        the plan's previous one) and the volume lands on the base's medium."""
        base = self.base
        if base is None or base.volume.medium_id != medium_id:
            return None
        if self.catalog.volume_by_uuid(base.volume.uuid) is None:
            return None
        earlier = [c for c in self.catalog.checkpoints(checkpoint.plan) if c.seq < checkpoint.seq]
        if not earlier or earlier[-1].id != base.checkpoint.id:
            return None
        return base

    def write(self, volume: VolumeWriter, record: CheckpointRecord,
              deleted: Iterable[bytes] = ()) -> None:
        """Add the checkpoint record, for a delta the *deleted* paths, and the spooled tree
        to a catalog volume."""
        if self._size is None:  # a second call writes the same tree to another volume
            if self._batch:
                self._flush()
            self._lines.close()
            self._out.flush(zstandard.FLUSH_FRAME)
            self._size = self._file.tell()
        size = self._size
        self._file.seek(0)
        volume.add_member(CHECKPOINT_MEMBER, record.to_json())
        if record.base is not None:
            write_deleted(volume, deleted)
        volume.add_member_file(TREE_MEMBER, self._file, size)

    def close(self) -> None:
        self._lines.close(wait=False)
        self._file.close()


def _line(e: Entry, link: bytes | None, cids: dict[int, bytes],
          pieces: list[ChunkPiece] | None) -> str:
    """The tree line of *e*: what `dumps` makes of TreeEntry.to_record for it, byte for
    byte, built directly (once per path per backup, on a thread that shares the GIL with
    the walk: building a dict for the JSON encoder took three times as long)."""
    parts = [
        f'{{"path":{json_str(os.fsdecode(e.path))},"type":"{"h" if link is not None else e.type}",'
        f'"mode":{e.mode},"uid":{e.uid},"gid":{e.gid},"user":{json_str(e.uname or "")},'
        f'"group":{json_str(e.gname or "")},"mtime_ns":{e.mtime_ns},'
        f'"atime_ns":{e.atime_ns},"ctime_ns":{e.ctime_ns},"size":{e.size}'
    ]
    if e.target is not None:
        parts.append(f',"target":{json_str(os.fsdecode(e.target))}')
    if e.rdev:
        parts.append(f',"rdev":{e.rdev}')
    if e.xattrs:  # base64 is JSON-safe as it is
        items = ",".join([f'{json_str(os.fsdecode(k))}:"{base64.b64encode(v).decode()}"'
                          for k, v in unpack_xattrs(e.xattrs).items()])
        parts.append(f',"xattrs":{{{items}}}')
    chunks: list[ChunkPiece] = []
    if e.type == "f" and link is None:
        chunks = (pieces if pieces is not None else
                  [(off, cids[rid], size) for off, rid, size in unpack_pieces(e.chunks)])
    if chunks:
        listed = ",".join([f'[{off},"{cid.hex()}",{size}]' for off, cid, size in chunks])
        parts.append(f',"chunks":[{listed}]')
    if link is not None:
        parts.append(f',"link":{json_str(os.fsdecode(link))}')
    parts.append(f',"ino":{e.ino},"dev":{e.dev},"nlink":{e.nlink}')
    if e.blake3 is not None:
        parts.append(f',"blake3":"{e.blake3.hex()}"')
    parts.append("}")
    return "".join(parts)
