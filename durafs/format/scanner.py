"""Walk a volume front to back with no index: for verify and for rebuilding a lost index.

The scanner checks everything it passes — tar checksums, zero padding, every frame against
its chunk id, every member against the manifest, the manifest against the seal — and on
the first damage it reports where and stops, having already yielded everything before.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass

import blake3
import zstandard

from durafs.errors import DurafsError, FormatError, IntegrityError, TruncatedError
from durafs.format import tarfmt
from durafs.format.frames import ZSTD_MAGIC, codec_for_thread, parse_pack_table
from durafs.format.header import (
    DATA_MEMBER_PREFIX,
    HEADER_MEMBER,
    MANIFEST_MEMBER,
    SEAL_MEMBER,
    ChunkEntry,
    Manifest,
    MemberEntry,
    VolumeHeader,
    check_same_version,
    loads,
    parse_manifest_lines,
)
from durafs.format.reader import (
    Identity,
    ReadAt,
    VolumeReader,
    chunk_what,
    decompress_manifest,
)


@dataclass(frozen=True, slots=True)
class ScannedChunk:
    """A frame found in a data member, decompressed and checked against its id."""

    id: bytes
    offset: int
    length: int
    size: int
    member: str
    #: Where it starts in its frame's content (not 0 only in a pack).
    fpos: int = 0


@dataclass(frozen=True, slots=True)
class ScannedMember:
    """A non-chunk member (header, catalog tree, index copy): where its data lies."""

    name: str
    offset: int
    size: int
    blake3: bytes


@dataclass(frozen=True, slots=True)
class ScanDamage:
    """The scan stopped here: *offset* in the plaintext stream and what was wrong. With
    *frame*, the damage is the frame at *offset* alone (its bytes are not the chunk the
    manifest lists there): the scan went on past it, and more may follow."""

    offset: int
    message: str
    frame: bool = False


ScanEvent = VolumeHeader | ScannedChunk | ScannedMember | Manifest | ScanDamage


def scan_volume(
    read_at: ReadAt,
    *,
    identities: Sequence[Identity] = (),
    size: int | None = None,
    name: str = "volume",
    catalog_id: str | None = None,
) -> Iterator[ScanEvent]:
    """Yield the header, then chunks and members in order, then the verified manifest.

    On damage, yields one ScanDamage and stops. Opening errors (wrong key, foreign catalog,
    unknown version) are raised, not yielded: nothing can be read at all then.
    """
    reader = VolumeReader(
        read_at, identities=identities, size=size, name=name, catalog_id=catalog_id
    )
    yield reader.header
    yield from scan_reader(reader)


def scan_reader(
    reader: VolumeReader,
) -> Iterator[ScannedChunk | ScannedMember | Manifest | ScanDamage]:
    """Like scan_volume, through a volume already opened (its header read and checked)."""
    walker = _Walker(reader)
    try:
        yield from walker.walk()
    except DurafsError as exc:
        yield ScanDamage(walker.pos, str(exc))
        return
    for offset, message in walker.bad_frames.items():
        yield ScanDamage(offset, message, frame=True)


class _Walker:
    def __init__(self, reader: VolumeReader) -> None:
        self.reader = reader
        self.name = reader.name
        self.key = reader.header.id_key
        self.pos = 0
        self.chunks: dict[tuple[int, int], ScannedChunk] = {}  # by (offset, fpos)
        self.members: dict[str, ScannedMember] = {}
        self.seal: dict[str, object] | None = None
        self._data_members = 0
        #: frames whose blocks are whole but whose content is not: offset -> (length, why,
        #: how many chunks the frame holds)
        self.undecodable: dict[int, tuple[int, str, int]] = {}
        #: frames at their place in the manifest whose bytes are damaged: offset -> why
        self.bad_frames: dict[int, str] = {}

    def walk(self) -> Iterator[ScannedChunk | ScannedMember | Manifest]:
        manifest_data = b""
        while True:
            block = self._read_exact(tarfmt.BLOCK)
            parsed = tarfmt.parse_block(block, self.pos - tarfmt.BLOCK)
            if parsed is None:
                self._check_end()
                break
            member, typeflag, size = parsed
            if typeflag not in (b"0", b"\0"):
                raise FormatError(f"{self.name}: unexpected tar member type {typeflag!r}")
            if member.startswith(DATA_MEMBER_PREFIX):
                yield from self._data_member(member, size)
            elif member == SEAL_MEMBER:
                data = self._read_exact(size)
                self.seal = loads(data, f"{self.name} seal")
                # the JSON is padded with spaces (docs/FORMAT.md §3.3): a tab or newline
                # there still parses, so the padding is checked byte by byte
                if not data.rstrip(b" ").endswith(b"}"):
                    raise IntegrityError(f"{self.name}: damaged seal padding")
            else:
                scanned, data = self._plain_member(member, size)
                if member == MANIFEST_MEMBER:
                    manifest_data = data
                elif member != HEADER_MEMBER:
                    yield scanned
            self._check_padding(size)
        yield self._verify_manifest(manifest_data)

    def _read_exact(self, length: int) -> bytes:
        data = self.reader._read(self.pos, length)
        if len(data) != length:
            raise TruncatedError(
                f"{self.name}: volume is truncated at offset {self.pos + len(data)}"
            )
        self.pos += length
        return data

    def _check_padding(self, size: int) -> None:
        pad = tarfmt.padding(size)
        if pad and self._read_exact(pad) != bytes(pad):
            raise IntegrityError(f"{self.name}: damaged padding at offset {self.pos - pad}")

    def _check_end(self) -> None:
        if self._read_exact(tarfmt.BLOCK) != bytes(tarfmt.BLOCK):
            raise IntegrityError(f"{self.name}: damaged end-of-archive block")
        if self.reader._read(self.pos, 1):
            raise FormatError(f"{self.name}: unexpected bytes after the end of the archive")

    def _plain_member(self, member: str, size: int) -> tuple[ScannedMember, bytes]:
        # Only the manifest's bytes are kept (it is parsed at the end); other members
        # (catalog trees, index copies) may be large and are hashed piece by piece.
        start = self.pos
        hasher = blake3.blake3(key=self.key)
        kept: list[bytes] = []
        remaining = size
        while remaining:
            piece = self._read_exact(min(remaining, 1 << 20))
            hasher.update(piece)
            if member == MANIFEST_MEMBER:
                kept.append(piece)
            remaining -= len(piece)
        scanned = ScannedMember(member, start, size, hasher.digest())
        self.members[member] = scanned
        return scanned, b"".join(kept)

    def _data_member(self, member: str, size: int) -> Iterator[ScannedChunk]:
        self._data_members += 1
        start = self.pos
        data = self._read_exact(size)
        pos = 0
        while pos < size:
            try:
                table = parse_pack_table(data, pos)
            except FormatError as exc:
                self.pos = start  # the damage is in this member's data
                raise IntegrityError(f"{self.name}: {member} at offset {start + pos}: {exc}"
                                     ) from exc
            sizes = None
            if table is not None:
                if self.reader.header.format < 2:
                    self.pos = start
                    raise IntegrityError(f"{self.name}: {member} at offset {start + pos}: a "
                                         "pack table in a format version 1 volume")
                sizes, table_length = table
                pos += table_length
            length = yield from self._frame(member, data, start, pos, sizes)
            pos += length

    def _frame(self, member: str, data: bytes, start: int, pos: int,
               sizes: list[int] | None) -> Generator[ScannedChunk, None, int]:
        """The chunks of the frame at *pos* of a data member's *data* (a pack's, if *sizes*
        are given); returns the frame's length."""
        dobj = zstandard.ZstdDecompressor().decompressobj()
        try:
            plain = dobj.decompress(data[pos:])
            if dobj.eof and sizes is not None and sum(sizes) != len(plain):
                raise zstandard.ZstdError("its content is not what its pack table says")
        except zstandard.ZstdError as exc:
            message = f"{self.name}: damaged frame in {member} at offset {start + pos} ({exc})"
            length = frame_length(data, pos)
            if length is None:  # not even its blocks can be told apart: nothing after
                self.pos = start  # the damage is in this member's data
                raise IntegrityError(message) from exc
            self.undecodable[start + pos] = (length, message, len(sizes or (0,)))
            return length
        if not dobj.eof:
            raise IntegrityError(f"{self.name}: incomplete frame in {member} at {start + pos}")
        length = len(data) - pos - len(dobj.unused_data)
        codec = codec_for_thread(self.key)
        fpos = 0
        for size in sizes or (len(plain),):
            piece = memoryview(plain)[fpos : fpos + size]
            chunk = ScannedChunk(codec.chunk_id(piece), start + pos, length, size, member, fpos)
            self.chunks[(chunk.offset, fpos)] = chunk
            yield chunk
            fpos += size
        return length

    def _verify_manifest(self, data: bytes) -> Manifest:
        what = f"{self.name} manifest"
        scanned = self.members.get(MANIFEST_MEMBER)
        if self.seal is None or scanned is None:
            raise TruncatedError(f"{self.name}: no manifest or seal (truncated volume)")
        check_same_version(self.seal, self.reader.header, f"{self.name} seal")
        expected = {
            "volume_id": self.reader.header.volume_id,
            "manifest_off": scanned.offset,
            "manifest_len": scanned.size,
            "manifest_blake3": scanned.blake3.hex(),
            "members": len(self.members) + self._data_members,
            "chunks": len(self.chunks) + self._undecodable_chunks(),
        }
        if any(self.seal.get(k) != v for k, v in expected.items()):
            raise IntegrityError(f"{what}: damaged (the seal does not match the volume)")
        manifest = parse_manifest_lines(decompress_manifest(data, what), self.name,
                                        self.reader.header)
        for entry in manifest.chunks:
            self._check_chunk(entry)
        # a damaged frame spoils its data member's hash too: that is the same damage
        spoiled = {entry.member for entry in manifest.chunks if entry.offset in self.bad_frames}
        for member_entry in manifest.members:
            if member_entry.name not in spoiled:
                self._check_member(member_entry)
        if len(manifest.chunks) != len(self.chunks) + self._undecodable_chunks():
            raise IntegrityError(f"{what}: lists another number of chunks than the volume holds")
        return manifest

    def _check_chunk(self, entry: ChunkEntry) -> None:
        """A frame found at its place but holding other bytes is noted (`bad_frames`) and
        the scan goes on: the volume's structure holds, and what it damages is that chunk
        alone. No frame at all where the manifest has one is a broken volume."""
        found = self.chunks.get((entry.offset, entry.frame_pos))
        broken = self.undecodable.get(entry.offset)
        if broken is not None and broken[0] == entry.length:
            self.bad_frames[entry.offset] = broken[1]
        elif found is not None and found.length == entry.length and found.id != entry.id:
            what = chunk_what(self.name, entry.id, entry.offset, entry.frame_pos)
            self.bad_frames.setdefault(
                entry.offset, f"{what} is damaged (its bytes are not what its id says)")
        elif found is None or found.id != entry.id or found.length != entry.length:
            raise IntegrityError(
                f"{self.name}: chunk {entry.id.hex()[:16]} at offset {entry.offset} "
                "does not match the manifest"
            )

    def _undecodable_chunks(self) -> int:
        return sum(chunks for _, _, chunks in self.undecodable.values())

    def _check_member(self, entry: MemberEntry) -> None:
        found = self.members.get(entry.name)
        if found is None or found.blake3 != entry.blake3 or found.offset != entry.offset:
            raise IntegrityError(f"{self.name}: member {entry.name} does not match the manifest")


def frame_length(data: bytes | memoryview, pos: int) -> int | None:
    """The length of the zstd frame at *pos* of *data*, told from its header and block
    headers alone (RFC 8878 §3.1.1), or None if they do not hold together: so that a frame
    whose content is damaged can be stepped over to the frames after it."""
    view = memoryview(data)
    if bytes(view[pos : pos + 4]) != ZSTD_MAGIC or pos + 5 > len(view):
        return None
    descriptor = view[pos + 4]
    single = descriptor & 0x20
    fcs = (1 if single else 0, 2, 4, 8)[descriptor >> 6]
    here = pos + 5 + (0 if single else 1) + (0, 1, 2, 4)[descriptor & 3] + fcs
    while here + 3 <= len(view):
        header = int.from_bytes(view[here : here + 3], "little")
        kind, size = (header >> 1) & 3, header >> 3
        if kind == 3:  # reserved: not a block
            return None
        here += 3 + (1 if kind == 1 else size)
        if header & 1:  # the last block
            here += 4 if descriptor & 4 else 0  # its checksum
            return here - pos if here <= len(view) else None
    return None
