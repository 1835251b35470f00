# SPDX-License-Identifier: GPL-3.0-or-later
"""Rows of the index as dataclasses, and the compact encodings of two BLOB columns.

Every row class is a snapshot of one row taken by a query: changing an attribute changes
nothing in the index. Field order follows the column order of schema.sql, and the query
modules select columns in exactly that order (``Row(*row)``), so keep them in step.

Encodings (also documented in schema.sql beside the columns):

* ``versions.xattrs``: records sorted by name, no name twice, each
  ``u16 name length, name bytes, u32 value length, value bytes`` (little-endian);
  NULL when the file has no xattrs, never an empty blob. Canonical, so two equal dicts
  encode to equal blobs and the tree writer compares blobs.
* ``versions.chunks``: the file's pieces, 20 bytes each, ``u64 file offset, i64
  chunks.id, u32 size`` (little-endian), sorted by offset, not overlapping. Bytes that no
  piece covers read as zeros (holes); the file's length is ``versions.size``. An empty blob
  for a file without data, NULL for everything that is not a regular file.
"""

from __future__ import annotations

import os
import stat
import struct
from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from durafs.errors import CatalogError

#: One piece of a file: (file offset, chunks.id, size in bytes).
Piece = tuple[int, int, int]

_PIECE = struct.Struct("<QqI")
_XNAME = struct.Struct("<H")
_XVALUE = struct.Struct("<I")

#: versions.type letter for each st_mode file type, and back.
TYPE_OF_FMT: dict[int, str] = {
    stat.S_IFDIR: "d",
    stat.S_IFREG: "f",
    stat.S_IFLNK: "l",
    stat.S_IFCHR: "c",
    stat.S_IFBLK: "b",
    stat.S_IFIFO: "p",
    stat.S_IFSOCK: "s",
}
FMT_OF_TYPE: dict[str, int] = {letter: fmt for fmt, letter in TYPE_OF_FMT.items()}


def pack_pieces(pieces: Iterable[Piece]) -> bytes:
    """Encode a file's pieces for ``versions.chunks``; they must be sorted by offset."""
    return b"".join(_PIECE.pack(offset, chunk_id, size) for offset, chunk_id, size in pieces)


def unpack_pieces(blob: bytes | None) -> list[Piece]:
    """Decode ``versions.chunks`` (NULL decodes to no pieces)."""
    if not blob:
        return []
    if len(blob) % _PIECE.size:
        raise CatalogError(f"chunk list of {len(blob)} bytes is not a multiple of 20")
    return list(_PIECE.iter_unpack(blob))


def piece_bytes(blob: bytes | None) -> int:
    """Bytes of data in the pieces of ``versions.chunks`` (holes excluded); a listing asks
    this of every file, so one piece, the usual case, is decoded alone."""
    if not blob:
        return 0
    if len(blob) == _PIECE.size:
        return int(_PIECE.unpack(blob)[2])
    return sum(size for _, _, size in unpack_pieces(blob))


def pack_xattrs(xattrs: Mapping[bytes, bytes] | None) -> bytes | None:
    """Encode xattrs canonically for ``versions.xattrs``; no xattrs gives None."""
    if not xattrs:
        return None
    parts: list[bytes] = []
    for name in sorted(xattrs):
        value = xattrs[name]
        parts += (_XNAME.pack(len(name)), name, _XVALUE.pack(len(value)), value)
    return b"".join(parts)


def unpack_xattrs(blob: bytes | None) -> dict[bytes, bytes]:
    """Decode ``versions.xattrs`` into a dict name -> value."""
    result: dict[bytes, bytes] = {}
    pos = 0
    data = blob or b""
    try:
        while pos < len(data):
            (name_len,) = _XNAME.unpack_from(data, pos)
            pos += _XNAME.size
            name = data[pos : pos + name_len]
            pos += name_len
            (value_len,) = _XVALUE.unpack_from(data, pos)
            pos += _XVALUE.size
            result[name] = data[pos : pos + value_len]
            pos += value_len
    except struct.error as exc:
        raise CatalogError(f"xattr blob is damaged at byte {pos}") from exc
    if pos != len(data):
        raise CatalogError("xattr blob is damaged: a value runs past its end")
    return result


def name_text(name: bytes) -> str:
    """The text under which a path component is searchable (path_names.name)."""
    return name.decode("utf-8", "replace")


#: The index's integers are SQLite's: signed, 64 bits.
I64_MIN, I64_MAX = -(1 << 63), (1 << 63) - 1


def stored_int(value: int) -> int:
    """An unsigned 64-bit number (an inode or device number; overlayfs sets their high
    bits) as the index holds it: the same 64 bits, read as signed."""
    return value - (1 << 64) if value > I64_MAX else value


def stored_ns(ns: int) -> int:
    """A time in nanoseconds as the index can hold it: clamped to 1677-09-21 ...
    2262-04-11 (tmpfs and XFS take times beyond; the engine names such files)."""
    return I64_MIN if ns < I64_MIN else I64_MAX if ns > I64_MAX else ns


@dataclass(slots=True)
class PoolRow:
    """A pool (table ``pools``); *config* is the decoded JSON object."""

    id: int
    name: str
    kind: str
    config: dict[str, Any]
    volume_size: int
    created_ns: int


@dataclass(slots=True)
class MediumRow:
    """A medium (table ``media``) with the name of its pool in *pool*."""

    id: int
    pool_id: int
    pool: str
    uuid: str
    label: str
    kind: str
    path: str | None
    location: str
    capacity: int | None
    used: int
    state: str
    last_seen_ns: int | None
    created_ns: int


