"""The walking thread's view of which chunks a pool has (engine/dedup.py)."""

from __future__ import annotations

import os
from pathlib import Path

from durafs.engine.dedup import PoolChunks
from durafs.engine.home import Home
from durafs.engine.known import KnownChunks
from durafs.engine.poolwriter import PoolWriter
from durafs.index.catalog import open_catalog
from durafs.index.rows import NewChunk
from tests.engine.cli import durafs, setup_catalog


def test_a_chunk_stored_since_the_run_asked_is_found_when_asked_now(tmp_path: Path) -> None:
    """`find` keeps the index's "no" from a batch query (one query for many chunks); a
    backup of another plan into the pool may store the chunk after it. A reference to a
    stored chunk (a pack leaves such chunks out) is then looked up again, now."""
    source = tmp_path / "src"
    source.mkdir()
    (source / "a").write_bytes(os.urandom(1000))
    setup_catalog(tmp_path, encryption="none")
    assert durafs("backup", source, "--pool", "p").code == 0  # the pool is not empty
    home = Home()
    keys = home.keys(read=False)
    cid = os.urandom(32)
    with open_catalog(home.index_path) as catalog:
        pool = catalog.pool("p")
        assert pool is not None
        known = KnownChunks(catalog.db.path, pool.id, keys.id_key, empty=False)
        chunks = PoolChunks(catalog, PoolWriter(catalog, keys, pool), known)
        chunks.start()
        chunks.look_up([cid])  # "not there", kept
        with catalog.db.transaction():  # what another plan's backup commits meanwhile
            medium = catalog.media(pool.id)[0]
            volume = catalog.add_volume(medium.id, uuid="other-plan", kind="data", seq=99,
                                        name=None, plain_size=4096, stored_size=4096)
            catalog.add_chunks(pool.id, volume.id, [NewChunk(cid, 1536, 20, 10, False)])
        assert chunks.find(cid) is None  # the answer kept from before
        found = chunks.find_now(cid)
        assert found is not None
        assert catalog.lookup_chunks(pool.id, [cid])[cid].id == found
        known.close()
