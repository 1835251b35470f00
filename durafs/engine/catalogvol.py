"""Checkpoint trees between the index and catalog volumes (docs/FORMAT.md §4).

After a checkpoint is committed to the index, its tree is written to the pool as a catalog
volume, so the media alone can rebuild the index (`durafs recover`). Usually it is a delta
of the previous checkpoint's catalog volume (`catalogspool.find_base` says when), which
then cannot be read without that base: a catalog volume that is a base may only go away
together with the deltas built on it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

from durafs.engine.catalogspool import DEPTH_KEY, META_KEY, CatalogSpool
from durafs.engine.poolwriter import PoolWriter
from durafs.format.catalog import (
    XATTRS_UNREAD,
    BaseRef,
    CheckpointRecord,
    TreeEntry,
    write_catalog,
)
from durafs.format.writer import VolumeWriter
from durafs.index.catalog import Catalog
from durafs.index.rows import CheckpointRow, VersionRow, VolumeRow

__all__ = ["DEPTH_KEY", "META_KEY", "to_tree_entry", "tree_entries", "write_catalog_volume"]


def tree_entries(catalog: Catalog, plan_id: int, seq: int) -> Iterator[TreeEntry]:
    """Every entry of checkpoint *seq*, parents first, with chunk ids (not row ids).

    A hard-link group's "f" entry is its first member in the index (the version the others
    link to), as in trees the backup spools, so a delta's "h" lines always find it."""
    leaders: dict[int, bytes] = {}
    for path, version in catalog.walk(plan_id, seq, catalog.root_id(plan_id)):
        first = version.hardlink_id
        if first is not None and first not in leaders and first != version.id:
            leader = catalog.version(first)
            assert leader is not None  # a member is valid only while its first member is
            leaders[first] = catalog.path_of(leader.path_id)
        yield to_tree_entry(catalog, path, version, leaders)


def to_tree_entry(
    catalog: Catalog, path: bytes, v: VersionRow, leaders: dict[int, bytes], *,
    chunks: bool = True,
) -> TreeEntry:
    """The catalog-volume form of one version; *leaders* tracks hard-link groups.
    Without *chunks* the chunk list is left empty (saves a query per file)."""
    entry = TreeEntry(
        path=path, type=v.type, mode=v.mode, uid=v.uid, gid=v.gid, user=v.uname or "",
        group=v.gname or "", mtime_ns=v.mtime_ns, atime_ns=v.atime_ns, ctime_ns=v.ctime_ns,
        size=v.size, target=v.target, rdev=v.rdev,
        xattrs=v.xattr_dict(), ino=v.ino, dev=v.dev, nlink=v.nlink, blake3=v.blake3,
    )
    if v.type != "f":
        return entry
    if v.hardlink_id is not None:
        leader = leaders.setdefault(v.hardlink_id, path)
        if leader != path:
            entry.type, entry.link = "h", leader
            return entry
    if not chunks:
        return entry
    pieces = v.pieces()
    rows = catalog.chunk_by_rowid(p[1] for p in pieces)
    entry.chunks = [(off, rows[rid].cid, size) for off, rid, size in pieces]
    return entry


def write_catalog_volume(
    catalog: Catalog, writer: PoolWriter, checkpoint: CheckpointRow,
    spool: CatalogSpool | None = None,
) -> None:
    """Write *checkpoint*'s catalog volume into the writer's pool and note where it is.

    The tree comes from *spool* when the backup spooled it: a delta if the spool is one
    and it still fits once the volume's medium is known, or the full tree. Otherwise (no
    spool, or a delta that does not fit) the full tree comes from the index."""
    plan = catalog.plan(checkpoint.plan)
    assert plan is not None
    record = CheckpointRecord(
        plan=checkpoint.plan, name=checkpoint.name, created_ns=checkpoint.created_ns,
        finished_ns=checkpoint.finished_ns,
        sources=[os.fsencode(s) for s in checkpoint.sources or []],
        host=os.uname().nodename,
        # the counts, not the pool's name (recover knows it from the medium)
        stats={k: v for k, v in checkpoint.stats.items() if isinstance(v, int)},
        # so that after a recover the next backup still reads these paths' xattrs again
        xattrs_unread=[os.fsencode(p) for p in checkpoint.stats.get(XATTRS_UNREAD, ())],
    )

    def fill(volume: VolumeWriter) -> None:
        medium = writer.medium
        assert medium is not None
        # each try starts as a full tree: a try on another medium may not be a delta
        record.base, record.depth = None, 0
        base = spool.delta_base(checkpoint, medium.id) if spool is not None else None
        if spool is not None and base is not None:
            record.base = BaseRef(base.checkpoint.name, base.volume.uuid)
            record.depth = base.depth + 1
            deleted = catalog.deleted_paths(plan.id, base.checkpoint.seq, checkpoint.seq)
            spool.write(volume, record, deleted)
        elif spool is not None and spool.base is None:
            spool.write(volume, record)  # it holds the full tree
        else:
            write_catalog(volume, record, tree_entries(catalog, plan.id, checkpoint.seq))

    def recorded(row: VolumeRow) -> None:
        # with the volume's own record: a volume recorded without these would be written
        # again by the next backup (write_missing_catalogs), and kept for ever
        catalog.set_meta(META_KEY.format(pool=writer.pool.name, checkpoint=checkpoint.id),
                         row.uuid)
        catalog.set_meta(DEPTH_KEY.format(volume=row.uuid), record.depth)

    writer.write_volume("catalog", fill, recorded)
