"""Recreating file-system objects and their metadata on restore, and sparse file helpers.

Paths are bytes and may be longer than PATH_MAX (4096): such paths are reached through a
chain of ``O_PATH`` directory descriptors and ``*at`` calls, and extended attributes through
``/proc/self/fd/N/name``, so no system call ever sees more than one long name at a time.

Order matters when metadata is applied (see ``apply_metadata``): owner, then extended
attributes, then mode, then times, each step for a reason the kernel imposes. A regular file
the caller holds open gets the same steps through its descriptor (``apply_fd_metadata``:
``fchown``, ``fsetxattr``, ``fchmod``, ``futimens``), with no path lookup at all.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager

from durafs.format.catalog import TreeEntry

#: Paths at least this long are opened piecewise (PATH_MAX is 4096 including the NUL).
LONG_PATH = 4000
#: The ACL xattrs a new file can inherit from a default ACL of its directory.
ACL_NAMES = (b"system.posix_acl_access", b"system.posix_acl_default")
#: Namespaces only a privileged process may write (and, for trusted, even read).
PRIVILEGED_PREFIXES = (b"security.", b"trusted.")
#: errnos saying a file system has no extended attributes at all.
NO_XATTR_ERRNOS = frozenset({errno.ENOTSUP, errno.EOPNOTSUPP})

_DIR_PATH_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC
_DEVICE_TYPES = {"c": stat.S_IFCHR, "b": stat.S_IFBLK}


def fd_path(dir_fd: int | None, name: bytes) -> bytes:
    """A path naming *name* in the directory open as *dir_fd*, short whatever its depth.

    Used for the xattr calls, which take no ``dir_fd``. With *dir_fd* None, *name* itself.
    """
    return name if dir_fd is None else b"/proc/self/fd/%d/%s" % (dir_fd, name)


@contextmanager
def at_path(path: bytes) -> Iterator[tuple[int | None, bytes]]:
    """(dir_fd, name) for use with ``*at`` calls, for a path of any length.

    Short paths come back unchanged with dir_fd None; long ones as an ``O_PATH`` descriptor
    of the parent directory (closed on exit) and the last component.
    """
    if len(path) < LONG_PATH:
        yield None, path
        return
    parent, name = path.rsplit(b"/", 1)
    fd = open_dir_path(parent or b"/", _DIR_PATH_FLAGS)
    try:
        yield fd, name
    finally:
        os.close(fd)


def open_dir_path(path: bytes, flags: int) -> int:
    """Open the directory *path* (absolute, any length) with *flags*.

    Long paths are walked one component at a time with ``O_PATH`` descriptors; symlinks in
    the path are followed as ``open`` would.
    """
    if len(path) < LONG_PATH:
        return os.open(path, flags)
    root = os.open(b"/", _DIR_PATH_FLAGS)
    try:
        return walk_components(root, [p for p in path.split(b"/") if p], _DIR_PATH_FLAGS, flags)
    finally:
        os.close(root)


def walk_components(start: int, parts: list[bytes], step_flags: int, last_flags: int) -> int:
    """Open *parts* one after the other from the directory *start* (left open): every
    component with *step_flags*, the last with *last_flags*; the last one's descriptor."""
    fd = start
    try:
        for index, part in enumerate(parts):
            flags = last_flags if index == len(parts) - 1 else step_flags
            new = os.open(part, flags, dir_fd=fd)
            if fd != start:
                os.close(fd)
            fd = new
    except BaseException:
        if fd != start:
            os.close(fd)
        raise
    return fd if fd != start else os.dup(start)


#: How to reach a path for ``*at`` calls: `at_path`, or a `beneath.Beneath`'s `at`.
AtPath = Callable[[bytes], AbstractContextManager[tuple[int | None, bytes]]]


def make_node(path: bytes, entry: TreeEntry, at: AtPath = at_path) -> None:
    """Create the non-regular object *entry* describes at *path*.

    Directories are created mode 0700 (the final mode comes from ``apply_metadata``, called
    after their children exist); an existing directory is accepted. Symlinks get their bytes
    target, FIFOs and device nodes are made with ``mknod`` and never opened. Sockets are
    skipped: a listening socket cannot be recreated without its program. Regular files and
    hard links are the caller's (ValueError).
    """
    kind = entry.type
    if kind == "s":
        return
    if kind in ("f", "h"):
        raise ValueError(f"make_node does not create regular files or links: {path!r}")
    with at(path) as (dir_fd, name):
        if kind == "d":
            _mkdir(name, dir_fd)
        elif kind == "l":
            if entry.target is None:
                raise ValueError(f"symlink without a target: {path!r}")
            os.symlink(entry.target, name, dir_fd=dir_fd)
        elif kind == "p":
            os.mkfifo(name, 0o600, dir_fd=dir_fd)
        elif kind in _DEVICE_TYPES:
            _mknod_device(path, name, dir_fd, entry)
        else:
            raise ValueError(f"unknown entry type {kind!r} for {path!r}")


