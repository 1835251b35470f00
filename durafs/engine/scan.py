"""Walking source trees: every path with its metadata, or a problem saying why not.

``scan`` yields, for each source, the directories above it (once, even when several sources
share them), then the source and everything below it, depth first: a directory before its
children, the entries of a directory in bytes order of their names. It is a generator: memory
holds only the directories on the current path (the sorted names of each, and a descriptor
for the innermost MAX_OPEN_DIRS of them), never the whole tree.

Every directory is opened relative to its parent's descriptor (``openat``) and every entry is
examined with ``fstatat``, so paths may be far longer than PATH_MAX and a directory renamed
during the scan cannot redirect the walk elsewhere. FIFOs, devices and sockets are only
``lstat``-ed, never opened. What cannot be read is yielded as a ``ScanProblem`` and the walk
goes on.
"""

from __future__ import annotations

import errno
import grp
import os
import pwd
import stat
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field

from durafs.engine.excludes import ExcludeMatcher
from durafs.engine.fsmeta import LONG_PATH, NO_XATTR_ERRNOS, fd_path
from durafs.format.catalog import TreeEntry

VANISHED = "vanished during the scan"
CHANGED = "changed during the scan"
SYMLINK_LOOP = "symlink loop"
DIRECTORY_LOOP = "directory loop (a bind mount of one of its parents?)"
DANGLING = "dangling symlink"
UNSUPPORTED = "unsupported file type"
UNREADABLE = "permission denied"
CONTENTS_SKIPPED = "contents not backed up"

_TYPES = {
    stat.S_IFDIR: "d", stat.S_IFREG: "f", stat.S_IFLNK: "l", stat.S_IFCHR: "c",
    stat.S_IFBLK: "b", stat.S_IFIFO: "p", stat.S_IFSOCK: "s",
}
#: Directories deeper than this on the current path are closed and reopened through ".."
#: when the walk comes back to them, so any depth works within RLIMIT_NOFILE (often 1024).
MAX_OPEN_DIRS = 64
_DIR_PATH_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC
_DIR_READ_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC


@dataclass(slots=True)
class ScanItem:
    """One path found by the scan, with everything the catalog records about it.

    *st* is the lstat result (the stat of the target when symlinks are followed), *type* one
    of ``d f l c b p s`` (docs/FORMAT.md §4), *target* the bytes of a symlink, *xattrs* every
    extended attribute (ACLs are ``system.posix_acl_access`` / ``_default``), *user* and
    *group* the names of the owner ids ("" if unknown), *hardlink_key* (st_dev, st_ino) for
    regular files with more than one link, else None.
    """

    path: bytes
    st: os.stat_result
    type: str
    target: bytes | None = None
    xattrs: dict[bytes, bytes] = field(default_factory=dict)
    user: str = ""
    group: str = ""
    hardlink_key: tuple[int, int] | None = None

    def to_entry(self) -> TreeEntry:
        """The catalog entry for this item, without chunks (the backup adds those)."""
        st = self.st
        return TreeEntry(
            path=self.path, type=self.type, mode=stat.S_IMODE(st.st_mode), uid=st.st_uid,
            gid=st.st_gid, user=self.user, group=self.group, mtime_ns=st.st_mtime_ns,
            atime_ns=st.st_atime_ns, ctime_ns=st.st_ctime_ns, size=st.st_size,
            target=self.target, rdev=st.st_rdev if self.type in ("c", "b") else 0,
            xattrs=dict(self.xattrs),
        )


@dataclass(slots=True)
class ScanProblem:
    """A path that is not (fully) backed up, and why, e.g. "permission denied".

    *incomplete*: the path's item was yielded all the same, without some of its extended
    attributes; whoever records it must not offer them to a later scan as `known`.
    """

    path: bytes
    reason: str
    incomplete: bool = False


@dataclass(slots=True)
class ScanNote:
    """A directory recorded but deliberately not entered (durafs's own data), and why."""

    path: bytes
    reason: str


ScanResult = ScanItem | ScanProblem | ScanNote

#: What the caller already knows about an object the scan met: its xattrs and symlink
#: target, or None to have them read (see `scan`'s *known*).
Known = Callable[[bytes, os.stat_result], "tuple[dict[bytes, bytes], bytes | None] | None"]


