"""Picking up after a crash: what a killed run left on the media, the next run adopts.

Two windows exist between "safely on the medium" and "recorded in the index": a volume
renamed into place but not yet recorded, and a checkpoint committed whose catalog volume
was not yet written. Both are closed at the start of the next backup, so nothing stored is
stored again and every checkpoint gets its catalog volume.
"""

from __future__ import annotations

import logging

from durafs.engine.catalogvol import META_KEY, write_catalog_volume
from durafs.engine.poolwriter import PoolWriter, open_medium
from durafs.errors import DurafsError
from durafs.format.keys import CatalogKeys
from durafs.format.reader import VolumeReader
from durafs.index.catalog import Catalog
from durafs.index.rows import NewChunk, PoolRow

log = logging.getLogger(__name__)


def adopt_orphan_volumes(catalog: Catalog, keys: CatalogKeys, pool: PoolRow) -> int:
    """Record data volumes on the pool's online media that the index does not know.

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
        known = {v.name for v in catalog.volumes(medium_id=row.id)}
        for stored in medium.list_volumes():
            if stored.name in known or stored.kind != "data":
                continue
            try:
                with medium.open_volume(stored.name) as handle:
                    reader = VolumeReader(handle.read_at, identities=keys.identities,
                                          size=handle.size, name=stored.name,
                                          catalog_id=keys.catalog_id)
                    manifest = reader.read_manifest()
                    plain = reader.plain_size or 0
            except DurafsError as exc:
                log.warning("not adopting %s: %s", stored.name, exc)
                continue
            with catalog.db.transaction():
                volume = catalog.add_volume(
                    row.id, uuid=stored.volume_id, kind="data", seq=stored.seq,
                    name=stored.name, plain_size=plain, stored_size=stored.stored_size)
                catalog.add_chunks(pool.id, volume.id, [
                    NewChunk(c.id, c.offset, c.length, c.size, c.raw) for c in manifest.chunks])
            adopted += 1
    return adopted


def write_missing_catalogs(catalog: Catalog, writer: PoolWriter, plan: str) -> int:
    """Write catalog volumes for checkpoints of *plan* stored in this pool without one."""
    written = 0
    for checkpoint in catalog.checkpoints(plan):
        if checkpoint.stats.get("pool") != writer.pool.name:
            continue
        key = META_KEY.format(pool=writer.pool.name, checkpoint=checkpoint.id)
        if catalog.get_meta(key) is None:
            write_catalog_volume(catalog, writer, checkpoint)
            written += 1
    return written