def make_dir(path: bytes, at: AtPath = at_path) -> bool:
    """Create the directory *path* mode 0700 (as ``make_node`` does); True if it is new,
    False if a directory was already there."""
    with at(path) as (dir_fd, name):
        return _mkdir(name, dir_fd)


def _mkdir(name: bytes, dir_fd: int | None) -> bool:
    try:
        os.mkdir(name, 0o700, dir_fd=dir_fd)
    except FileExistsError:
        if not stat.S_ISDIR(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode):
            raise
        return False
    return True


def let_owner_in(path: bytes, at: AtPath = at_path) -> int | None:
    """Give the directory *path*, if it is ours, its owner's write and search permission
    (its own mode is given back by ``apply_metadata``, after its children): without
    CAP_DAC_OVERRIDE nothing could be made in one of mode 0555, say, as restored before.
    Returns the mode it had if it was changed (for ``put_mode_back``), else None.
    A symlink put in its place is not followed."""
    with at(path) as (dir_fd, name):
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        if (stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid()
                and st.st_mode & 0o300 != 0o300):
            _chmod_nofollow(name, stat.S_IMODE(st.st_mode) | 0o300, dir_fd, directory=True)
            return stat.S_IMODE(st.st_mode)
    return None


def put_mode_back(path: bytes, mode: int, at: AtPath = at_path) -> None:
    """Give the directory *path* the *mode* ``let_owner_in`` found, when it will not get
    its checkpoint's (the restore was cut short). Something other than a directory put
    in its place is left alone, a symlink not followed."""
    with at(path) as (dir_fd, name):
        _chmod_nofollow(name, mode, dir_fd, directory=True)


def has_default_acl(path: bytes, at: AtPath = at_path) -> bool:
    """Whether objects created in the directory *path* inherit ACLs from it (it has a
    default ACL). When that cannot be told, True: the caller then looks at each object."""
    with at(path) as (dir_fd, name):
        try:
            os.getxattr(fd_path(dir_fd, name), ACL_NAMES[1], follow_symlinks=False)
        except OSError as exc:
            return exc.errno not in (errno.ENODATA, *NO_XATTR_ERRNOS)
    return True


def _mknod_device(path: bytes, name: bytes, dir_fd: int | None, entry: TreeEntry) -> None:
    what = "character" if entry.type == "c" else "block"
    try:
        os.mknod(name, _DEVICE_TYPES[entry.type] | 0o600, entry.rdev, dir_fd=dir_fd)
    except PermissionError as exc:
        if exc.errno != errno.EPERM:  # EACCES is about the directory, not the privilege
            raise
        raise PermissionError(
            exc.errno, f"creating a {what} device node needs root (CAP_MKNOD)", path
        ) from exc


def apply_metadata(path: bytes, entry: TreeEntry, *, is_root: bool, inherited: bool = True,
                   at: AtPath = at_path) -> None:
    """Give the object at *path* the owner, xattrs, mode and times of *entry*.

    Order, each for a kernel reason: chown first (it clears setuid/setgid and the
    ``security.capability`` xattr), then xattrs (ACLs included; ACL xattrs the object
    inherited from a default ACL but *entry* lacks are removed), then chmod (not on symlinks;
    it also sets the ACL mask, consistent with the source's), then times with ns precision
    (last: every other change may touch them). Directories: call this after their children are
    restored, or creating the children changes the mtime again. Content must be written
    before, since a write clears setuid/setgid and file capabilities.

    Without *is_root*: ownership is changed only to our own uid / a group we belong to (the
    rest is a failure, and a file keeps no set-user-ID or set-group-ID bit of an owner it
    did not get), and ``security.*`` / ``trusted.*`` xattrs the kernel refuses are one
    failure. Steps that fail do not stop the others; afterwards one OSError names every
    failure, so nothing is lost unsaid. Sockets are skipped (never created).
    ``inherited=False`` says the object cannot carry ACLs it was not given (it was created
    in a directory without a default ACL): its xattrs are then not listed.
    No step follows a symlink at *path*: one put there in place of the object is changed
    itself (or, for the mode, not at all), never what it points to.
    """
    if entry.type == "s":
        return
    failures: list[tuple[OSError, str]] = []
    with at(path) as (dir_fd, name):
        _step(failures, "owner", _apply_owner, name, entry, is_root, dir_fd=dir_fd,
              follow_symlinks=False)
        acls = inherited and entry.type != "l"  # symlinks carry no ACLs
        _apply_xattrs(fd_path(dir_fd, name), entry, is_root, failures, acls)
        if entry.type != "l":
            _step(failures, "mode", _chmod_nofollow, name, _given_mode(entry, is_root), dir_fd)
        _step(failures, "times", os.utime, name, ns=(entry.atime_ns, entry.mtime_ns),
              dir_fd=dir_fd, follow_symlinks=False)
    _raise_failures(failures, path)


