"""Which chunks a pool has already, as the walking thread of a backup sees it.

A chunk is stored once per pool. Before the walking thread stores a finished chunk it
asks here: the run's own map first (chunks this run committed or found), then the index,
in one query for many chunks (`look_up`; one query per chunk costs more than hashing a
small file). Only the running backup adds chunks to the pool, so an answer "not there"
holds until this run stores the chunk itself.

Into a pool that had no chunk when the run began (a first backup) nothing is asked while
it stays so: every answer would be "no". A backup of another plan into the same pool may
commit chunks meanwhile, so the pool is looked at again every `EMPTY_RECHECK` seconds.
The workers' own look-ups (`KnownChunks`, hash-then-compress) follow the same flag.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from durafs.engine.known import KnownChunks
from durafs.engine.poolwriter import PoolWriter
from durafs.index.catalog import Catalog
from durafs.index.rows import VersionRow

#: Seconds between looks at whether a pool that was empty when the run began still is (a
#: backup of another plan into it may commit chunks meanwhile).
EMPTY_RECHECK = 1.0


class PoolChunks:
    """The chunks of *writer*'s pool this run knows the row ids of, and the index asked
    for the others. Used by the walking thread alone."""

    def __init__(self, catalog: Catalog, writer: PoolWriter, known: KnownChunks) -> None:
        self.catalog = catalog
        self.pool_id = writer.pool.id
        self.writer = writer
        self.known = known
        #: cid -> chunks.id of the chunks committed by this run or found in the index
        self.ids: dict[bytes, int] = {}
        # cids the pool had not when last asked (only this run adds chunks to the pool)
        self._absent: dict[bytes, bool] = {}
        self._empty_seen = 0.0  # when the pool was last seen empty (monotonic)
        #: chunks.id of the pool's chunks in lost volumes (`lost_volumes`), as the run began
        self.lost: set[int] = set()

    def start(self) -> None:
        """Look whether the pool has any chunk (once orphan volumes are adopted), and
        which are in volumes found lost."""
        self.known.empty = not self.catalog.has_chunks(self.pool_id)
        self._empty_seen = time.monotonic()
        self.lost = self.catalog.lost_chunk_ids(self.pool_id)

    def lost_content(self, version: VersionRow) -> bool:
        """Whether the content of file *version* has a chunk in a volume found lost: the
        file is read again, so that chunk is stored again."""
        return bool(self.lost) and any(rid in self.lost for _, rid, _ in version.pieces())

    def index_empty(self) -> bool:
        """Whether the pool has no chunk in the index, so asking it is needless: it had
        none when the run began and nothing committed one since, neither this run (a first
        backup, until its first volume is on its medium: with 1 GiB volumes, all of most
        first backups) nor, as a look every EMPTY_RECHECK seconds tells, a backup of
        another plan into the same pool."""
        if not self.known.empty:
            return False
        now = time.monotonic()
        if now >= self._empty_seen + EMPTY_RECHECK:
            self._empty_seen = now
            if self.catalog.has_chunks(self.pool_id):
                self.known.empty = False  # the workers ask again too
        elif self.writer.volumes_written:
            self.known.empty = False
        return self.known.empty

    def find(self, cid: bytes) -> int | None:
        """The row id of *cid* in the pool's index, or None (a batch query may have
        told already)."""
        if self._absent.pop(cid, False) or self.index_empty():
            return None
        return self.find_now(cid)

    def find_now(self, cid: bytes) -> int | None:
        """The row id of *cid* in the pool's index, asked now (no answer kept from before
        counts: a backup of another plan into the pool may have stored it since)."""
        row = self.catalog.lookup_chunks(self.pool_id, [cid], usable=True).get(cid)
        return None if row is None else row.id

    def look_up(self, cids: Iterable[bytes]) -> None:
        """Ask the index in one query which of *cids* the pool has (for `find`); those
        known already or in the volume being written are not asked."""
        if self.index_empty():
            return
        wanted = [c for c in cids if c not in self.ids and c not in self._absent
                  and c not in self.writer.open]
        found = (self.catalog.lookup_chunks(self.pool_id, wanted, usable=True)
                 if wanted else {})
        for cid in wanted:
            if cid in found:
                self.ids[cid] = found[cid].id
            else:
                self._absent[cid] = True

    def keep_only(self, needed: set[bytes]) -> None:
        """Forget the row ids not in *needed*: the map is only a cache for dedup (the
        index answers too) besides what waiting entries need, so trimming it keeps memory
        flat in the number of files."""
        self.ids = {c: i for c, i in self.ids.items() if c in needed}