#: The uuid of a volume row that stands for content `recover` found named in a checkpoint
#: but on no medium given to it starts so (the rest is random); it is in `lost_volumes`
#: and has no name: its chunks read as lost until a backup stores them again.
LOST_VOLUME_PREFIX = "lost-"


@dataclass(slots=True)
class VolumeRow:
    """A volume (table ``volumes``) that is safely on its medium."""

    id: int
    medium_id: int
    uuid: str
    kind: str
    seq: int
    name: str | None
    plain_size: int
    stored_size: int
    tape_file: int | None
    tape_block: int | None
    created_ns: int


@dataclass(slots=True)
class ChunkRow:
    """Where one chunk is (table ``chunks``), with the medium of its volume."""

    id: int
    pool_id: int
    cid: bytes
    volume_id: int
    offset: int
    length: int
    size: int
    raw: bool
    medium_id: int
    #: Where the chunk starts in its frame's content (not 0 only in a pack).
    fpos: int = 0


class NewChunk(NamedTuple):
    """A chunk just written to a volume, for `Catalog.add_chunks`."""

    cid: bytes
    offset: int
    length: int
    size: int
    raw: bool
    fpos: int = 0


class FilePiece(NamedTuple):
    """One piece of a file's content: *size* bytes at *file_offset* are chunk *chunk*."""

    file_offset: int
    chunk: ChunkRow
    size: int


@dataclass(slots=True)
class PlanRow:
    """A plan (table ``plans``); *root_id* is the id of its root path ("/")."""

    id: int
    name: str
    config: dict[str, Any]
    last_seq: int
    created_ns: int
    root_id: int


@dataclass(slots=True)
class CheckpointRow:
    """A complete checkpoint (table ``checkpoints``) with its plan's name in *plan*."""

    id: int
    plan_id: int
    plan: str
    seq: int
    name: str
    created_ns: int
    finished_ns: int
    state: str
    sources: Any
    stats: dict[str, Any]


@dataclass(slots=True)
class VersionRow:
    """What one path was in a run of checkpoints (table ``versions``).

    *xattrs* and *chunks* are the raw column blobs (see the module docstring); use
    `xattr_dict` and `pieces` to decode them. The inode a mount shows for it is
    ``hardlink_id or id``.
    """

    id: int
    path_id: int
    first_seq: int
    last_seq: int | None
    type: str
    mode: int
    uid: int
    gid: int
    uname: str | None
    gname: str | None
    size: int
    mtime_ns: int
    atime_ns: int
    ctime_ns: int
    ino: int
    dev: int
    nlink: int
    rdev: int
    target: bytes | None
    xattrs: bytes | None
    hardlink_id: int | None
    chunks: bytes | None
    blake3: bytes | None

    @property
    def st_mode(self) -> int:
        """The full st_mode: file type bits and permission bits."""
        return FMT_OF_TYPE[self.type] | self.mode

    def xattr_dict(self) -> dict[bytes, bytes]:
        return unpack_xattrs(self.xattrs)

    def pieces(self) -> list[Piece]:
        return unpack_pieces(self.chunks)


#: Columns of `VersionRow`, in order, for SELECTs (table alias ``v``).
VERSION_COLUMNS = ", ".join(f"v.{name}" for name in VersionRow.__dataclass_fields__)


@dataclass(slots=True)
class Entry:
    """One path of a new checkpoint, as the engine feeds it to `TreeWriter.add`.

    *path* is absolute and normalised (``b"/"``, ``b"/home/alice"``: no trailing slash,
    no empty, ``.`` or ``..`` components). *xattrs* is `pack_xattrs` output and *chunks*
    `pack_pieces` output (an unchanged file passes its previous version's blobs as they
    are). *hardlink_key* is any hashable shared by the members of one hard-link group in
    this checkpoint, typically ``(dev, ino)`` when ``nlink > 1``, else None.
    """

    path: bytes
    type: str
    mode: int
    uid: int
    gid: int
    uname: str | None
    gname: str | None
    size: int
    mtime_ns: int
    atime_ns: int
    ctime_ns: int
    ino: int
    dev: int
    nlink: int
    rdev: int = 0
    target: bytes | None = None
    xattrs: bytes | None = None
    chunks: bytes | None = None
    blake3: bytes | None = None
    hardlink_key: Hashable | None = None

    @classmethod
    def from_stat(
        cls, path: bytes, st: os.stat_result, *, uname: str | None = None,
        gname: str | None = None, target: bytes | None = None, xattrs: bytes | None = None,
        hardlink_key: Hashable | None = None,
    ) -> Entry:
        """An entry with the attributes of *st* (an lstat result) and the rest as given.
        (Positional: a backup makes one per path on the thread the workers wait for.)"""
        mode = st.st_mode
        kind = TYPE_OF_FMT.get(mode & 0o170000)
        if kind is None:
            raise CatalogError(f"{path!r}: unknown file type {stat.S_IFMT(mode):#o}")
        return cls(
            path, kind, mode & 0o7777, st.st_uid, st.st_gid, uname, gname, st.st_size,
            stored_ns(st.st_mtime_ns), stored_ns(st.st_atime_ns), stored_ns(st.st_ctime_ns),
            stored_int(st.st_ino), stored_int(st.st_dev), st.st_nlink,
            st.st_rdev if kind in ("c", "b") else 0, target, xattrs, None, None, hardlink_key,
        )
