# SPDX-License-Identifier: GPL-3.0-or-later
"""The mounted tree as a FUSE-free model: inodes, attributes, lookups, listings, xattrs
and read plans, all answered from the index alone (never from a medium).

Layout::

    /                                   ROOT_INO
    /<plan>/                            plan directory
    /<plan>/latest -> <checkpoint>      symlink to the newest checkpoint
    /<plan>/<checkpoint>/...            the checkpoint's tree ("/" of the sources)

Inode numbers are arithmetic (`durafs.fs.inodes`), so the model keeps no per-inode state
and its memory does not grow with what the kernel has looked up.

Freshness: committed checkpoint trees never change, so tree nodes are *stable* (the
adapter gives the kernel long cache timeouts). The plan and checkpoint lists are reloaded
when ``PRAGMA data_version`` says another connection committed, so checkpoints made while
mounted appear at once; those nodes are not stable (short timeouts).

Threading: one `Tree` owns one read-only catalog connection and must be used from one
thread (the trio thread of the mount). Every method is a few indexed queries.
"""

from __future__ import annotations

import os
import stat
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Generic, NamedTuple, TypeVar

from durafs.fs.errors import (
    IsADirectory,
    NoSuchAttribute,
    NoSuchEntry,
    NotADirectory,
    NotASymlink,
    NotSupported,
    ReadOnly,
)
from durafs.fs.inodes import (
    MAX_PLAN_ID,
    ROOT_INO,
    SEQ_MASK,
    Node,
    decode,
    latest_ino,
    plan_ino,
    tree_ino,
)
from durafs.index.catalog import Catalog
from durafs.index.rows import (
    LOST_VOLUME_PREFIX,
    VERSION_COLUMNS,
    CheckpointRow,
    ChunkRow,
    FilePiece,
    MediumRow,
    PlanRow,
    VersionRow,
    VolumeRow,
    piece_bytes,
    unpack_pieces,
)
from durafs.index.store import chunks_after

LATEST = b"latest"
#: Entries per page when a directory is listed (one indexed query per page).
PAGE = 1000
#: How stale the plan and checkpoint lists may be (the kernel adds VOLATILE_TIMEOUT).
REFRESH_SECONDS = 0.1
#: Hard-link group sizes and volumes kept in memory; each is immutable.
CACHE_ENTRIES = 8192
#: Versions kept in memory (~0.5 KiB each): a listing remembers its entries, so opening
#: and reading the files of a directory tree of up to this many right after ``ls -lR``,
#: ``find`` or ``rsync``'s scan needs no version query.
VERSION_CACHE_ENTRIES = 32768

# durafs's own facts: readable by name, never listed (so cp -a and rsync -X skip them).
XATTR_MEDIA = b"user.durafs.media"
XATTR_LOCATION = b"user.durafs.location"
XATTR_ONLINE = b"user.durafs.online"
XATTR_BLAKE3 = b"user.durafs.blake3"
XATTR_CHECKPOINT = b"user.durafs.checkpoint"
FACTS = frozenset({XATTR_MEDIA, XATTR_LOCATION, XATTR_ONLINE, XATTR_BLAKE3, XATTR_CHECKPOINT})
#: Asked by ls -l for every file; "not supported" (rather than "no such attribute") makes
#: it stop asking for the rest of the mount, which halves the requests of ``ls -lR``.
_PROBED = frozenset({b"security.selinux"})

_DIR_MODE = stat.S_IFDIR | 0o555
_LINK_MODE = stat.S_IFLNK | 0o777

_BY_ID = f"SELECT v.plan_id, {VERSION_COLUMNS} FROM versions v WHERE v.id = ?"

K = TypeVar("K")
V = TypeVar("V")


