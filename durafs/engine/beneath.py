"""Reaching paths below one directory without following any symlink on the way.

A restore as root into a tree other users can write to must not be led elsewhere: if
someone replaces a directory the restore made (or found) with a symlink to ``/etc`` while
it runs, the next file must not be created in ``/etc``. `Beneath` opens the directory
that holds a path relative to the restore's root with ``openat2(RESOLVE_BENEATH |
RESOLVE_NO_SYMLINKS)`` (Linux 5.6), one system call, and the caller then creates or
changes the last component through that descriptor with calls that do not follow it
either (``O_EXCL``, ``O_NOFOLLOW``, ``AT_SYMLINK_NOFOLLOW``). Where ``openat2`` is missing
(an older kernel, or a seccomp filter), or for a path longer than PATH_MAX, the directory
is reached one component at a time with ``O_NOFOLLOW | O_DIRECTORY``, which refuses
symlinks just the same.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from durafs.engine.fsmeta import at_path, walk_components

_SYS_OPENAT2 = 437
#: Where openat2 is 437 (the unified numbering; alpha, MIPS and ia64 have their own): on
#: any other machine the component walk is used, never an unknown system call.
_UNIFIED = {"x86_64", "i386", "i686", "aarch64", "arm64", "armv7l", "armv6l", "riscv64",
            "ppc64le", "ppc64", "s390x", "loongarch64"}
_RESOLVE_NO_MAGICLINKS = 0x02
_RESOLVE_NO_SYMLINKS = 0x04
_RESOLVE_BENEATH = 0x08
_DIR_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC
IN_THE_WAY = "a symlink or other non-directory is in the way inside the target (not followed)"


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64),
                ("resolve", ctypes.c_uint64)]


_syscall = ctypes.CDLL(None, use_errno=True).syscall
_syscall.restype = ctypes.c_long
_syscall.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_char_p, ctypes.c_void_p,
                     ctypes.c_size_t]


class Beneath:
    """Paths under *root* (an absolute path without symlinks, e.g. a realpath): `at`
    gives the (directory descriptor, name) of each, as ``fsmeta.at_path`` does, but
    reaches the directory without following a symlink below *root*.

    Thread-safe. Each thread keeps the last directory it opened, since a restore makes
    the files of one directory one after another: that descriptor is the directory
    itself, so it stays safe to use even if a symlink takes the directory's name later.
    Close it (or use it as a context manager) when done: that closes them all.
    """

    def __init__(self, root: bytes) -> None:
        self.root = root.rstrip(b"/") or b"/"
        self._prefix = self.root if self.root == b"/" else self.root + b"/"
        self.fd = os.open(self.root, _DIR_FLAGS)
        self._openat2 = platform.machine() in _UNIFIED
        self._how = _OpenHow(_DIR_FLAGS, 0,
                             _RESOLVE_BENEATH | _RESOLVE_NO_SYMLINKS | _RESOLVE_NO_MAGICLINKS)
        self._last = threading.local()
        self._lock = threading.Lock()
        self._cached: dict[int, int] = {}  # thread id -> its last directory's descriptor

    def close(self) -> None:
        with self._lock:
            for fd in self._cached.values():
                os.close(fd)
            self._cached.clear()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> Beneath:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def at(self, path: bytes) -> Iterator[tuple[int | None, bytes]]:
        """(dir_fd, name) for ``*at`` calls on *path*, which is *root* or below it."""
        if path == self.root:  # the root itself: the user named it, symlinks and all
            with at_path(path) as pair:
                yield pair
            return
        parent, name = self._split(path)
        if not parent:
            yield self.fd, name
            return
        last = self._last
        depth = getattr(last, "depth", 0)
        if getattr(last, "rel", None) != parent:
            if depth:  # an enclosing `at` of this thread uses the cached one: keep it
                fd = self._open_dir(parent)
                try:
                    yield fd, name
                finally:
                    os.close(fd)
                return
            self._remember(parent, self._open_dir(parent))
        last.depth = depth + 1
        try:
            yield last.fd, name
        finally:
            last.depth = depth

    def open(self, path: bytes, flags: int, mode: int = 0o600) -> int:
        """``os.open`` of *path*, strictly below *root*, its directory reached as by `at`
        (the same thing without a context manager, for a file per call)."""
        parent, name = self._split(path)
        if not parent:
            return os.open(name, flags, mode, dir_fd=self.fd)
        last = self._last
        if getattr(last, "rel", None) != parent:
            if getattr(last, "depth", 0):
                with self.at(path) as (dir_fd, name):
                    return os.open(name, flags, mode, dir_fd=dir_fd)
            self._remember(parent, self._open_dir(parent))
        return os.open(name, flags, mode, dir_fd=last.fd)

    def _split(self, path: bytes) -> tuple[bytes, bytes]:
        if not path.startswith(self._prefix):
            raise ValueError(f"{path!r} is not below {self.root!r}")
        parent, _, name = path[len(self._prefix):].rpartition(b"/")
        if parent.startswith(b"/") or not name:
            raise ValueError(f"{path!r} is not a normalised path below {self.root!r}")
        return parent, name

    def _remember(self, rel: bytes, fd: int) -> None:
        """Make *fd* (directory *rel*) this thread's cached one, closing the one before."""
        with self._lock:
            old = self._cached.get(threading.get_ident())
            self._cached[threading.get_ident()] = fd
        if old is not None:
            os.close(old)
        self._last.rel, self._last.fd = rel, fd

    def _open_dir(self, rel: bytes) -> int:
        if self._openat2 and len(rel) < 4096:
            fd = _syscall(_SYS_OPENAT2, self.fd, rel, ctypes.addressof(self._how),
                          ctypes.sizeof(self._how))
            if fd >= 0:
                return int(fd)
            code = ctypes.get_errno()
            if code in (errno.ELOOP, errno.ENOTDIR, errno.EXDEV):
                raise OSError(code, IN_THE_WAY, self._prefix + rel)
            if code not in (errno.ENOSYS, errno.EPERM, errno.E2BIG):  # EPERM: seccomp
                raise OSError(code, os.strerror(code), self._prefix + rel)
            self._openat2 = False
        return self._walk(rel)

    def _walk(self, rel: bytes) -> int:
        flags = _DIR_FLAGS | os.O_NOFOLLOW
        try:
            return walk_components(self.fd, rel.split(b"/"), flags, flags)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                raise OSError(exc.errno, IN_THE_WAY, self._prefix + rel) from None
            raise
