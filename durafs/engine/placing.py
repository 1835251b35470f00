"""Putting restored objects in place under TARGET (see restore.py, which decides what).

Three promises hold for every object a restore makes:

- Nothing is reached through a symlink inside TARGET, not even one put there while the
  restore runs (every path goes through `Beneath`).
- Nothing already there is replaced without ``--overwrite``; with it, a replacement is
  made beside the old object under a temporary name and renamed over it only once it is
  complete, so a replacement that fails leaves the old object as it was.
- Without root, a directory that was there already is opened to its owner for the run
  (`let_owner_in`), and gets back the mode it had however the run ends, unless the
  restore gave it its own (`dir_metadata`).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import stat
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from durafs.engine.beneath import Beneath
from durafs.engine.fsmeta import (
    apply_fd_metadata,
    apply_metadata,
    let_owner_in,
    make_node,
    put_mode_back,
)
from durafs.format.catalog import TreeEntry
from durafs.interrupts import held

log = logging.getLogger(__name__)

_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
_REOPEN = os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC
_T = TypeVar("_T")


class Placer:
    """Makes, replaces and removes objects under the TARGET that *beneath* holds."""

    def __init__(self, beneath: Beneath, *, overwrite: bool, is_root: bool) -> None:
        self.beneath = beneath
        self.at = beneath.at
        self.overwrite = overwrite
        self.is_root = is_root
        #: Directories opened to their owner (`let_owner_in`) whose own mode is not given
        #: yet, with the mode they had, parents first: an interrupted run puts those back.
        self._opened: dict[bytes, int] = {}

    # -- regular files -------------------------------------------------------------------

    def create_file(self, dest: bytes) -> tuple[int, bytes | None]:
        """Create the file *dest* for writing: (descriptor, None), or, with --overwrite and
        something at its name, (descriptor, the temporary name beside it it is written
        under until `put_in_place`)."""
        try:
            return self.create(dest), None
        except FileExistsError:
            self._may_replace()
        with self.at(dest) as (dir_fd, name):
            if stat.S_ISDIR(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode):
                raise IsADirectoryError(errno.EISDIR, "Is a directory")
        temp, fd = self._beside(dest, self.create)
        return fd, temp

    def create(self, path: bytes) -> int:
        """Create the regular file *path* for writing; FileExistsError if anything is there
        (``O_EXCL`` fails on a symlink too, dangling or not)."""
        return self.beneath.open(path, _CREATE)

    def reopen(self, path: bytes) -> int:
        """Open again, for writing, a file this run created."""
        return self.beneath.open(path, _REOPEN)

    def put_in_place(self, temp: bytes, dest: bytes) -> None:
        """Rename the complete replacement *temp* over *dest*."""
        with self.at(temp) as (src_fd, src), self.at(dest) as (dst_fd, dst):
            os.rename(src, dst, src_dir_fd=src_fd, dst_dir_fd=dst_fd)

    def remove(self, path: bytes) -> None:
        """Remove the non-directory *path*."""
        with self.at(path) as (dir_fd, name):
            os.unlink(name, dir_fd=dir_fd)

    # -- other objects -------------------------------------------------------------------

    def make_node(self, dest: bytes, entry: TreeEntry) -> None:
        """Make the symlink, FIFO or device node *entry* at *dest*. Something already there
        is replaced only with --overwrite, by renaming the new node over it: one that
        cannot be made (a device without CAP_MKNOD) leaves the old thing as it was."""
        try:
            return make_node(dest, entry, self.at)
        except FileExistsError:
            self._may_replace()
        # made and renamed over it as one step: a Ctrl-C between would leave the temporary
        with held():
            temp, _ = self._beside(dest, lambda path: make_node(path, entry, self.at))
            try:
                self.put_in_place(temp, dest)
            except BaseException:  # a directory is there, say
                self.remove(temp)
                raise

    def replacing(self, dest: bytes, create: Callable[..., _T], *args: Any) -> _T:
        """``create(*args)``, which makes *dest*; if something is there already, it is
        replaced only with --overwrite."""
        try:
            return create(*args)
        except FileExistsError:
            self._may_replace()
        with held():  # a Ctrl-C between would leave nothing where the old thing was
            self.remove(dest)
            return create(*args)

    def link(self, existing: bytes, new: bytes) -> None:
        """Hard-link *new* to *existing* (never following a symlink)."""
        with self.at(existing) as (src_fd, src), self.at(new) as (dst_fd, dst):
            os.link(src, dst, src_dir_fd=src_fd, dst_dir_fd=dst_fd, follow_symlinks=False)

    def _may_replace(self) -> None:
        """Something is where an object is to be made: only --overwrite replaces it."""
        if not self.overwrite:
            raise FileExistsError("exists (use --overwrite)") from None

    def _beside(self, dest: bytes, create: Callable[[bytes], _T]) -> tuple[bytes, _T]:
        """``create(temp)`` for a new temporary name beside *dest*: (temp, its result)."""
        parent = dest.rsplit(b"/", 1)[0] or b"/"
        while True:
            temp = parent + b"/.durafs-restore-" + os.urandom(6).hex().encode()
            try:
                return temp, create(temp)
            except FileExistsError:
                continue

    # -- directories and their modes -----------------------------------------------------

    def open_to_owner(self, dest: bytes) -> None:
        """Without root, open the directory *dest* that was there already to its owner
        for the run (noted, to be given back); an error is left for what cannot then be
        made in it to name."""
        if self.is_root:
            return
        try:
            # opened and noted as one step: a signal between would lose its mode
            with held():
                before = let_owner_in(dest, self._at_held)
                if before is not None:
                    self._opened[dest] = before
        except OSError:
            pass

    def dir_metadata(self, dest: bytes, entry: TreeEntry, inherits: bool) -> None:
        """Give the directory *dest* its metadata, and so its own mode: it is no longer
        one to put back. One step: a signal between would put back its old mode."""
        with held():
            try:
                if dest == self.beneath.root:
                    self._target_metadata(entry, inherits)
                else:
                    apply_metadata(dest, entry, is_root=self.is_root, inherited=inherits,
                                   at=self.at)
            finally:
                self._opened.pop(dest, None)

    def _target_metadata(self, entry: TreeEntry, inherits: bool) -> None:
        """Give TARGET itself its directory's metadata through the descriptor held since the
        restore began: TARGET's path may lead elsewhere by now (a directory above it
        renamed and a symlink put in its place), the directory held is the one restored."""
        try:
            fd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC,
                         dir_fd=self.beneath.fd)
        except PermissionError:  # not root and TARGET unreadable: by its path, as before
            apply_metadata(self.beneath.root, entry, is_root=self.is_root,
                           inherited=inherits, at=self.at)
            return
        try:
            apply_fd_metadata(fd, self.beneath.root, entry, is_root=self.is_root,
                              inherited=inherits)
        finally:
            os.close(fd)

    def put_modes_back(self) -> None:
        """Give the directories still opened to their owner (a run that did not get to
        their own modes) the modes they had, deepest first: a parent of mode 0600, say,
        would bar the way to its children. Not cut by a second signal: a directory left
        open would stay open (SIGKILL alone can leave that)."""
        with held():
            for dest, mode in reversed(self._opened.items()):
                try:
                    put_mode_back(dest, mode, self._at_held)
                except OSError as exc:  # the run is ending on an error: say it all the same
                    log.warning("%s: mode %04o not put back (%s)", os.fsdecode(dest), mode,
                                exc.strerror or exc)
            self._opened.clear()

    @contextlib.contextmanager
    def _at_held(self, path: bytes) -> Iterator[tuple[int | None, bytes]]:
        """As `self.at`, but TARGET itself is the directory held since the restore began
        (as for its metadata, `_target_metadata`), not whatever its path leads to now: the
        mode lent to TARGET is given back to TARGET."""
        if path == self.beneath.root:
            yield self.beneath.fd, b"."
        else:
            with self.at(path) as pair:
                yield pair
