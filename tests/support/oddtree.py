"""Trees with every oddity a backup must keep, and a field-by-field comparer of two trees.

``make_odd_tree`` (root only) builds the fidelity tree the backup/restore tests round-trip;
``make_small_tree`` a quick one any user can build; ``compare_trees`` lists every difference
between two trees (empty list: identical). ``tmpfs`` mounts a tmpfs for trees whose xattrs
ext4 cannot hold (ext4 without ``ea_inode`` limits a value to one block, ~4 KiB).

This module uses only the standard library and the system's ``setfacl``, so it checks durafs
without trusting it.
"""

from __future__ import annotations

import errno
import os
import random
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

MiB = 1 << 20
FOREIGN_ID = 12345
#: The big xattr value make_odd_tree tries first (the kernel's limit, XATTR_SIZE_MAX).
BIG_XATTR = 64 * 1024
#: Names that are hard to carry: a newline, bytes that are not UTF-8, the longest name.
NEWLINE_NAME = b"new\nline"
BAD_UTF8_NAME = b"bad-\xff\xfe-\xc3("
LONG_NAME = b"L" * 250 + b".long"
NON_UTF8_TARGET = b"target-\xff\xfe/\x80"
SPARSE_SIZE = 64 * MiB
SPARSE_DATA = ((0, b"head" * 1024), (10 * MiB, b"middle" * 1000), (SPARSE_SIZE - 5, b"tail!"))
#: Times with ns precision, before 1970 and after 2100.
OLD_NS = -1_234_567_890_123_456_789
FUTURE_NS = 4_200_000_000_987_654_321
BASE_NS = 1_700_000_000_123_456_789


def acl_xattr(entries: list[tuple[int, int, int]]) -> bytes:
    """A system.posix_acl_* value in the kernel's xattr form: (tag, perm, id) entries."""
    out = (2).to_bytes(4, "little")
    for tag, perm, ident in entries:
        out += tag.to_bytes(2, "little") + perm.to_bytes(2, "little") + ident.to_bytes(4, "little")
    return out


def require_root(why: str) -> None:
    """Skip the calling test unless running as root."""
    if os.geteuid() != 0:
        pytest.skip(f"needs root: {why}")


@contextmanager
def tmpfs(path: Path, size: str = "512m") -> Iterator[Path]:
    """Mount a fresh tmpfs on *path* (created if missing) for the duration (root only)."""
    require_root("mounting a tmpfs")
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "none", str(path)],
                   check=True, capture_output=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True, capture_output=True)


