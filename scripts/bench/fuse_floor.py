#!/usr/bin/env python3
"""The floor under ``ls -lR`` through pyfuse3: a minimal tree answered from memory.

``mount_bench.py`` times ``ls -lR`` of a durafs checkpoint against restic and borg. This
script asks what any pyfuse3 file system would need for the same listing: it serves a tree
of the corpus's shape (by default 300 directories of 68 files: 20 400 entries) from
constant attributes computed on the fly, with no index, no cache and no logging, and times
``ls -lR`` of it twice in each of two modes:

- ``xattrs``: ``getxattr`` answers "no such attribute" (ENODATA), as durafs must for a
  file without an ACL (it serves the source's xattrs, ACLs included, and the kernel
  enforces ACLs through ``FUSE_POSIX_ACL``). ``ls -l`` asks every inode for
  ``system.posix_acl_access``; the kernel caches the answer per inode, but every
  READDIRPLUS clears the cached ACLs of the entries it lists, and pyfuse3 always answers
  READDIRPLUS, so every listing sends one GETXATTR request per entry;
- ``no-xattrs``: ``getxattr`` answers ENOSYS once, as a file system without xattrs; the
  kernel then never asks again, and ``ls`` gets its answer without a request.

The difference between the two modes is what honest xattr support costs a listing under
pyfuse3; the ``xattrs`` time is the floor for durafs's ``ls -lR`` on this machine.

Run (as root, or with /dev/fuse usable)::

    .venv/bin/python scripts/bench/fuse_floor.py
    .venv/bin/python scripts/bench/fuse_floor.py --dirs 3000 --files 68

A script, never a timed test.
"""

from __future__ import annotations

import argparse
import errno
import os
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODES = ("xattrs", "no-xattrs")
READY_TIMEOUT = 30.0
FIRST_DIR_INODE = 10  # directories 10 .. 10 + dirs - 1; files above FILE_INODES
FILE_INODES = 1_000_000


def serve(mountpoint: str, mode: str, dirs: int, files: int) -> None:
    """Serve the tree until unmounted (runs in the child process)."""
    import pyfuse3
    import trio

    def attributes(inode: int) -> pyfuse3.EntryAttributes:
        entry = pyfuse3.EntryAttributes()
        entry.st_ino = pyfuse3.InodeT(inode)
        if inode < FILE_INODES:
            entry.st_mode = pyfuse3.ModeT(stat.S_IFDIR | 0o755)
            entry.st_nlink, entry.st_size = 2, 4096
        else:
            entry.st_mode = pyfuse3.ModeT(stat.S_IFREG | 0o644)
            entry.st_nlink, entry.st_size = 1, 1234
        entry.st_mtime_ns = entry.st_ctime_ns = entry.st_atime_ns = 1_700_000_000 * 10**9
        entry.st_blksize, entry.st_blocks = 4096, 8
        entry.attr_timeout = entry.entry_timeout = 86400.0
        return entry

    def children(inode: int) -> list[tuple[bytes, int]]:
        if inode == pyfuse3.ROOT_INODE:
            return [(b"d%05d" % i, FIRST_DIR_INODE + i) for i in range(dirs)]
        if FIRST_DIR_INODE <= inode < FIRST_DIR_INODE + dirs:
            base = FILE_INODES + (inode - FIRST_DIR_INODE) * files
            return [(b"f%05d" % j, base + j) for j in range(files)]
        return []

    class Floor(pyfuse3.Operations):
        enable_acl = True

        async def getattr(self, inode, ctx=None):  # type: ignore[no-untyped-def]
            return attributes(inode)

        async def lookup(self, parent_inode, name, ctx=None):  # type: ignore[no-untyped-def]
            for child, inode in children(parent_inode):
                if child == name:
                    return attributes(inode)
            raise pyfuse3.FUSEError(errno.ENOENT)

        async def opendir(self, inode, ctx):  # type: ignore[no-untyped-def]
            return inode  # the handle is the directory's inode

        async def readdir(self, fh, start_id, token):  # type: ignore[no-untyped-def]
            listing = children(fh)
            for k in range(start_id, len(listing)):
                name, inode = listing[k]
                if not pyfuse3.readdir_reply(token, name, attributes(inode), k + 1):
                    break

        async def getxattr(self, inode, name, ctx):  # type: ignore[no-untyped-def]
            raise pyfuse3.FUSEError(errno.ENOSYS if mode == "no-xattrs" else pyfuse3.ENOATTR)

        async def listxattr(self, inode, ctx):  # type: ignore[no-untyped-def]
            return []

    pyfuse3.init(Floor(), mountpoint, {"ro", "default_permissions", "fsname=fuse-floor"})
    try:
        trio.run(pyfuse3.main)
    finally:
        pyfuse3.close()


def timed_ls(path: Path) -> float:
    started = time.perf_counter()
    subprocess.run(["ls", "-lR", str(path)], stdout=subprocess.DEVNULL, check=True)
    return time.perf_counter() - started


def measure(mode: str, dirs: int, files: int) -> tuple[float, float]:
    """Mount the tree in *mode*, time two ``ls -lR`` of it, unmount."""
    with tempfile.TemporaryDirectory(prefix="fuse-floor-") as tmp:
        mnt = Path(tmp)
        child = subprocess.Popen([sys.executable, __file__, "--serve", mode, str(mnt),
                                  "--dirs", str(dirs), "--files", str(files)])
        try:
            deadline = time.monotonic() + READY_TIMEOUT
            while not os.path.ismount(mnt):
                if child.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"the {mode} tree did not mount on {mnt}")
                time.sleep(0.05)
            first, second = timed_ls(mnt), timed_ls(mnt)
        finally:
            subprocess.run(["fusermount3", "-u", str(mnt)], capture_output=True)
            child.wait(timeout=READY_TIMEOUT)
    return first, second


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dirs", type=int, default=300)
    parser.add_argument("--files", type=int, default=68, help="files per directory")
    parser.add_argument("--repeat", type=int, default=3, help="mounts per mode, in turns")
    parser.add_argument("--serve", nargs=2, metavar=("MODE", "MOUNTPOINT"),
                        help=argparse.SUPPRESS)  # the child process
    args = parser.parse_args()
    if args.serve:
        mode, mountpoint = args.serve
        serve(mountpoint, mode, args.dirs, args.files)
        return 0
    runs: dict[str, list[tuple[float, float]]] = {mode: [] for mode in MODES}
    for _ in range(args.repeat):
        for mode in MODES:
            runs[mode].append(measure(mode, args.dirs, args.files))
    entries = args.dirs * (args.files + 1)
    print(f"pyfuse3 tree from memory: {args.dirs} directories x {args.files} files "
          f"({entries} entries); ls -lR, seconds, {args.repeat} mounts per mode in turns")
    print("| getxattr answers | first ls -lR | second ls -lR |")
    print("|---|---|---|")
    for mode in MODES:
        firsts = ", ".join(f"{a:.2f}" for a, _ in runs[mode])
        seconds = ", ".join(f"{b:.2f}" for _, b in runs[mode])
        label = "ENODATA (xattrs served)" if mode == "xattrs" else "ENOSYS (no xattrs)"
        print(f"| {label} | {firsts} | {seconds} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
