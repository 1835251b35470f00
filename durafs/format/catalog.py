"""Catalog volumes: a checkpoint record and its tree, so media alone rebuild the index.

The tree is JSON lines (docs/FORMAT.md §4), parents before children, compressed as one zstd
stream and spooled to a temporary file while it is written, so a checkpoint of millions of
files never sits in memory.

A catalog volume holds either the checkpoint's full tree or a delta: the entries that are
new or changed since the checkpoint of its base catalog volume, and the paths deleted since
(a separate member). The checkpoint record names the base; docs/FORMAT.md §4.1 says how
a delta's tree is rebuilt from its base's.
"""

from __future__ import annotations

import base64
import json
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import zstandard

from durafs.errors import FormatError
from durafs.format.header import (
    MemberEntry,
    check_version,
    decode_path,
    dumps,
    encode_path,
    loads,
)
from durafs.format.reader import VolumeReader
from durafs.format.writer import VolumeWriter

CHECKPOINT_MEMBER = "durafs/catalog/checkpoint.json"
TREE_MEMBER = "durafs/catalog/tree.jsonl.zst"
DELETED_MEMBER = "durafs/catalog/deleted.jsonl.zst"
TYPES = ("d", "f", "l", "c", "b", "p", "s", "h")
#: The checkpoint record version written (2: deltas), and the versions read: a version 1
#: record is a full tree, exactly like a version 2 record without a base.
CATALOG_FORMAT = 2
CATALOG_VERSIONS = (1, 2)
#: The checkpoint record's stats key listing the paths recorded without some of their
#: xattrs (unreadable), which the next backup reads again (docs/FORMAT.md §4).
XATTRS_UNREAD = "xattrs_unread"


@dataclass
class TreeEntry:
    """One path of a checkpoint, as the catalog volume records it.

    *chunks* are (file offset, chunk id, size) in file order; gaps between them are holes.
    *link* is set only for type "h": the path of the first file of its hard-link group.
    """

    path: bytes
    type: str
    mode: int = 0
    uid: int = 0
    gid: int = 0
    user: str = ""
    group: str = ""
    mtime_ns: int = 0
    atime_ns: int = 0
    ctime_ns: int = 0
    size: int = 0
    target: bytes | None = None
    rdev: int = 0
    xattrs: dict[bytes, bytes] = field(default_factory=dict)
    chunks: list[tuple[int, bytes, int]] = field(default_factory=list)
    link: bytes | None = None
    ino: int = 0
    dev: int = 0
    nlink: int = 1
    blake3: bytes | None = None

    def to_record(self) -> dict[str, Any]:
        rec: dict[str, Any] = {
            "path": encode_path(self.path), "type": self.type, "mode": self.mode,
            "uid": self.uid, "gid": self.gid, "user": self.user, "group": self.group,
            "mtime_ns": self.mtime_ns, "atime_ns": self.atime_ns, "ctime_ns": self.ctime_ns,
            "size": self.size,
        }
        if self.target is not None:
            rec["target"] = encode_path(self.target)
        if self.rdev:
            rec["rdev"] = self.rdev
        if self.xattrs:
            rec["xattrs"] = {
                encode_path(k): base64.b64encode(v).decode() for k, v in self.xattrs.items()
            }
        if self.chunks:
            rec["chunks"] = [[off, cid.hex(), size] for off, cid, size in self.chunks]
        if self.link is not None:
            rec["link"] = encode_path(self.link)
        rec["ino"], rec["dev"], rec["nlink"] = self.ino, self.dev, self.nlink
        if self.blake3 is not None:
            rec["blake3"] = self.blake3.hex()
        return rec

    @classmethod
    def from_record(cls, r: dict[str, Any]) -> TreeEntry:
        if r.get("type") not in TYPES:
            raise FormatError(f"tree entry of unknown type {r.get('type')!r}")
        target = r.get("target")
        link = r.get("link")
        return cls(
            path=decode_path(r["path"]), type=r["type"], mode=int(r["mode"]),
            uid=int(r["uid"]), gid=int(r["gid"]), user=str(r.get("user", "")),
            group=str(r.get("group", "")), mtime_ns=int(r["mtime_ns"]),
            atime_ns=int(r["atime_ns"]), ctime_ns=int(r["ctime_ns"]), size=int(r["size"]),
            target=None if target is None else decode_path(target), rdev=int(r.get("rdev", 0)),
            xattrs={decode_path(k): base64.b64decode(v) for k, v in r.get("xattrs", {}).items()},
            chunks=[(int(o), bytes.fromhex(c), int(s)) for o, c, s in r.get("chunks", ())],
            link=None if link is None else decode_path(link),
            ino=int(r.get("ino", 0)), dev=int(r.get("dev", 0)), nlink=int(r.get("nlink", 1)),
            blake3=bytes.fromhex(r["blake3"]) if "blake3" in r else None,
        )


