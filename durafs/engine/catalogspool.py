"""The catalog volume's tree, spooled while a backup walks (docs/FORMAT.md §4).

The backup already has every entry in walk order, so the tree lines are written as the
entries are recorded instead of re-reading the whole checkpoint from the index afterwards.
Chunk row ids of unchanged files are turned into chunk ids a batch at a time (one query per
BATCH entries), and lines are compressed in large blocks.
"""

from __future__ import annotations

import base64
import os
import tempfile
from typing import IO, Any

import zstandard

from durafs.format.catalog import CHECKPOINT_MEMBER, TREE_MEMBER, CheckpointRecord
from durafs.format.header import dumps
from durafs.format.writer import VolumeWriter
from durafs.index.catalog import Catalog
from durafs.index.rows import Entry, unpack_pieces, unpack_xattrs

BATCH = 2000


class CatalogSpool:
    """Collects a checkpoint's tree as compressed JSON lines in a temporary file."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        self._file: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115 - closed by close()
        self._out = zstandard.ZstdCompressor(level=3, write_checksum=True).stream_writer(
            self._file, closefd=False)
        self._batch: list[tuple[Entry, bytes | None]] = []
        self._leaders: dict[Any, bytes] = {}

    def add(self, entry: Entry, link: bytes | None = None) -> None:
        """Record *entry*; *link* is the leader's path for a later hard-link member."""
        self._batch.append((entry, link))
        if len(self._batch) >= BATCH:
            self._flush()

    def _flush(self) -> None:
        rowids = {rid for e, link in self._batch if e.chunks and link is None
                  for _, rid, _ in unpack_pieces(e.chunks)}
        cids = {rid: row.cid for rid, row in self.catalog.chunk_by_rowid(rowids).items()}
        lines = [dumps(_record(e, link, cids)) for e, link in self._batch]
        self._out.write(b"\n".join(lines) + b"\n")
        self._batch = []

    def write(self, volume: VolumeWriter, record: CheckpointRecord) -> None:
        """Add the checkpoint record and the spooled tree to a catalog volume."""
        if self._batch:
            self._flush()
        self._out.flush(zstandard.FLUSH_FRAME)
        size = self._file.tell()
        self._file.seek(0)
        volume.add_member(CHECKPOINT_MEMBER, record.to_json())
        volume.add_member_file(TREE_MEMBER, self._file, size)

    def close(self) -> None:
        self._file.close()


def _record(e: Entry, link: bytes | None, cids: dict[int, bytes]) -> dict[str, Any]:
    """The tree line of *e*, built directly (the same fields TreeEntry.to_record writes:
    this runs once per path per backup, so it avoids the intermediate objects)."""
    rec: dict[str, Any] = {
        "path": os.fsdecode(e.path), "type": "h" if link is not None else e.type,
        "mode": e.mode, "uid": e.uid, "gid": e.gid, "user": e.uname or "",
        "group": e.gname or "", "mtime_ns": e.mtime_ns, "atime_ns": e.atime_ns,
        "ctime_ns": e.ctime_ns, "size": e.size if e.type == "f" else 0,
    }
    if e.target is not None:
        rec["target"] = os.fsdecode(e.target)
    if e.rdev:
        rec["rdev"] = e.rdev
    if e.xattrs:
        rec["xattrs"] = {os.fsdecode(k): base64.b64encode(v).decode()
                         for k, v in unpack_xattrs(e.xattrs).items()}
    if e.type == "f" and link is None and e.chunks:
        rec["chunks"] = [[off, cids[rid].hex(), size] for off, rid, size in unpack_pieces(e.chunks)]
    if link is not None:
        rec["link"] = os.fsdecode(link)
    rec["ino"], rec["dev"], rec["nlink"] = e.ino, e.dev, e.nlink
    if e.blake3 is not None:
        rec["blake3"] = e.blake3.hex()
    return rec
