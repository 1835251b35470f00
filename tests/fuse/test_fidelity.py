# SPDX-License-Identifier: GPL-3.0-or-later
"""One real mount of the odd tree: cp and rsync restore it exactly, facts are readable but
not copied, permissions hold for other users, nothing can be changed, readers run in
parallel."""

from __future__ import annotations

import hashlib
import os
import random
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import blake3
import pytest

from tests.support.oddtree import FOREIGN_ID, compare_trees, make_odd_tree, tmpfs, world_dir

from .mounting import durafs, mounted

pytestmark = pytest.mark.fuse

BULK_SIZE = 24 * 1024 * 1024


@dataclass
class Mounted:
    home: Path
    pool: Path
    source: Path  # the odd tree
    bulk: Path  # a second source: one big random file
    mnt: Path
    checkpoint: str

    def latest(self, source: Path) -> Path:
        """*source* inside the mount's latest checkpoint."""
        return self.mnt / "default" / "latest" / str(source).lstrip("/")


@pytest.fixture(scope="module")
def world() -> Iterator[Mounted]:
    # Outside pytest's 0700 tmp_path: the source's own directories are what other users
    # must be able to traverse in the mount (its permissions are the source's).
    with world_dir() as tmp, tmpfs(tmp / "srcfs") as srcfs:  # tmpfs takes 64 KiB xattrs
        srcfs.chmod(0o755)
        source, bulk = srcfs / "odd", srcfs / "bulk"
        source.mkdir()
        bulk.mkdir()
        make_odd_tree(source)
        (bulk / "random").write_bytes(random.Random(3).randbytes(BULK_SIZE))
        home = tmp / "home"
        durafs(home, "init")
        durafs(home, "pool", "add", "p", "--kind", "dir", "--path", tmp / "pool",
               "--volume-size", "16M")
        durafs(home, "backup", source, bulk, "--pool", "p")
        checkpoint = durafs(home, "checkpoints", "--json").stdout.split('"name": "')[1]
        checkpoint = checkpoint.split('"')[0]
        with mounted(home, tmp / "mnt", "-o", "allow_other") as mnt:
            yield Mounted(home, tmp / "pool", source, bulk, mnt, checkpoint)


def test_layout(world: Mounted) -> None:
    assert os.listdir(world.mnt) == ["default"]
    assert sorted(os.listdir(world.mnt / "default")) == [world.checkpoint, "latest"]
    assert os.readlink(world.mnt / "default" / "latest") == world.checkpoint
    assert (world.mnt / "default" / world.checkpoint / str(world.source).lstrip("/")).is_dir()


def test_the_mount_shows_the_source(world: Mounted) -> None:
    assert compare_trees(world.source, world.latest(world.source)) == []


def test_rsync_restores_the_source(world: Mounted, tmp_path: Path) -> None:
    with tmpfs(tmp_path / "outfs") as outfs:  # a file system that takes 64 KiB xattrs
        out = outfs / "out"
        _run("rsync", "-aHAXS", f"{world.latest(world.source)}/", f"{out}/")
        assert compare_trees(world.source, out) == []
        assert not _durafs_xattrs(out)


def test_cp_restores_the_source(world: Mounted, tmp_path: Path) -> None:
    with tmpfs(tmp_path / "outfs") as outfs:
        out = outfs / "out"
        _run("cp", "-a", str(world.latest(world.source)), str(out))
        assert compare_trees(world.source, out) == []
        assert not _durafs_xattrs(out)


def _run(*command: str) -> None:
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    assert result.returncode == 0, f"{command[0]}: {result.returncode}\n{result.stderr}"


def _durafs_xattrs(root: Path) -> list[str]:
    """Every durafs xattr name found anywhere below *root* (symlinks not followed)."""
    found = []
    for parent, dirs, files in os.walk(root):
        for name in [*dirs, *files]:
            path = os.path.join(parent, name)
            found += [f"{path}: {x}" for x in os.listxattr(path, follow_symlinks=False)
                      if "durafs" in x]
    return found