@dataclass(frozen=True)
class BaseRef:
    """What a delta catalog volume builds on: the base's checkpoint name (same plan) and
    catalog volume id."""

    checkpoint: str
    volume_id: str


@dataclass
class CheckpointRecord:
    """What a checkpoint is: plan, name, times, sources and summary numbers.

    *base* is None for a full tree; for a delta it names the base catalog volume, and
    *depth* counts the deltas from the last full tree (0 for a full tree itself).
    *xattrs_unread* are the paths recorded without some of their xattrs; on the medium
    they are a list in the stats (`XATTRS_UNREAD`), absent when empty.
    """

    plan: str
    name: str
    created_ns: int
    finished_ns: int
    sources: list[bytes]
    host: str = ""
    stats: dict[str, int] = field(default_factory=dict)
    base: BaseRef | None = None
    depth: int = 0
    xattrs_unread: list[bytes] = field(default_factory=list)

    def to_json(self) -> bytes:
        base = self.base and {"checkpoint": self.base.checkpoint,
                              "volume_id": self.base.volume_id}
        stats: dict[str, Any] = dict(self.stats)
        if self.xattrs_unread:
            stats[XATTRS_UNREAD] = [encode_path(p) for p in self.xattrs_unread]
        return dumps({
            "format": CATALOG_FORMAT, "plan": self.plan, "name": self.name,
            "created_ns": self.created_ns, "finished_ns": self.finished_ns,
            "sources": [encode_path(s) for s in self.sources], "host": self.host,
            "stats": stats, "base": base, "depth": self.depth,
        })

    @classmethod
    def from_json(cls, data: bytes, what: str) -> CheckpointRecord:
        r = loads(data, what)
        version = check_version(r, what, CATALOG_VERSIONS)
        try:
            record = cls(
                plan=str(r["plan"]), name=str(r["name"]), created_ns=int(r["created_ns"]),
                finished_ns=int(r["finished_ns"]),
                sources=[decode_path(s) for s in r["sources"]], host=str(r.get("host", "")),
            )
            record.stats, record.xattrs_unread = _read_stats(r.get("stats") or {})
            if version >= 2:  # version 1 records are full trees
                base = r.get("base")
                if base is not None:
                    record.base = BaseRef(str(base["checkpoint"]), str(base["volume_id"]))
                record.depth = int(r.get("depth", 0))
        except (KeyError, ValueError, TypeError) as exc:
            raise FormatError(f"{what}: incomplete checkpoint record ({exc})") from exc
        if (record.base is None) != (record.depth == 0) or record.depth < 0:
            raise FormatError(f"{what}: depth {record.depth} does not fit base {record.base}")
        return record


def _read_stats(stats: object) -> tuple[dict[str, int], list[bytes]]:
    """A record's counts, and its `XATTRS_UNREAD` paths. Other keys a reader does not
    know are left out: stats are counts, and only a count is safe to show unknown."""
    if not isinstance(stats, dict):
        raise TypeError("stats is not an object")
    unread = stats.get(XATTRS_UNREAD, [])
    if not isinstance(unread, list) or not all(isinstance(p, str) for p in unread):
        raise TypeError(f"stats {XATTRS_UNREAD!r} is not a list of paths")
    counts = {k: v for k, v in stats.items()
              if isinstance(v, int) and not isinstance(v, bool)}
    return counts, [decode_path(p) for p in unread]


