#!/usr/bin/env python3
"""The floor under ``ls -lR`` and reading small files through FUSE on this machine.

``mount_bench.py`` times ``ls -lR`` of a durafs checkpoint and a read of every file
against restic and borg. This script asks what any FUSE server needs for the same work:
it serves a tree of the corpus's shape (by default 300 directories of 68 files of 4 KiB:
20 400 files) from constant attributes computed on the fly, with no index and no cache,
and times ``ls -lR`` of it twice, then ``find -type f | xargs cat`` of every file once,
in each of these modes:

- ``xattrs``: pyfuse3 under trio, ``getxattr`` answering "no such attribute" (ENODATA),
  as durafs must for a file without an ACL (it serves the source's xattrs, ACLs included,
  and the kernel enforces ACLs through ``FUSE_POSIX_ACL``). ``ls -l`` asks every inode for
  ``system.posix_acl_access``, and every READDIRPLUS clears the kernel's cached answers, so
  each listing sends one GETXATTR request per entry;
- ``polling``: the same, with durafs's `durafs.fs.devpoll` in pyfuse3's loop (it polls the
  device before sleeping, and keeps its read lock), as durafs's mount runs;
- ``no-xattrs``: pyfuse3, ``getxattr`` answering ENOSYS once, as a file system without
  xattrs: the kernel then never asks again (what honest xattr support costs);
- ``c``: the same tree in C (``fuse_floor.c``) on libfuse's own single-threaded loop, with
  ENODATA like ``xattrs``: what any server that serves xattrs pays in the kernel and in
  the wake-ups between requests, whatever its language.

Run (as root, or with /dev/fuse usable; the ``c`` mode needs gcc and libfuse3-dev)::

    .venv/bin/python scripts/bench/fuse_floor.py
    .venv/bin/python scripts/bench/fuse_floor.py --modes xattrs,polling --repeat 5

A script, never a timed test.
"""

from __future__ import annotations

import argparse
import errno
import os
import shutil
import stat
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODES = ("xattrs", "polling", "no-xattrs", "c")
READY_TIMEOUT = 30.0
FIRST_DIR_INODE = 10  # directories 10 .. 10 + dirs - 1; files from FILE_INODES
FILE_INODES = 1_000_000
C_SOURCE = Path(__file__).with_suffix(".c")


def serve(mountpoint: str, mode: str, dirs: int, files: int, size: int) -> None:
    """Serve the tree until unmounted (runs in the child process)."""
    import pyfuse3
    import trio

    content = bytes(ord("a") + i % 26 for i in range(size))

    def attributes(inode: int) -> pyfuse3.EntryAttributes:
        entry = pyfuse3.EntryAttributes()
        entry.st_ino = pyfuse3.InodeT(inode)
        if inode < FILE_INODES:
            entry.st_mode = pyfuse3.ModeT(stat.S_IFDIR | 0o755)
            entry.st_nlink, entry.st_size = 2, 4096
        else:
            entry.st_mode = pyfuse3.ModeT(stat.S_IFREG | 0o644)
            entry.st_nlink, entry.st_size = 1, size
        entry.st_mtime_ns = entry.st_ctime_ns = entry.st_atime_ns = 1_700_000_000 * 10**9
        entry.st_blksize, entry.st_blocks = 4096, (size + 511) // 512
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

        async def open(self, inode, flags, ctx):  # type: ignore[no-untyped-def]
            return pyfuse3.FileInfo(fh=inode, keep_cache=True)

        async def read(self, fh, off, size):  # type: ignore[no-untyped-def]
            return content[off : off + size]

        async def release(self, fh):  # type: ignore[no-untyped-def]
            return None

        async def getxattr(self, inode, name, ctx):  # type: ignore[no-untyped-def]
            raise pyfuse3.FUSEError(errno.ENOSYS if mode == "no-xattrs" else pyfuse3.ENOATTR)

        async def listxattr(self, inode, ctx):  # type: ignore[no-untyped-def]
            return []

    if mode == "polling":
        from durafs.fs import devpoll

        devpoll.install(devpoll.Poller())
    pyfuse3.init(Floor(), mountpoint, {"ro", "default_permissions", "fsname=fuse-floor"})
    try:
        trio.run(pyfuse3.main)
    finally:
        pyfuse3.close()


