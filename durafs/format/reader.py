"""Random access to one volume through a ``read_at(offset, length)`` source.

The same reader serves a file (``os.pread``), an HTTP range GET or a tape positioned by
block: reading one chunk costs one ranged read of its frame (plus, when encrypted, only
the 64 KiB age STREAM chunks that frame spans) — never a read from the volume's start.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import blake3
import zstandard

from durafs.errors import FormatError, IntegrityError, NoIdentityError, TruncatedError
from durafs.format import age, tarfmt
from durafs.format.frames import codec_for_thread
from durafs.format.header import (
    HEADER_MEMBER,
    SEAL_FROM_END,
    SEAL_MEMBER,
    SEAL_SIZE,
    Manifest,
    MemberEntry,
    VolumeHeader,
    check_same_version,
    loads,
    parse_manifest_lines,
)

ReadAt = Callable[[int, int], bytes]
Identity = age.X25519Identity | age.ScryptIdentity
AGE_MAGIC = b"age-encryption.org/v1\n"
#: The header member's JSON is small; one read of this much covers tar header and JSON.
_HEAD_READ = 8192


def chunk_what(volume: str, chunk_id: bytes, offset: int, fpos: int = 0) -> str:
    """How errors name a chunk: its volume, id and where it is."""
    where = f"at offset {offset}" if not fpos else f"at offset {offset} (+{fpos} in its pack)"
    return f"{volume}: chunk {chunk_id.hex()[:16]} {where}"


def is_encrypted(read_at: ReadAt) -> bool:
    """True if the volume starts with the age v1 magic line."""
    return read_at(0, len(AGE_MAGIC)) == AGE_MAGIC


class VolumeReader:
    """Opens a volume (decrypting if it is age-encrypted) and reads chunks and members.

    Thread-safe for concurrent ``read_chunk`` calls: the underlying *read_at* must be
    (``os.pread`` is), and each thread uses its own zstd context.
    """

    def __init__(
        self,
        read_at: ReadAt,
        *,
        identities: Sequence[Identity] = (),
        size: int | None = None,
        name: str = "volume",
        catalog_id: str | None = None,
    ) -> None:
        self.name = name
        self.encrypted = is_encrypted(read_at)
        if self.encrypted:
            if not identities:
                raise NoIdentityError(
                    f"{name}: volume is encrypted; its key or passphrase is needed"
                )
            reader = age.AgeReader(read_at, list(identities), size=size, name=name)
            self._read: ReadAt = reader.read
            self.plain_size = reader.plaintext_size
        else:
            self._read = read_at
            self.plain_size = size
        self.header = self._read_header()
        self.header.check_catalog(catalog_id, name)

    def read(self, offset: int, length: int) -> bytes:
        """Exactly *length* plaintext bytes at *offset*, or TruncatedError."""
        end = offset + length
        if self.plain_size is not None and end > self.plain_size:
            # Not read at all: the volume is known to end first. (Reading would report
            # the end as where this read stopped, not where the volume does, and an
            # encrypted one would blame its last age chunk for data lying beyond it.)
            raise TruncatedError(
                f"{self.name}: volume ends at {self.plain_size}, expected data up to {end}"
            )
        data = self._read(offset, length)
        if len(data) != length:
            # a read wholly past the end returns nothing: the end is before it, not at it
            where = f"at {offset + len(data)}" if data else f"before {offset}"
            raise TruncatedError(f"{self.name}: volume ends {where}, expected data up to {end}")
        return data

    def read_chunk(self, offset: int, length: int, size: int, chunk_id: bytes,
                   fpos: int = 0) -> bytes:
        """The plaintext of the chunk whose frame is at *offset* (at *fpos* of its content,
        in a pack), checked against its id."""
        what = chunk_what(self.name, chunk_id, offset, fpos)
        try:
            frame = self.read(offset, length)
        except IntegrityError as exc:
            raise IntegrityError(f"{what}: {exc}") from exc
        codec = codec_for_thread(self.header.id_key)
        return codec.decode(frame, size, chunk_id, what, fpos)

    def read_member(self, entry: MemberEntry) -> bytes:
        """A whole non-chunk member, checked against its manifest hash."""
        data = self.read(entry.offset, entry.size)
        if blake3.blake3(data, key=self.header.id_key).digest() != entry.blake3:
            raise IntegrityError(f"{self.name}: member {entry.name} is damaged (hash mismatch)")
        return data

    def read_manifest(self) -> Manifest:
        """The manifest, found through the seal at the volume's end (needs the size)."""
        if self.plain_size is None:
            raise FormatError(f"{self.name}: the volume's size is needed to find its manifest")
        seal = self._read_seal()
        what = f"{self.name} manifest"
        compressed = self.read(seal["manifest_off"], seal["manifest_len"])
        digest = blake3.blake3(compressed, key=self.header.id_key).digest()
        if digest.hex() != seal["manifest_blake3"]:
            raise IntegrityError(f"{what}: damaged (hash does not match the seal)")
        text = decompress_manifest(compressed, what)
        manifest = parse_manifest_lines(text, self.name, self.header)
        if manifest.volume_id != self.header.volume_id:
            raise FormatError(f"{what}: belongs to volume {manifest.volume_id}")
        return manifest

    def _read_header(self) -> VolumeHeader:
        head = self._read(0, _HEAD_READ)
        parsed = tarfmt.parse_block(head[: tarfmt.BLOCK], 0)
        if parsed is None or parsed[0] != HEADER_MEMBER:
            raise FormatError(f"{self.name}: does not start with a durafs volume header")
        size = parsed[2]
        end = tarfmt.BLOCK + size
        data = head[tarfmt.BLOCK : end] if end <= len(head) else self.read(tarfmt.BLOCK, size)
        if len(data) != size:
            raise TruncatedError(f"{self.name}: volume header is truncated")
        return VolumeHeader.from_json(data, self.name)

    def _read_seal(self) -> dict[str, Any]:
        # Any, as `loads` gives it: only the version and volume_id are checked here
        assert self.plain_size is not None
        start = self.plain_size - SEAL_FROM_END
        block = self.read(start, SEAL_FROM_END) if start > 0 else b""
        parsed = tarfmt.parse_block(block[: tarfmt.BLOCK], start) if block else None
        if parsed is None or parsed[0] != SEAL_MEMBER or parsed[2] != SEAL_SIZE:
            raise FormatError(f"{self.name}: no seal at the end (truncated or damaged volume)")
        if block[2 * tarfmt.BLOCK :] != tarfmt.END_OF_ARCHIVE:
            raise FormatError(f"{self.name}: damaged end-of-archive blocks")
        seal = loads(block[tarfmt.BLOCK : 2 * tarfmt.BLOCK], f"{self.name} seal")
        check_same_version(seal, self.header, f"{self.name} seal")
        if seal.get("volume_id") != self.header.volume_id:
            raise FormatError(f"{self.name}: seal belongs to another volume")
        return seal


def decompress_manifest(data: bytes, what: str) -> bytes:
    """Decompress the manifest member (one zstd frame with a content checksum)."""
    try:
        reader = zstandard.ZstdDecompressor().stream_reader(data, read_across_frames=True)
        return reader.read()
    except zstandard.ZstdError as exc:
        raise IntegrityError(f"{what}: damaged ({exc})") from exc


def file_read_at(fd: int) -> ReadAt:
    """A read_at over an open file descriptor (``os.pread``: thread-safe, no shared offset)."""
    def read_at(offset: int, length: int) -> bytes:
        return os.pread(fd, length, offset)

    return read_at
