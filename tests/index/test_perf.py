# SPDX-License-Identifier: GPL-3.0-or-later
"""Timings of the index at 200 000 files: recording checkpoints and reading trees.

Targets on the 2-core reference machine: a first checkpoint of 200 000 entries well
under 5 s, an unchanged second one under 2 s; tree reads as fast at 200 000 files as at
1 000. The assertions allow a wide margin, because shared machines are noisy; the
printed timings (``pytest -s``) are what to compare.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import pytest

from durafs.index.catalog import Catalog, open_catalog
from durafs.index.rows import Entry, NewChunk, PlanRow, pack_pieces

pytestmark = pytest.mark.slow

FILES_PER_DIR = 100


def synthetic_tree(files: int, generation: int = 0) -> list[Entry]:
    """/data/dNNNNN/file-NNNN.txt; *generation* changes one file in a hundred."""
    entries = [fast_entry(b"/", "d", 1), fast_entry(b"/data", "d", 2)]
    ino = 10
    for d in range(files // FILES_PER_DIR):
        directory = b"/data/d%05d" % d
        ino += 1
        entries.append(fast_entry(directory, "d", ino))
        for f in range(FILES_PER_DIR - 1):
            ino += 1
            mtime = 7 + generation * (f == 0)
            entries.append(fast_entry(directory + b"/file-%04d.txt" % f, "f", ino, mtime))
    return entries


def fast_entry(path: bytes, kind: str, ino: int, mtime: int = 7) -> Entry:
    is_file = kind == "f"
    return Entry(
        path,
        kind,
        0o644,
        1000,
        1000,
        "alice",
        "staff",
        1234 if is_file else 4096,
        mtime,
        mtime,
        mtime,
        ino,
        2049,
        1 if is_file else 2,
        chunks=pack_pieces([(0, ino, 1234)]) if is_file else None,
        blake3=ino.to_bytes(32, "little") if is_file else None,
    )


def record(catalog: Catalog, plan: PlanRow, seq: int, entries: list[Entry]) -> float:
    """Seconds to record a checkpoint the way the engine does (prev_version, add)."""
    started = time.perf_counter()
    with catalog.tree_writer(plan.id, seq, f"c{seq}") as writer:
        for e in entries:
            writer.prev_version(e.path)
            writer.add(e)
        writer.finish()
    return time.perf_counter() - started


def per_call(calls: list[Callable[[], object]]) -> float:
    """Median seconds per call over a few rounds of *calls*."""
    rounds = []
    for _ in range(5):
        started = time.perf_counter()
        for call in calls:
            call()
        rounds.append((time.perf_counter() - started) / len(calls))
    return sorted(rounds)[2]


def read_timings(catalog: Catalog, plan: PlanRow, seq: int, dirs: int) -> tuple[float, float]:
    """(lookup, listdir) seconds per call in random directories of the synthetic tree."""
    rng = random.Random(1)
    data = catalog.resolve(plan.id, seq, b"/data")
    assert data is not None
    picked = []
    for _ in range(50):
        d = catalog.lookup(plan.id, seq, data.path_id, b"d%05d" % rng.randrange(dirs))
        assert d is not None
        picked.append(d.path_id)
    lookups: list[Callable[[], object]] = [
        partial(catalog.lookup, plan.id, seq, rng.choice(picked),
                b"file-%04d.txt" % rng.randrange(FILES_PER_DIR - 1))
        for _ in range(500)
    ]  # fmt: skip
    listings: list[Callable[[], object]] = [
        partial(catalog.listdir, plan.id, seq, path_id) for path_id in picked
    ]
    assert len(catalog.listdir(plan.id, seq, picked[0])) == FILES_PER_DIR - 1
    return per_call(lookups), per_call(listings)


def test_tree_writer_and_reads_at_200k(tmp_path: Path) -> None:
    files = 200_000
    with open_catalog(tmp_path / "big.sqlite") as big:
        plan = big.ensure_plan("p")
        first = record(big, plan, 1, synthetic_tree(files))
        unchanged = record(big, plan, 2, synthetic_tree(files))
        changed = record(big, plan, 3, synthetic_tree(files, generation=1))
        rows = big.db.get_val("SELECT count(*) FROM versions")
        big_lookup, big_listdir = read_timings(big, plan, 3, files // FILES_PER_DIR)
    with open_catalog(tmp_path / "small.sqlite") as small:
        plan = small.ensure_plan("p")
        for seq, generation in ((1, 0), (2, 0), (3, 1)):
            record(small, plan, seq, synthetic_tree(1_000, generation))
        small_lookup, small_listdir = read_timings(small, plan, 3, 10)
    print(
        f"\nTreeWriter, {files} entries: first {first:.2f} s, unchanged {unchanged:.2f} s,"
        f" 1% changed {changed:.2f} s; {rows} version rows"
    )
    print(
        f"lookup: {small_lookup * 1e6:.0f} us at 1 000 files, {big_lookup * 1e6:.0f} us at {files}"
    )
    print(
        f"listdir (99 entries): {small_listdir * 1e6:.0f} us at 1 000 files,"
        f" {big_listdir * 1e6:.0f} us at {files}"
    )
    assert rows == files + 2 + (files // FILES_PER_DIR)  # 1% changed: one per directory
    assert first < 10 and unchanged < 4 and changed < 5
    assert big_lookup < 5 * small_lookup and big_listdir < 5 * small_listdir


def test_chunk_lookup_of_100k_ids(tmp_path: Path) -> None:
    with open_catalog(tmp_path / "chunks.sqlite") as catalog:
        pool = catalog.add_pool("usb", "dir", volume_size=1 << 30)
        medium = catalog.add_medium(pool.id, uuid="u", label="HDD-1")
        stored = [NewChunk(os.urandom(32), i * 100, 90, 4096, False) for i in range(200_000)]
        started = time.perf_counter()
        for n in range(4):  # four volumes of 50 000 chunks
            volume = catalog.add_volume(
                medium.id,
                uuid=f"v{n}",
                kind="data",
                seq=n + 1,
                name=None,
                plain_size=1,
                stored_size=1,
            )
            catalog.add_chunks(pool.id, volume.id, stored[n * 50_000 : (n + 1) * 50_000])
        added = time.perf_counter() - started
        wanted = [c.cid for c in stored[::4]] + [os.urandom(32) for _ in range(50_000)]
        started = time.perf_counter()
        found = catalog.lookup_chunks(pool.id, wanted)
        looked_up = time.perf_counter() - started
        started = time.perf_counter()
        by_id = catalog.chunk_by_rowid(range(1, 100_001))
        by_rowid = time.perf_counter() - started
    print(
        f"\nchunks: add 200 000 in {added:.2f} s; lookup of 100 000 cids (half known)"
        f" {looked_up:.2f} s; 100 000 by rowid {by_rowid:.2f} s"
    )
    assert len(found) == 50_000 and len(by_id) == 100_000
    assert looked_up < 3 and by_rowid < 2
