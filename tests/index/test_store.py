# SPDX-License-Identifier: GPL-3.0-or-later
"""Meta facts, pools, media, volumes and chunk locations."""

from __future__ import annotations

import os

import pytest

from durafs.errors import CatalogError, UsageError
from durafs.index.catalog import Catalog
from durafs.index.rows import ChunkRow, NewChunk, VolumeRow


def new_chunks(count: int, start: int = 0) -> list[NewChunk]:
    return [NewChunk(os.urandom(32), start + 100 * i, 90, 4096, i % 2 == 0) for i in range(count)]


def add_volume(catalog: Catalog, medium_id: int, seq: int, kind: str = "data") -> VolumeRow:
    return catalog.add_volume(
        medium_id,
        uuid=f"vol-{medium_id}-{seq}",
        kind=kind,
        seq=seq,
        name=f"volumes/{seq:06d}-{kind}.tar",
        plain_size=1000 * seq,
        stored_size=1100 * seq,
    )


def test_meta(catalog: Catalog) -> None:
    assert catalog.get_meta("nothing", "dflt") == "dflt"
    catalog.set_meta("encryption", "key")
    assert catalog.get_meta("encryption") == "key"
    assert len(catalog.catalog_id) == 36
    with pytest.raises(UsageError):
        catalog.set_meta("catalog_id", "forged")


def test_pools(catalog: Catalog) -> None:
    usb = catalog.add_pool("usb-disks", "dir", volume_size=1 << 30, config={"min_free": 5})
    tapes = catalog.add_pool("offsite-tapes", "tape", volume_size=1 << 34)
    assert usb.config == {"min_free": 5}
    assert catalog.pool("usb-disks") == usb
    assert catalog.pool("nope") is None
    assert [p.name for p in catalog.pools()] == ["offsite-tapes", "usb-disks"]
    assert tapes.id != usb.id
    with pytest.raises(UsageError, match="exists already"):
        catalog.add_pool("usb-disks", "dir", volume_size=1)
    with pytest.raises(UsageError):
        catalog.add_pool("floppies", "floppy", volume_size=1)


def test_media(catalog: Catalog) -> None:
    pool = catalog.add_pool("usb", "dir", volume_size=1 << 30)
    disk = catalog.add_medium(
        pool.id, uuid="u-1", label="HDD-001", path="/mnt/a", capacity=10 << 40, created_ns=5
    )
    assert (disk.pool, disk.kind, disk.state, disk.used) == ("usb", "dir", "active", 0)
    assert disk.created_ns == 5 and disk.last_seen_ns is None
    assert catalog.medium_by_label("HDD-001") == disk == catalog.medium_by_uuid("u-1")
    assert catalog.medium(disk.id) == disk
    with pytest.raises(UsageError) as info:
        catalog.add_medium(pool.id, uuid="u-2", label="HDD-001")
    assert str(info.value) == ("medium 'HDD-001' (u-2): its label is already that of medium "
                               "HDD-001 (u-1) of pool usb, last seen at /mnt/a")
    with pytest.raises(UsageError, match=r"\(u-1\): its id is already that of medium HDD-001"):
        catalog.add_medium(pool.id, uuid="u-1", label="HDD-009")
    other = catalog.add_medium(pool.id, uuid="u-2", label="HDD-000")
    assert [m.label for m in catalog.media(pool.id)] == ["HDD-000", "HDD-001"]
    assert catalog.media(pool.id + 100) == []
    updated = catalog.update_medium(
        disk.id, used=123, state="full", path="/mnt/b", last_seen_ns=99, location="shelf 2"
    )
    assert (updated.used, updated.state, updated.path) == (123, "full", "/mnt/b")
    assert (updated.last_seen_ns, updated.location) == (99, "shelf 2")
    assert catalog.medium(other.id) == other
    with pytest.raises(UsageError, match="cannot update"):
        catalog.update_medium(disk.id, label="HDD-X")
    with pytest.raises(UsageError):
        catalog.update_medium(disk.id, state="lost")
    with pytest.raises(CatalogError, match="no medium"):
        catalog.update_medium(12345, used=1)


def test_volumes(catalog: Catalog) -> None:
    pool = catalog.add_pool("tapes", "tape", volume_size=1 << 34)
    tape = catalog.add_medium(pool.id, uuid="t-1", label="BUP-00001")
    assert catalog.next_volume_seq(tape.id) == 1
    first = catalog.add_volume(
        tape.id,
        uuid="v-1",
        kind="data",
        seq=1,
        name=None,
        plain_size=10,
        stored_size=12,
        tape_file=1,
        tape_block=3,
    )
    second = add_volume(catalog, tape.id, 2, kind="catalog")
    assert catalog.next_volume_seq(tape.id) == 3
    assert (first.tape_file, first.tape_block, first.stored_size) == (1, 3, 12)
    assert catalog.volume(first.id) == first
    assert catalog.volume_by_uuid("v-1") == first
    assert catalog.volumes(medium_id=tape.id) == [first, second]
    assert catalog.volumes(pool_id=pool.id, kind="catalog") == [second]
    assert catalog.volumes(pool_id=pool.id + 1) == []
    with pytest.raises(CatalogError):
        add_volume(catalog, tape.id, 2)  # seq taken on this medium


