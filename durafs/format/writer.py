"""Streaming volume writer: header, data members, manifest and seal, front to back.

Memory stays bounded: only the data member being filled (about ``member_target`` bytes)
and the compressed manifest (spilled to a temporary file past a few MiB) are held.
Nothing is ever sought back to, so the same writer feeds a file, a tape or an upload.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import IO, Protocol

import blake3
import zstandard

from durafs.format import age, tarfmt
from durafs.format.frames import Pack, StoredChunk
from durafs.format.header import (
    DATA_MEMBER_PREFIX,
    HEADER_MEMBER,
    MANIFEST_MEMBER,
    SEAL_MEMBER,
    SEAL_SIZE,
    ChunkEntry,
    MemberEntry,
    VolumeHeader,
    dumps,
)
from durafs.serial import SerialWorker

#: Data members are closed once they reach this size: large enough that per-member tar
#: overhead (1 KiB at most) is noise, small enough to bound the writer's memory (the one
#: being filled and two more the volume's thread is writing; 8 MiB took 12 MiB more at the
#: backup's peak, which a less frequent malloc_trim needs, see engine/memory.py).
MEMBER_TARGET = 4 * 1024 * 1024
_COPY = 1024 * 1024
#: At least what one manifest record takes, but for the paths in a chunk's record: the
#: largest (a chunk's) is ~200 bytes of hex id, offsets and keys.
RECORD_BOUND = 320


class Sink(Protocol):
    # bytearray too: that is what the age writer hands on when encrypting
    def write(self, data: age.Buffer, /) -> object: ...


class _CountingSink:
    """Counts the bytes that really reach the medium (ciphertext when encrypted)."""

    def __init__(self, sink: Sink) -> None:
        self.sink = sink
        self.count = 0

    def write(self, data: age.Buffer) -> None:
        self.sink.write(data)
        self.count += len(data)


class _PackSlot:
    """A pack in the data member being filled: its chunks' files, filled in as the chunks
    are added (each chunk of a pack the pool already has keeps none: it is listed, being in
    the frame, but a file finds it where the pool had it)."""

    __slots__ = ("files", "pack")

    def __init__(self, pack: Pack) -> None:
        self.pack = pack
        self.files: dict[int, tuple[tuple[bytes, int], ...]] = {}


_Pending = tuple[StoredChunk, tuple[tuple[bytes, int], ...]] | _PackSlot


@dataclass(frozen=True, slots=True)
class VolumeSummary:
    """What finishing a volume produced: sizes and the manifest counts."""

    volume_id: str
    plain_size: int
    stored_size: int
    chunks: int
    members: int


class VolumeWriter:
    """Writes one volume to *sink*; ``add_chunk`` returns where each chunk landed.

    Not thread-safe: one pipeline stage owns the writer and feeds it chunks that worker
    threads already hashed and compressed (``ChunkCodec.encode``). Offsets are in the
    volume's plaintext stream; with encryption the reader maps them through age.
    """

    def __init__(
        self,
        sink: Sink,
        header: VolumeHeader,
        recipients: Sequence[age.X25519Recipient | age.ScryptRecipient] = (),
        *,
        member_target: int = MEMBER_TARGET,
    ) -> None:
        self.header = header
        self._counter = _CountingSink(sink)
        self._age = age.AgeWriter(self._counter, recipients) if recipients else None
        self._out: Sink = self._age if self._age is not None else self._counter
        self._mtime = header.created_ns // 1_000_000_000
        self._member_target = member_target
        self.pos = 0
        self._members = 0
        self._chunks = 0
        self._pending: list[bytes] = []
        self._pending_chunks: list[_Pending] = []
        self._pending_size = 0
        self._background = SerialWorker("durafs-volume")
        # Closed in finish(); a volume abandoned mid-way leaves it to the garbage collector.
        #: At least what the manifest's records take uncompressed (see `reserve`).
        self._manifest_bound = RECORD_BOUND
        self._manifest_file = tempfile.SpooledTemporaryFile(max_size=4 << 20)  # noqa: SIM115
        self._manifest = zstandard.ZstdCompressor(level=3, write_checksum=True).stream_writer(
            self._manifest_file, closefd=False
        )
        self._record(
            {"t": "manifest", "format": header.format, "volume_id": header.volume_id}
        )
        self.add_member(HEADER_MEMBER, header.to_json())

    # -- public -----------------------------------------------------------------------------

    @property
    def size(self) -> int:
        """Plaintext bytes the volume has so far, counting the member being filled."""
        return self.pos + (tarfmt.BLOCK + self._pending_size if self._pending else 0)

    @property
    def reserve(self) -> int:
        """At most what `finish` adds after `size`: the manifest (bounded as if zstd saved
        nothing), its tar header and padding, the seal member and the archive's end. A
        medium with room for `size + reserve` takes the whole volume."""
        bound = self._manifest_bound
        return (bound + bound // 128 + 1024 + 4 * tarfmt.BLOCK + SEAL_SIZE
                + len(tarfmt.END_OF_ARCHIVE))

    @staticmethod
    def chunk_record_bound(files: Sequence[tuple[bytes, int]]) -> int:
        """At most what a chunk's manifest record takes (a path byte escapes to 6)."""
        bound = RECORD_BOUND + 32 * len(files)
        for path, _ in files:
            bound += 6 * len(path)
        return bound

    def growth(self, chunk: StoredChunk, record_bound: int) -> int:
        """At most what `add_chunk` of *chunk* adds to `size + reserve` (`chunk_growth`)."""
        added = chunk.pack is not None and self._pack_added(chunk.pack) is not None
        return chunk_growth(chunk, record_bound, pack_added=added)

    def add_chunk(self, chunk: StoredChunk, files: Sequence[tuple[bytes, int]] = (),
                  record_bound: int | None = None) -> int:
        """Append one stored chunk; return the plaintext offset of its frame.

        *files* names the file pieces the chunk is: (path, offset in that file);
        *record_bound* is `chunk_record_bound` of them, when the caller has it already.
        The chunks of a pack are added one after another: the first adds the pack (every
        chunk in it is listed), the others only their files.
        """
        if record_bound is None:
            record_bound = self.chunk_record_bound(files)
        pack = chunk.pack
        if pack is None:
            self._manifest_bound += record_bound
            offset = self._add_frame([chunk.frame])
            self._pending_chunks.append((chunk, tuple(files)))
            return offset
        slot = self._pack_added(pack)
        if slot is None:
            self._manifest_bound += RECORD_BOUND * len(pack.pieces)
            offset = self._add_frame([pack.table, pack.frame]) + len(pack.table)
            slot = _PackSlot(pack)
            self._pending_chunks.append(slot)
        else:
            offset = self.pos + tarfmt.BLOCK + self._pending_size - len(pack.frame)
        self._manifest_bound += record_bound - RECORD_BOUND
        slot.files[chunk.fpos] = tuple(files)
        return offset

    def _pack_added(self, pack: Pack) -> _PackSlot | None:
        """The slot of *pack* if it is the frame added last (and so still pending)."""
        last = self._pending_chunks[-1] if self._pending_chunks else None
        return last if isinstance(last, _PackSlot) and last.pack is pack else None

    def _add_frame(self, parts: list[bytes]) -> int:
        """Put *parts* (a frame, and the table before a pack's) into the data member being
        filled, first closing it if they would take it past its target; returns where they
        start in the plaintext stream."""
        size = sum(map(len, parts))
        if self._pending and self._pending_size + size > self._member_target:
            self._flush_member()
        offset = self.pos + tarfmt.BLOCK + self._pending_size
        self._pending.extend(parts)
        self._pending_size += size
        return offset

    def add_member(self, name: str, data: bytes) -> MemberEntry:
        """Append a whole non-chunk member (catalog tree, index copy) held in memory."""
        self._manifest_bound += RECORD_BOUND + 6 * len(name)
        self._sync()
        digest = blake3.blake3(data, key=self.header.id_key).digest()
        entry = MemberEntry(name, self._write_member(name, [data], len(data)), len(data), digest)
        self._record(entry.to_record())
        return entry

    def add_member_file(self, name: str, src: IO[bytes], size: int) -> MemberEntry:
        """Append a member copied from file *src* (*size* bytes), streaming, hashed on the way."""
        self._manifest_bound += RECORD_BOUND + 6 * len(name)
        entry = self._copy_member(name, src, size)
        self._record(entry.to_record())
        return entry

    def _copy_member(self, name: str, src: IO[bytes], size: int) -> MemberEntry:
        self._sync()
        hasher = blake3.blake3(key=self.header.id_key)
        data_offset = self._write_header(name, size)
        remaining = size
        while remaining:
            piece = src.read(min(_COPY, remaining))
            if not piece:
                raise OSError(f"{name}: source ended {remaining} bytes early")
            hasher.update(piece)
            self._emit(piece)
            remaining -= len(piece)
        self._emit(bytes(tarfmt.padding(size)))
        return MemberEntry(name, data_offset, size, hasher.digest())

    def finish(self) -> VolumeSummary:
        """Write the manifest, the seal and the end of the archive; close the encryption."""
        self._sync()
        self._background.close()
        self._manifest.flush(zstandard.FLUSH_FRAME)
        manifest_size = self._manifest_file.tell()
        self._manifest_file.seek(0)
        manifest = self._copy_member(MANIFEST_MEMBER, self._manifest_file, manifest_size)
        self._manifest_file.close()
        seal = dumps(
            {
                "format": self.header.format,
                "volume_id": self.header.volume_id,
                "manifest_off": manifest.offset,
                "manifest_len": manifest.size,
                "manifest_blake3": manifest.blake3.hex(),
                "chunks": self._chunks,
                "members": self._members,
            }
        )
        if len(seal) > SEAL_SIZE:
            raise AssertionError("seal record outgrew its block")
        self._write_member(SEAL_MEMBER, [seal.ljust(SEAL_SIZE, b" ")], SEAL_SIZE)
        self._emit(tarfmt.END_OF_ARCHIVE)
        if self._age is not None:
            self._age.close()
        return VolumeSummary(
            self.header.volume_id, self.pos, self._counter.count, self._chunks, self._members
        )

    def abort(self) -> None:
        """Stop writing (the caller discards the sink): waits for writes under way."""
        self._background.close(wait=False)

    # -- internals --------------------------------------------------------------------------

    def _sync(self) -> None:
        """Close the data member being filled and wait until all of it is written, before
        this thread writes to the volume or the manifest itself."""
        self._flush_member()
        self._background.wait()

    def _record(self, record: dict[str, object]) -> None:
        self._manifest.write(dumps(record) + b"\n")

    def _emit(self, data: bytes | memoryview) -> None:
        self._out.write(data)
        self.pos += len(data)

    def _write_header(self, name: str, size: int) -> int:
        self._emit(tarfmt.member_header(name, size, self._mtime))
        self._members += 1
        return self.pos

    def _write_member(self, name: str, parts: Sequence[bytes], size: int) -> int:
        data_offset = self._write_header(name, size)
        for part in parts:
            self._emit(part)
        self._emit(bytes(tarfmt.padding(size)))
        return data_offset

    def _flush_member(self) -> None:
        """Close the data member being filled; its bytes are written on the volume's own
        thread while the caller goes on filling the next one."""
        if not self._pending:
            return
        name = f"{DATA_MEMBER_PREFIX}{self._members:08d}.zst"
        header = tarfmt.member_header(name, self._pending_size, self._mtime)
        if len(header) != tarfmt.BLOCK:
            raise AssertionError("data member header must be one block")
        size = self._pending_size
        parts = [header, *self._pending, bytes(tarfmt.padding(size))]
        self._background.submit(self._store_member, name, self.pos + tarfmt.BLOCK,
                                self._pending_chunks, parts)
        self.pos += sum(len(p) for p in parts)
        self._members += 1
        self._chunks += sum(len(c.pack.pieces) if isinstance(c, _PackSlot) else 1
                            for c in self._pending_chunks)
        self._pending = []
        self._pending_chunks = []
        self._pending_size = 0

    def _store_member(
        self, name: str, data_offset: int, chunks: list[_Pending], parts: list[bytes],
    ) -> None:
        """On the volume's thread: the member's manifest records, then its bytes."""
        member_offset = member_pos = 0
        write = self._manifest.write
        for item in chunks:
            if isinstance(item, _PackSlot):
                member_offset, member_pos = self._pack_lines(
                    item, name, data_offset, member_offset, member_pos)
                continue
            chunk, files = item
            write(ChunkEntry(
                chunk.id, data_offset + member_offset, len(chunk.frame), chunk.size,
                chunk.raw, name, member_offset, member_pos, files,
            ).to_line())
            member_offset += len(chunk.frame)
            member_pos += chunk.size
        for part in parts:
            self._out.write(part)

    def _pack_lines(self, slot: _PackSlot, name: str, data_offset: int, member_offset: int,
                    member_pos: int) -> tuple[int, int]:
        """A pack's manifest records, one per chunk in it; returns where the member's next
        frame starts (in its data and in its decompressed bytes)."""
        pack = slot.pack
        member_offset += len(pack.table)
        fpos = 0
        for cid, size in pack.pieces:
            self._manifest.write(ChunkEntry(
                cid, data_offset + member_offset, len(pack.frame), size, pack.raw, name,
                member_offset, member_pos + fpos, slot.files.get(fpos, ()), fpos,
            ).to_line())
            fpos += size
        return member_offset + len(pack.frame), member_pos + fpos


def chunk_growth(chunk: StoredChunk, record_bound: int, *, pack_added: bool) -> int:
    """At most what adding *chunk* adds to a volume's `size + reserve`: its frame and its
    manifest record (*record_bound*); for the first chunk of a pack, the pack and a record
    per chunk in it; for the others of the pack (*pack_added*), their record's files only."""
    pack = chunk.pack
    if pack is None:
        return len(chunk.frame) + record_bound
    if pack_added:
        return record_bound - RECORD_BOUND
    return len(pack.table) + len(pack.frame) + record_bound + RECORD_BOUND * (len(pack.pieces) - 1)


def new_header(
    catalog_id: str, volume_id: str, kind: str, pool: str, encryption: str, id_key: bytes
) -> VolumeHeader:
    """A header stamped with the current time."""
    return VolumeHeader(catalog_id, volume_id, kind, pool, time.time_ns(), encryption, id_key)
