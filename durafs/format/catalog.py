"""Catalog volumes: a checkpoint record and its tree, so media alone rebuild the index.

The tree is JSON lines (docs/FORMAT.md §4), parents before children, compressed as one zstd
stream and spooled to a temporary file while it is written, so a checkpoint of millions of
files never sits in memory.
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
    FORMAT_VERSION,
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
TYPES = ("d", "f", "l", "c", "b", "p", "s", "h")


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


@dataclass
class CheckpointRecord:
    """What a checkpoint is: plan, name, times, sources and summary numbers."""

    plan: str
    name: str
    created_ns: int
    finished_ns: int
    sources: list[bytes]
    host: str = ""
    stats: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> bytes:
        return dumps({
            "format": FORMAT_VERSION, "plan": self.plan, "name": self.name,
            "created_ns": self.created_ns, "finished_ns": self.finished_ns,
            "sources": [encode_path(s) for s in self.sources], "host": self.host,
            "stats": self.stats,
        })

    @classmethod
    def from_json(cls, data: bytes, what: str) -> CheckpointRecord:
        r = loads(data, what)
        check_version(r, what)
        try:
            return cls(
                plan=str(r["plan"]), name=str(r["name"]), created_ns=int(r["created_ns"]),
                finished_ns=int(r["finished_ns"]),
                sources=[decode_path(s) for s in r["sources"]], host=str(r.get("host", "")),
                stats=dict(r.get("stats") or {}),
            )
        except (KeyError, ValueError, TypeError) as exc:
            raise FormatError(f"{what}: incomplete checkpoint record ({exc})") from exc


def write_catalog(
    writer: VolumeWriter, checkpoint: CheckpointRecord, entries: Iterable[TreeEntry]
) -> None:
    """Add the checkpoint record and its tree to a catalog volume being written."""
    writer.add_member(CHECKPOINT_MEMBER, checkpoint.to_json())
    with tempfile.TemporaryFile() as spool:
        cctx = zstandard.ZstdCompressor(level=3, write_checksum=True, threads=0)
        with cctx.stream_writer(spool, closefd=False) as out:
            for entry in entries:
                out.write(dumps(entry.to_record()) + b"\n")
        size = spool.tell()
        spool.seek(0)
        writer.add_member_file(TREE_MEMBER, spool, size)


def read_catalog(reader: VolumeReader) -> tuple[CheckpointRecord, Iterator[TreeEntry]]:
    """The checkpoint record and an iterator over the tree of a catalog volume."""
    manifest = reader.read_manifest()
    members = {m.name: m for m in manifest.members}
    if CHECKPOINT_MEMBER not in members or TREE_MEMBER not in members:
        raise FormatError(f"{reader.name}: not a catalog volume (no checkpoint or tree member)")
    record = CheckpointRecord.from_json(
        reader.read_member(members[CHECKPOINT_MEMBER]), f"{reader.name} checkpoint"
    )
    compressed = reader.read_member(members[TREE_MEMBER])
    return record, _tree_lines(compressed, reader.name)


def _tree_lines(compressed: bytes, what: str) -> Iterator[TreeEntry]:
    try:
        stream = zstandard.ZstdDecompressor().stream_reader(compressed)
        buffered = _lines(stream)
        for line in buffered:
            yield TreeEntry.from_record(json.loads(line))
    except (zstandard.ZstdError, ValueError, KeyError, TypeError) as exc:
        raise FormatError(f"{what}: damaged tree ({exc})") from exc


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