def scan(
    sources: Iterable[bytes | str],
    *,
    excludes: Iterable[str] = (),
    one_file_system: bool = False,
    follow_symlinks: bool = False,
    known: Known | None = None,
    check_readable: bool = True,
    own: Mapping[tuple[int, int], str] | None = None,
) -> Iterator[ScanResult]:
    """Walk *sources*, yielding a ScanItem per path and a ScanProblem per path not backed up.

    - Sources are made absolute and normalized; a source inside another is walked once,
      as part of the outer one, unless the outer walk does not reach it (another file
      system with *one_file_system*, or excluded): then it is walked on its own.
    - A source named through a symlink is walked as the directory it names, under the name
      given; its ancestors are yielded as the directories they resolve to.
    - *excludes* (gitignore style) are matched relative to each source root; an excluded
      directory is not entered.
    - *one_file_system*: directories on another device than their source root are yielded
      but not entered.
    - *follow_symlinks*: symlinks are replaced by what they point to; a link back to a
      directory on the current path is a "symlink loop" problem, a dangling one a problem.
    - Unreadable directory: its item, then a problem; unreadable file: a problem only
      (without *check_readable*, its item: for a caller that opens every file it is
      given and reports what it cannot, which saves an access() per file).
      A path gone between the listing and its lstat: a "vanished during the scan" problem.
    - *known(path, stat)* may return the (xattrs, symlink target) the caller recorded for
      this very object (same inode and ctime: a change of either would have moved the
      ctime), so the scan reads neither again nor checks that the file is readable.
    - *own* maps (st_dev, st_ino) of directories that hold durafs's own data (the catalog
      directory, the pools' media) to what they are: such a directory is yielded but not
      entered, followed by a ScanNote, since a copy of a store that changes while it is
      copied is useless and would grow with every backup. A source that is such a
      directory or lies inside one is a problem, and nothing of it is yielded.
    """
    walker = _Walker(list(excludes), one_file_system, follow_symlinks, known, check_readable,
                     dict(own or {}))
    return walker.run(normalize_sources(sources))


def normalize_sources(sources: Iterable[bytes | str]) -> list[bytes]:
    """Sources as sorted, distinct, absolute paths without ``.``/``..``/trailing slashes."""
    out: set[bytes] = set()
    for source in sources:
        raw = os.fsencode(source)
        if not raw:
            raise ValueError("a source path is empty")
        out.add(b"/" + os.path.abspath(raw).lstrip(b"/"))
    return sorted(out)


def own_data_around(root: bytes, own: dict[tuple[int, int], str]) -> str | None:
    """What of durafs's own data (*own*, as `scan` takes it) *root* is or lies in, if any."""
    for path in _ancestors_and_self(root) if own else ():
        try:
            st = os.stat(path)
        except OSError:
            return None  # the walk meets it and says why
        what = own.get((st.st_dev, st.st_ino))
        if what is not None:
            return what
    return None


def _join(parent: bytes, name: bytes) -> bytes:
    return parent + name if parent == b"/" else parent + b"/" + name


def _ancestors_and_self(path: bytes) -> list[bytes]:
    out = [b"/"]
    pos = path.find(b"/", 1)
    while pos != -1:
        out.append(path[:pos])
        pos = path.find(b"/", pos + 1)
    if path != b"/":
        out.append(path)
    return out


def _loop_reason(on_path: _OnPath, key: tuple[int, int], followed: bool) -> str:
    """Why entering the directory *key* (reached through a symlink if *followed*) would
    loop: a symlink on the cycle (the directories after *key*'s first visit, and this
    step), or none, which leaves a bind mount."""
    after = list(on_path.values())[list(on_path).index(key) + 1 :]
    return SYMLINK_LOOP if followed or any(after) else DIRECTORY_LOOP


def _reason(exc: OSError) -> str:
    text = exc.strerror or str(exc)
    return text[:1].lower() + text[1:]


class _Changed(Exception):
    """The entry is no longer the directory that was stat-ed (replaced during the scan)."""


