# SPDX-License-Identifier: GPL-3.0-or-later
"""Every statement the tree and chunk reads run is an index search, never a table scan.

A tracer installed on every connection asks SQLite for the plan of each statement just
before it runs, so what is checked is exactly what the public API executes.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import apsw
import pytest

from durafs.index.catalog import Catalog, open_catalog
from durafs.index.rows import NewChunk, pack_pieces

from .support import commit, make_entry

#: SCANs that are fine: bound id lists (carray), the writer's own staging tables, the
#: recursive CTE of path_of, FTS5's own index (a virtual table), and tables of a handful
#: of rows (plans, as "pl", and sqlite_sequence).
ALLOWED_SCANS = re.compile(
    r"SCAN (ids |carray |temp\.tw_|up\b|CONSTANT ROW|n VIRTUAL TABLE|pl\b|sqlite_sequence\b)"
)

Plans = list[tuple[str, list[str]]]


@pytest.fixture
def plans() -> Iterator[Plans]:
    """Collects (sql, plan lines) of every statement run on connections opened meanwhile."""
    collected: Plans = []

    def trace(conn: apsw.Connection) -> None:
        def tracer(cursor: apsw.Cursor, sql: str, bindings: Any) -> bool:
            head = sql.lstrip().split(None, 1)[0].upper()
            if head in ("SELECT", "UPDATE", "INSERT", "WITH", "DELETE"):
                rows = conn.execute("EXPLAIN QUERY PLAN " + sql, bindings).fetchall()
                collected.append((" ".join(sql.split()), [str(row[3]) for row in rows]))
            return True

        conn.exec_trace = tracer

    apsw.connection_hooks.append(trace)
    try:
        yield collected
    finally:
        apsw.connection_hooks.remove(trace)


@pytest.mark.parametrize("analyze", [False, True])
def test_reads_and_writes_use_indexes(tmp_path: Path, plans: Plans, analyze: bool) -> None:
    with open_catalog(tmp_path / "i.sqlite") as catalog:
        chunk_ids = build(catalog)
        if analyze:  # statistics must not talk the planner into scans either
            catalog.db.execute("ANALYZE")
        plans.clear()
        exercise(catalog, chunk_ids)
    scans = [
        (sql, line)
        for sql, lines in plans
        for line in lines
        if line.startswith("SCAN") and not ALLOWED_SCANS.match(line)
    ]
    assert scans == [], "\n".join(f"{line}  <-  {sql[:110]}" for sql, line in scans)
    text = "\n".join(line for _, lines in plans for line in lines)
    for index in (
        "paths_child",
        "versions_path_seq",
        "versions_open",
        "chunks_pool_cid",
        "versions_hardlink",
    ):
        assert f"USING INDEX {index}" in text or f"USING COVERING INDEX {index}" in text


def build(catalog: Catalog) -> list[int]:
    """Three checkpoints of a few thousand files, and some chunks."""
    pool = catalog.add_pool("usb", "dir", volume_size=1 << 30)
    medium = catalog.add_medium(pool.id, uuid="u", label="HDD-1")
    volumes = [
        catalog.add_volume(
            medium.id, uuid=f"v{n}", kind="data", seq=n, name=f"v{n}", plain_size=1, stored_size=1
        )
        for n in (1, 2, 3)
    ]
    ids: list[int] = []
    for volume in volumes:
        new = [NewChunk(os.urandom(32), i * 100, 90, 100, False) for i in range(100)]
        ids += catalog.add_chunks(pool.id, volume.id, new).values()
    catalog.ensure_plan("p")
    for seq in (1, 2, 3):
        entries = [make_entry(b"/", "d")]
        for d in range(30):
            entries.append(make_entry(b"/d%02d" % d, "d"))
            entries += [
                make_entry(
                    b"/d%02d/f%03d" % (d, f),
                    mtime=seq if f < 10 else 1,
                    chunks=pack_pieces([(0, ids[f], 100)]),
                )
                for f in range(100)
            ]
        entries.append(make_entry(b"/d00/link", nlink=2, hardlink_key="k", ino=1))
        commit(catalog, catalog.plan("p"), seq, entries)  # type: ignore[arg-type]
    return ids


def exercise(catalog: Catalog, chunk_ids: list[int]) -> None:
    plan = catalog.plan("p")
    assert plan is not None
    checkpoint = catalog.checkpoint("p", "latest")
    assert checkpoint is not None
    seq = checkpoint.seq
    d = catalog.resolve(plan.id, seq, b"/d07")
    assert d is not None
    assert catalog.lookup(plan.id, seq, d.path_id, b"f050") is not None
    assert len(catalog.listdir(plan.id, seq, d.path_id)) == 100
    assert len(list(catalog.iterdir(plan.id, 2, d.path_id, page=30))) == 100
    assert len(list(catalog.walk(plan.id, 1, d.path_id))) == 101
    f = catalog.version_at(catalog.resolve(plan.id, 1, b"/d07/f001").path_id, 1)  # type: ignore[union-attr]
    assert f is not None and len(catalog.file_chunks(f)) == 1
    link = catalog.resolve(plan.id, seq, b"/d00/link")
    assert link is not None and len(catalog.hardlink_group(link.id, seq)) == 1
    assert len(catalog.lookup_chunks(1, [os.urandom(32) for _ in range(10)])) == 0
    assert len(catalog.chunk_by_rowid(chunk_ids[:50])) == 50
    assert catalog.checkpoint_by_seq(plan.id, 1) is not None
    assert list(catalog.find("f050", "p"))
    # The writer: previous listings, deletions, the apply step.
    entries = [make_entry(b"/", "d"), make_entry(b"/d01", "d"), make_entry(b"/d01/new")]
    commit(catalog, plan, seq + 1, entries)
