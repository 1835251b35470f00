"""Paths below a restore's target are reached without following symlinks (engine/beneath)."""

from __future__ import annotations

import errno
import os
import subprocess
from pathlib import Path

import pytest

from durafs.engine.beneath import IN_THE_WAY, Beneath
from tests.engine.cli import durafs, durafs_process, setup_catalog


def _tree(root: Path) -> tuple[Path, Path]:
    (root / "a" / "b").mkdir(parents=True)
    (root / "c").mkdir()
    outside = root.parent / "outside"
    outside.mkdir()
    return root, outside


def _create(beneath: Beneath, path: Path) -> None:
    with beneath.at(os.fsencode(path)) as (dir_fd, name):
        os.close(os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600, dir_fd=dir_fd))


@pytest.mark.parametrize("openat2", [True, False], ids=["openat2", "component-walk"])
def test_paths_are_reached_only_through_real_directories(tmp_path: Path, openat2: bool) -> None:
    root, outside = _tree(tmp_path / "root")
    with Beneath(os.fsencode(root)) as beneath:
        beneath._openat2 = openat2  # the fallback for kernels without openat2
        _create(beneath, root / "top")
        _create(beneath, root / "a" / "b" / "deep")
        assert (root / "top").is_file() and (root / "a" / "b" / "deep").is_file()
        # a directory swapped for a symlink on the way: the directory this thread has
        # open is still the real one, wherever it went...
        os.rename(root / "a", root / "a-moved")
        os.symlink(outside, root / "a")
        (outside / "b").mkdir()
        _create(beneath, root / "a" / "b" / "next")
        assert (root / "a-moved" / "b" / "next").is_file()
        # ...and one opened afresh is not reached through the symlink
        _create(beneath, root / "c" / "x")
        with pytest.raises(OSError) as caught:
            _create(beneath, root / "a" / "b" / "new")
        assert caught.value.errno in (errno.ELOOP, errno.ENOTDIR)
        assert caught.value.strerror == IN_THE_WAY
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
        with pytest.raises(OSError, match="in the way"):
            beneath.open(os.fsencode(root / "a" / "b" / "other"), flags)
        os.close(beneath.open(os.fsencode(root / "c" / "opened"), flags))
        assert (root / "c" / "opened").is_file()
        os.unlink(root / "a")
        (root / "a").write_text("a file now")
        with pytest.raises(OSError, match="in the way"):
            _create(beneath, root / "a" / "x")
        with beneath.at(os.fsencode(root / "c" / "y")) as (outer_fd, _):
            with beneath.at(os.fsencode(root / "a-moved" / "b" / "z")) as (inner_fd, _):
                assert inner_fd != outer_fd
            os.fstat(outer_fd)  # still open: the inner one did not replace it
        with pytest.raises(ValueError):
            _create(beneath, tmp_path / "elsewhere")
    assert list((outside / "b").iterdir()) == []


def test_paths_longer_than_path_max_are_walked(tmp_path: Path) -> None:
    root = tmp_path / "root"
    deep = os.fsencode(root)
    os.mkdir(deep)
    fd = os.open(deep, os.O_RDONLY)
    try:
        for _ in range(24):  # 24 * 250 bytes: beyond PATH_MAX (4096)
            os.mkdir(b"d" * 249, dir_fd=fd)
            new = os.open(b"d" * 249, os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = new
    finally:
        os.close(fd)
    path = deep + b"/" + b"/".join([b"d" * 249] * 24) + b"/leaf"
    assert len(path) > 6000
    with Beneath(deep) as beneath, beneath.at(path) as (dir_fd, name):
        os.close(os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600, dir_fd=dir_fd))
        assert os.stat(name, dir_fd=dir_fd).st_size == 0


def test_a_directory_swapped_for_a_symlink_during_a_restore_is_not_followed(
    tmp_path: Path,
) -> None:
    source = tmp_path / "src"
    (source / "sub").mkdir(parents=True)
    (source / "top").write_text("top\n")
    for name in ("a", "b"):
        (source / "sub" / name).write_text(f"{name}\n")
    pool = setup_catalog(tmp_path)
    assert durafs("backup", source, "--pool", "p").code == 0
    outside = tmp_path / "outside"
    outside.mkdir(mode=0o700)
    pool.rename(tmp_path / "unplugged")  # the restore makes the tree, then waits for data
    out = tmp_path / "out"
    with durafs_process("restore", "--media-timeout", "60", f"default/latest{source}", out,
                        stderr=subprocess.PIPE, env=os.environ) as proc:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        assert b"waiting for" in line, line
        # someone who can write there puts a symlink where the restore made a directory
        os.rmdir(out / "sub")
        os.symlink(outside, out / "sub")
        (tmp_path / "unplugged").rename(pool)
        err = proc.stderr.read().decode()
    assert proc.returncode == 1, err
    assert f"{out / 'sub' / 'a'}: {IN_THE_WAY}" in err
    assert (out / "top").read_text() == "top\n"
    assert list(outside.iterdir()) == []
    assert outside.stat().st_mode & 0o777 == 0o700  # the directory's mode went nowhere


def test_the_target_keeps_its_metadata_when_its_path_leads_elsewhere(tmp_path: Path) -> None:
    """TARGET's own mode and times go to the directory the restore began in, even when a
    directory above it was renamed and a symlink to a decoy put in its place meanwhile."""
    source = tmp_path / "src"
    source.mkdir()
    (source / "f").write_text("f\n")
    source.chmod(0o751)
    os.utime(source, ns=(1_000_000_000_123, 1_100_000_000_456))
    pool = setup_catalog(tmp_path)
    assert durafs("backup", source, "--pool", "p").code == 0
    decoy = tmp_path / "decoy"
    (decoy / "out").mkdir(parents=True, mode=0o700)
    os.utime(decoy / "out", ns=(5, 7))
    pool.rename(tmp_path / "unplugged")  # the restore opens TARGET, then waits for data
    out = tmp_path / "parent" / "out"
    out.mkdir(parents=True)
    with durafs_process("restore", "--media-timeout", "60", f"default/latest{source}", out,
                        stderr=subprocess.PIPE, env=os.environ) as proc:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        assert b"waiting for" in line, line
        (tmp_path / "parent").rename(tmp_path / "parent-moved")
        (tmp_path / "parent").symlink_to(decoy)
        (tmp_path / "unplugged").rename(pool)
        err = proc.stderr.read().decode()
    assert proc.returncode == 0, err
    restored = tmp_path / "parent-moved" / "out"
    assert (restored / "f").read_text() == "f\n"
    st = restored.stat()
    assert (st.st_mode & 0o7777, st.st_mtime_ns) == (0o751, 1_100_000_000_456)
    st = (decoy / "out").stat()
    assert (st.st_mode & 0o7777, st.st_mtime_ns) == (0o700, 7)  # the decoy untouched
    assert list((decoy / "out").iterdir()) == []


def test_paths_below_the_root_directory_itself() -> None:
    # a restore into / (bare metal) reaches /etc/... as "etc/...", never "//etc"
    with Beneath(b"/") as beneath:
        with beneath.at(b"/usr/bin/env") as (dir_fd, name):
            assert dir_fd is not None and name == b"env"
            assert os.stat(name, dir_fd=dir_fd).st_size > 0
        with pytest.raises(ValueError):
            beneath.open(b"//usr/bin/env", os.O_RDONLY)
