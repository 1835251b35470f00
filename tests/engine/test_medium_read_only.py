"""A medium of a pool that refuses writes (its disk mounted read-only, as a file system
with errors often is): passed over for a medium that takes volumes, never marked full."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.engine.cli import durafs
from tests.engine.test_medium_fills import _temp_files, _volumes, restores_whole
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
    """The disk a volume was written to fills; the next disk of the pool is mounted
    read-only: the volume goes on to the one after it (it stopped the run, exit 3)."""
    source = tmp_path / "src"
    source.mkdir()
    (source / "f").write_bytes(os.urandom(20 << 20))
    with tmpfs(tmp_path / "a", size="8m") as a, tmpfs(tmp_path / "b", size="64m") as b, \
            tmpfs(tmp_path / "c", size="64m") as c:
        assert durafs("init", "--encryption", "none").code == 0
        assert durafs("pool", "add", "p", "--kind", "dir", "--path", a / "pool").code == 0
        assert durafs("media", "add", "p", "--path", b / "pool").code == 0
        assert durafs("media", "add", "p", "--path", c / "pool").code == 0
        _remount(b, "ro")
        run = durafs("backup", source, "--pool", "p")
        assert run.code == 0, run.err
        assert [v.split("-")[1] for v in _volumes(c / "pool")] == ["data", "catalog"]
        states = [m["state"] for m in durafs("media", "list", "--json").json()]
        assert states == ["full", "active", "active"], states  # b: not marked full
        restores_whole(source, tmp_path / "out")
        _remount(b, "rw")