@dataclass(slots=True)
class _Dir:
    """An open directory on the walk's current path and the names still to visit in it."""

    fd: int
    path: bytes
    rel: bytes
    key: tuple[int, int]
    names: list[bytes]
    followed: bool = False  # reached through a symlink
    pos: int = 0


#: The directories on the walk's current path, outermost first: (st_dev, st_ino) ->
#: whether it was reached through a symlink.
_OnPath = dict[tuple[int, int], bool]


class _Walker:
    """The state of one scan: caches and the bookkeeping that keeps overlapping sources apart.

    Invariant: every path is yielded at most once per scan.
    """

    def __init__(
        self, excludes: list[str], one_file_system: bool, follow: bool, known: Known | None,
        check_readable: bool = True, own: dict[tuple[int, int], str] | None = None,
    ) -> None:
        self.excludes = excludes
        self.own = own or {}
        self.known = known
        self.check_readable = check_readable
        self.one_file_system = one_file_system
        self.follow = follow
        self.users: dict[int, str] = {}
        self.groups: dict[int, str] = {}
        self.no_xattr_devs: set[int] = set()
        self.use_proc = os.path.isdir("/proc/self/fd")
        self.sources: set[bytes] = set()
        self.on_way: set[bytes] = set()  # the sources and every directory above them
        self.emitted: set[bytes] = set()  # directories of on_way already yielded
        self.covered: set[bytes] = set()  # sources walked as part of an outer source

    def run(self, roots: list[bytes]) -> Iterator[ScanResult]:
        self.sources = set(roots)
        self.on_way = {p for root in roots for p in _ancestors_and_self(root)}
        for root in roots:
            if root not in self.covered:
                yield from self._source(root)

    # -- a source: its ancestors, then its tree ------------------------------------------

    def _source(self, root: bytes) -> Iterator[ScanResult]:
        inside = own_data_around(root, self.own)
        if inside is not None:
            yield ScanProblem(root, f"in {inside}, which is never backed up")
            return
        matcher = ExcludeMatcher(self.excludes, root)
        parent_fd = None if root == b"/" else os.open(b"/", _DIR_PATH_FLAGS)
        name = b"/" if root == b"/" else root.rsplit(b"/", 1)[1]
        path = b"/"
        try:
            if parent_fd is not None:
                yield from self._ancestor(None, b"/", b"/")
                for part in root[1:].split(b"/")[:-1]:
                    path = _join(path, part)
                    yield from self._ancestor(parent_fd, part, path)
                    parent_fd = self._reopen(parent_fd, part)
            path = root
            yield from self._walk_root(parent_fd, name, root, matcher)
        except OSError as exc:  # a source or one of its parents is missing or unreachable
            yield ScanProblem(path, _reason(exc))
        finally:
            if parent_fd is not None:
                os.close(parent_fd)

    @staticmethod
    def _reopen(fd: int, name: bytes) -> int:
        new = os.open(name, _DIR_PATH_FLAGS, dir_fd=fd)
        os.close(fd)
        return new

    def _ancestor(self, dir_fd: int | None, name: bytes, path: bytes) -> Iterator[ScanResult]:
        if path in self.emitted:
            return
        st = os.stat(name, dir_fd=dir_fd)  # follows: /home may be a link to where homes are
        if not stat.S_ISDIR(st.st_mode):
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), path)
        self.emitted.add(path)
        yield from self._outputs(dir_fd, name, path, st, True)

    def _walk_root(
        self, parent_fd: int | None, name: bytes, root: bytes, matcher: ExcludeMatcher
    ) -> Iterator[ScanResult]:
        st = os.stat(name, dir_fd=parent_fd)
        if not stat.S_ISDIR(st.st_mode):
            yield from self._leaf(parent_fd, name, root, st, followed=True)
            return
        seen = root in self.emitted  # yielded already, by an outer source that did not enter it
        outs, frame = self._directory(parent_fd, name, root, b"", st, True, st.st_dev, {})
        if seen:
            outs = [o for o in outs if not (isinstance(o, ScanItem) and o.path == root)]
        if frame is None:
            yield from outs
        else:
            yield from self._walk(frame, outs, matcher, st.st_dev)

    # -- the depth-first walk --------------------------------------------------------------

    def _walk(
        self, first: _Dir, first_outs: list[ScanResult], matcher: ExcludeMatcher, root_dev: int
    ) -> Iterator[ScanResult]:
        """Yield *first_outs*, then everything below *first*; every descriptor is closed when
        the walk ends, also when the consumer stops early."""
        stack = [first]
        on_path = {first.key: first.followed}
        try:
            yield from first_outs
            while stack:
                top = stack[-1]
                if top.pos == len(top.names):
                    stack.pop()
                    on_path.pop(top.key, None)
                    if stack and stack[-1].fd < 0:
                        yield from _reopen_parent(stack[-1], top.fd)
                    _close(top.fd)
                    continue
                name = top.names[top.pos]
                top.pos += 1
                outs, frame = self._child(top, name, matcher, root_dev, on_path)
                if frame is not None:  # on the stack before yielding, so it is always closed
                    stack.append(frame)
                    on_path[frame.key] = frame.followed
                    if len(stack) > MAX_OPEN_DIRS:  # deep trees must not exhaust descriptors
                        parked = stack[-MAX_OPEN_DIRS - 1]
                        _close(parked.fd)
                        parked.fd = -1
                yield from outs
        finally:
            for left in stack:  # the consumer stopped early: close what is still open
                _close(left.fd)

    def _child(
        self, top: _Dir, name: bytes, matcher: ExcludeMatcher, root_dev: int,
        on_path: _OnPath,
    ) -> tuple[list[ScanResult], _Dir | None]:
        path = _join(top.path, name)
        rel = top.rel + b"/" + name if top.rel else name
        try:
            return self._examine(top.fd, name, path, rel, matcher, root_dev, on_path)
        except FileNotFoundError:
            return [ScanProblem(path, VANISHED)], None
        except OSError as exc:  # anything else about this one entry: report it, walk on
            return [ScanProblem(path, _reason(exc))], None

    def _examine(
        self, dir_fd: int, name: bytes, path: bytes, rel: bytes, matcher: ExcludeMatcher,
        root_dev: int, on_path: _OnPath,
    ) -> tuple[list[ScanResult], _Dir | None]:
        try:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            if matcher and (matcher.matches(rel, False, parents_checked=True)
                            or matcher.matches(rel, True, parents_checked=True)):
                return [], None
            return [ScanProblem(path, VANISHED)], None
        followed = self.follow and stat.S_ISLNK(st.st_mode)
        if followed:
            try:
                st = os.stat(name, dir_fd=dir_fd)
            except OSError as exc:
                if matcher and matcher.matches(rel, False, parents_checked=True):
                    return [], None
                return [ScanProblem(path, _follow_reason(exc))], None
        elif stat.S_ISLNK(st.st_mode) and path in self.on_way:
            linked = self._linked_dir(dir_fd, name)
            if linked is not None:
                st, followed = linked, True
        is_dir = stat.S_ISDIR(st.st_mode)
        if matcher and matcher.matches(rel, is_dir, parents_checked=True):
            return [], None
        if is_dir:
            if followed and not self.follow and path not in self.sources:
                # only the way to a source (given through this link): recorded as the
                # directory it leads to, as the source's own walk records its parents
                return self._outputs(dir_fd, name, path, st, True), None
            return self._directory(dir_fd, name, path, rel, st, followed, root_dev, on_path)
        if path in self.sources:  # a file given as a source too: this walk records it
            self.covered.add(path)
        return list(self._leaf(dir_fd, name, path, st, followed=followed)), None

    @staticmethod
    def _linked_dir(dir_fd: int, name: bytes) -> os.stat_result | None:
        """The status of the directory the symlink *name* leads to, if it leads to one.

        Asked for a link that is a source, or leads to one: a source is walked under the
        name given, as a directory, so a walk around it that met the link must record
        that directory rather than the link (a path is in a checkpoint once)."""
        try:
            st = os.stat(name, dir_fd=dir_fd)
        except OSError:
            return None
        return st if stat.S_ISDIR(st.st_mode) else None

    # -- directories -------------------------------------------------------------------------

    def _directory(
        self, parent_fd: int | None, name: bytes, path: bytes, rel: bytes,
        st: os.stat_result, followed: bool, root_dev: int, on_path: _OnPath,
    ) -> tuple[list[ScanResult], _Dir | None]:
        """The outputs for a directory and, if it is to be entered, its frame (fd open)."""
        key = (st.st_dev, st.st_ino)
        if key in on_path:
            return [ScanProblem(path, _loop_reason(on_path, key, followed))], None
        if self.one_file_system and st.st_dev != root_dev:
            return self._outputs(parent_fd, name, path, st, followed), None
        if key in self.own:
            outs = self._outputs(parent_fd, name, path, st, followed)
            return [*outs, ScanNote(path, f"{self.own[key]}: {CONTENTS_SKIPPED}")], None
        try:
            fd = self._open_dir(parent_fd, name, st, followed)
        except FileNotFoundError:
            return [ScanProblem(path, VANISHED)], None
        except _Changed:
            return [ScanProblem(path, CHANGED)], None
        except OSError as exc:
            outs = self._outputs(parent_fd, name, path, st, followed)
            return [*outs, ScanProblem(path, f"{_reason(exc)} ({CONTENTS_SKIPPED})")], None
        try:
            outs = self._outputs(None, b"", path, st, followed, fd=fd)
            names = sorted(os.fsencode(n) for n in os.listdir(fd))
        except OSError as exc:
            os.close(fd)
            if exc.errno == errno.ENOENT:
                return [ScanProblem(path, VANISHED)], None
            return [ScanProblem(path, f"{_reason(exc)} ({CONTENTS_SKIPPED})")], None
        if path in self.sources and rel:
            self.covered.add(path)
        return outs, _Dir(fd, path, rel, key, names, followed)

    @staticmethod
    def _open_dir(parent_fd: int | None, name: bytes, st: os.stat_result, followed: bool) -> int:
        """Open the directory *name* read-only, checking it is still the one stat-ed."""
        flags = _DIR_READ_FLAGS | (0 if followed else os.O_NOFOLLOW)
        try:
            try:
                # O_NOATIME: a backup should not touch the atimes it records.
                fd = os.open(name, flags | os.O_NOATIME, dir_fd=parent_fd)
            except PermissionError:  # O_NOATIME needs ownership; plain open may still work
                fd = os.open(name, flags, dir_fd=parent_fd)
        except OSError as exc:
            if exc.errno in (errno.ENOTDIR, errno.ELOOP):
                raise _Changed from exc
            raise
        now = os.fstat(fd)
        if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
            os.close(fd)
            raise _Changed
        return fd

    # -- items -------------------------------------------------------------------------------

    def _leaf(
        self, dir_fd: int | None, name: bytes, path: bytes, st: os.stat_result, *,
        followed: bool,
    ) -> Iterator[ScanResult]:
        if (self.known is not None and stat.S_IFMT(st.st_mode) in _TYPES
                and (known := self.known(path, st)) is not None):
            yield self._item(path, st, known[1], known[0])
            return
        if self.check_readable and stat.S_ISREG(st.st_mode) and not _readable(dir_fd, name):
            os.stat(name, dir_fd=dir_fd)  # FileNotFoundError if it is gone rather than locked
            yield ScanProblem(path, UNREADABLE)
            return
        yield from self._outputs(dir_fd, name, path, st, followed, ask=False)

    def _outputs(
        self, dir_fd: int | None, name: bytes, path: bytes, st: os.stat_result,
        followed: bool, fd: int | None = None, *, ask: bool = True,
    ) -> list[ScanResult]:
        """The item for one path, plus a problem if some of its xattrs were unreadable
        (*ask*: whether `known` may answer for them)."""
        kind = _TYPES.get(stat.S_IFMT(st.st_mode))
        if kind is None:
            return [ScanProblem(path, UNSUPPORTED)]
        known = self.known(path, st) if ask and self.known is not None else None
        if known is not None:
            return [self._item(path, st, known[1], known[0])]
        target = os.readlink(name, dir_fd=dir_fd) if kind == "l" else None
        xattrs, denied = self._xattrs(dir_fd, name, path, st, kind, followed, fd)
        item = self._item(path, st, target, xattrs)
        if denied is None:
            return [item]
        return [item, ScanProblem(path, f"extended attributes not read: {_reason(denied)}",
                                  incomplete=True)]

    def _item(
        self, path: bytes, st: os.stat_result, target: bytes | None, xattrs: dict[bytes, bytes],
    ) -> ScanItem:
        kind = _TYPES[stat.S_IFMT(st.st_mode)]
        link_key = (st.st_dev, st.st_ino) if kind == "f" and st.st_nlink > 1 else None
        if path in self.on_way and kind == "d":
            self.emitted.add(path)
        return ScanItem(path, st, kind, target, xattrs, self._user(st.st_uid),
                        self._group(st.st_gid), link_key)

    def _xattrs(
        self, dir_fd: int | None, name: bytes, path: bytes, st: os.stat_result, kind: str,
        followed: bool, fd: int | None,
    ) -> tuple[dict[bytes, bytes], OSError | None]:
        """All xattrs of the object, and the error of the first one that could not be read."""
        if st.st_dev in self.no_xattr_devs:
            return {}, None
        target: int | bytes
        if fd is not None:
            target = fd
        elif dir_fd is None or not self.use_proc:
            target = path if len(path) < LONG_PATH else fd_path(dir_fd, name)
        else:
            target = fd_path(dir_fd, name)
        follow = followed or fd is not None  # an fd is the object itself: nothing to follow
        try:
            keys = os.listxattr(target, follow_symlinks=follow)
        except OSError as exc:
            if exc.errno not in NO_XATTR_ERRNOS:
                raise
            if kind in ("d", "f"):  # symlinks may lack support where files have it
                self.no_xattr_devs.add(st.st_dev)
            return {}, None
        return _read_xattrs(target, keys, follow)

    def _user(self, uid: int) -> str:
        name = self.users.get(uid)
        if name is None:
            try:
                name = pwd.getpwuid(uid).pw_name
            except KeyError:
                name = ""
            self.users[uid] = name
        return name

    def _group(self, gid: int) -> str:
        name = self.groups.get(gid)
        if name is None:
            try:
                name = grp.getgrgid(gid).gr_name
            except KeyError:
                name = ""
            self.groups[gid] = name
        return name


