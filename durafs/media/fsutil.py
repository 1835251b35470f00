"""File-system primitives the directory driver builds on: durable writes and locks.

Durability on POSIX needs three steps: fsync the file, rename it into place, fsync the
directory (the rename lives in the directory). Locks are ``flock``: they vanish with the
process that held them, so a crash never leaves a lock behind.
"""

from __future__ import annotations

import errno
import fcntl
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

#: The medium has no room: the volume cannot be completed on it.
FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
#: The medium is not there: missing directory, unplugged disk, dead network mount.
GONE_ERRNOS = frozenset(
    {errno.ENOENT, errno.ENOTDIR, errno.ENOTCONN, errno.ESTALE, errno.ENODEV, errno.ENXIO}
)
#: The medium refuses writes: a read-only mount, or permissions (an immutable directory).
READ_ONLY_ERRNOS = frozenset({errno.EROFS, errno.EACCES, errno.EPERM})
#: flock is not supported on this file system (some network and FUSE file systems).
_NO_LOCKS = frozenset({errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL})

#: flock between threads of one process works only across separate open() calls, and not
#: at all where flock is unsupported; this lock serializes this process's own commits.
_process_lock = threading.Lock()


def write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    """os.write until every byte is written (a write may be partial)."""
    view = memoryview(data).cast("B")
    while view:
        view = view[os.write(fd, view) :]


def read_small(path: str, limit: int = 1 << 20) -> bytes:
    """The bytes of a small file (a marker, a keys file)."""
    with open(path, "rb") as f:
        return f.read(limit)


def fsync_dir(path: str) -> None:
    """Persist the directory's entries (a rename or a new file in it)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_file_durably(directory: str, name: str, data: bytes, mode: int, temp: str) -> None:
    """Write *name* in *directory* atomically: a reader sees the old file or all of *data*.

    *temp* is the temporary name used on the way (replaced if a crash left it).
    """
    tmp_path = os.path.join(directory, temp)
    fd = os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        write_all(fd, data)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        _unlink_quietly(tmp_path)
        raise
    os.close(fd)
    os.replace(tmp_path, os.path.join(directory, name))
    fsync_dir(directory)


def try_lock(fd: int) -> bool:
    """Take an exclusive flock on *fd* without waiting; False if another holds it.

    Where flock is unsupported this answers True: nothing can be protected there, and
    refusing would make the medium unusable.
    """
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return False
        if exc.errno in _NO_LOCKS:
            return True
        raise
    return True


@contextmanager
def locked_dir(path: str) -> Iterator[None]:
    """Hold an exclusive lock on directory *path*, against threads and other processes."""
    with _process_lock:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
            except OSError as exc:
                if exc.errno not in _NO_LOCKS:
                    raise
            yield
        finally:
            os.close(fd)  # releases the flock


def same_file(fd: int, path: str) -> bool:
    """True if *path* still names the file open as *fd* (not removed or replaced)."""
    try:
        st = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    own = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (own.st_dev, own.st_ino)


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