def fill(where: Path) -> None:
    """Take every free byte of *where*'s file system (writing the new file *where*), as
    another program would."""
    fd = os.open(where, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        for size in (1 << 20, 4096):
            block = bytes(size)
            while True:
                try:
                    os.write(fd, block)
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    break
    finally:
        os.close(fd)


@contextmanager
def world_dir() -> Iterator[Path]:
    """A fresh directory every user can reach and write (pytest's tmp_path is root-only),
    for tests that drop privileges; removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix="durafs-test-", dir="/tmp"))
    try:
        path.chmod(0o777)
        yield path
    finally:
        subprocess.run(["chmod", "-R", "u+rwx", str(path)], capture_output=True)
        shutil.rmtree(path, ignore_errors=True)


# -- building -------------------------------------------------------------------------------


def _b(path: Path | bytes) -> bytes:
    return os.fsencode(path)


def _write(path: bytes, data: bytes, mode: int = 0o644) -> bytes:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)
    os.chmod(path, mode)
    return path


def _mkdirs(*paths: bytes) -> None:
    for path in paths:
        os.makedirs(path, exist_ok=True)


def make_small_tree(root: Path) -> None:
    """A few files, a subdirectory, a symlink and a hard link; needs no privileges."""
    r = _b(root)
    _mkdirs(r + b"/sub/deeper", r + b"/empty")
    _write(r + b"/hello.txt", b"hello, world\n")
    _write(r + b"/sub/data.bin", random.Random(1).randbytes(10_000), 0o600)
    _write(r + b"/sub/deeper/zero", b"")
    os.symlink(b"../hello.txt", r + b"/sub/link")
    os.link(r + b"/hello.txt", r + b"/sub/hello-again")
    for i, path in enumerate([b"/hello.txt", b"/sub/data.bin", b"/sub/deeper/zero", b"/sub/link"]):
        os.utime(r + path, ns=(BASE_NS + i, BASE_NS - i * 1000), follow_symlinks=False)
    for i, path in enumerate([b"/sub/deeper", b"/sub", b"/empty"]):
        os.utime(r + path, ns=(BASE_NS, BASE_NS + 7 * i + 1))


def make_odd_tree(root: Path) -> None:
    """Build, under the existing directory *root*, a tree with every oddity (root only).

    Regular files of 0, 1, 4096 and 3 MiB (random) bytes; names with a newline, with bytes
    that are not UTF-8, of 255 bytes; a path over 1 KiB; times before 1970 and after 2100
    with ns precision; modes 000, 4755, 2755, 0600, 0644 and a 1777 directory, a 0555 one
    with content; uid/gid 12345; a symlink with a non-UTF-8 target, a dangling one, one owned
    by 12345; three hard links to one inode across directories; user xattrs (empty, binary,
    and a 64 KiB value, or the largest value the file system takes); a POSIX access ACL on a
    file and a default ACL on a directory; a 64 MiB sparse file with data at 0, 10 MiB and its
    end; an empty directory; a FIFO, a character device (1, 3) and a block device (7, 200).
    Directory times are set last, children first, so they are part of what must survive.
    """
    require_root("make_odd_tree creates devices and files owned by others")
    if not shutil.which("setfacl"):
        pytest.skip("setfacl is not installed (apt-get install acl)")
    r = _b(root)
    _odd_files(r)
    _odd_names(r)
    _odd_links(r)
    _odd_xattrs(r)
    _odd_specials(r)
    _odd_sparse(r)
    _odd_dir_modes(r)
    _set_dir_times(r)


def _odd_files(r: bytes) -> None:
    _mkdirs(r + b"/files")
    rng = random.Random(42)
    f = r + b"/files/"
    _write(f + b"empty", b"")
    _write(f + b"one", b"x")
    _write(f + b"four-k", rng.randbytes(4096))
    _write(f + b"three-m", rng.randbytes(3 * MiB))
    _write(f + b"mode-000", b"nobody may read this\n", 0o000)
    _write(f + b"private", b"secret\n", 0o600)
    for name, mode in ((b"setuid", 0o4755), (b"setgid", 0o2755)):
        _write(f + name, b"#!/bin/sh\n", 0o755)
        os.chown(f + name, FOREIGN_ID, FOREIGN_ID)  # before chmod: chown clears set-id bits
        os.chmod(f + name, mode)
    _write(f + b"foreign", b"theirs\n")
    os.chown(f + b"foreign", FOREIGN_ID, FOREIGN_ID)
    _write(f + b"old", b"from 1930\n")
    os.utime(f + b"old", ns=(OLD_NS + 1, OLD_NS))
    _write(f + b"future", b"from 2103\n")
    os.utime(f + b"future", ns=(FUTURE_NS - 1, FUTURE_NS))
    _stamp_files(r + b"/files", skip={b"old", b"future"})


def _odd_names(r: bytes) -> None:
    n = r + b"/names/"
    _mkdirs(n)
    _write(n + NEWLINE_NAME, b"newline\n")
    _write(n + BAD_UTF8_NAME, b"not utf-8\n")
    assert len(LONG_NAME) == 255
    _write(n + LONG_NAME, b"255 bytes of name\n")
    deep = r + b"/deep"
    for level in range(6):  # 6 * 201 bytes: the file's path is over 1 KiB
        deep += b"/" + (b"%d" % level) * 200
    _mkdirs(deep)
    _write(deep + b"/bottom", b"deep down\n")
    assert len(deep) - len(r) > 1024
    _stamp_files(n)
    _stamp_files(deep)


def _odd_links(r: bytes) -> None:
    links = r + b"/links/"
    _mkdirs(links, r + b"/hard/a", r + b"/hard/b")
    os.symlink(NON_UTF8_TARGET, links + b"non-utf8")
    os.symlink(b"no/such/target", links + b"dangling")
    os.symlink(b"../files/one", links + b"foreign")
    os.lchown(links + b"foreign", FOREIGN_ID, FOREIGN_ID)
    for i, name in enumerate((b"non-utf8", b"dangling", b"foreign")):
        os.utime(links + name, ns=(BASE_NS + i, OLD_NS + i), follow_symlinks=False)
    _write(r + b"/hard/a/one", b"one inode, three names\n", 0o640)
    os.link(r + b"/hard/a/one", r + b"/hard/b/two")
    os.link(r + b"/hard/a/one", r + b"/hard/three")
    os.utime(r + b"/hard/a/one", ns=(BASE_NS, BASE_NS))


def _odd_xattrs(r: bytes) -> None:
    x = r + b"/xattrs/"
    _mkdirs(x, r + b"/acl/inherit")
    _write(x + b"small", b"has xattrs\n")
    os.setxattr(x + b"small", b"user.empty", b"")
    os.setxattr(x + b"small", b"user.binary", bytes(range(256)))
    os.setxattr(x + b"small", b"user.text", "héllo".encode())
    _write(x + b"big", b"has a big xattr\n")
    _set_biggest_xattr(x + b"big", b"user.big", BIG_XATTR)
    os.setxattr(x, b"user.on-a-dir", b"directory xattr")
    _write(r + b"/acl/file", b"acl\n", 0o640)
    _setfacl("-m", f"u:{FOREIGN_ID}:r", r + b"/acl/file")
    _setfacl("-d", "-m", f"u:{FOREIGN_ID}:rx", r + b"/acl/inherit")
    _setfacl("-m", f"g:{FOREIGN_ID}:rwx", r + b"/acl/inherit")
    # Created under a default ACL: these inherit ACLs the kernel computes.
    _write(r + b"/acl/inherit/child", b"inherited acl\n")
    _mkdirs(r + b"/acl/inherit/subdir")
    _stamp_files(r + b"/acl/inherit")
    _stamp_files(x)
    _stamp_files(r + b"/acl")


def _set_biggest_xattr(path: bytes, name: bytes, size: int) -> None:
    # ext4 without ea_inode takes at most one block per inode; tmpfs takes the full 64 KiB.
    value = random.Random(7).randbytes(size)
    while True:
        try:
            os.setxattr(path, name, value[:size])
            return
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.E2BIG, errno.ERANGE) or size <= 256:
                raise
            size //= 2


def _setfacl(*args: str | bytes) -> None:
    subprocess.run(["setfacl", *args], check=True, capture_output=True)


def _odd_specials(r: bytes) -> None:
    s = r + b"/special/"
    _mkdirs(s, r + b"/empty-dir")
    os.mkfifo(s + b"fifo", 0o620)
    os.mknod(s + b"null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    os.mknod(s + b"loop200", stat.S_IFBLK | 0o660, os.makedev(7, 200))
    os.chown(s + b"loop200", 0, 6)  # the conventional "disk" group id
    for i, name in enumerate((b"fifo", b"null", b"loop200")):
        os.utime(s + name, ns=(BASE_NS + i, BASE_NS - i))


def _odd_sparse(r: bytes) -> None:
    _mkdirs(r + b"/sparse")
    path = r + b"/sparse/holes"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for offset, data in SPARSE_DATA:
            os.pwrite(fd, data, offset)
        os.ftruncate(fd, SPARSE_SIZE)
    finally:
        os.close(fd)
    os.utime(path, ns=(BASE_NS, BASE_NS + 99))


def _odd_dir_modes(r: bytes) -> None:
    _mkdirs(r + b"/sticky", r + b"/read-only")
    _write(r + b"/sticky/tmpfile", b"in a sticky dir\n")
    os.chmod(r + b"/sticky", 0o1777)
    _write(r + b"/read-only/inside", b"in a 0555 dir\n")
    os.chmod(r + b"/read-only", 0o555)
    os.chown(r + b"/read-only", FOREIGN_ID, FOREIGN_ID)
    _stamp_files(r + b"/sticky")
    _stamp_files(r + b"/read-only")


def _dirs_below(root: bytes) -> list[bytes]:
    """Directories below *root*, parents first; by lstat (os.walk would follow symlinks, and
    reading a symlink sets its atime)."""
    found, pending = [], [root]
    while pending:
        parent = pending.pop()
        for name in sorted(os.listdir(parent)):
            path = parent + b"/" + name
            if stat.S_ISDIR(os.lstat(path).st_mode):
                found.append(path)
                pending.append(path)
    return found


def _stamp_files(directory: bytes, skip: set[bytes] | frozenset[bytes] = frozenset()) -> None:
    # Distinct, ns-precise times per file, so a restore that drops or rounds them shows.
    for i, name in enumerate(sorted(os.listdir(directory))):
        path = directory + b"/" + name
        if name not in skip and not stat.S_ISDIR(os.lstat(path).st_mode):
            os.utime(path, ns=(BASE_NS + 1000 * i + 1, BASE_NS - 1000 * i - 7),
                     follow_symlinks=False)


def _set_dir_times(r: bytes) -> None:
    # Children before parents: setting a child's times does not touch its parent's.
    for i, path in enumerate(reversed(_dirs_below(r))):
        mtime = (OLD_NS, FUTURE_NS, BASE_NS + i)[i % 3]
        os.utime(path, ns=(BASE_NS + 3 * i, mtime))


# -- comparing ------------------------------------------------------------------------------


@dataclass
class _Node:
    st: os.stat_result
    target: bytes | None = None
    xattrs: dict[bytes, bytes] = field(default_factory=dict)


def show(rel: bytes) -> str:
    """A relative path readably, whatever bytes it holds (newlines shown as \\n)."""
    return rel.decode("utf-8", "backslashreplace").replace("\n", "\\n") or "."


def compare_trees(a: Path, b: Path, *, check_atime: bool = False) -> list[str]:
    """Every difference between the trees below *a* and *b* (not the two roots themselves).

    Compared per path: type, mode (incl. set-id and sticky bits), uid, gid, size (files,
    symlinks), mtime_ns (atime_ns with *check_atime*, not for symlinks: reading a symlink
    sets its atime on relatime mounts, and no backup can avoid reading it), symlink target,
    rdev (devices), every xattr (ACLs included), content bytes, hard-link groups (which
    paths share an inode), and sparseness (equal data regions, or allocated bytes within
    64 KiB + 1/16). Directory sizes and ctimes are not compared: no restore can carry them.
    All metadata is read before any content, and files and directories are opened with
    O_NOATIME, so comparing does not move the atimes it compares.
    """
    tree_a, tree_b = _collect(_b(a)), _collect(_b(b))
    diffs: list[str] = []
    for rel in sorted(tree_a.keys() | tree_b.keys()):
        if rel not in tree_b:
            diffs.append(f"{show(rel)}: only in {a}")
        elif rel not in tree_a:
            diffs.append(f"{show(rel)}: only in {b}")
        else:
            diffs.extend(_compare_node(rel, tree_a[rel], tree_b[rel], check_atime))
    diffs.extend(_compare_links(tree_a, tree_b))
    for rel in sorted(tree_a.keys() & tree_b.keys()):
        na, nb = tree_a[rel], tree_b[rel]
        if stat.S_ISREG(na.st.st_mode) and stat.S_ISREG(nb.st.st_mode):
            diffs.extend(_compare_file(rel, _b(a) + b"/" + rel, _b(b) + b"/" + rel, na, nb))
    return diffs


def _collect(root: bytes) -> dict[bytes, _Node]:
    nodes: dict[bytes, _Node] = {}
    pending = [b""]
    while pending:
        rel = pending.pop()
        for name in _list(root + b"/" + rel if rel else root):
            child = rel + b"/" + name if rel else name
            path = root + b"/" + child
            st = os.lstat(path)
            target = os.readlink(path) if stat.S_ISLNK(st.st_mode) else None
            nodes[child] = _Node(st, target, _xattrs(path))
            if stat.S_ISDIR(st.st_mode):
                pending.append(child)
    return nodes


def _list(path: bytes) -> list[bytes]:
    fd = _open_noatime(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        return [os.fsencode(n) for n in os.listdir(fd)]
    finally:
        os.close(fd)


def _open_noatime(path: bytes, flags: int) -> int:
    try:
        return os.open(path, flags | os.O_NOATIME | os.O_CLOEXEC)
    except PermissionError:
        return os.open(path, flags | os.O_CLOEXEC)


def _xattrs(path: bytes) -> dict[bytes, bytes]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            return {}
        raise
    return {os.fsencode(n): os.getxattr(path, n, follow_symlinks=False) for n in names}


def _type(mode: int) -> str:
    return stat.filemode(mode)[0]


def _compare_node(rel: bytes, a: _Node, b: _Node, check_atime: bool) -> list[str]:
    sa, sb = a.st, b.st
    name = show(rel)
    if _type(sa.st_mode) != _type(sb.st_mode):
        return [f"{name}: type {_type(sa.st_mode)!r} != {_type(sb.st_mode)!r}"]
    out = []
    pairs = [
        ("mode", oct(stat.S_IMODE(sa.st_mode)), oct(stat.S_IMODE(sb.st_mode))),
        ("uid", sa.st_uid, sb.st_uid), ("gid", sa.st_gid, sb.st_gid),
        ("mtime_ns", sa.st_mtime_ns, sb.st_mtime_ns),
        ("symlink target", a.target, b.target),
    ]
    if check_atime and not stat.S_ISLNK(sa.st_mode):
        pairs.append(("atime_ns", sa.st_atime_ns, sb.st_atime_ns))
    if not stat.S_ISDIR(sa.st_mode):
        pairs.append(("size", sa.st_size, sb.st_size))
    if stat.S_ISCHR(sa.st_mode) or stat.S_ISBLK(sa.st_mode):
        pairs.append(("rdev", _dev(sa.st_rdev), _dev(sb.st_rdev)))
    out.extend(f"{name}: {what} {va!r} != {vb!r}" for what, va, vb in pairs if va != vb)
    out.extend(_compare_xattrs(name, a.xattrs, b.xattrs))
    return out


def _dev(rdev: int) -> str:
    return f"{os.major(rdev)},{os.minor(rdev)}"


def _compare_xattrs(name: str, a: dict[bytes, bytes], b: dict[bytes, bytes]) -> list[str]:
    out = []
    for key in sorted(a.keys() | b.keys()):
        label = key.decode("utf-8", "backslashreplace")
        if key not in b:
            out.append(f"{name}: xattr {label} missing in the second tree")
        elif key not in a:
            out.append(f"{name}: xattr {label} only in the second tree")
        elif a[key] != b[key]:
            out.append(f"{name}: xattr {label} differs ({len(a[key])} vs {len(b[key])} bytes)")
    return out


def _link_groups(tree: dict[bytes, _Node]) -> dict[bytes, frozenset[bytes]]:
    by_inode: dict[tuple[int, int], set[bytes]] = {}
    for rel, node in tree.items():
        if stat.S_ISREG(node.st.st_mode):
            by_inode.setdefault((node.st.st_dev, node.st.st_ino), set()).add(rel)
    return {rel: frozenset(group) for group in by_inode.values() for rel in group}


def _compare_links(a: dict[bytes, _Node], b: dict[bytes, _Node]) -> list[str]:
    ga, gb = _link_groups(a), _link_groups(b)
    out = []
    for rel in sorted(ga.keys() & gb.keys()):
        if ga[rel] != gb[rel]:
            out.append(f"{show(rel)}: hard links {_names(ga[rel])} != {_names(gb[rel])}")
    return out


def _names(group: frozenset[bytes]) -> list[str]:
    return sorted(show(p) for p in group)


def _compare_file(rel: bytes, pa: bytes, pb: bytes, a: _Node, b: _Node) -> list[str]:
    fa = _open_noatime(pa, os.O_RDONLY)
    try:
        fb = _open_noatime(pb, os.O_RDONLY)
        try:
            out = []
            if not _same_content(fa, fb):
                out.append(f"{show(rel)}: content differs")
            if not _same_sparseness(fa, fb, a.st, b.st):
                out.append(f"{show(rel)}: holes differ (allocated {a.st.st_blocks * 512} != "
                           f"{b.st.st_blocks * 512} bytes, data regions "
                           f"{_regions(fa, a.st.st_size)} != {_regions(fb, b.st.st_size)})")
            return out
        finally:
            os.close(fb)
    finally:
        os.close(fa)


def _same_content(fa: int, fb: int) -> bool:
    offset = 0
    while True:
        da, db = os.pread(fa, MiB, offset), os.pread(fb, MiB, offset)
        if da != db:
            return False
        if not da:
            return True
        offset += len(da)


def _same_sparseness(fa: int, fb: int, sa: os.stat_result, sb: os.stat_result) -> bool:
    if _regions(fa, sa.st_size) == _regions(fb, sb.st_size):
        return True
    alloc_a, alloc_b = sa.st_blocks * 512, sb.st_blocks * 512
    return abs(alloc_a - alloc_b) <= 64 * 1024 + max(alloc_a, alloc_b) // 16


def _regions(fd: int, size: int) -> list[tuple[int, int]]:
    """Data regions by SEEK_DATA/SEEK_HOLE (independent of durafs's own helper)."""
    regions, pos = [], 0
    while pos < size:
        try:
            start = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:
                break
            if exc.errno in (errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
                return [(0, size)]  # no SEEK_DATA here: all data
            raise
        end = os.lseek(fd, start, os.SEEK_HOLE)
        regions.append((start, min(end, size) - start))
        pos = end
    return regions