def _read_xattrs(
    target: int | bytes, keys: list[str], follow: bool
) -> tuple[dict[bytes, bytes], OSError | None]:
    values: dict[bytes, bytes] = {}
    denied: OSError | None = None
    for key in keys:
        try:
            values[os.fsencode(key)] = os.getxattr(target, key, follow_symlinks=follow)
        except OSError as exc:
            if exc.errno == errno.ENODATA:  # removed since it was listed
                continue
            if exc.errno == errno.ENOENT:
                raise
            denied = denied or exc
    return values, denied


def _close(fd: int) -> None:
    if fd >= 0:
        os.close(fd)


def _reopen_parent(frame: _Dir, child_fd: int) -> Iterator[ScanProblem]:
    """Reopen a parked directory through ``..`` of its child, checking it is the same one.

    If it moved meanwhile (or its child could not be reopened either), the rest of it is
    given up, with a problem, rather than walked at a place it no longer is.
    """
    try:
        fd = os.open(b"..", _DIR_READ_FLAGS, dir_fd=child_fd)
    except OSError:
        fd = -1
    if fd >= 0 and _key(os.fstat(fd)) == frame.key:
        frame.fd = fd
        return
    _close(fd)
    if frame.pos < len(frame.names):
        yield ScanProblem(frame.path, f"{CHANGED} (moved while walked; {CONTENTS_SKIPPED})")
    frame.pos = len(frame.names)


def _key(st: os.stat_result) -> tuple[int, int]:
    return st.st_dev, st.st_ino


def _readable(dir_fd: int | None, name: bytes) -> bool:
    # access() with the effective ids asks the kernel, so ACLs and capabilities count.
    return os.access(name, os.R_OK, dir_fd=dir_fd, effective_ids=True)


def _follow_reason(exc: OSError) -> str:
    if exc.errno == errno.ELOOP:
        return SYMLINK_LOOP
    if exc.errno == errno.ENOENT:
        return DANGLING
    return _reason(exc)