def _getfattr(path: Path, name: str) -> str:
    result = subprocess.run(["getfattr", "--only-values", "-n", name, str(path)],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_facts_are_readable_by_name_and_not_listed(world: Mounted) -> None:
    path = world.latest(world.source) / "files" / "three-m"
    label = "P-001"
    assert _getfattr(path, "user.durafs.media") == label
    assert _getfattr(path, "user.durafs.location") == str(world.pool)
    assert _getfattr(path, "user.durafs.online") == "yes"
    content = (world.source / "files" / "three-m").read_bytes()
    assert _getfattr(path, "user.durafs.blake3") == blake3.blake3(content).hexdigest()
    assert _getfattr(path, "user.durafs.checkpoint") == f"default/{world.checkpoint}"
    listed = subprocess.run(["getfattr", "-d", "-m", "-", str(world.latest(world.source)
                                                               / "xattrs" / "small")],
                            capture_output=True, text=True, check=True).stdout
    assert "user.binary=" in listed and "user.durafs." not in listed
    # a file spread over several volumes and media lists each medium once
    assert _getfattr(world.latest(world.bulk) / "random", "user.durafs.media") == label


def test_hard_links_share_an_inode(world: Mounted) -> None:
    base = world.latest(world.source) / "hard"
    stats = [os.stat(base / rel) for rel in ("a/one", "b/two", "three")]
    assert len({s.st_ino for s in stats}) == 1
    assert all(s.st_nlink == 3 for s in stats)


def _as_user(user: str, group: str, *command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["setpriv", f"--reuid={user}", f"--regid={group}", "--clear-groups",
                           *command], capture_output=True, text=True, check=False)


def test_other_users_read_only_what_the_source_allowed(world: Mounted) -> None:
    files = world.latest(world.source) / "files"
    private = _as_user("nobody", "nogroup", "cat", str(files / "private"))
    assert private.returncode != 0 and "Permission denied" in private.stderr
    public = _as_user("nobody", "nogroup", "cat", str(files / "one"))
    assert public.returncode == 0 and public.stdout == "x"
    # POSIX ACLs are enforced too: acl/file is 0640 + user:12345:r
    acl = world.latest(world.source) / "acl" / "file"
    assert _as_user("nobody", "nogroup", "cat", str(acl)).returncode != 0
    named = _as_user(str(FOREIGN_ID), str(FOREIGN_ID), "cat", str(acl))
    assert named.returncode == 0 and named.stdout == "acl\n"


def test_nothing_can_be_changed(world: Mounted) -> None:
    base = world.latest(world.source)
    attempts = [["touch", str(base / "new")], ["mkdir", str(base / "dir")],
                ["rm", "-f", str(base / "files" / "one")], ["chmod", "777", str(base / "files")],
                ["setfattr", "-n", "user.x", "-v", "1", str(base / "files" / "one")],
                ["ln", str(base / "files" / "one"), str(base / "files" / "two")]]
    for command in attempts:
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        assert result.returncode != 0, command
        assert "Read-only file system" in result.stderr, (command, result.stderr)
    with pytest.raises(OSError) as caught:
        os.open(base / "files" / "one", os.O_WRONLY)
    assert caught.value.errno == 30  # EROFS
    for flags in (os.O_RDONLY | os.O_TRUNC, os.O_RDWR):
        with pytest.raises(OSError) as caught:
            os.open(base / "files" / "one", flags)
        assert caught.value.errno == 30
    # O_APPEND writes nothing by itself: read-only with it opens, as on a ro bind mount
    fd = os.open(base / "files" / "one", os.O_RDONLY | os.O_APPEND)
    assert os.read(fd, 10) == b"x"
    os.close(fd)


def test_listings_start_with_dot_and_dot_dot(world: Mounted) -> None:
    base = world.latest(world.source) / "files"
    listed = subprocess.run(["ls", "-a", "-1", str(base)], capture_output=True, text=True,
                            check=True).stdout.split("\n")
    source = subprocess.run(["ls", "-a", "-1", str(_source_of(world, base))],
                            capture_output=True, text=True, check=True).stdout.split("\n")
    assert listed[:2] == [".", ".."] and listed == source


def test_parallel_readers_get_the_right_bytes(world: Mounted) -> None:
    files = [world.latest(world.bulk) / "random",
             world.latest(world.source) / "files" / "three-m"]
    expected = {f: hashlib.sha256(_source_of(world, f).read_bytes()).hexdigest() for f in files}
    results: dict[int, str] = {}

    def read(i: int) -> None:
        path = files[i % 2]
        digest = hashlib.sha256()
        with open(path, "rb", buffering=0) as f:
            while block := f.read(17_000 + 4096 * i):  # odd sizes cross chunk boundaries
                digest.update(block)
        results[i] = digest.hexdigest()

    threads = [threading.Thread(target=read, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert results == {i: expected[files[i % 2]] for i in range(8)}


def _source_of(world: Mounted, path: Path) -> Path:
    inside = path.relative_to(world.mnt / "default" / "latest")
    return Path("/") / inside
