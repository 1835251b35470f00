"""A data volume moving off a medium that filled under it (poolwriter.MovingSink), when the
first medium it tries cannot take it either."""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.engine.cli import durafs
from tests.engine.test_medium_fills import (
    _random_tree,
    _temp_files,
    _volumes,
    backup_filled_mid_volume,
    restores_whole,
)
from tests.support.oddtree import fill, require_root, tmpfs


@contextmanager
def _few_inodes(path: Path, inodes: int) -> Iterator[Path]:
    """A tmpfs on *path* with room for bytes but only *inodes* files (root only)."""
    require_root("mounting a tmpfs")
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size=256m,nr_inodes={inodes},mode=0755",
                    "none", str(path)], check=True, capture_output=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True, capture_output=True)


def _use_every_inode(where: Path) -> None:
    where.mkdir()
    for n in range(10_000):
        try:
            (where / str(n)).touch()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
            return
    raise AssertionError("the file system did not run out of inodes")


def test_a_medium_that_cannot_even_start_the_volume_is_passed_over(tmp_path: Path) -> None:
    """The first other medium has bytes to spare but no inode left (creating the volume's
    file fails with ENOSPC): the volume goes on on the next medium, as when the copy to
    one fills it."""
    source = tmp_path / "src"
    _random_tree(source, 4)
    with tmpfs(tmp_path / "small", size="64m") as small, \
            _few_inodes(tmp_path / "inodes", 64) as inodes:
        first, second, third = small / "pool", inodes / "pool", tmp_path / "third"
        assert durafs("init", "--encryption", "none").code == 0
        assert durafs("pool", "add", "p", "--kind", "dir", "--path", first).code == 0
        assert durafs("media", "add", "p", "--path", second).code == 0
        assert durafs("media", "add", "p", "--path", third).code == 0
        _use_every_inode(inodes / "others")
        run, filled = backup_filled_mid_volume(first, small / "filler",
                                               source, "--pool", "p", "--json")
        assert filled
        assert run.code == 0, run.err
        assert _volumes(first) == [] and _temp_files(first, second, third) == []
        assert [v.split("-")[1] for v in _volumes(third)] == ["data", "catalog"]
        # the one with no room left for a volume's file is marked as the copy that
        # filled it would be: it takes no new volume (the catalog volume went on)
        media = durafs("media", "list", "--json").json()
        assert [m["state"] for m in media] == ["full", "full", "active"]
        restores_whole(source, tmp_path / "out")


def test_a_medium_where_no_volume_can_be_started_is_passed_over(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The pool's first medium has bytes to spare but no inode left: a volume's file
    cannot be made there. The backup starts its volumes on the next medium (data and
    catalog volumes alike) instead of failing, and the first takes no new volume."""
    source = tmp_path / "src"
    _random_tree(source, 1)
    with _few_inodes(tmp_path / "inodes", 64) as inodes:
        first, second = inodes / "pool", tmp_path / "second"
        assert durafs("init", "--encryption", "none").code == 0
        assert durafs("pool", "add", "p", "--kind", "dir", "--path", first).code == 0
        assert durafs("media", "add", "p", "--path", second).code == 0
        _use_every_inode(inodes / "others")
        run = durafs("backup", source, "--pool", "p")
        assert run.code == 0, run.err
        assert "P-001" in caplog.text and "trying another medium" in caplog.text
        assert _volumes(first) == [] and _temp_files(first, second) == []
        assert [v.split("-")[1] for v in _volumes(second)] == ["data", "catalog"]
        media = durafs("media", "list", "--json").json()
        assert [m["state"] for m in media] == ["full", "active"]
        restores_whole(source, tmp_path / "out")


def test_a_full_disk_with_room_again_takes_volumes_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A disk marked full (another program had taken its room) is not retired for good:
    once that room is freed, the next backup writes to it again."""
    source = tmp_path / "src"
    _random_tree(source, 1)
    with tmpfs(tmp_path / "small", size="32m") as small:
        first, second = small / "pool", tmp_path / "second"
        assert durafs("init", "--encryption", "none").code == 0
        assert durafs("pool", "add", "p", "--kind", "dir", "--path", first).code == 0
        assert durafs("media", "add", "p", "--path", second).code == 0
        fill(small / "filler")
        assert durafs("backup", source, "--pool", "p").code == 0
        assert [m["state"] for m in durafs("media", "list", "--json").json()] == [
            "full", "active"]
        assert _volumes(first) == []
        (small / "filler").unlink()
        (source / "later").write_bytes(os.urandom(1 << 20))
        run = durafs("backup", source, "--pool", "p")
        assert run.code == 0, run.err
        assert "P-001 has room again" in caplog.text
        assert [m["state"] for m in durafs("media", "list", "--json").json()] == [
            "active", "active"]
        assert [v.split("-")[1] for v in _volumes(first)] == ["data", "catalog"]
        restores_whole(source, tmp_path / "out")
