"""A medium of a pool that refuses writes (its disk mounted read-only, as a file system
with errors often is): passed over for a medium that takes volumes, never marked full."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.engine.cli import durafs
from tests.engine.test_medium_fills import (
    _random_tree,
    _temp_files,
    _volumes,
    backup_filled_mid_volume,
    restores_whole,
)
from tests.support.oddtree import tmpfs


def _remount(where: Path, mode: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{mode}", str(where)], check=True,
                   capture_output=True)


def test_a_read_only_medium_is_passed_over(tmp_path: Path) -> None:
    source = tmp_path / "src"
    source.mkdir()
    (source / "f").write_bytes(os.urandom(3 << 20))
    with tmpfs(tmp_path / "a", size="64m") as a, tmpfs(tmp_path / "b", size="64m") as b:
        first, second = a / "pool", b / "pool"
        assert durafs("init", "--encryption", "none").code == 0
        assert durafs("pool", "add", "p", "--kind", "dir", "--path", first).code == 0
        assert durafs("media", "add", "p", "--path", second).code == 0
        _remount(a, "ro")
        run = durafs("backup", source, "--pool", "p")
        assert run.code == 0, run.err
        assert [v.split("-")[1] for v in _volumes(second)] == ["data", "catalog"]
        media = durafs("media", "list", "--json").json()
        assert [(m["state"], m["online"]) for m in media] == [
            ("active", True), ("active", True)]
        restores_whole(source, tmp_path / "out")  # the read-only medium is read as ever

        # with no medium taking volumes the run stops, naming each and why
        (source / "g").write_bytes(os.urandom(1 << 20))
        _remount(b, "ro")
        run = durafs("backup", source, "--pool", "p")
        assert run.code == 3
        assert "P-001 read-only; P-002 read-only" in run.err, run.err
        assert durafs("verify").code == 0

        _remount(a, "rw")  # writable again: the next run takes it
        _remount(b, "rw")
        assert durafs("backup", source, "--pool", "p").code == 0
        assert [v.split("-")[1] for v in _volumes(first)] == ["data", "catalog"]
        assert _temp_files(first, second) == []
        restores_whole(source, tmp_path / "out2")


def test_a_volume_moving_off_a_full_disk_passes_a_read_only_one_over(tmp_path: Path) -> None:
    """The disk a volume is written to fills under it (another program); the next disk of
    the pool is mounted read-only: the volume goes on to the one after it (the move
    stopped there)."""
    source = tmp_path / "src"
    _random_tree(source, 4)
    with tmpfs(tmp_path / "a", size="64m") as a, tmpfs(tmp_path / "b", size="64m") as b:
        first, second, third = a / "pool", b / "pool", tmp_path / "third"
        assert durafs("init", "--encryption", "none").code == 0
        assert durafs("pool", "add", "p", "--kind", "dir", "--path", first).code == 0
        assert durafs("media", "add", "p", "--path", second).code == 0
        assert durafs("media", "add", "p", "--path", third).code == 0
        _remount(b, "ro")
        try:
            run, filled = backup_filled_mid_volume(first, a / "filler", source, "--pool", "p")
        finally:
            _remount(b, "rw")
        assert filled
        assert run.code == 0, run.err
        assert "went on on medium P-003" in run.err, run.err
        assert [m["state"] for m in durafs("media", "list", "--json").json()] == [
            "full", "active", "active"]  # the read-only one is not marked full
        assert _volumes(first) == _volumes(second) == []
        assert [v.split("-")[1] for v in _volumes(third)] == ["data", "catalog"]
        restores_whole(source, tmp_path / "out")
