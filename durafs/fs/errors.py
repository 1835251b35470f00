# SPDX-License-Identifier: GPL-3.0-or-later
"""What the FUSE tree model can refuse, as `durafs.errors` classes.

The model (`durafs.fs.vfs`), the read path and the media requests raise these (and the
shared ones such as `MediumOfflineError`); `durafs.fs.fuseops` alone turns them into
errnos, so the errno each one becomes is named here only as documentation.
"""

from __future__ import annotations

from durafs.errors import DurafsError


class FsError(DurafsError):
    """Base of the errors the mounted tree reports to the kernel."""


class NoSuchEntry(FsError):
    """No such name in the directory, or the node is gone (ENOENT)."""


class NotADirectory(FsError):
    """A lookup or listing inside something that is not a directory (ENOTDIR)."""


class IsADirectory(FsError):
    """Data asked of a directory (EISDIR)."""


class NotASymlink(FsError):
    """readlink of something that is not a symbolic link (EINVAL)."""


class NoSuchAttribute(FsError):
    """The node has no extended attribute of that name (ENODATA, alias ENOATTR)."""


class NotSupported(NoSuchAttribute):
    """An xattr this tree never has unless the source had it (ENOTSUP): probing tools
    such as ls stop asking for it on the whole mount."""


class ReadOnly(FsError):
    """Any change: the tree is an immutable backup (EROFS)."""


class Interrupted(FsError):
    """The process waiting for the operation received a signal (EINTR)."""


class BadHandle(FsError):
    """A file or directory handle the tree never gave out (EBADF)."""