def compile_c(workdir: Path) -> Path:
    """The C server, built from fuse_floor.c into *workdir*."""
    flags = subprocess.run(["pkg-config", "--cflags", "--libs", "fuse3"], capture_output=True,
                           text=True, check=True).stdout.split()
    binary = workdir / "fuse_floor"
    subprocess.run(["gcc", "-O2", "-Wall", "-o", str(binary), str(C_SOURCE), *flags],
                   check=True)
    return binary


def server(mode: str, mnt: Path, args: argparse.Namespace, c_binary: Path | None
           ) -> subprocess.Popen[bytes]:
    shape = [str(args.dirs), str(args.files), str(args.size)]
    if mode == "c":
        assert c_binary is not None
        return subprocess.Popen([str(c_binary), str(mnt), *shape])
    return subprocess.Popen([sys.executable, __file__, "--serve", mode, str(mnt), *shape])


def timed(command: list[str], cwd: Path | None = None) -> float:
    started = time.perf_counter()
    subprocess.run(command, cwd=cwd, stdout=subprocess.DEVNULL, check=True)
    return time.perf_counter() - started


def measure(mode: str, args: argparse.Namespace, c_binary: Path | None
            ) -> tuple[float, float, float]:
    """Mount the tree in *mode*; time two ``ls -lR`` and one read of every file."""
    with tempfile.TemporaryDirectory(prefix="fuse-floor-") as tmp:
        mnt = Path(tmp)
        child = server(mode, mnt, args, c_binary)
        try:
            deadline = time.monotonic() + READY_TIMEOUT
            while not os.path.ismount(mnt):
                if child.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"the {mode} tree did not mount on {mnt}")
                time.sleep(0.05)
            first, second = timed(["ls", "-lR", str(mnt)]), timed(["ls", "-lR", str(mnt)])
            read_all = timed(["sh", "-c", "find . -type f -print0 | xargs -0 cat"], cwd=mnt)
        finally:
            subprocess.run(["fusermount3", "-u", str(mnt)], capture_output=True)
            child.wait(timeout=READY_TIMEOUT)
    return first, second, read_all


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dirs", type=int, default=300)
    parser.add_argument("--files", type=int, default=68, help="files per directory")
    parser.add_argument("--size", type=int, default=4096, help="bytes per file")
    parser.add_argument("--repeat", type=int, default=3, help="mounts per mode, in turns")
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--serve", nargs=2, metavar=("MODE", "MOUNTPOINT"),
                        help=argparse.SUPPRESS)  # the child process
    parser.add_argument("shape", nargs="*", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        mode, mountpoint = args.serve
        serve(mountpoint, mode, *args.shape)
        return 0
    modes = [m for m in args.modes.split(",") if m]
    if unknown := set(modes) - set(MODES):
        parser.error(f"unknown modes {sorted(unknown)} (known: {', '.join(MODES)})")
    runs: dict[str, list[tuple[float, float, float]]] = {mode: [] for mode in modes}
    with tempfile.TemporaryDirectory(prefix="fuse-floor-c-") as build:
        c_binary = compile_c(Path(build)) if "c" in modes else None
        for _ in range(args.repeat):
            for mode in modes:
                runs[mode].append(measure(mode, args, c_binary))
    files = args.dirs * args.files
    print(f"{files} files of {args.size} B in {args.dirs} directories, served from memory; "
          f"seconds, {args.repeat} mounts per mode in turns (median, then every run)")
    print("| mode | ls -lR, first | ls -lR, second | read every file |")
    print("|---|---|---|---|")
    for mode in modes:
        cells = []
        for k in range(3):
            values = [r[k] for r in runs[mode]]
            cells.append(f"{statistics.median(values):.2f} "
                         f"({', '.join(f'{v:.2f}' for v in values)})")
        print(f"| {mode} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    if shutil.which("fusermount3") is None:
        raise SystemExit("fusermount3 is not installed")
    sys.exit(main())
