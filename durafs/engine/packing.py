"""Which small chunks of a batch go into packs, on the worker thread that read them.

A pack (docs/FORMAT.md §2.2) is stored whole, so a chunk in it that the pool has already
would be stored again: the pack's frame cannot drop it once compressed. So the chunks are
sorted out before packing, as the walking thread would sort them (dedup.py), and those
stored already become references (an empty frame, as `KnownChunks` makes them):

- a chunk an earlier batch of this run holds: every small chunk is *claimed* by the
  first batch (in the walk's order) that packs it, until the walking thread has stored
  that batch (`release`); the walking thread stores batches in that order, so the claim's
  owner is stored first;
- a chunk this run stored already (`stored`: in the volume being written, or committed);
- a chunk the pool's index has (one query per batch, `KnownChunks.known_of`);
- a chunk twice in the batch: the first one is packed.

A chunk one batch claims while an earlier batch, read later, packs it too is stored twice:
that costs its bytes, never a reference to nothing.
"""

from __future__ import annotations

from collections.abc import Callable

from durafs.engine.known import KnownChunks
from durafs.format.frames import (
    PACK_MAX_BYTES,
    PACK_MAX_CHUNKS,
    ChunkCodec,
    StoredChunk,
    codec_for_thread,
)


class Packer:
    """Encodes the small chunks of read batches into packs, leaving out those stored."""

    def __init__(self, id_key: bytes, known: KnownChunks,
                 stored: Callable[[bytes], bool]) -> None:
        """*stored* tells whether this run stored a chunk already (called on workers: it
        may only read what the walking thread changes atomically)."""
        self.id_key = id_key
        self.known = known
        self.stored = stored
        #: cid -> number of the batch that packs it, while that batch is not stored yet
        self._claims: dict[bytes, int] = {}

    def encode(self, datas: list[bytes], batch: int) -> list[StoredChunk]:
        """The stored forms of the small chunks *datas* of batch number *batch*, in
        order: packed, alone in a frame, or references to a copy stored already."""
        codec = codec_for_thread(self.id_key)
        ids = [codec.chunk_id(data) for data in datas]
        elsewhere = self._stored_elsewhere(ids, batch)
        out: list[StoredChunk | None] = []
        new: list[int] = []
        seen: set[bytes] = set()
        for i, cid in enumerate(ids):
            if cid in elsewhere or cid in seen:
                out.append(StoredChunk.reference(cid, len(datas[i])))
            else:
                seen.add(cid)
                new.append(i)
                out.append(None)
        for group in pack_groups([len(datas[i]) for i in new]):
            members = [new[g] for g in group]
            for i, stored in zip(members, _encode_group(codec, datas, ids, members),
                                 strict=True):
                out[i] = stored
        return [s for s in out if s is not None]

    def release(self, cids: list[bytes], batch: int) -> None:
        """Batch number *batch* is stored (on the walking thread): its claims end."""
        claims = self._claims
        for cid in cids:
            if claims.get(cid) == batch:
                del claims[cid]

    def _stored_elsewhere(self, ids: list[bytes], batch: int) -> set[bytes]:
        """Which of *ids* the run or the pool has, or an earlier batch packs."""
        elsewhere = set()
        ask = []
        for cid in ids:
            owner = self._claims.setdefault(cid, batch)  # one atomic step under the GIL
            if owner < batch or self.stored(cid):
                elsewhere.add(cid)
            else:
                ask.append(cid)
        return elsewhere | self.known.known_of(ask)


def _encode_group(codec: ChunkCodec, datas: list[bytes], ids: list[bytes],
                  members: list[int]) -> list[StoredChunk]:
    if len(members) == 1:
        return [codec.encode(datas[members[0]], ids[members[0]])]
    return codec.encode_pack([datas[i] for i in members], [ids[i] for i in members])


def pack_groups(sizes: list[int]) -> list[list[int]]:
    """Indexes of chunks of *sizes* cut into runs that each fill one pack."""
    groups: list[list[int]] = []
    size = PACK_MAX_BYTES
    for i, length in enumerate(sizes):
        if size + length > PACK_MAX_BYTES or len(groups[-1]) >= PACK_MAX_CHUNKS:
            groups.append([])
            size = 0
        groups[-1].append(i)
        size += length
    return groups
