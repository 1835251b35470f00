"""The records every volume carries in plain JSON: header, manifest lines and seal.

Paths inside these records are bytes on Linux; they are stored as JSON strings made with
``os.fsdecode`` (UTF-8 with surrogateescape, PEP 383), so any name, valid UTF-8 or not,
round-trips through ``os.fsencode`` with nothing but the Python standard library.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from json.encoder import encode_basestring_ascii
from typing import Any

from durafs.errors import ForeignCatalogError, FormatError, UnsupportedVersionError

#: The format of the records other than volumes' (keys file, medium marker, index meta)
#: this code writes and the only one it reads (docs/FORMAT.md §8).
FORMAT_VERSION = 1
#: The format of volume headers, manifests and seals this code writes: version 2 added
#: packs (several small chunks in one frame, §2.2) and the manifest's `fpos`.
VOLUME_FORMAT = 2
#: The volume formats this code reads: a version 1 volume is a version 2 volume without
#: packs.
VOLUME_FORMATS = (1, 2)
VOLUME_MAGIC = "durafs-volume"

HEADER_MEMBER = "durafs/volume.json"
DATA_MEMBER_PREFIX = "durafs/data/"
MANIFEST_MEMBER = "durafs/manifest.jsonl.zst"
SEAL_MEMBER = "durafs/seal.json"
#: The seal's JSON is padded with spaces to exactly one block, so a reader that knows the
#: volume's size finds it without reading anything else: it starts SEAL_FROM_END bytes
#: before the end (seal header + seal data + the two end-of-archive blocks).
SEAL_SIZE = 512
SEAL_FROM_END = 4 * 512

KINDS = ("data", "catalog", "index")
ENCRYPTIONS = ("key", "password", "none")


def encode_path(path: bytes) -> str:
    """The JSON form of a path: fsdecode with surrogateescape (see module docstring)."""
    return os.fsdecode(path)


def decode_path(text: str) -> bytes:
    """Inverse of encode_path."""
    return os.fsencode(text)


#: One encoder for every record: json.dumps with options builds a new one per call, which
#: costs as much as encoding a small record (this runs once per chunk and per tree entry).
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=True)


def dumps(record: dict[str, Any]) -> bytes:
    """Compact, ASCII-only JSON (lone surrogates become \\udcXX escapes)."""
    return _ENCODER.encode(record).encode("ascii")


#: A str as `dumps` writes it: quoted, escaped, ASCII (the encoder's own function). Lines
#: written once per chunk or path are built from it, byte for byte what `dumps` makes of
#: their record, in a third of the time (the walk waits for the threads that write them).
json_str = encode_basestring_ascii


def loads(data: bytes, what: str) -> dict[str, Any]:
    """Parse one JSON object; damage becomes FormatError naming *what*."""
    try:
        record = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise FormatError(f"{what}: not valid JSON ({exc})") from exc
    if not isinstance(record, dict):
        raise FormatError(f"{what}: expected a JSON object")
    return record


def check_version(
    record: dict[str, Any], what: str, known: tuple[int, ...] = (FORMAT_VERSION,)
) -> int:
    """Refuse records of a format version this reader does not know; return the version.

    *known* lists the versions this reader reads of this kind of record (each record
    carries its own version, docs/FORMAT.md §8)."""
    version = record.get("format")
    if type(version) is not int or version not in known:
        reads = ", ".join(map(str, known))
        raise UnsupportedVersionError(
            f"{what}: format version {version!r} is not supported "
            f"(this durafs reads version {reads})"
        )
    return version


@dataclass(frozen=True)
class VolumeHeader:
    """The first member of every volume: what it is and whose it is.

    *id_key* is the catalog's chunk-id key. It is a secret only when the volume is
    encrypted, and then it travels inside the encryption, so every volume can verify
    its own chunks with nothing but the identity or passphrase.
    """

    catalog_id: str
    volume_id: str
    kind: str
    pool: str
    created_ns: int
    encryption: str
    id_key: bytes
    extra: dict[str, Any] = field(default_factory=dict)
    #: The volume's format version; its manifest and seal carry the same (§8).
    format: int = VOLUME_FORMAT

    def to_json(self) -> bytes:
        return dumps(
            {
                "magic": VOLUME_MAGIC,
                "format": self.format,
                "kind": self.kind,
                "catalog_id": self.catalog_id,
                "volume_id": self.volume_id,
                "pool": self.pool,
                "created_ns": self.created_ns,
                "encryption": self.encryption,
                "chunk_id": "blake3-keyed-256",
                "compression": "zstd",
                "id_key": self.id_key.hex(),
                "extra": self.extra,
            }
        )

    @classmethod
    def from_json(cls, data: bytes, what: str) -> VolumeHeader:
        record = loads(data, what)
        if record.get("magic") != VOLUME_MAGIC:
            raise FormatError(f"{what}: not a durafs volume (no {VOLUME_MAGIC!r} magic)")
        version = check_version(record, what, VOLUME_FORMATS)
        try:
            header = cls(
                catalog_id=str(record["catalog_id"]),
                volume_id=str(record["volume_id"]),
                kind=str(record["kind"]),
                pool=str(record["pool"]),
                created_ns=int(record["created_ns"]),
                encryption=str(record["encryption"]),
                id_key=bytes.fromhex(record["id_key"]),
                extra=dict(record.get("extra") or {}),
                format=version,
            )
        except (KeyError, ValueError, TypeError) as exc:
            raise FormatError(f"{what}: volume header is incomplete ({exc})") from exc
        if header.kind not in KINDS or header.encryption not in ENCRYPTIONS:
            raise FormatError(f"{what}: unknown volume kind or encryption in header")
        if len(header.id_key) != 32:
            raise FormatError(f"{what}: chunk-id key in header is not 32 bytes")
        return header

    def check_catalog(self, catalog_id: str | None, what: str) -> None:
        """Raise ForeignCatalogError if this volume belongs to another catalog."""
        if catalog_id is not None and self.catalog_id != catalog_id:
            raise ForeignCatalogError(
                f"{what}: volume belongs to catalog {self.catalog_id}, not {catalog_id}"
            )


@dataclass(frozen=True, slots=True)
class ChunkEntry:
    """A manifest line for one stored chunk (see docs/FORMAT.md, "Manifest").

    *offset* is where its frame starts in the volume's plaintext stream, *length* the
    frame's length; *member*, *member_offset* and *member_pos* let a person who extracted
    the volume with tar find it: the frame's offset inside the member file and the chunk's
    offset inside that member's decompressed bytes. *frame_pos* is the chunk's offset in
    its frame's content (not 0 only in a pack).
    """

    id: bytes
    offset: int
    length: int
    size: int
    raw: bool
    member: str
    member_offset: int
    member_pos: int
    files: tuple[tuple[bytes, int], ...] = ()
    frame_pos: int = 0

    def to_record(self) -> dict[str, Any]:
        return {
            "t": "chunk",
            "id": self.id.hex(),
            "off": self.offset,
            "len": self.length,
            "size": self.size,
            "raw": self.raw,
            "member": self.member,
            "moff": self.member_offset,
            "mpos": self.member_pos,
            "fpos": self.frame_pos,
            "files": [[encode_path(p), o] for p, o in self.files],
        }

    def to_line(self) -> bytes:
        """``dumps(self.to_record())`` and a newline, built directly."""
        files = ",".join([f"[{json_str(encode_path(p))},{o}]" for p, o in self.files])
        return (f'{{"t":"chunk","id":"{self.id.hex()}","off":{self.offset},'
                f'"len":{self.length},"size":{self.size},'
                f'"raw":{"true" if self.raw else "false"},"member":{json_str(self.member)},'
                f'"moff":{self.member_offset},"mpos":{self.member_pos},"fpos":{self.frame_pos},'
                f'"files":[{files}]}}\n'
                ).encode("ascii")

    @classmethod
    def from_record(cls, r: dict[str, Any]) -> ChunkEntry:
        return cls(
            id=bytes.fromhex(r["id"]),
            offset=int(r["off"]),
            length=int(r["len"]),
            size=int(r["size"]),
            raw=bool(r["raw"]),
            member=str(r["member"]),
            member_offset=int(r["moff"]),
            member_pos=int(r["mpos"]),
            files=tuple((decode_path(p), int(o)) for p, o in r.get("files", ())),
            frame_pos=int(r.get("fpos", 0)),  # absent in version 1: no packs
        )


@dataclass(frozen=True, slots=True)
class MemberEntry:
    """A manifest line for a non-chunk member (header, catalog tree, index copy)."""

    name: str
    offset: int
    size: int
    blake3: bytes

    def to_record(self) -> dict[str, Any]:
        return {
            "t": "member",
            "name": self.name,
            "off": self.offset,
            "size": self.size,
            "blake3": self.blake3.hex(),
        }

    @classmethod
    def from_record(cls, r: dict[str, Any]) -> MemberEntry:
        return cls(str(r["name"]), int(r["off"]), int(r["size"]), bytes.fromhex(r["blake3"]))


@dataclass(frozen=True)
class Manifest:
    """Everything a volume holds, as read back from its manifest member."""

    volume_id: str
    chunks: list[ChunkEntry]
    members: list[MemberEntry]


def check_same_version(record: dict[str, Any], header: VolumeHeader, what: str) -> None:
    """Refuse a manifest or seal whose version is not its volume header's: the three are
    written together (docs/FORMAT.md §8), so a difference is damage or a forgery. (The
    header's version is one this reader knows: `VolumeHeader.from_json` checked it.)"""
    if record.get("format") != header.format:
        raise FormatError(f"{what} is format version {record.get('format')!r}, its volume "
                          f"header version {header.format}")


def parse_manifest_lines(text: bytes, what: str, header: VolumeHeader) -> Manifest:
    """Parse the decompressed manifest (JSON lines, the first naming the volume) of the
    volume whose header is *header*: the same version, and no packs in a version 1 one."""
    lines = text.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    if not lines:
        raise FormatError(f"{what}: manifest is empty")
    first = loads(lines[0], f"{what} manifest")
    check_same_version(first, header, f"{what} manifest")
    chunks: list[ChunkEntry] = []
    members: list[MemberEntry] = []
    try:
        for line in lines[1:]:
            record = loads(line, f"{what} manifest")
            if record.get("t") == "chunk":
                chunks.append(ChunkEntry.from_record(record))
            elif record.get("t") == "member":
                members.append(MemberEntry.from_record(record))
            else:
                raise FormatError(f"{what}: unknown manifest record type {record.get('t')!r}")
    except (KeyError, ValueError, TypeError) as exc:
        raise FormatError(f"{what}: malformed manifest record ({exc})") from exc
    if first["format"] == 1 and any(c.frame_pos for c in chunks):
        raise FormatError(f"{what}: a format version 1 manifest lists chunks in packs")
    return Manifest(str(first.get("volume_id")), chunks, members)