def apply_fd_metadata(fd: int, path: bytes, entry: TreeEntry, *, is_root: bool,
                      inherited: bool = True) -> None:
    """``apply_metadata`` for the file or directory open as *fd* (*path* only names it in
    errors): the same steps in the same order, through the descriptor (no path lookups). Call
    it once all content is written and before closing; it works whatever the final mode is."""
    failures: list[tuple[OSError, str]] = []
    _step(failures, "owner", _apply_owner, fd, entry, is_root)
    _apply_xattrs(fd, entry, is_root, failures, inherited)
    _step(failures, "mode", os.chmod, fd, _given_mode(entry, is_root))
    _step(failures, "times", os.utime, fd, ns=(entry.atime_ns, entry.mtime_ns))
    _raise_failures(failures, path)


def _chmod_nofollow(name: bytes, mode: int, dir_fd: int | None, *,
                    directory: bool = False) -> None:
    """chmod *name*, never through a symlink; with *directory*, only if it is a directory
    (a file swapped in since it was looked at is refused, not changed)."""
    # chmod has no working "do not follow" with a dir_fd in CPython 3.11: change the
    # object held by an O_PATH descriptor through its /proc link, as glibc's lchmod does;
    # the descriptor's own type is checked, so no swap can come between check and chmod
    fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        kind = stat.S_IFMT(os.fstat(fd).st_mode)
        if kind == stat.S_IFLNK:
            raise OSError(errno.ELOOP, "replaced by a symlink (not followed)", name)
        if directory and kind != stat.S_IFDIR:
            raise NotADirectoryError(errno.ENOTDIR, "no longer a directory", name)
        os.chmod(b"/proc/self/fd/%d" % fd, mode)
    finally:
        os.close(fd)


def _raise_failures(failures: list[tuple[OSError, str]], path: bytes) -> None:
    if failures:
        first = failures[0][0]
        detail = "; ".join(f"{what}: {exc.strerror or exc}" for exc, what in failures)
        raise OSError(first.errno, f"metadata not fully restored ({detail})", path)


def _step(
    failures: list[tuple[OSError, str]], what: str, func: Callable[..., object], *args: object,
    **kwargs: object,
) -> None:
    try:
        func(*args, **kwargs)
    except OSError as exc:
        failures.append((exc, what))


def _apply_owner(
    target: bytes | int, entry: TreeEntry, is_root: bool, *, dir_fd: int | None = None,
    follow_symlinks: bool = True,
) -> None:
    """Give *target* *entry*'s owner; without root, the part this process may give (itself,
    its own groups), and an error naming the rest: an owner lost is never silent."""
    uid, gid = _given_owner(entry, is_root)
    if uid != -1 or gid != -1:
        os.chown(target, uid, gid, dir_fd=dir_fd, follow_symlinks=follow_symlinks)
    lost = [f"{what} {want}" for what, want, given in
            (("user", entry.uid, uid), ("group", entry.gid, gid)) if given == -1]
    if not lost:
        return
    dropped = entry.mode & ~_given_mode(entry, is_root)
    bits = [name for bit, name in ((stat.S_ISUID, "set-user-ID"), (stat.S_ISGID, "set-group-ID"))
            if dropped & bit]
    raise PermissionError(errno.EPERM, f"{' and '.join(lost)} not given (only root may give a "
                          "file to another user, or to a group it is not in)"
                          + (f"; {' and '.join(bits)} left off" if bits else ""))


def _given_owner(entry: TreeEntry, is_root: bool) -> tuple[int, int]:
    """The uid and gid of *entry* this process may give, each -1 if it may not."""
    if is_root:
        return entry.uid, entry.gid
    # An unprivileged process may only "give" a file to itself and its own groups.
    uid = entry.uid if entry.uid == os.geteuid() else -1
    gid = entry.gid if entry.gid == os.getegid() or entry.gid in os.getgroups() else -1
    return uid, gid


