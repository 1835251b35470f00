# SPDX-License-Identifier: GPL-3.0-or-later
"""The pyfuse3 adapter: kernel requests in, `durafs.fs.vfs` / `durafs.fs.reads` calls out.

This is a protocol adapter only. It owns the handle tables and the one mapping from
durafs errors to errnos (`errno_of`); the tree's meaning lives in the model. Every
handler runs on the trio thread: metadata handlers call the model directly (indexed
queries, no medium), data handlers await the reader, which does blocking work in worker
threads.

Kernel caching: nodes inside checkpoints never change, so their entries and attributes
are cached for `STABLE_TIMEOUT` (negative lookups too); the root, plan directories and
``latest`` links change when checkpoints are made, so the kernel re-asks after
`VOLATILE_TIMEOUT`. Inodes are arithmetic (no per-inode state), so ``forget`` has
nothing to do.
"""

from __future__ import annotations

import errno
import itertools
import logging
from collections import Counter
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Literal, NoReturn, cast

import pyfuse3
import trio
from pyfuse3 import (
    EntryAttributes,
    FileHandleT,
    FileInfo,
    FileNameT,
    FlagT,
    InodeT,
    ModeT,
    ReaddirToken,
    RequestContext,
    SetattrFields,
    StatvfsData,
    XAttrNameT,
)

from durafs.errors import DurafsError, MediumOfflineError, NoIdentityError
from durafs.format.age import Buffer
from durafs.fs.errors import (
    BadHandle,
    Interrupted,
    IsADirectory,
    NoSuchAttribute,
    NoSuchEntry,
    NotADirectory,
    NotASymlink,
    NotSupported,
    ReadOnly,
)
from durafs.fs.reads import OpenFile, Reader
from durafs.fs.requests import signal_pending
from durafs.fs.vfs import LRU, XATTR_ONLINE, Attr, DirStream, Tree

log = logging.getLogger(__name__)

#: Seconds the kernel may cache what never changes (the checkpoints' trees).
STABLE_TIMEOUT = 86400.0
#: Seconds for the root, plan directories and latest links (new checkpoints show up).
VOLATILE_TIMEOUT = 1.0
BLOCK_SIZE = 4096
#: Inodes remembered as stored in the kernel's page cache (not stored again on reopening).
STORED_INODES = 4096

#: pyfuse3's stub says bytes, but notify_store takes any contiguous buffer (it calls
#: PyObject_GetBuffer with PyBUF_CONTIG_RO): the reader's views go without a copy.
_NotifyStore = Callable[[InodeT, int, Buffer], None]

#: Errors the kernel hears, most specific first (subclasses before their bases).
_ERRNOS: tuple[tuple[type[BaseException], int], ...] = (
    (NoSuchEntry, errno.ENOENT),
    (NotADirectory, errno.ENOTDIR),
    (IsADirectory, errno.EISDIR),
    (NotASymlink, errno.EINVAL),
    (NotSupported, errno.EOPNOTSUPP),
    (NoSuchAttribute, pyfuse3.ENOATTR),
    (ReadOnly, errno.EROFS),
    (Interrupted, errno.EINTR),
    (BadHandle, errno.EBADF),
    (MediumOfflineError, errno.ENOMEDIUM),
    (NoIdentityError, errno.EACCES),
    (DurafsError, errno.EIO),  # damaged data, media errors, index errors
)
#: Errnos that are answers, not problems: logged at debug level only.
_QUIET = frozenset({errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.EINVAL, pyfuse3.ENOATTR,
                    errno.EOPNOTSUPP, errno.EROFS})


def errno_of(exc: BaseException) -> int:
    """The errno the kernel gets for *exc* (EIO for anything unexpected)."""
    if isinstance(exc, OSError) and exc.errno:
        return exc.errno
    for cls, number in _ERRNOS:
        if isinstance(exc, cls):
            return number
    return errno.EIO


