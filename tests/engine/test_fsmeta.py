"""fsmeta: recreating every kind of object with its metadata, and the tree comparer itself.

The round trip scans an odd tree and rebuilds it elsewhere with make_node / write_sparse /
apply_metadata, reading content straight from the source (no durafs format involved):
compare_trees must then find nothing. The comparer is then shown to see each kind of damage.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from durafs.engine.fsmeta import (
    apply_metadata,
    at_path,
    data_regions,
    make_node,
    open_dir_path,
    put_mode_back,
    write_sparse,
)
from durafs.engine.scan import ScanItem, scan
from durafs.format.catalog import TreeEntry
from tests.support.nobody import as_nobody
from tests.support.oddtree import (
    BIG_XATTR,
    SPARSE_DATA,
    SPARSE_SIZE,
    MiB,
    acl_xattr,
    compare_trees,
    make_odd_tree,
    make_small_tree,
    require_root,
    tmpfs,
    world_dir,
)

# -- a restore without the format: scan → make_node / write_sparse / apply_metadata --------


def replicate(src: Path, dst: Path) -> None:
    """Rebuild the tree below *src* below *dst* from scan items, as a restore would."""
    s, d = os.fsencode(src), os.fsencode(dst)
    is_root = os.geteuid() == 0
    dirs: list[tuple[bytes, TreeEntry]] = []
    first_names: dict[tuple[int, int], bytes] = {}
    for item in scan([s]):
        assert isinstance(item, ScanItem), item
        if not item.path.startswith(s + b"/"):
            continue  # the ancestors and the source root itself
        dest = d + item.path[len(s) :]
        entry = item.to_entry()
        key = item.hardlink_key
        if key is not None and key in first_names:
            os.link(first_names[key], dest)
            continue
        if entry.type == "f":
            _copy_sparse(item.path, dest, entry.size)
            if key is not None:
                first_names[key] = dest
        else:
            make_node(dest, entry)
        if entry.type == "d":
            dirs.append((dest, entry))  # after the children, which change its mtime
        else:
            apply_metadata(dest, entry, is_root=is_root)
    for dest, entry in reversed(dirs):
        apply_metadata(dest, entry, is_root=is_root)


def _copy_sparse(src: bytes, dest: bytes, size: int) -> None:
    fd_in = os.open(src, os.O_RDONLY | os.O_NOATIME)
    try:
        fd_out = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            write_sparse(fd_out, _pieces(fd_in, data_regions(fd_in, size)), size)
        finally:
            os.close(fd_out)
    finally:
        os.close(fd_in)


def _pieces(fd: int, regions: list[tuple[int, int]]) -> Iterator[tuple[int, bytes]]:
    for start, length in regions:
        for offset in range(start, start + length, MiB):
            yield offset, os.pread(fd, min(MiB, start + length - offset), offset)


@pytest.fixture
def odd_pair(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """The odd tree on a tmpfs (which holds 64 KiB xattrs) and its replica on another."""
    require_root("the odd tree has devices and foreign owners")
    with tmpfs(tmp_path / "src") as src, tmpfs(tmp_path / "dst") as dst:
        make_odd_tree(src)
        replicate(src, dst)
        yield src, dst


# -- the round trip ----------------------------------------------------------------------------


def test_odd_tree_round_trips_exactly(odd_pair: tuple[Path, Path]) -> None:
    src, dst = odd_pair
    assert compare_trees(src, dst, check_atime=True) == []
    big = os.getxattr(dst / "xattrs" / "big", b"user.big")
    assert len(big) == BIG_XATTR  # tmpfs keeps the full 64 KiB value
    holes = os.stat(dst / "sparse" / "holes")
    assert holes.st_size == SPARSE_SIZE and holes.st_blocks * 512 < 1 * MiB
    dev = os.lstat(dst / "special" / "loop200")
    assert stat.S_ISBLK(dev.st_mode) and (os.major(dev.st_rdev), os.minor(dev.st_rdev)) == (7, 200)
    assert os.stat(dst / "files" / "setuid").st_mode & 0o7777 == 0o4755


def test_odd_tree_round_trips_on_ext4(tmp_path: Path) -> None:
    require_root("the odd tree has devices and foreign owners")
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    dst.mkdir()
    make_odd_tree(src)  # here the big xattr is as big as ext4 takes
    replicate(src, dst)
    assert compare_trees(src, dst, check_atime=True) == []


def test_small_tree_round_trips(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    dst.mkdir()
    make_small_tree(src)
    replicate(src, dst)
    assert compare_trees(src, dst, check_atime=True) == []


# -- compare_trees sees every kind of damage -------------------------------------------------


def _new_diffs(src: Path, dst: Path, before: list[str]) -> list[str]:
    return [d for d in compare_trees(src, dst) if d not in before]


def test_compare_trees_detects_damage(odd_pair: tuple[Path, Path]) -> None:
    src, dst = odd_pair
    seen: list[str] = []

    os.chmod(dst / "files" / "private", 0o640)
    new = _new_diffs(src, dst, seen)
    assert new == ["files/private: mode '0o600' != '0o640'"]
    seen += new

    st = os.stat(dst / "files" / "one")
    os.utime(dst / "files" / "one", ns=(st.st_atime_ns, st.st_mtime_ns + 1))
    new = _new_diffs(src, dst, seen)
    assert len(new) == 1 and new[0].startswith("files/one: mtime_ns ")
    seen += new

    os.removexattr(dst / "xattrs" / "small", b"user.text")
    new = _new_diffs(src, dst, seen)
    assert new == ["xattrs/small: xattr user.text missing in the second tree"]
    seen += new

    two = dst / "hard" / "b" / "two"
    data, st = two.read_bytes(), os.stat(two)
    parent = os.stat(two.parent)
    two.unlink()
    two.write_bytes(data)
    os.chown(two, st.st_uid, st.st_gid)
    os.chmod(two, stat.S_IMODE(st.st_mode))
    os.utime(two, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.utime(two.parent, ns=(parent.st_atime_ns, parent.st_mtime_ns))
    new = _new_diffs(src, dst, seen)
    assert new and all(": hard links " in d for d in new), new
    seen += new

    holes = dst / "sparse" / "holes"
    st = os.stat(holes)
    fd = os.open(holes, os.O_WRONLY)
    try:
        os.pwrite(fd, bytes(2 * MiB), 20 * MiB)  # zeros where a hole was: same bytes
    finally:
        os.close(fd)
    os.utime(holes, ns=(st.st_atime_ns, st.st_mtime_ns))
    new = _new_diffs(src, dst, seen)
    assert len(new) == 1 and new[0].startswith("sparse/holes: holes differ"), new


def test_compare_trees_detects_content_type_and_missing(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    make_small_tree(a)
    make_small_tree(b)
    assert compare_trees(a, b) == []
    data = bytearray((b / "sub" / "data.bin").read_bytes())
    data[5000] ^= 1
    st = os.stat(b / "sub" / "data.bin")
    (b / "sub" / "data.bin").write_bytes(bytes(data))
    os.utime(b / "sub" / "data.bin", ns=(st.st_atime_ns, st.st_mtime_ns))
    (b / "sub" / "deeper" / "zero").unlink()
    os.mkfifo(b / "sub" / "deeper" / "zero")
    (b / "empty" / "extra").write_bytes(b"")
    diffs = compare_trees(a, b)
    assert "sub/data.bin: content differs" in diffs
    assert "sub/deeper/zero: type '-' != 'p'" in diffs
    assert any(d.startswith("empty/extra: only in ") for d in diffs)


# -- the helpers one by one ------------------------------------------------------------------


def test_write_sparse_leaves_holes_and_data_regions_finds_them(tmp_path: Path) -> None:
    path = tmp_path / "sparse"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.write(fd, b"old content that must not show through" * 1000)
        write_sparse(fd, list(SPARSE_DATA), SPARSE_SIZE)
        st = os.fstat(fd)
        assert st.st_size == SPARSE_SIZE
        assert st.st_blocks * 512 < 1 * MiB  # gaps were never written
        regions = data_regions(fd, SPARSE_SIZE)
        assert [r[0] // 4096 for r in regions] == [o // 4096 for o, _ in SPARSE_DATA]
        for offset, data in SPARSE_DATA:
            assert os.pread(fd, len(data), offset) == data
        assert os.pread(fd, 100, 5 * MiB) == bytes(100)
        os.lseek(fd, 123, os.SEEK_SET)
        data_regions(fd, SPARSE_SIZE)
        assert os.lseek(fd, 0, os.SEEK_CUR) == 123  # the file offset is left alone
        write_sparse(fd, [], 10 * MiB)  # all hole, trailing hole included
        assert os.fstat(fd).st_size == 10 * MiB and data_regions(fd, 10 * MiB) == []
        with pytest.raises(ValueError):
            write_sparse(fd, [(10, b"abc")], 12)
    finally:
        os.close(fd)
    assert data_regions(os.open(tmp_path, os.O_RDONLY), 0) == []


def test_make_node_every_type(tmp_path: Path) -> None:
    base = os.fsencode(tmp_path)
    make_node(base + b"/d", TreeEntry(b"", "d"))
    make_node(base + b"/d", TreeEntry(b"", "d"))  # an existing directory is fine
    make_node(base + b"/l", TreeEntry(b"", "l", target=b"\xff\xfe/nowhere"))
    make_node(base + b"/p", TreeEntry(b"", "p"))
    make_node(base + b"/s", TreeEntry(b"", "s"))  # sockets are skipped
    assert os.readlink(base + b"/l") == b"\xff\xfe/nowhere"
    assert stat.S_ISFIFO(os.lstat(base + b"/p").st_mode)
    assert not os.path.lexists(base + b"/s")
    with pytest.raises(ValueError):
        make_node(base + b"/f", TreeEntry(b"", "f"))
    os.symlink(b"x", base + b"/notdir")
    with pytest.raises(FileExistsError):
        make_node(base + b"/notdir", TreeEntry(b"", "d"))
    if os.geteuid() == 0:
        make_node(base + b"/c", TreeEntry(b"", "c", rdev=os.makedev(1, 3)))
        assert os.lstat(base + b"/c").st_rdev == os.makedev(1, 3)


def test_make_node_device_without_root_is_a_clear_error() -> None:
    require_root("dropping privileges to test the unprivileged path")
    with world_dir() as shared:
        message = _make_device_as_nobody(os.fsencode(shared) + b"/dev")
    assert message == f"{errno.EPERM} creating a block device node needs root (CAP_MKNOD)"


def _make_device_as_nobody(target: bytes) -> str:
    def attempt() -> str:
        try:
            make_node(target, TreeEntry(b"", "b", rdev=os.makedev(7, 200)))
        except PermissionError as exc:
            return f"{exc.errno} {exc.strerror}"
        return "created"

    result: str = as_nobody(attempt)
    return result


def test_apply_metadata_order_keeps_setuid_and_acl_mask(tmp_path: Path) -> None:
    require_root("chown to a foreign owner")
    path = os.fsencode(tmp_path / "f")
    Path(os.fsdecode(path)).write_bytes(b"x")
    # user::rw- user:12345:rw- group::r-- mask::rw- other::---, as the kernel stores it;
    # consistent with the mode, as a source ACL always is.
    acl = acl_xattr([(0x01, 6, 0xFFFFFFFF), (0x02, 6, 12345), (0x04, 4, 0xFFFFFFFF),
                      (0x10, 6, 0xFFFFFFFF), (0x20, 0, 0xFFFFFFFF)])
    entry = TreeEntry(path, "f", mode=0o4660, uid=12345, gid=12345, mtime_ns=-5,
                      atime_ns=7, xattrs={b"system.posix_acl_access": acl, b"user.k": b"v"})
    apply_metadata(path, entry, is_root=True)
    st = os.lstat(path)
    assert stat.S_IMODE(st.st_mode) == 0o4660  # chmod came after chown
    assert (st.st_uid, st.st_gid, st.st_mtime_ns, st.st_atime_ns) == (12345, 12345, -5, 7)
    assert os.getxattr(path, b"system.posix_acl_access") == acl
    assert os.getxattr(path, b"user.k") == b"v"


def test_apply_metadata_removes_inherited_acls(tmp_path: Path) -> None:
    require_root("setting a default ACL on a root-owned directory")
    parent = tmp_path / "with-default-acl"
    parent.mkdir()
    os.setxattr(parent, b"system.posix_acl_default", acl_xattr(
        [(0x01, 7, 0xFFFFFFFF), (0x02, 5, 12345), (0x04, 5, 0xFFFFFFFF),
         (0x10, 5, 0xFFFFFFFF), (0x20, 5, 0xFFFFFFFF)]))
    child = os.fsencode(parent / "child")
    make_node(child, TreeEntry(child, "d"))
    assert b"system.posix_acl_default" in [os.fsencode(n) for n in os.listxattr(child)]
    apply_metadata(child, TreeEntry(child, "d", mode=0o750), is_root=True)
    assert os.listxattr(child) == []
    assert stat.S_IMODE(os.stat(child).st_mode) == 0o750


def test_apply_metadata_reports_failures_but_does_the_rest(tmp_path: Path) -> None:
    path = os.fsencode(tmp_path / "f")
    Path(os.fsdecode(path)).write_bytes(b"x")
    entry = TreeEntry(path, "f", mode=0o600, mtime_ns=1234, atime_ns=5,
                      xattrs={b"bogus.namespace": b"v"})
    with pytest.raises(OSError, match=r"xattr bogus\.namespace") as info:
        apply_metadata(path, entry, is_root=os.geteuid() == 0)
    assert os.fsencode(info.value.filename) == path
    st = os.lstat(path)
    assert (stat.S_IMODE(st.st_mode), st.st_mtime_ns) == (0o600, 1234)


def _make_long_dir(base: bytes, total: int) -> bytes:
    """A directory whose absolute path is over *total* bytes, built with *at calls."""
    path, fd = base, os.open(base, os.O_PATH | os.O_DIRECTORY)
    try:
        level = 0
        while len(path) <= total:
            name = (b"%02d" % level) * 120
            os.mkdir(name, dir_fd=fd)
            new = os.open(name, os.O_PATH | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd, path, level = new, path + b"/" + name, level + 1
    finally:
        os.close(fd)
    return path


def test_paths_longer_than_path_max(tmp_path: Path) -> None:
    deep = _make_long_dir(os.fsencode(tmp_path), 5000)
    assert len(deep) > 4096
    with pytest.raises(OSError) as info:
        os.lstat(deep)
    assert info.value.errno == errno.ENAMETOOLONG  # so plain paths would not do
    ours = os.geteuid(), os.getegid()
    for name, entry in (
        (b"dir", TreeEntry(b"", "d", mode=0o751, mtime_ns=11, atime_ns=12,
                           xattrs={b"user.x": b"1"})),
        (b"link", TreeEntry(b"", "l", target=b"\xff", mtime_ns=21, atime_ns=22)),
        (b"fifo", TreeEntry(b"", "p", mode=0o604, mtime_ns=31, atime_ns=32)),
    ):
        full = deep + b"/" + name
        entry.uid, entry.gid = ours
        make_node(full, entry)
        apply_metadata(full, entry, is_root=os.geteuid() == 0)
        with at_path(full) as (dir_fd, leaf):
            st = os.stat(leaf, dir_fd=dir_fd, follow_symlinks=False)
        assert (st.st_mtime_ns, st.st_atime_ns) == (entry.mtime_ns, entry.atime_ns)
        if entry.type != "l":
            assert stat.S_IMODE(st.st_mode) == entry.mode
    fd = open_dir_path(deep, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert sorted(os.listdir(fd)) == ["dir", "fifo", "link"]
        assert os.getxattr(b"/proc/self/fd/%d/dir" % fd, b"user.x") == b"1"
    finally:
        os.close(fd)


def test_a_mode_is_put_back_only_on_a_directory_never_through_a_symlink(tmp_path: Path) -> None:
    directory, file, target = tmp_path / "d", tmp_path / "f", tmp_path / "target"
    directory.mkdir(mode=0o755)
    file.write_text("swapped in")
    file.chmod(0o644)
    target.mkdir(mode=0o755)
    link = tmp_path / "link"
    link.symlink_to(target)
    put_mode_back(os.fsencode(directory), 0o555)
    assert stat.S_IMODE(directory.stat().st_mode) == 0o555
    with pytest.raises(NotADirectoryError):
        put_mode_back(os.fsencode(file), 0o555)
    with pytest.raises(OSError, match="symlink"):
        put_mode_back(os.fsencode(link), 0o555)
    assert stat.S_IMODE(file.stat().st_mode) == 0o644
    assert stat.S_IMODE(target.stat().st_mode) == 0o755
