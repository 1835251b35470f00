"""Chunk frames: how chunks' bytes are stored inside a data member.

A stored chunk is one zstd frame (RFC 8878), or a piece of a *pack*: one frame holding
several small chunks back to back, announced by a skippable frame that lists their sizes
(docs/FORMAT.md §2.1, §2.2). Small files compressed together take a quarter less room than each
alone (zstd learns their common vocabulary once per pack, not once per file). Either way a
whole data member decompresses with plain ``zstd -d`` (which skips skippable frames) to
the chunks' plaintexts back to back. Data that compresses is a frame made by libzstd; data
that does not (found by a cheap probe) is a frame of *raw blocks* that durafs writes
itself at memcpy speed, so incompressible media costs no compressor time.
"""

from __future__ import annotations

import struct
import threading
from dataclasses import dataclass

import blake3
import zstandard

from durafs.errors import FormatError, IntegrityError

ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
#: Frame header descriptor of a raw frame: Frame_Content_Size_flag=3 (8-byte size field),
#: Single_Segment_flag=1, no checksum, no dictionary.
RAW_FRAME_DESCRIPTOR = 0xE0
#: zstd's Block_Maximum_Size: no block may hold more than 128 KiB.
MAX_BLOCK = 128 * 1024

#: Default compression level: the same as Borg's zstd,3 that we compare against.
DEFAULT_LEVEL = 3
#: Probe: this many bytes, in `PROBE_SAMPLES` pieces spread over the chunk, are compressed
#: at level 1 to decide "raw or not". Spread, because a chunk may mix kinds (a disk image:
#: random blocks next to text or zeros); one sample from the middle stored such chunks raw.
PROBE_BYTES = 16 * 1024
PROBE_SAMPLES = 4
#: Store raw when the probe (or the real compression) saves less than this fraction.
MIN_SAVING = 0.03
#: Inputs up to this size get a compression context of their own (see ChunkCodec).
SMALL_INPUT = 128 * 1024

#: Magic of the skippable frame that announces a pack (0x184D2A5D, little-endian): one of
#: the sixteen skippable-frame magics of RFC 8878 §3.1.2, which `zstd -d` steps over.
PACK_MAGIC = b"\x5d\x2a\x4d\x18"
#: Most chunks one pack holds (its table's size stays small, its pieces quick to find).
PACK_MAX_CHUNKS = 255
#: Most plaintext bytes one pack holds: reading one small file from a mount decompresses
#: its whole pack, so packs stay small; 256 KiB gets most of what packing saves.
PACK_MAX_BYTES = 256 * 1024
#: Chunks up to this size are packed: larger ones compress about as well alone.
PACK_CHUNK_MAX = 64 * 1024
#: A reader refuses a frame claiming more content than this (damage, not a chunk or pack).
MAX_FRAME_CONTENT = 16 * 1024 * 1024


def raw_frame(data: bytes | memoryview) -> bytes:
    """Return *data* wrapped unchanged in a zstd frame of raw blocks."""
    view = memoryview(data)
    size = len(view)
    parts: list[bytes | memoryview] = [
        ZSTD_MAGIC,
        struct.pack("<BQ", RAW_FRAME_DESCRIPTOR, size),
    ]
    pos = 0
    while True:
        block = view[pos : pos + MAX_BLOCK]
        pos += len(block)
        last = pos >= size
        # Block_Header: bit 0 Last_Block, bits 1-2 Block_Type (0 = Raw), bits 3-23 Block_Size.
        header = (len(block) << 3) | int(last)
        parts.append(header.to_bytes(3, "little"))
        parts.append(block)
        if last:
            return b"".join(parts)