def test_chunks_dedup_within_a_pool(catalog: Catalog) -> None:
    pool = catalog.add_pool("usb", "dir", volume_size=1 << 30)
    disk = catalog.add_medium(pool.id, uuid="u-1", label="HDD-001")
    volume = add_volume(catalog, disk.id, 1)
    chunks = new_chunks(50)
    assert not catalog.has_chunks(pool.id)
    ids = catalog.add_chunks(pool.id, volume.id, chunks)
    assert catalog.has_chunks(pool.id)
    assert sorted(ids.values()) == list(range(min(ids.values()), min(ids.values()) + 50))
    found = catalog.lookup_chunks(pool.id, [c.cid for c in chunks] + [os.urandom(32)])
    assert set(found) == {c.cid for c in chunks}
    row = found[chunks[3].cid]
    assert row == ChunkRow(
        ids[chunks[3].cid],
        pool.id,
        chunks[3].cid,
        volume.id,
        chunks[3].offset,
        90,
        4096,
        False,
        disk.id,
    )
    # Adding known chunks again returns their ids and keeps their first location.
    volume2 = add_volume(catalog, disk.id, 2)
    more = new_chunks(5)
    again = catalog.add_chunks(pool.id, volume2.id, [*chunks[:10], *more])
    assert all(again[c.cid] == ids[c.cid] for c in chunks[:10])
    assert catalog.lookup_chunks(pool.id, [chunks[0].cid])[chunks[0].cid].volume_id == volume.id
    assert catalog.lookup_chunks(pool.id, []) == {}


def test_chunks_are_per_pool(catalog: Catalog) -> None:
    pools = [catalog.add_pool(name, "dir", volume_size=1) for name in ("a", "b")]
    volumes = []
    for n, pool in enumerate(pools):
        medium = catalog.add_medium(pool.id, uuid=f"u{n}", label=f"M{n}")
        volumes.append(add_volume(catalog, medium.id, 1))
    chunks = new_chunks(3)
    catalog.add_chunks(pools[0].id, volumes[0].id, chunks)
    assert catalog.lookup_chunks(pools[1].id, [c.cid for c in chunks]) == {}
    assert not catalog.has_chunks(pools[1].id)
    catalog.add_chunks(pools[1].id, volumes[1].id, chunks)
    assert len(catalog.lookup_chunks(pools[1].id, [c.cid for c in chunks])) == 3
    with pytest.raises(CatalogError, match="not in pool"):
        catalog.add_chunks(pools[0].id, volumes[1].id, new_chunks(1))


def test_chunk_by_rowid(catalog: Catalog) -> None:
    pool = catalog.add_pool("usb", "dir", volume_size=1 << 30)
    disk = catalog.add_medium(pool.id, uuid="u-1", label="HDD-001")
    volume = add_volume(catalog, disk.id, 1)
    ids = catalog.add_chunks(pool.id, volume.id, new_chunks(20))
    wanted = sorted(ids.values())[::3]
    rows = catalog.chunk_by_rowid([*wanted, 999_999])
    assert sorted(rows) == wanted
    assert all(rows[i].medium_id == disk.id for i in wanted)
    assert catalog.chunk_by_rowid([]) == {}


def test_failed_volume_and_chunks_leave_nothing(catalog: Catalog) -> None:
    pool = catalog.add_pool("usb", "dir", volume_size=1 << 30)
    disk = catalog.add_medium(pool.id, uuid="u-1", label="HDD-001")
    bad = [NewChunk(b"short", 0, 1, 1, False)]
    with pytest.raises(CatalogError), catalog.db.transaction():
        volume = add_volume(catalog, disk.id, 1)
        catalog.add_chunks(pool.id, volume.id, bad)
    assert catalog.volumes() == []
    assert catalog.db.get_val("SELECT count(*) FROM chunks") == 0


def test_a_damaged_chunk_is_left_out_of_dedup_and_moves_to_its_new_copy(
    catalog: Catalog,
) -> None:
    pool = catalog.add_pool("usb", "dir", volume_size=1 << 30)
    disk = catalog.add_medium(pool.id, uuid="u-1", label="HDD-001")
    first = add_volume(catalog, disk.id, 1)
    chunks = new_chunks(3)
    ids = catalog.add_chunks(pool.id, first.id, chunks)
    hurt = ids[chunks[0].cid]
    second = add_volume(catalog, disk.id, 2)
    # noted only where the row still points: a verify beside a backup that moved it
    catalog.note_damaged([(hurt, second.id)])
    assert catalog.damaged_chunk_ids() == set()
    catalog.note_damaged([(hurt, first.id)])
    assert catalog.damaged_chunk_ids() == {hurt} == catalog.lost_chunk_ids(pool.id)
    usable = catalog.lookup_chunks(pool.id, [c.cid for c in chunks], usable=True)
    assert set(usable) == {chunks[1].cid, chunks[2].cid}
    # stored again: the row (and its id, which file versions hold) moves to the new copy
    again = NewChunk(chunks[0].cid, 500, 90, 4096, False)
    assert catalog.add_chunks(pool.id, second.id, [again]) == {chunks[0].cid: hurt}
    row = catalog.lookup_chunks(pool.id, [chunks[0].cid], usable=True)[chunks[0].cid]
    assert (row.id, row.volume_id, row.offset) == (hurt, second.id, 500)
    assert catalog.damaged_chunk_ids() == set()
