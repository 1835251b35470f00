"""A source whose xattrs nobody cannot read, and a catalog of nobody's to back it up with:
for tests of paths whose extended attributes a backup could not read (xattrs_unread)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.support.nobody import NOBODY
from tests.support.oddtree import world_dir

AS_NOBODY = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--"]


@dataclass
class LockedXattrs:
    """*source* (nobody's) holds the directory *locked*, whose xattr user.origin is "kept";
    `lock` makes it unreadable to nobody. *home* is nobody's, with the catalog in
    home/cat (encryption none) and pool `p` at *pool*."""

    source: Path
    locked: Path
    home: Path
    pool: str

    def lock(self) -> None:
        os.chmod(self.locked, 0o111)  # its owner may enter it, but not read user.* xattrs

    def run(self, *args: str, root: bool = False) -> subprocess.CompletedProcess[str]:
        """`durafs ARGS…` as nobody (as root with *root*), on this catalog."""
        env = {**os.environ, "DURAFS_HOME": os.fspath(self.home / "cat"),
               "HOME": os.fspath(self.home)}
        command = [*([] if root else AS_NOBODY), sys.executable, "-m", "durafs.cli.main", *args]
        return subprocess.run(command, env=env, capture_output=True, text=True)


@contextmanager
def locked_xattrs() -> Iterator[LockedXattrs]:
    """The source and the catalog, in a directory every user can reach (root only)."""
    with world_dir() as world:
        source = world / "src"
        locked = source / "locked"
        locked.mkdir(parents=True)
        os.setxattr(locked, "user.origin", b"kept")
        for path in (source, locked):
            os.chown(path, NOBODY, NOBODY)
        home = world / "home"
        home.mkdir()
        os.chown(home, NOBODY, NOBODY)
        setup = LockedXattrs(source, locked, home, os.fspath(home / "pool"))
        assert setup.run("init", "--encryption", "none").returncode == 0
        assert setup.run("pool", "add", "p", "--kind", "dir", "--path", setup.pool).returncode == 0
        yield setup