def _given_mode(entry: TreeEntry, is_root: bool) -> int:
    """*entry*'s permission bits, but for a set-user-ID (set-group-ID) bit whose user (group)
    was not given: root's set-user-ID program restored by alice would run as alice for
    whoever starts it (cp and tar leave such bits off too). A directory's set-group-ID bit
    only hands its group on to new files, and stays."""
    mode = entry.mode & 0o7777
    if entry.type == "d":
        return mode
    uid, gid = _given_owner(entry, is_root)
    if uid == -1:
        mode &= ~stat.S_ISUID
    if gid == -1:
        mode &= ~stat.S_ISGID
    return mode


def _apply_xattrs(
    target: bytes | int, entry: TreeEntry, is_root: bool, failures: list[tuple[OSError, str]],
    acls: bool,
) -> None:
    """Set *entry*'s xattrs on *target* (a path, symlinks not followed, or a descriptor);
    with *acls*, first remove ACLs the object inherited that *entry* does not have."""
    if not entry.xattrs and not acls:
        return  # nothing to set and nothing to remove: no listing either
    nofollow = {} if isinstance(target, int) else {"follow_symlinks": False}
    wanted = entry.xattrs
    if acls:
        _drop_inherited_acls(target, wanted, failures, nofollow)
    refused: list[str] = []  # privileged xattrs an unprivileged process may not set
    for key, value in wanted.items():
        try:
            os.setxattr(target, key, value, **nofollow)
        except OSError as exc:
            if not is_root and _privileged(key) and exc.errno == errno.EPERM:
                refused.append(os.fsdecode(key))
            else:
                failures.append((exc, f"xattr {os.fsdecode(key)}"))
    if refused:  # named together, with the reason, not one "Operation not permitted" each
        failures.append((PermissionError(errno.EPERM, "not set (only root may set "
                                         "security.* and trusted.* xattrs)"),
                         f"xattr {', '.join(refused)}"))


def _drop_inherited_acls(
    target: bytes | int, wanted: dict[bytes, bytes], failures: list[tuple[OSError, str]],
    nofollow: dict[str, bool],
) -> None:
    # A default ACL on the destination's parent gives new objects ACLs the source never had.
    try:
        present = os.listxattr(target, **nofollow)
    except OSError as exc:
        if exc.errno not in NO_XATTR_ERRNOS:
            failures.append((exc, "listing xattrs"))
        return
    for key in present:
        raw = os.fsencode(key)
        if raw in ACL_NAMES and raw not in wanted:
            try:
                os.removexattr(target, key, **nofollow)
            except OSError as exc:
                failures.append((exc, f"removing inherited {key}"))


def _privileged(key: bytes) -> bool:
    return key.startswith(PRIVILEGED_PREFIXES)


def write_sparse(fd: int, pieces: Iterable[tuple[int, bytes]], size: int) -> None:
    """Make the file open as *fd* hold *pieces* at their offsets, holes elsewhere, *size* long.

    The file is truncated to 0 first, so earlier content never shows through a hole. Gaps
    between pieces are never written (they stay holes); the final ftruncate creates a
    trailing hole up to *size*. Pieces must lie within [0, size) (ValueError otherwise).
    """
    os.ftruncate(fd, 0)
    for offset, data in pieces:
        if offset < 0 or offset + len(data) > size:
            raise ValueError(f"piece at {offset} (+{len(data)}) outside the file size {size}")
        pwrite_all(fd, data, offset)
    os.ftruncate(fd, size)


def pwrite_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    """Write all of *data* at *offset* of *fd* (``pwrite`` may write less than asked)."""
    written = os.pwrite(fd, data, offset)
    if written == len(data):
        return  # the usual case: no memoryview needed
    view = memoryview(data).cast("B")[written:]
    offset += written
    while view:
        written = os.pwrite(fd, view, offset)
        view = view[written:]
        offset += written


def data_regions(fd: int, size: int) -> list[tuple[int, int]]:
    """(offset, length) of the data regions of the first *size* bytes of the file *fd*.

    Found with SEEK_DATA/SEEK_HOLE; where the file system has no such support the whole file
    is one region. Regions are sorted, disjoint and clipped to *size*; a file of holes only
    gives []. The file offset of *fd* is left where it was (read with pread meanwhile).
    """
    if size <= 0:
        return []
    here = os.lseek(fd, 0, os.SEEK_CUR)
    try:
        return _regions(fd, size)
    finally:
        os.lseek(fd, here, os.SEEK_SET)


def _regions(fd: int, size: int) -> list[tuple[int, int]]:
    regions: list[tuple[int, int]] = []
    pos = 0
    while pos < size:
        try:
            start = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # no data after pos: the rest is a hole
                break
            if exc.errno in (errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP) and pos == 0:
                return [(0, size)]
            raise
        if start >= size:
            break
        end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
        regions.append((start, end - start))
        pos = end
    return regions