class _to_errno:  # lower case: it reads as a function at its call sites
    """Turn what the model raises into FUSEError; log what is a real problem.

    *what* % *args* names the request; it is formatted only when something is logged.
    A class rather than a ``@contextmanager`` generator: every request enters one, and
    this costs a third as much.
    """

    __slots__ = ("args", "what")

    def __init__(self, what: str, *args: object) -> None:
        self.what = what
        self.args = args

    def __enter__(self) -> None:
        return None

    def __exit__(self, typ: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> Literal[False]:
        if exc is None or isinstance(exc, pyfuse3.FUSEError):
            return False
        what, args = self.what, self.args
        if isinstance(exc, (DurafsError, OSError)):
            number = errno_of(exc)
            if number in _QUIET:
                log.debug(f"{what}: %s", *args, exc)
            elif number in (errno.ENOMEDIUM, errno.EINTR):
                log.warning(f"{what}: %s", *args, exc)
            else:
                log.error(f"{what}: %s", *args, exc)
            raise pyfuse3.FUSEError(number) from exc
        if isinstance(exc, Exception):  # a bug: answer EIO, keep serving everyone else
            log.error(f"{what} failed", *args, exc_info=exc)
            raise pyfuse3.FUSEError(errno.EIO) from exc
        return False  # cancellation, KeyboardInterrupt: not ours to translate


def entry_attributes(attr: Attr, entry: EntryAttributes | None = None, *,
                     named_stably: bool = True) -> EntryAttributes:
    """The kernel's view of *attr*, with cache timeouts by stability, written into *entry*
    if given (readdir reuses one for all its entries: each reply copies it at once).
    *named_stably*: the name leading to it cannot change either (a checkpoint's root is
    stable, but its name in the plan directory goes when the checkpoint does)."""
    if entry is None:
        entry = EntryAttributes()
        entry.generation = 0
        entry.st_blksize = BLOCK_SIZE
    entry.st_ino = InodeT(attr.ino)
    timeout = STABLE_TIMEOUT if attr.stable else VOLATILE_TIMEOUT
    entry.entry_timeout = timeout if named_stably else VOLATILE_TIMEOUT
    entry.attr_timeout = timeout
    entry.st_mode = ModeT(attr.mode)
    entry.st_nlink = attr.nlink
    entry.st_uid = attr.uid
    entry.st_gid = attr.gid
    entry.st_rdev = attr.rdev
    entry.st_size = attr.size
    entry.st_blocks = attr.blocks
    entry.st_atime_ns = attr.atime_ns
    entry.st_mtime_ns = attr.mtime_ns
    entry.st_ctime_ns = attr.ctime_ns
    return entry


def _negative_entry() -> EntryAttributes:
    entry = EntryAttributes()
    entry.st_ino = InodeT(0)  # "no such name", cached for entry_timeout
    entry.entry_timeout = STABLE_TIMEOUT
    return entry


class Operations(pyfuse3.Operations):
    """Serves a `Tree` (metadata) and a `Reader` (data) to the kernel, read-only.

    *notify_store* is how a small file's bytes reach the kernel's page cache at open
    (`_store`): pyfuse3's, unless a caller without a kernel session (a test calling the
    handlers directly) wants to see what would be stored.
    """

    supports_dot_lookup = False  # no NFS export: ".." of an arbitrary inode is not kept
    enable_writeback_cache = False
    enable_acl = True  # the kernel enforces the source's POSIX ACLs (it asks getxattr)

    def __init__(self, tree: Tree, reader: Reader, *,
                 notify_store: _NotifyStore | None = None) -> None:
        super().__init__()
        self.tree = tree
        self.reader = reader
        self._notify_store = notify_store or cast(_NotifyStore, pyfuse3.notify_store)
        #: Inodes whose bytes were put in the kernel's page cache lately (see `_store`).
        self._stored: LRU[int, bool] = LRU(STORED_INODES)
        self._open_inodes: Counter[int] = Counter()  # open file handles by inode
        #: Set once the kernel's INIT request is answered (the connection's settings are
        #: then final: see `durafs.fs.mount`).
        self.initialized = trio.Event()
        self._handles = itertools.count(1)
        self._files: dict[int, OpenFile] = {}
        self._dirs: dict[int, DirStream] = {}

    def init(self) -> None:
        # Called while pyfuse3 answers INIT; the answer is sent when this returns, before
        # any task waiting for the event runs.
        self.initialized.set()

    # -- metadata: the index only ---------------------------------------------------------

    async def lookup(self, parent_inode: InodeT, name: FileNameT,
                     ctx: RequestContext) -> EntryAttributes:
        with _to_errno("lookup of %r in %d", name, parent_inode):
            try:
                return entry_attributes(self.tree.lookup(parent_inode, name),
                                        named_stably=self.tree.is_stable(parent_inode))
            except NoSuchEntry:
                if self.tree.is_stable(parent_inode):
                    return _negative_entry()
                raise

    async def forget(self, inode_list: Sequence[tuple[InodeT, int]]) -> None:
        return None  # inodes are arithmetic: nothing is kept per inode

    async def getattr(self, inode: InodeT, ctx: RequestContext) -> EntryAttributes:
        with _to_errno("getattr of %d", inode):
            return entry_attributes(self.tree.getattr(inode))

    async def readlink(self, inode: InodeT, ctx: RequestContext) -> FileNameT:
        with _to_errno("readlink of %d", inode):
            return FileNameT(self.tree.readlink(inode))

    async def opendir(self, inode: InodeT, ctx: RequestContext) -> FileHandleT:
        with _to_errno("opendir of %d", inode):
            fh = next(self._handles)
            self._dirs[fh] = self.tree.opendir(inode)
            return FileHandleT(fh)

    async def readdir(self, fh: FileHandleT, start_id: int, token: ReaddirToken) -> None:
        with _to_errno("readdir of handle %d", fh):
            stream = self._dirs.get(fh)
            if stream is None:
                raise BadHandle(f"no directory handle {fh}")
            entry: EntryAttributes | None = None
            stably = self.tree.is_stable(stream.ino)
            for next_id, name, attr in stream.entries_from(start_id):
                entry = entry_attributes(attr, entry, named_stably=stably)
                if not pyfuse3.readdir_reply(token, FileNameT(name), entry, next_id):
                    break

    async def releasedir(self, fh: FileHandleT) -> None:
        self._dirs.pop(fh, None)

    async def getxattr(self, inode: InodeT, name: XAttrNameT, ctx: RequestContext) -> bytes:
        with _to_errno("getxattr %r of %d", name, inode):
            if name == XATTR_ONLINE and name not in self.tree.listxattr(inode):
                return await self._online(inode)
            value = self.tree.find_xattr(inode, name)
        if value is None:  # the common answer (ls -l asks every file for its ACL): no log
            raise pyfuse3.FUSEError(pyfuse3.ENOATTR)
        return value

    async def _online(self, inode: int) -> bytes:
        """``yes`` if reading the file now needs no medium that is offline, ``no`` if it
        does, ``lost`` if it needs a volume gone from its medium (verify names it; the
        next backup of the file stores it again)."""
        try:
            plan = self.tree.read_plan(inode)
        except (IsADirectory, NoSuchAttribute) as exc:
            raise NoSuchAttribute("only files have user.durafs.online") from exc
        if self.reader.needs_lost(plan, self.tree.is_lost):
            return b"lost"
        return b"yes" if await self.reader.available(plan) else b"no"

    async def listxattr(self, inode: InodeT, ctx: RequestContext) -> Sequence[XAttrNameT]:
        with _to_errno("listxattr of %d", inode):
            return [XAttrNameT(name) for name in self.tree.listxattr(inode)]

    async def statfs(self, ctx: RequestContext) -> StatvfsData:
        with _to_errno("statfs"):
            stats = self.tree.statfs()
        data = StatvfsData()
        data.f_bsize = BLOCK_SIZE
        data.f_frsize = BLOCK_SIZE
        data.f_blocks = -(-stats.stored_bytes // BLOCK_SIZE)
        data.f_bfree = data.f_bavail = 0
        data.f_files = stats.files
        data.f_ffree = data.f_favail = 0
        data.f_namemax = 255
        return data

    # -- data -----------------------------------------------------------------------------

    async def open(self, inode: InodeT, flags: FlagT, ctx: RequestContext) -> FileInfo:
        with _to_errno("open of %d", inode):
            self.tree.check_open(inode, flags)
            plan = self.tree.read_plan(inode)
            # May wait for a medium; the waiting process's signals end the wait (EINTR).
            await self.reader.ensure_available(plan, lambda: signal_pending(ctx.pid),
                                               pid=ctx.pid)
            fh = next(self._handles)
            alone = self._open_inodes[inode] == 0  # (before this open counts)
            f = self._files[fh] = OpenFile(plan)
            self._open_inodes[inode] += 1
            if alone and self._may_store(inode):
                data = await self.reader.preload(f)
                # again after the await: another open of the inode may have come meanwhile
                if data is not None and self._open_inodes[inode] == 1:
                    self._store(inode, data)
        # keep_cache: the content never changes, so the page cache survives reopening (and
        # keeps what _store put there)
        return FileInfo(fh=FileHandleT(fh), keep_cache=True)

    def _may_store(self, inode: int) -> bool:
        """Not without a kernel session (tests call the handlers directly), not twice, and
        (the caller checks) only when no other handle of the inode is open: notify_store
        locks each page it fills, and a page the kernel is reading into waits for our
        answer to that read, which this thread would never send. The kernel sends a
        release only after the file's reads are answered, so no open handle means no read
        of the inode in flight."""
        return self.initialized.is_set() and self._stored.get(inode) is None

    def _store(self, inode: int, data: Buffer) -> None:
        """Put a small file's bytes in the kernel's page cache while answering its open:
        the read that would follow is served there, without a request (one round trip
        through pyfuse3 costs more than the copy)."""
        try:
            self._notify_store(InodeT(inode), 0, data)
        except OSError as exc:  # the kernel then asks with read requests, as usual
            log.debug("notify_store of inode %d: %s", inode, exc)
        self._stored.put(inode, True)

    async def read(self, fh: FileHandleT, off: int, size: int) -> bytes:
        f = self._files.get(fh)
        with _to_errno("read of %s at %d", f.plan if f else fh, off):  # named lazily
            if f is None:
                raise BadHandle(f"no file handle {fh}")
            # any buffer: pyfuse3 replies from it without a copy (its stub says bytes, see
            # _NotifyStore)
            return await self.reader.read(f, off, size)  # type: ignore[return-value]

    async def release(self, fh: FileHandleT) -> None:
        f = self._files.pop(fh, None)
        if f is not None:
            self._open_inodes[f.plan.ino] -= 1
            if not self._open_inodes[f.plan.ino]:
                del self._open_inodes[f.plan.ino]

    # -- everything that would change the tree: EROFS --------------------------------------

    def _refuse(self, what: str) -> NoReturn:
        with _to_errno("%s", what):
            self.tree.refuse_change(what)
        raise AssertionError("refuse_change returned")

    async def setattr(self, inode: InodeT, attr: EntryAttributes, fields: SetattrFields,
                      fh: FileHandleT | None, ctx: RequestContext) -> EntryAttributes:
        self._refuse("setattr")

    async def mknod(self, parent_inode: InodeT, name: FileNameT, mode: ModeT, rdev: int,
                    ctx: RequestContext) -> EntryAttributes:
        self._refuse("mknod")

    async def mkdir(self, parent_inode: InodeT, name: FileNameT, mode: ModeT,
                    ctx: RequestContext) -> EntryAttributes:
        self._refuse("mkdir")

    async def unlink(self, parent_inode: InodeT, name: FileNameT, ctx: RequestContext) -> None:
        self._refuse("unlink")

    async def rmdir(self, parent_inode: InodeT, name: FileNameT, ctx: RequestContext) -> None:
        self._refuse("rmdir")

    async def symlink(self, parent_inode: InodeT, name: FileNameT, target: FileNameT,
                      ctx: RequestContext) -> EntryAttributes:
        self._refuse("symlink")

    async def rename(self, parent_inode_old: InodeT, name_old: FileNameT,
                     parent_inode_new: InodeT, name_new: FileNameT, flags: FlagT,
                     ctx: RequestContext) -> None:
        self._refuse("rename")

    async def link(self, inode: InodeT, new_parent_inode: InodeT, new_name: FileNameT,
                   ctx: RequestContext) -> EntryAttributes:
        self._refuse("link")

    async def write(self, fh: FileHandleT, off: int, buf: bytes) -> int:
        self._refuse("write")

    async def create(self, parent_inode: InodeT, name: FileNameT, mode: ModeT, flags: FlagT,
                     ctx: RequestContext) -> tuple[FileInfo, EntryAttributes]:
        self._refuse("create")

    async def setxattr(self, inode: InodeT, name: XAttrNameT, value: bytes,
                       ctx: RequestContext) -> None:
        self._refuse("setxattr")

    async def removexattr(self, inode: InodeT, name: XAttrNameT, ctx: RequestContext) -> None:
        self._refuse("removexattr")