def looks_incompressible(data: bytes | memoryview, probe: zstandard.ZstdCompressor) -> bool:
    """Cheap probe: compress `PROBE_SAMPLES` samples spread from the start to the end of
    *data* (which should be several `PROBE_BYTES` long) with *probe* (a level-1
    compressor); True if together they barely shrink."""
    view = memoryview(data)
    if len(view) < 512:
        return False
    part = min(PROBE_BYTES // PROBE_SAMPLES, len(view))
    last = len(view) - part
    sampled = saved = 0
    for i in range(PROBE_SAMPLES):
        start = last * i // (PROBE_SAMPLES - 1)
        sample = view[start : start + part]
        sampled += len(sample)
        saved += len(sample) - len(probe.compress(sample))
    return saved < sampled * MIN_SAVING


def pack_table(sizes: list[int]) -> bytes:
    """The skippable frame announcing a pack of chunks of *sizes* (docs/FORMAT.md §2.2)."""
    content = struct.pack(f"<B{len(sizes)}I", len(sizes), *sizes)
    return PACK_MAGIC + struct.pack("<I", len(content)) + content


def parse_pack_table(data: bytes | memoryview, pos: int) -> tuple[list[int], int] | None:
    """The chunk sizes of the pack table at *pos* of *data* and the table's length; None
    if no pack table starts there. Raises FormatError if one starts there but is damaged."""
    view = memoryview(data)
    if bytes(view[pos : pos + 4]) != PACK_MAGIC:
        return None
    if pos + 9 > len(view):
        raise FormatError(f"pack table at {pos} is cut short")
    length = int.from_bytes(view[pos + 4 : pos + 8], "little")
    count = view[pos + 8]
    if not 2 <= count <= PACK_MAX_CHUNKS or length != 1 + 4 * count or pos + 8 + length > len(view):
        raise FormatError(f"pack table at {pos} is damaged")
    sizes = list(struct.unpack_from(f"<{count}I", view, pos + 9))
    return sizes, 8 + length


@dataclass(frozen=True, slots=True, eq=False)
class Pack:
    """Small chunks stored in one frame: the frame, its table (a skippable frame written
    just before it) and every chunk it holds, (id, size), in order. Compared by identity:
    a volume writer stores each pack it is handed once."""

    frame: bytes
    raw: bool
    table: bytes
    pieces: tuple[tuple[bytes, int], ...]


@dataclass(frozen=True, slots=True)
class StoredChunk:
    """One chunk ready for a volume: its id, its plaintext size and its stored frame. A
    packed chunk's frame is its pack's, and *fpos* where it starts in the pack's content."""

    id: bytes
    size: int
    frame: bytes
    raw: bool
    pack: Pack | None = None
    fpos: int = 0

    @classmethod
    def reference(cls, chunk_id: bytes, size: int) -> StoredChunk:
        """A chunk stored already: no frame (never written, the caller only refers to it)."""
        return cls(chunk_id, size, b"", raw=False)


class ChunkCodec:
    """Turns plaintext chunks into frames and back, and checks ids.

    One codec per thread: zstd contexts are not thread-safe, so callers keep a codec in
    thread-local storage (``codec_for_thread``).
    """

    def __init__(self, id_key: bytes, level: int = DEFAULT_LEVEL) -> None:
        self.id_key = id_key
        self.level = level
        self._cctx = zstandard.ZstdCompressor(level=level, write_content_size=True)
        # zstd sizes its tables to each input and frees a workspace that stays oversized
        # for a while, so small files between large chunks made it reallocate (and
        # page-fault) the large one again and again: each size class keeps its own.
        self._cctx_small = zstandard.ZstdCompressor(level=level, write_content_size=True)
        self._dctx = zstandard.ZstdDecompressor()
        self._probe = zstandard.ZstdCompressor(level=1)
        #: The pack frame decoded last and its content: a pack's chunks are read one after
        #: another (restore, verify, a directory copied from a mount), one decompression.
        self._pack_frame: bytes = b""
        self._pack_content: bytes = b""

    def chunk_id(self, data: bytes | memoryview) -> bytes:
        """Keyed BLAKE3 of *data*: the chunk's identity, which leaks nothing without the key."""
        return blake3.blake3(data, key=self.id_key, max_threads=1).digest()

    def encode(self, data: bytes | memoryview, chunk_id: bytes | None = None) -> StoredChunk:
        """Hash and compress *data* (raw frame when it does not compress)."""
        if chunk_id is None:
            chunk_id = self.chunk_id(data)
        size = len(data)
        # Below a few probe sizes, trying the real compression costs about what the probe does.
        probe = size > 4 * PROBE_BYTES
        if size and not (probe and looks_incompressible(data, self._probe)):
            cctx = self._cctx_small if size <= SMALL_INPUT else self._cctx
            frame = cctx.compress(data)
            if len(frame) < size * (1 - MIN_SAVING):
                return StoredChunk(chunk_id, size, frame, raw=False)
        return StoredChunk(chunk_id, size, raw_frame(data), raw=True)

    def encode_pack(self, chunks: list[bytes], ids: list[bytes] | None = None
                    ) -> list[StoredChunk]:
        """Hash *chunks* (unless their *ids* are given) and store them together in one
        pack (at least two, each at most PACK_CHUNK_MAX bytes, at most PACK_MAX_CHUNKS)."""
        if not 2 <= len(chunks) <= PACK_MAX_CHUNKS:
            raise ValueError(f"a pack holds 2 to {PACK_MAX_CHUNKS} chunks, not {len(chunks)}")
        if ids is None:
            ids = [self.chunk_id(c) for c in chunks]
        content = b"".join(chunks)
        whole = self.encode(content, b"")
        pack = Pack(whole.frame, whole.raw, pack_table([len(c) for c in chunks]),
                    tuple(zip(ids, map(len, chunks), strict=True)))
        out = []
        fpos = 0
        for cid, chunk in zip(ids, chunks, strict=True):
            out.append(StoredChunk(cid, len(chunk), whole.frame, whole.raw, pack, fpos))
            fpos += len(chunk)
        return out

    def decode(self, frame: bytes | memoryview, size: int, chunk_id: bytes, what: str,
               fpos: int = 0) -> bytes:
        """Decompress one frame and check it against *chunk_id*; *what* names it in errors.
        With *fpos*, or a frame holding more than *size* bytes, the frame is a pack and the
        chunk the *size* bytes at *fpos* of its content."""
        try:
            content_size = zstandard.frame_content_size(frame)
            if fpos == 0 and content_size == size:
                data = self._dctx.decompress(frame, max_output_size=size)
            else:
                data = self._pack_piece(frame, content_size, fpos, size)
        except zstandard.ZstdError as exc:
            raise IntegrityError(f"{what}: stored frame is damaged ({exc})") from exc
        if len(data) != size or self.chunk_id(data) != chunk_id:
            raise IntegrityError(f"{what}: content does not match its chunk id (damaged data)")
        return data

    def _pack_piece(self, frame: bytes | memoryview, content_size: int, fpos: int,
                    size: int) -> bytes:
        if not 0 <= fpos + size <= content_size <= MAX_FRAME_CONTENT:
            return b""  # not what the index says: the caller reports the mismatch
        # bytes against bytes: a memoryview compares item by item, 40 times slower than
        # the copy (a pack's frame is ~100 KiB)
        if len(self._pack_frame) != len(frame) or self._pack_frame != bytes(frame):
            # the old one goes now, not after the new one is made; the frame with it, so
            # that one failing to decompress leaves no frame paired with content not its own
            self._pack_frame = self._pack_content = b""
            self._pack_content = self._dctx.decompress(frame, max_output_size=content_size)
            self._pack_frame = bytes(frame)
        return self._pack_content[fpos : fpos + size]


_local = threading.local()


def codec_for_thread(id_key: bytes, level: int = DEFAULT_LEVEL) -> ChunkCodec:
    """This thread's codec for *id_key* (zstd contexts must not be shared between threads)."""
    codecs: dict[tuple[bytes, int], ChunkCodec] = _local.__dict__.setdefault("codecs", {})
    codec = codecs.get((id_key, level))
    if codec is None:
        codec = codecs[(id_key, level)] = ChunkCodec(id_key, level)
    return codec
