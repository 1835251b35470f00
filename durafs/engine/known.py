"""Which chunks a pool already has, asked from worker threads before compressing.

A worker hashes a chunk first; if the pool already stores it (a file rewritten in the
middle re-reads every unchanged chunk), compressing it would be wasted work. Each worker
thread gets its own read-only connection to the index, so the engine's connection stays
on its own thread.

Into a pool that was empty when the run began (a first backup) nothing is asked while it
stays so (`empty`; the walking thread looks again now and then, and clears it once the
pool has a chunk): the answer would be "no" for every chunk, at the price of a query each
(~8 µs, and the GIL handed over and taken back around it). A chunk the run stores twice
is then compressed twice; the walking thread keeps one copy.
"""

from __future__ import annotations

import threading
from pathlib import Path

from durafs.format.frames import StoredChunk, codec_for_thread
from durafs.index.catalog import Catalog, open_catalog


class KnownChunks:
    """Hash-then-compress for one pool: `encode` skips compression of stored chunks."""

    def __init__(self, index_path: Path, pool_id: int, id_key: bytes, *, empty: bool) -> None:
        """*empty*: the pool stores no chunk (nothing is looked up while it is set)."""
        self.index_path = index_path
        self.pool_id = pool_id
        self.id_key = id_key
        self.empty = empty
        self._local = threading.local()
        self._all: list[Catalog] = []
        self._lock = threading.Lock()
        #: Row ids of the chunks `encode` found in the index. The walking thread takes
        #: them (`found`) instead of asking again: a chunk once in the index stays there
        #: for the run. (Not-found answers are not kept: the run itself may store the
        #: chunk before the walking thread gets to this one.) Dict operations are atomic.
        self._found: dict[bytes, int] = {}

    def encode(self, data: bytes | memoryview) -> StoredChunk:
        """The stored form of *data*; for a chunk the pool has, an empty frame (never
        written: the caller finds the chunk in the index and only refers to it)."""
        codec = codec_for_thread(self.id_key)
        cid = codec.chunk_id(data)
        if self.known_of([cid]):
            return StoredChunk.reference(cid, len(data))
        return codec.encode(data, cid)

    def known_of(self, cids: list[bytes]) -> set[bytes]:
        """Which of *cids* the pool has (one query; nothing asked while `empty`). The
        walking thread takes their row ids (`found`)."""
        if self.empty or not cids:
            return set()
        rows = self._catalog().lookup_chunks(self.pool_id, cids, usable=True)
        for cid, row in rows.items():
            self._found[cid] = row.id
        return set(rows)

    def found(self, cid: bytes) -> int | None:
        """The row id `encode` or `known_of` found for *cid*, once (None: not found there, or asked
        already)."""
        return self._found.pop(cid, None)

    def _catalog(self) -> Catalog:
        catalog: Catalog | None = getattr(self._local, "catalog", None)
        if catalog is None:
            catalog = self._local.catalog = open_catalog(self.index_path, readonly=True)
            with self._lock:
                self._all.append(catalog)
        return catalog

    def close(self) -> None:
        with self._lock:
            for catalog in self._all:
                catalog.close()
            self._all.clear()
