"""Which chunks the workers skip compressing (engine/known.KnownChunks)."""

from __future__ import annotations

import os
from pathlib import Path

from durafs.engine.known import KnownChunks
from durafs.format.frames import ChunkCodec
from durafs.index.catalog import open_catalog
from durafs.index.rows import NewChunk

DATA = b"the same line of text, again and again\n" * 4000


def _pool_with(index: Path, data: bytes, id_key: bytes) -> tuple[int, int]:
    """A catalog with one pool storing *data* as a chunk: (pool id, chunk row id)."""
    catalog = open_catalog(index)
    try:
        pool = catalog.add_pool("p", "dir", volume_size=1 << 30)
        medium = catalog.add_medium(pool.id, uuid="u-1", label="M1")
        volume = catalog.add_volume(medium.id, uuid="v-1", kind="data", seq=1, name="v1",
                                    plain_size=1, stored_size=1)
        cid = ChunkCodec(id_key).chunk_id(data)
        ids = catalog.add_chunks(pool.id, volume.id, [NewChunk(cid, 0, 10, len(data), False)])
        return pool.id, ids[cid]
    finally:
        catalog.close()


def test_a_chunk_the_pool_has_is_not_compressed_again(tmp_path: Path) -> None:
    id_key = os.urandom(32)
    pool_id, row_id = _pool_with(tmp_path / "index.sqlite", DATA, id_key)
    known = KnownChunks(tmp_path / "index.sqlite", pool_id, id_key, empty=False)
    try:
        stored = known.encode(DATA)
        assert (stored.frame, stored.size) == (b"", len(DATA))
        assert known.found(stored.id) == row_id
        assert known.found(stored.id) is None  # told once
        fresh = known.encode(DATA[:-1])
        assert fresh.frame and not fresh.raw and len(fresh.frame) < len(DATA) // 10
        assert known.found(fresh.id) is None
    finally:
        known.close()


def test_into_an_empty_pool_every_chunk_is_compressed_without_asking(tmp_path: Path) -> None:
    """A first backup asks nothing: *empty* is taken as the truth for the whole run."""
    id_key = os.urandom(32)
    pool_id, _ = _pool_with(tmp_path / "index.sqlite", DATA, id_key)
    known = KnownChunks(tmp_path / "index.sqlite", pool_id, id_key, empty=True)
    try:
        stored = known.encode(DATA)
        assert stored.frame and len(stored.frame) < len(DATA) // 10
        assert stored.id == ChunkCodec(id_key).chunk_id(DATA)
        assert known.found(stored.id) is None
    finally:
        known.close()
