# SPDX-License-Identifier: GPL-3.0-or-later
"""Helpers shared by the index tests."""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterable
from typing import Any

import blake3

from durafs.index.catalog import Catalog
from durafs.index.rows import Entry, PlanRow, pack_pieces

EntryFactory = Callable[..., Entry]


def make_entry(
    path: bytes,
    type: str = "f",
    *,
    mode: int | None = None,
    content: bytes = b"",
    mtime: int = 1_000,
    atime: int = 1_000,
    ctime: int | None = None,
    ino: int = 0,
    **extra: Any,
) -> Entry:
    """An entry with plausible attributes; files get one piece and the hash of *content*."""
    is_file = type == "f"
    if is_file:
        extra.setdefault("chunks", pack_pieces([(0, 1 + len(content), len(content))]))
        extra.setdefault("blake3", blake3.blake3(content).digest())
    return Entry(
        path=path,
        type=type,
        mode=(0o755 if type == "d" else 0o644) if mode is None else mode,
        uid=extra.pop("uid", 1000),
        gid=extra.pop("gid", 1000),
        uname=extra.pop("uname", "alice"),
        gname=extra.pop("gname", "staff"),
        size=len(content) if is_file else extra.pop("size", 4096 if type == "d" else 0),
        mtime_ns=mtime,
        atime_ns=atime,
        ctime_ns=mtime if ctime is None else ctime,
        ino=ino or zlib.crc32(path),
        dev=extra.pop("dev", 2049),
        nlink=extra.pop("nlink", 2 if type == "d" else 1),
        **extra,
    )


def commit(catalog: Catalog, plan: PlanRow, seq: int, entries: Iterable[Entry]) -> dict[str, int]:
    """Record checkpoint *seq* named c<seq>; return the writer's counts."""
    with catalog.tree_writer(plan.id, seq, f"c{seq}", sources=["/home"]) as writer:
        for e in entries:
            writer.prev_version(e.path)
            writer.add(e)
        writer.finish(stats={"files": seq})
    return writer.counts


def tree_at(catalog: Catalog, plan: PlanRow, seq: int) -> dict[bytes, tuple[Any, ...]]:
    """path -> (type, mode, size, mtime_ns, blake3, target) of every entry at *seq*."""
    return {
        path: (v.type, v.mode, v.size, v.mtime_ns, v.blake3, v.target)
        for path, v in catalog.walk(plan.id, seq, plan.root_id)
    }


def attrs(e: Entry) -> tuple[Any, ...]:
    return (e.type, e.mode, e.size, e.mtime_ns, e.blake3, e.target)


def version_count(catalog: Catalog) -> int:
    return int(catalog.db.get_val("SELECT count(*) FROM versions"))


def dump(catalog: Catalog) -> list[Any]:
    """Everything a checkpoint may write, for "left no trace" checks."""
    tables = ["plans", "paths", "versions", "checkpoints", "sqlite_sequence"]
    rows: list[Any] = [catalog.db.query(f"SELECT * FROM {t} ORDER BY 1") for t in tables]
    rows.append(catalog.db.query("SELECT rowid, name FROM path_names ORDER BY rowid"))
    return rows
