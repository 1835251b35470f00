"""Picking up after a crash: what a killed run left on the media, the next run adopts.

Two windows exist between "safely on the medium" and "recorded in the index": a volume
(data or catalog) renamed into place but not yet recorded, and a checkpoint committed whose
catalog volume was not yet written. Both are closed at the start of the next backup, so
nothing stored is stored again and every checkpoint gets its catalog volume.
"""

from __future__ import annotations

import logging

from durafs.engine.catalogvol import DEPTH_KEY, META_KEY, write_catalog_volume
from durafs.engine.poolwriter import PoolWriter, open_medium
from durafs.errors import DurafsError
from durafs.format.catalog import read_checkpoint
from durafs.format.keys import CatalogKeys
from durafs.format.reader import VolumeReader
from durafs.index.catalog import Catalog
from durafs.index.rows import MediumRow, NewChunk, PoolRow
from durafs.media.base import Medium, StoredVolume

log = logging.getLogger(__name__)


def adopt_orphan_volumes(catalog: Catalog, keys: CatalogKeys, pool: PoolRow) -> int:
    """Record volumes on the pool's online media that the index does not know: data
    volumes, and catalog volumes of checkpoints that have none recorded.

    Needs to read their manifests, so encrypted volumes are adopted only when the
    identity is at hand; otherwise they are left (their chunks are stored again).
    Returns the number of volumes adopted.
    """
    if keys.encryption != "none" and not keys.identities:
        return 0
    adopted = 0
    for row in catalog.media(pool.id):
        medium = open_medium(row)
        if not medium.is_online():
            continue
        medium.cleanup_temp()
        recorded = catalog.volumes(medium_id=row.id)
        known = {v.name for v in recorded}
        taken = {v.seq: v.name for v in recorded}
        for stored in medium.list_volumes():
            if stored.name in known or stored.kind not in ("data", "catalog"):
                continue
            if stored.seq in taken:
                # written by a durafs that numbered it after the files left on the medium,
                # not the index, when a volume file had gone: its seq is the lost one's
                log.warning("not adopting %s: its seq %d is that of %s, which the index "
                            "records and the medium has lost", stored.name, stored.seq,
                            taken[stored.seq])
                continue
            try:
                adopted += _adopt(catalog, keys, pool, row, medium, stored)
            except DurafsError as exc:
                log.warning("not adopting %s: %s", stored.name, exc)
    return adopted


def _adopt(catalog: Catalog, keys: CatalogKeys, pool: PoolRow, row: MediumRow,
           medium: Medium, stored: StoredVolume) -> int:
    """Record the orphan volume *stored* of *medium* (see `adopt_orphan_volumes`): 1 if
    it was, 0 if it was left (a catalog volume its checkpoint does not lack)."""
    with medium.open_volume(stored.name) as handle:
        reader = VolumeReader(handle.read_at, identities=keys.identities,
                              size=handle.size, name=stored.name, catalog_id=keys.catalog_id)
        manifest = reader.read_manifest()
        plain = reader.plain_size or 0
        if stored.kind == "catalog":
            return _adopt_catalog_volume(catalog, pool, row, stored, reader, plain)
    with catalog.db.transaction():
        volume = catalog.add_volume(
            row.id, uuid=stored.volume_id, kind="data", seq=stored.seq,
            name=stored.name, plain_size=plain, stored_size=stored.stored_size)
        catalog.add_chunks(pool.id, volume.id, [
            NewChunk(c.id, c.offset, c.length, c.size, c.raw, c.frame_pos)
            for c in manifest.chunks])
    return 1


def _adopt_catalog_volume(
    catalog: Catalog, pool: PoolRow, medium: MediumRow, stored: StoredVolume,
    reader: VolumeReader, plain_size: int,
) -> int:
    """Record a catalog volume a run killed after its rename left unrecorded, if it is the
    one its checkpoint lacks (else `write_missing_catalogs` would write it again, and this
    one would lie on the medium for ever). Returns 1 if adopted."""
    record = read_checkpoint(reader)
    checkpoint = catalog.checkpoint(record.plan, record.name)
    if checkpoint is None or checkpoint.created_ns != record.created_ns \
            or checkpoint.stats.get("pool") != pool.name:
        return 0
    key = META_KEY.format(pool=pool.name, checkpoint=checkpoint.id)
    if catalog.get_meta(key) is not None:
        return 0
    if record.base is not None:
        # a delta is read with its base, which must be recorded on the same medium
        base = catalog.volume_by_uuid(record.base.volume_id)
        if base is None or base.medium_id != medium.id:
            return 0
    with catalog.db.transaction():
        catalog.add_volume(
            medium.id, uuid=stored.volume_id, kind="catalog", seq=stored.seq,
            name=stored.name, plain_size=plain_size, stored_size=stored.stored_size)
        catalog.set_meta(key, stored.volume_id)
        catalog.set_meta(DEPTH_KEY.format(volume=stored.volume_id), record.depth)
    return 1


def write_missing_catalogs(catalog: Catalog, writer: PoolWriter, plan: str) -> int:
    """Write catalog volumes for checkpoints of *plan* stored in this pool without one,
    or whose catalog volume cannot be read back: found lost, or a delta whose chain
    (the catalog volumes of the checkpoints before it, back to a full tree) has a lost
    one. `recover` needs a whole chain for every checkpoint; each new one is a full tree.
    """
    written = 0
    lost = catalog.lost_volume_ids()
    broken = False  # the chain the previous checkpoint's catalog volume is in
    for checkpoint in catalog.checkpoints(plan):
        if checkpoint.stats.get("pool") != writer.pool.name:
            continue
        uuid = catalog.get_meta(META_KEY.format(pool=writer.pool.name, checkpoint=checkpoint.id))
        if uuid is not None and not lost:
            continue  # the usual case, on every backup: one look per checkpoint
        volume = catalog.volume_by_uuid(uuid) if uuid is not None else None
        if volume is None:
            broken = False  # nothing can be a delta of a checkpoint without a volume
        else:
            # a volume of unknown depth may be a delta: as broken as what it follows
            full = catalog.get_meta(DEPTH_KEY.format(volume=volume.uuid)) in (0, "0")
            broken = volume.id in lost or (broken and not full)
            if not broken:
                continue
        write_catalog_volume(catalog, writer, checkpoint)
        written += 1
    return written