def write_catalog(
    writer: VolumeWriter, checkpoint: CheckpointRecord, entries: Iterable[TreeEntry],
    deleted: Iterable[bytes] = (),
) -> None:
    """Add the checkpoint record and its tree (and for a delta, the *deleted* paths) to a
    catalog volume being written."""
    writer.add_member(CHECKPOINT_MEMBER, checkpoint.to_json())
    if checkpoint.base is not None:
        write_deleted(writer, deleted)
    with tempfile.TemporaryFile() as spool:
        cctx = zstandard.ZstdCompressor(level=3, write_checksum=True, threads=0)
        with cctx.stream_writer(spool, closefd=False) as out:
            for entry in entries:
                out.write(dumps(entry.to_record()) + b"\n")
        size = spool.tell()
        spool.seek(0)
        writer.add_member_file(TREE_MEMBER, spool, size)


def write_deleted(writer: VolumeWriter, paths: Iterable[bytes]) -> None:
    """Add a delta's deleted-paths member: one {"path": …} line per path."""
    lines = b"".join(dumps({"path": encode_path(p)}) + b"\n" for p in paths)
    writer.add_member(DELETED_MEMBER, zstandard.ZstdCompressor(
        level=3, write_checksum=True).compress(lines))


def _members(reader: VolumeReader) -> dict[str, MemberEntry]:
    members = {m.name: m for m in reader.read_manifest().members}
    if CHECKPOINT_MEMBER not in members or TREE_MEMBER not in members:
        raise FormatError(f"{reader.name}: not a catalog volume (no checkpoint or tree member)")
    return members


def read_checkpoint(reader: VolumeReader) -> CheckpointRecord:
    """The checkpoint record of a catalog volume (without reading its tree)."""
    member = _members(reader)[CHECKPOINT_MEMBER]
    return CheckpointRecord.from_json(reader.read_member(member), f"{reader.name} checkpoint")


def read_catalog(reader: VolumeReader) -> tuple[CheckpointRecord, Iterator[TreeEntry]]:
    """The checkpoint record and an iterator over the tree lines of a catalog volume (for
    a delta, only its new and changed entries: see `read_deleted`)."""
    record, lines = read_catalog_lines(reader)
    return record, (_entry(line, reader.name) for line in lines)


def read_catalog_lines(reader: VolumeReader) -> tuple[CheckpointRecord, Iterator[bytes]]:
    """Like `read_catalog`, but the tree lines as they are stored (JSON bytes)."""
    members = _members(reader)
    record = CheckpointRecord.from_json(
        reader.read_member(members[CHECKPOINT_MEMBER]), f"{reader.name} checkpoint"
    )
    compressed = reader.read_member(members[TREE_MEMBER])
    return record, _tree_lines(compressed, f"{reader.name} tree")


def read_deleted(reader: VolumeReader) -> list[bytes]:
    """The paths a delta catalog volume deletes from its base's tree ([] for a full one)."""
    member = _members(reader).get(DELETED_MEMBER)
    if member is None:
        return []
    what = f"{reader.name} deleted-paths member"
    try:
        return [decode_path(loads(line, what)["path"])
                for line in _tree_lines(reader.read_member(member), what)]
    except (KeyError, TypeError) as exc:
        raise FormatError(f"{what}: damaged ({exc})") from exc


def _entry(line: bytes, what: str) -> TreeEntry:
    try:
        return TreeEntry.from_record(json.loads(line))
    except (ValueError, KeyError, TypeError) as exc:
        raise FormatError(f"{what}: damaged tree ({exc})") from exc


def _tree_lines(compressed: bytes, what: str) -> Iterator[bytes]:
    """The non-empty lines of a zstd-compressed JSON-lines member."""
    try:
        stream = zstandard.ZstdDecompressor().stream_reader(compressed)
        yield from _lines(stream)
    except zstandard.ZstdError as exc:
        raise FormatError(f"{what}: damaged ({exc})") from exc


def _lines(stream: Any) -> Iterator[bytes]:
    rest = b""
    while True:
        block = stream.read(1 << 20)
        if not block:
            break
        rest += block
        *lines, rest = rest.split(b"\n")
        yield from (line for line in lines if line)
    if rest:
        yield rest
