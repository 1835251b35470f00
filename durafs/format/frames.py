"""Chunk frames: how one chunk's bytes are stored inside a data member.

Every stored chunk is exactly one zstd frame (RFC 8878), so a whole data member, being
frames back to back, decompresses with plain ``zstd -d``. Data that compresses is a frame
made by libzstd; data that does not (found by a cheap probe) is a frame of *raw blocks*
that durafs writes itself at memcpy speed, so incompressible media costs no compressor time.
"""

from __future__ import annotations

import struct
import threading
from dataclasses import dataclass

import blake3
import zstandard

from durafs.errors import IntegrityError

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


@dataclass(frozen=True, slots=True)
class StoredChunk:
    """One chunk ready for a volume: its id, its plaintext size and its stored frame."""

    id: bytes
    size: int
    frame: bytes
    raw: bool


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

    def decode(self, frame: bytes | memoryview, size: int, chunk_id: bytes, what: str) -> bytes:
        """Decompress one frame and check it against *chunk_id*; *what* names it in errors."""
        try:
            data = self._dctx.decompress(frame, max_output_size=size)
        except zstandard.ZstdError as exc:
            raise IntegrityError(f"{what}: stored frame is damaged ({exc})") from exc
        if len(data) != size or self.chunk_id(data) != chunk_id:
            raise IntegrityError(f"{what}: content does not match its chunk id (damaged data)")
        return data


_local = threading.local()


def codec_for_thread(id_key: bytes, level: int = DEFAULT_LEVEL) -> ChunkCodec:
    """This thread's codec for *id_key* (zstd contexts must not be shared between threads)."""
    codecs: dict[tuple[bytes, int], ChunkCodec] = _local.__dict__.setdefault("codecs", {})
    codec = codecs.get((id_key, level))
    if codec is None:
        codec = codecs[(id_key, level)] = ChunkCodec(id_key, level)
    return codec