class LRU(Generic[K, V]):
    """A dict that forgets its least recently used entries beyond *size*."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._data: OrderedDict[K, V] = OrderedDict()

    def get(self, key: K) -> V | None:
        value = self._data.get(key)
        if value is not None:
            self._data.move_to_end(key)
        return value

    def put(self, key: K, value: V) -> V:
        self._data[key] = value
        self._data.move_to_end(key)
        while len(self._data) > self.size:
            self._data.popitem(last=False)
        return value

    def clear(self) -> None:
        self._data.clear()

    def __len__(self) -> int:
        return len(self._data)


class Attr(NamedTuple):
    """What stat shows for one node. *stable*: never changes while mounted.

    A named tuple: a listing makes one per entry, and a frozen dataclass of twelve
    fields takes several times as long to build.
    """

    ino: int
    mode: int
    nlink: int
    uid: int
    gid: int
    rdev: int
    size: int
    blocks: int
    atime_ns: int
    mtime_ns: int
    ctime_ns: int
    stable: bool


@dataclass(frozen=True, slots=True)
class ReadPlan:
    """Everything needed to read one file, taken from the index at open time.

    *pieces* are in file order (bytes no piece covers are holes); *volumes* and *media*
    hold the rows those pieces refer to; *describe* names the file in messages (`what`).
    The name is looked up only when a message needs it: its path query would be a good
    part of the cost of an open.
    """

    ino: int
    size: int
    describe: Callable[[], str]
    pieces: list[FilePiece]
    volumes: dict[int, VolumeRow]
    media: dict[int, MediumRow]

    @property
    def what(self) -> str:
        return self.describe()

    def __str__(self) -> str:
        return self.describe()


@dataclass(frozen=True, slots=True)
class FsStats:
    """statfs numbers: stored bytes and the number of versions ever recorded."""

    stored_bytes: int
    files: int


@dataclass(slots=True)
class _Plans:
    """The plans and their checkpoints, as of one ``data_version``."""

    by_name: dict[bytes, PlanRow] = field(default_factory=dict)
    by_id: dict[int, PlanRow] = field(default_factory=dict)
    checkpoints: dict[int, list[CheckpointRow]] = field(default_factory=dict)
    by_cp_name: dict[tuple[int, bytes], CheckpointRow] = field(default_factory=dict)
    by_seq: dict[tuple[int, int], CheckpointRow] = field(default_factory=dict)
    stats: FsStats | None = None
    #: Volumes `durafs verify` found gone from their online medium (table lost_volumes).
    lost_volumes: frozenset[int] = frozenset()


def blocks_of(version: VersionRow) -> int:
    """st_blocks: 512-byte units of stored data (holes excluded), rounded up."""
    if version.type == "f":
        stored = piece_bytes(version.chunks)
    elif version.type == "d":
        stored = version.size
    else:
        stored = 0
    return -(-stored // 512)


class Tree:
    """The tree model over one read-only catalog (see the module docstring)."""

    def __init__(self, catalog: Catalog, *, mounted_ns: int | None = None) -> None:
        self.catalog = catalog
        self.mounted_ns = mounted_ns or time.time_ns()
        self._data_version: int | None = None
        self._checked = -REFRESH_SECONDS
        self._plans = _Plans()
        self._versions: LRU[int, tuple[int, VersionRow]] = LRU(VERSION_CACHE_ENTRIES)
        self._groups: LRU[tuple[int, int], int] = LRU(CACHE_ENTRIES)
        self._volumes: LRU[int, VolumeRow] = LRU(CACHE_ENTRIES)
        self._chunk_rows: LRU[int, ChunkRow] = LRU(CACHE_ENTRIES)
        self._roots: dict[tuple[int, int], VersionRow] = {}
        self._media: dict[int, MediumRow] = {}

    # -- freshness ------------------------------------------------------------------------

    def plans(self) -> _Plans:
        """The plan/checkpoint snapshot, reloaded if anyone committed since the last one
        (asked at most every `REFRESH_SECONDS`: one request may need it several times)."""
        now = time.monotonic()
        if now - self._checked < REFRESH_SECONDS:
            return self._plans
        self._checked = now
        version = int(self.catalog.db.get_val("PRAGMA data_version"))
        if version != self._data_version:
            self._plans = self._load_plans()
            self._media.clear()  # a medium's path or location may have changed too
            self._data_version = version
        return self._plans

    def _load_plans(self) -> _Plans:
        snap = _Plans()
        for plan in self.catalog.plans():
            if plan.id > MAX_PLAN_ID:
                continue
            snap.by_name[os.fsencode(plan.name)] = plan
            snap.by_id[plan.id] = plan
            snap.checkpoints[plan.id] = []
        for cp in self.catalog.checkpoints():
            if cp.plan_id not in snap.by_id:
                continue
            snap.checkpoints[cp.plan_id].append(cp)
            snap.by_cp_name[(cp.plan_id, os.fsencode(cp.name))] = cp
            snap.by_seq[(cp.plan_id, cp.seq)] = cp
        snap.lost_volumes = frozenset(self.catalog.lost_volume_ids())
        return snap

    def is_lost(self, volume: VolumeRow) -> bool:
        """Whether *volume* is known to be gone from its medium: found missing by `durafs
        verify`, or a stand-in `durafs recover` made for content on no medium."""
        return (volume.uuid.startswith(LOST_VOLUME_PREFIX)
                or volume.id in self.plans().lost_volumes)

    # -- nodes ----------------------------------------------------------------------------

    def getattr(self, ino: int) -> Attr:
        node = decode(ino)
        if node.kind == "root":
            return self._root_attr()
        if node.kind == "plan":
            return self._plan_attr(self._plan(node.plan_id))
        if node.kind == "latest":
            return self._latest_attr(self._plan(node.plan_id))
        return self._tree_attr(self._version(node.vid)[1], node.seq)

    def lookup(self, parent: int, name: bytes) -> Attr:
        """The node *name* in directory *parent*, or NoSuchEntry."""
        node = decode(parent)
        if node.kind == "root":
            plan = self.plans().by_name.get(name)
            if plan is None:
                raise NoSuchEntry(f"no plan {name!r}")
            return self._plan_attr(plan)
        if node.kind == "plan":
            return self._lookup_in_plan(self._plan(node.plan_id), name)
        if node.kind == "latest":
            raise NotADirectory("latest is a symbolic link")
        plan_id, version = self._version(node.vid)
        if version.type != "d":
            raise NotADirectory(f"inode {parent} is not a directory")
        child = self.catalog.lookup(plan_id, node.seq, version.path_id, name)
        if child is None:
            raise NoSuchEntry(f"no {name!r} in inode {parent}")
        return self._tree_attr(self._leader(child, plan_id), node.seq)

    def _lookup_in_plan(self, plan: PlanRow, name: bytes) -> Attr:
        snap = self.plans()
        if name == LATEST and snap.checkpoints.get(plan.id):
            return self._latest_attr(plan)
        cp = snap.by_cp_name.get((plan.id, name))
        if cp is None:
            raise NoSuchEntry(f"no checkpoint {name!r} in plan {plan.name}")
        return self._tree_attr(self._checkpoint_root(cp), cp.seq)

    def is_stable(self, ino: int) -> bool:
        """True for nodes inside checkpoints: they never change while mounted."""
        return ino > SEQ_MASK

    def readlink(self, ino: int) -> bytes:
        node = decode(ino)
        if node.kind == "latest":
            return self._latest_target(self._plan(node.plan_id))
        if node.kind != "tree":
            raise NotASymlink(f"inode {ino} is not a symbolic link")
        _, version = self._version(node.vid)
        if version.type != "l" or version.target is None:
            raise NotASymlink(f"inode {ino} is not a symbolic link")
        return version.target

    # -- listings -------------------------------------------------------------------------

    def entries(
        self, ino: int, *, after: bytes = b"", limit: int = PAGE
    ) -> list[tuple[bytes, Attr]]:
        """Up to *limit* entries of directory *ino* with names after *after*, by name."""
        node = decode(ino)
        if node.kind == "tree":
            plan_id, version = self._version(node.vid)
            if version.type != "d":
                raise NotADirectory(f"inode {ino} is not a directory")
            rows = self.catalog.listdir(plan_id, node.seq, version.path_id, after=after,
                                        limit=limit)
            return [(name, self._tree_attr(self._leader(v, plan_id), node.seq))
                    for name, v in rows]
        if node.kind == "latest":
            raise NotADirectory("latest is a symbolic link")
        names = self._small_listing(node)
        return [(n, a) for n, a in names if n > after][:limit]

    def _small_listing(self, node: Node) -> list[tuple[bytes, Attr]]:
        snap = self.plans()
        if node.kind == "root":
            listing = [(name, self._plan_attr(plan)) for name, plan in snap.by_name.items()]
        else:
            plan = self._plan(node.plan_id)
            cps = snap.checkpoints.get(plan.id, [])
            listing = [(os.fsencode(cp.name), self._tree_attr(self._checkpoint_root(cp), cp.seq))
                       for cp in cps]
            if cps:
                listing.append((LATEST, self._latest_attr(plan)))
        return sorted(listing, key=lambda item: item[0])

    def opendir(self, ino: int) -> DirStream:
        if not stat.S_ISDIR(self.getattr(ino).mode):
            raise NotADirectory(f"inode {ino} is not a directory")
        return DirStream(self, ino)

    # -- xattrs ---------------------------------------------------------------------------

    def listxattr(self, ino: int) -> list[bytes]:
        """The source's own xattr names (ACLs included); never durafs's facts."""
        node = decode(ino)
        if node.kind != "tree":
            return []
        return sorted(self._version(node.vid)[1].xattr_dict())

    def getxattr(self, ino: int, name: bytes) -> bytes:
        """A source xattr, or one of durafs's facts (`FACTS`) except XATTR_ONLINE, which
        needs a probe of the media (see `durafs.fs.reads`)."""
        value = self.find_xattr(ino, name)
        if value is None:
            raise NoSuchAttribute(name.decode(errors="replace"))
        return value

    def find_xattr(self, ino: int, name: bytes) -> bytes | None:
        """Like `getxattr`, but None when there is no such attribute: ``ls -l`` asks for the
        ACL of every file it lists and almost none has one, so that answer is the one to
        make cheap (no exception to build and map)."""
        node = decode(ino)
        if node.kind != "tree":
            return None
        plan_id, version = self._version(node.vid)
        if version.xattrs:
            own = version.xattr_dict()
            if name in own:  # the source's own value wins over a fact of the same name
                return own[name]
        if name not in FACTS:
            if name in _PROBED:
                raise NotSupported(name.decode(errors="replace"))
            return None
        if name == XATTR_CHECKPOINT:
            cp = self._checkpoint(plan_id, node.seq)
            return f"{cp.plan}/{cp.name}".encode()
        if name == XATTR_BLAKE3 and version.blake3 is not None:
            return version.blake3.hex().encode()
        if name in (XATTR_MEDIA, XATTR_LOCATION) and version.type == "f":
            media = self.data_media(ino)
            if name == XATTR_MEDIA:
                return ",".join(m.label for m in media).encode()
            return ",".join(m.location or m.path or "" for m in media).encode()
        return None

    def data_media(self, ino: int) -> list[MediumRow]:
        """The media holding the data of file *ino*, by label."""
        plan = self.read_plan(ino)
        return sorted(plan.media.values(), key=lambda m: m.label)

    # -- reading --------------------------------------------------------------------------

    def read_plan(self, ino: int) -> ReadPlan:
        """Where the bytes of file *ino* are: pieces, their volumes and media."""
        node = decode(ino)
        if node.kind != "tree":
            raise IsADirectory(f"inode {ino} is not a file")
        plan_id, version = self._version(node.vid)
        if version.type == "d":
            raise IsADirectory(f"inode {ino} is a directory")
        if version.type != "f":
            raise NoSuchAttribute(f"inode {ino} has no data")
        # a zero-size piece (how the engine stores an empty file) holds no byte to read,
        # so it must not make an open wait for its medium
        pieces = [p for p in self._pieces(version) if p.size > 0]
        volumes = {p.chunk.volume_id: self._volume(p.chunk.volume_id) for p in pieces}
        media = {v.medium_id: self._medium(v.medium_id) for v in volumes.values()}
        seq = node.seq
        return ReadPlan(ino, version.size, lambda: self._describe(plan_id, seq, version),
                        pieces, volumes, media)

    def _pieces(self, version: VersionRow) -> list[FilePiece]:
        """The pieces of file *version*, from chunk rows `chunks_after` gave out lately if
        it has them all (files read in backup order: no query at open), else the index."""
        raw = unpack_pieces(version.chunks)
        rows = [self._chunk_rows.get(cid) for _, cid, _ in raw]
        if None in rows:
            return self.catalog.file_chunks(version)
        return [FilePiece(off, row, size) for (off, _, size), row in zip(raw, rows, strict=True)
                if row is not None]

    def chunks_after(self, volume_id: int, after_id: int, limit: int) -> list[ChunkRow]:
        """The chunks stored after chunk *after_id* in volume *volume_id*, in volume order
        (for readahead across small files; one indexed query). Their rows are kept for a
        while: the files they belong to are about to be opened."""
        rows = chunks_after(self.catalog.db, volume_id, after_id, limit)
        for row in rows:
            self._chunk_rows.put(row.id, row)
        return rows

    def _describe(self, plan_id: int, seq: int, version: VersionRow) -> str:
        cp = self._checkpoint(plan_id, seq)
        path = os.fsdecode(self.catalog.path_of(version.path_id))
        return f"{cp.plan}/{cp.name}{path}"

    def check_open(self, ino: int, flags: int) -> None:
        """Refuse opens that could write (the kernel refuses them first on a ro mount)."""
        # O_APPEND alone writes nothing: a read-only open with it succeeds, as on any
        # read-only file system
        if flags & os.O_ACCMODE != os.O_RDONLY or flags & (os.O_TRUNC | os.O_CREAT):
            raise ReadOnly("the backup tree is read-only")

    def statfs(self) -> FsStats:
        """Totals, recomputed only when the index has changed."""
        snap = self.plans()
        if snap.stats is None:
            stored = self.catalog.db.get_val("SELECT coalesce(sum(stored_size), 0) FROM volumes")
            snap.stats = FsStats(int(stored), self.catalog.db.last_id("versions"))
        return snap.stats

    # -- rows -----------------------------------------------------------------------------

    def _plan(self, plan_id: int) -> PlanRow:
        plan = self.plans().by_id.get(plan_id)
        if plan is None:
            raise NoSuchEntry(f"no plan with id {plan_id}")
        return plan

    def _checkpoint(self, plan_id: int, seq: int) -> CheckpointRow:
        cp = self._plans.by_seq.get((plan_id, seq)) or self.plans().by_seq.get((plan_id, seq))
        if cp is None:
            raise NoSuchEntry(f"checkpoint {seq} of plan {plan_id} is gone")
        return cp

    def _checkpoint_root(self, cp: CheckpointRow) -> VersionRow:
        key = (cp.plan_id, cp.seq)
        root = self._roots.get(key)
        if root is None:
            plan = self._plan(cp.plan_id)
            root = self.catalog.version_at(plan.root_id, cp.seq)
            if root is None:
                raise NoSuchEntry(f"checkpoint {cp.plan}/{cp.name} has no root")
            self._roots[key] = root
        return root

    def _version(self, vid: int) -> tuple[int, VersionRow]:
        """(plan id, version) of version *vid*; versions never change once committed."""
        cached = self._versions.get(vid)
        if cached is not None:
            return cached
        row = self.catalog.db.get_row(_BY_ID, (vid,))
        if row is None:
            raise NoSuchEntry(f"version {vid} is gone")
        return self._versions.put(vid, (int(row[0]), VersionRow(*row[1:])))

    def _leader(self, version: VersionRow, plan_id: int) -> VersionRow:
        """The version whose attributes a hard-link group shows (its first member).

        It is remembered: the kernel's next request about a listed or looked-up node
        (ls asks getxattr right after the listing) then needs no query.
        """
        if version.hardlink_id is None or version.hardlink_id == version.id:
            self._versions.put(version.id, (plan_id, version))
            return version
        return self._version(version.hardlink_id)[1]

    def _group_size(self, hardlink_id: int, seq: int) -> int:
        size = self._groups.get((hardlink_id, seq))
        if size is None:
            size = self._groups.put((hardlink_id, seq),
                                    len(self.catalog.hardlink_group(hardlink_id, seq)) or 1)
        return size

    def _volume(self, volume_id: int) -> VolumeRow:
        volume = self._volumes.get(volume_id)
        if volume is None:
            row = self.catalog.volume(volume_id)
            if row is None:
                raise NoSuchEntry(f"volume {volume_id} is not in the index")
            volume = self._volumes.put(volume_id, row)
        return volume

    def _medium(self, medium_id: int) -> MediumRow:
        self.plans()  # drops cached media rows when the index changed
        medium = self._media.get(medium_id)
        if medium is None:
            row = self.catalog.medium(medium_id)
            if row is None:
                raise NoSuchEntry(f"medium {medium_id} is not in the index")
            medium = self._media[medium_id] = row
        return medium

    # -- attributes -----------------------------------------------------------------------

    def _tree_attr(self, version: VersionRow, seq: int) -> Attr:
        if version.hardlink_id is not None:
            nlink = self._group_size(version.hardlink_id, seq)
        elif version.type == "d":
            nlink = version.nlink
        else:
            nlink = 1
        return Attr(tree_ino(version, seq), version.st_mode, nlink, version.uid, version.gid,
                    version.rdev, version.size, blocks_of(version), version.atime_ns,
                    version.mtime_ns, version.ctime_ns, True)

    def _root_attr(self) -> Attr:
        plans = len(self.plans().by_id)
        t = self.mounted_ns
        return Attr(ROOT_INO, _DIR_MODE, 2 + plans, 0, 0, 0, 0, 0, t, t, t, False)

    def _plan_attr(self, plan: PlanRow) -> Attr:
        cps = self.plans().checkpoints.get(plan.id, [])
        t = cps[-1].finished_ns if cps else plan.created_ns
        return Attr(plan_ino(plan.id), _DIR_MODE, 2 + len(cps), 0, 0, 0, 0, 0, t, t, t, False)

    def _latest_attr(self, plan: PlanRow) -> Attr:
        cps = self.plans().checkpoints.get(plan.id, [])
        if not cps:
            raise NoSuchEntry(f"plan {plan.name} has no checkpoint yet")
        t = cps[-1].finished_ns
        size = len(self._latest_target(plan))
        return Attr(latest_ino(plan.id), _LINK_MODE, 1, 0, 0, 0, size, 0, t, t, t, False)

    def _latest_target(self, plan: PlanRow) -> bytes:
        cps = self.plans().checkpoints.get(plan.id, [])
        if not cps:
            raise NoSuchEntry(f"plan {plan.name} has no checkpoint yet")
        return os.fsencode(cps[-1].name)

    # -- the read-only contract -----------------------------------------------------------

    def refuse_change(self, what: str) -> None:
        """Every operation that would change the tree ends here."""
        raise ReadOnly(f"{what}: the backup tree is read-only")


#: What every listing starts with: the low-level FUSE API leaves them to the file system.
DOTS = (b".", b"..")


class DirStream:
    """The entries of one directory at positions 0, 1, 2 ..., fetched a page at a time:
    ``.`` and ``..`` first, then the stored children.

    A position is the offset cookie the kernel hands back to continue a listing; going
    on from the end of the current page costs one query, going back restarts the listing
    (rare: only after seekdir). The dots carry the directory's own attributes: the kernel
    makes no entries from them, and resolves ``..`` itself.
    """

    def __init__(self, tree: Tree, ino: int, page: int = PAGE) -> None:
        self.tree = tree
        self.ino = ino
        self.page_size = page
        self._reset()

    def _reset(self) -> None:
        self._start = 0
        self._page: list[tuple[bytes, Attr]] = []
        self._after = b""
        self._done = False

    def _advance(self) -> None:
        self._start += len(self._page)
        self._page = self.tree.entries(self.ino, after=self._after, limit=self.page_size)
        if self._page:
            self._after = self._page[-1][0]
        self._done = len(self._page) < self.page_size

    def entries_from(self, pos: int) -> Iterator[tuple[int, bytes, Attr]]:
        """(position of the next entry, name, attributes) from position *pos* on."""
        if pos < len(DOTS):
            own = self.tree.getattr(self.ino)
            for name in DOTS[pos:]:
                pos += 1
                yield pos, name, own
        for after, name, attr in self._stored_from(pos - len(DOTS)):
            yield after + len(DOTS), name, attr

    def _stored_from(self, pos: int) -> Iterator[tuple[int, bytes, Attr]]:
        if pos < self._start:
            self._reset()
        while True:
            while pos - self._start >= len(self._page):
                if self._done:
                    return
                self._advance()
            name, attr = self._page[pos - self._start]
            pos += 1
            yield pos, name, attr
