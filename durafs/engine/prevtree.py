"""The previous checkpoint's tree, read directory by directory during a backup's walk.

A backup asks, for every object it meets, what it was in the plan's newest checkpoint (to
skip reading unchanged files, and re-reading unchanged xattrs). The answers come from the
listings the checkpoint's TreeWriter loads anyway to compare entries with (one query per
directory, shared, in its bounded cache), found by path ids: a directory's id comes from
its parent's listing, so nothing here depends on what the TreeWriter was fed yet.
`same_as_before` says whether an object met is its previous version in everything.
"""

from __future__ import annotations

import stat
from collections import OrderedDict
from typing import Any

from durafs.engine.scan import ScanItem
from durafs.index.rows import VersionRow, pack_xattrs, stored_int, stored_ns
from durafs.index.treewriter import TreeWriter

#: A directory's previous listing: name -> (path id, version columns or None). The columns
#: are an index row as apsw returns it, untyped: VersionRow's fields say what each one is.
_Listing = dict[bytes, tuple[int, tuple[Any, ...] | None]]
#: Directories whose path ids are kept (a depth-first walk needs its current path's).
DIR_REFS = 256


class PrevTree:
    """Versions of the plan's newest checkpoint, looked up by absolute path (*enabled*
    False: there is no previous checkpoint)."""

    def __init__(self, tree: TreeWriter, *, enabled: bool) -> None:
        self.tree = tree
        self.enabled = enabled
        self._refs: OrderedDict[bytes, int | None] = OrderedDict()
        self._cur_dir: bytes | None = None
        self._cur: _Listing | None = None
        self._last: tuple[bytes, VersionRow | None] = (b"", None)

    def version(self, path: bytes) -> VersionRow | None:
        """What *path* was in the previous checkpoint, or None (or no previous checkpoint)."""
        if not self.enabled or path == b"/":
            return None
        if path == self._last[0]:  # the scan asks first, then the backup
            return self._last[1]
        parent, _, name = path.rpartition(b"/")
        if parent != self._cur_dir:  # a walk asks about one directory's entries in a row
            self._cur_dir, self._cur = parent, self._children(parent or b"/")
        row = self._cur.get(name) if self._cur is not None else None
        version = VersionRow(*row[1]) if row is not None and row[1] is not None else None
        self._last = (path, version)
        return version

    def _children(self, directory: bytes) -> _Listing | None:
        ref = self._dir_ref(directory)
        return None if ref is None else self.tree.previous_children(ref)

    def _dir_ref(self, directory: bytes) -> int | None:
        """The path id of *directory* if it was a directory in the previous checkpoint."""
        if directory == b"/":
            return self.tree.root_ref
        if directory in self._refs:
            self._refs.move_to_end(directory)
            return self._refs[directory]
        parent, _, name = directory.rpartition(b"/")
        listing = self._children(parent or b"/")
        row = listing.get(name) if listing is not None else None
        ref = row[0] if row is not None and row[1] is not None and row[1][4] == "d" else None
        self._refs[directory] = ref
        if len(self._refs) > DIR_REFS:
            self._refs.popitem(last=False)
        return ref


def same_as_before(item: ScanItem, prev: VersionRow) -> bool:
    """Whether *item* is its previous version *prev* in everything a checkpoint records
    but atime (what `TreeWriter.add` compares), so that version can simply go on: same
    object, times, size, owners and their names, mode, device, link target and xattrs.
    Hard-linked files are never: their group is decided by the TreeWriter."""
    if item.hardlink_key is not None or prev.hardlink_id is not None or prev.type != item.type:
        return False
    st = item.st
    rdev = st.st_rdev if item.type in ("c", "b") else 0
    now: tuple[Any, ...] = (
        stored_ns(st.st_mtime_ns), stored_ns(st.st_ctime_ns), st.st_size,
        stored_int(st.st_ino), stored_int(st.st_dev), st.st_nlink,
        stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, rdev,
        item.user or None, item.group or None, item.target,
    )
    before = (
        prev.mtime_ns, prev.ctime_ns, prev.size, prev.ino, prev.dev, prev.nlink,
        prev.mode, prev.uid, prev.gid, prev.rdev, prev.uname, prev.gname, prev.target,
    )
    return now == before and (pack_xattrs(item.xattrs) if item.xattrs else None) == prev.xattrs
