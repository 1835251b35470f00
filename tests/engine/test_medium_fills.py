"""A medium that fills while a data volume is being written to it: something else on the
same file system took the room the volume was started with (a real ENOSPC on a small
tmpfs). The volume goes on on another medium of the pool, or the run stops cleanly and the
next one stores what is missing."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.engine.cli import Run, checkpoint_names, durafs, durafs_process, setup_catalog
from tests.support.oddtree import compare_trees, fill, tmpfs

#: The filler starts once the volume being written on the first medium has this much.
FILL_AFTER = 2 << 20


def backup_filled_mid_volume(
    medium: Path, filler: Path, *args: str | os.PathLike[str], after_volumes: int = 0
) -> tuple[Run, bool]:
    """`durafs backup ARGS…` as a child process, with *medium*'s file system filled
    (writing *filler*) at one moment: when the data volume being written there already
    has FILL_AFTER bytes and *after_volumes* volumes are committed on it. The child is
    stopped (SIGSTOP) while the file system fills, so the volume is caught mid-way;
    the ENOSPC it meets then comes from the real file system. Returns the run and
    whether that moment came (the volume may end before the poll sees it)."""
    volumes = medium / "volumes"
    with durafs_process("backup", *args, stdout=subprocess.PIPE,
                        stderr=subprocess.PIPE) as proc:
        filled = False
        while not filled and proc.poll() is None:
            if _mid_volume(volumes, after_volumes):
                proc.send_signal(signal.SIGSTOP)
                try:
                    fill(filler)
                finally:
                    proc.send_signal(signal.SIGCONT)
                filled = True
            time.sleep(0.0005)
        out, err = proc.communicate(timeout=120)
    return Run(proc.returncode, out.decode(), err.decode()), filled


def _mid_volume(volumes: Path, after_volumes: int) -> bool:
    """Whether a volume is being written in *volumes* with FILL_AFTER bytes in it already,
    after *after_volumes* committed ones."""
    try:
        names = os.listdir(volumes)
        temps = [n for n in names if n.startswith(".tmp-")]
        committed = len(names) - len([n for n in names if n.startswith(".")])
        return committed >= after_volumes and any(
            os.stat(volumes / n).st_size >= FILL_AFTER for n in temps)
    except FileNotFoundError:  # not made yet, or a temp file renamed meanwhile
        return False


def restores_whole(source: Path, out: Path) -> None:
    """The latest checkpoint of *source* restores byte for byte into *out*, and every
    volume reads back whole."""
    assert durafs("restore", f"default/latest{source}", out).code == 0
    assert compare_trees(source, out) == []
    assert durafs("verify", "--read-data").code == 0


def _temp_files(*media: Path) -> list[str]:
    return [os.fspath(m / "volumes" / n) for m in media if (m / "volumes").is_dir()
            for n in os.listdir(m / "volumes") if n.startswith(".tmp-")]


def _volumes(medium: Path) -> list[str]:
    return sorted(n for n in os.listdir(medium / "volumes") if not n.startswith("."))


def _random_tree(source: Path, files: int) -> None:
    source.mkdir()
    for i in range(files):
        (source / f"r{i}").write_bytes(os.urandom(5 << 20))


@pytest.mark.parametrize("encryption", ["key", "none"])
def test_a_medium_filled_by_another_program_mid_volume_moves_the_volume_on(
    tmp_path: Path, encryption: str
) -> None:
    source = tmp_path / "src"
    _random_tree(source, 4)
    with tmpfs(tmp_path / "small", size="64m") as small:
        first, second = small / "pool", tmp_path / "second"
        assert durafs("init", "--encryption", encryption).code == 0
        assert durafs("pool", "add", "p", "--kind", "dir", "--path", first).code == 0
        assert durafs("media", "add", "p", "--path", second).code == 0
        run, filled = backup_filled_mid_volume(first, small / "filler",
                                               source, "--pool", "p", "--json")
        assert filled
        assert run.code == 0, run.err
        assert run.json()["stats"]["bytes_read"] == 20 << 20  # each file read once
        media = durafs("media", "list", "--json").json()
        assert [m["state"] for m in media] == ["full", "active"]
        # nothing of the volume was left on the full medium, nothing half-written anywhere
        assert _volumes(first) == [] and _temp_files(first, second) == []
        assert [v.split("-")[1] for v in _volumes(second)] == ["data", "catalog"]
        restores_whole(source, tmp_path / "out")


def test_with_no_medium_to_move_to_the_run_stops_and_the_next_completes(
    tmp_path: Path
) -> None:
    source = tmp_path / "src"
    _random_tree(source, 6)
    early = tmp_path / "early"
    early.mkdir()
    (early / "note").write_text("backed up before the disk filled\n")
    with tmpfs(tmp_path / "small", size="64m") as small:
        pool = small / "pool"
        setup_catalog(small, volume_size="4M")
        assert durafs("backup", early, "--pool", "p").code == 0
        run, filled = backup_filled_mid_volume(pool, small / "filler", source, "--pool", "p",
                                               "--json", after_volumes=4)
        assert filled
        assert run.code == 3, run.err
        # mid-volume, or (when the volume being watched was committed before the child
        # stopped) as the next one starts: either way the full medium is named
        assert "P-001" in run.err and ("full" in run.err or "bytes free" in run.err), run.err
        assert _temp_files(pool) == []
        assert len(checkpoint_names()) == 1  # the earlier one, intact
        assert durafs("verify", "--read-data").code == 0
        # the earlier backup's two volumes, and the run's data volumes committed before
        # the disk filled, are kept
        assert len(_volumes(pool)) in (4, 5)

        (small / "filler").unlink()  # the other program freed its space
        run = durafs("backup", source, "--pool", "p", "--json")
        assert run.code == 0, run.err
        # only what the stopped run did not commit is stored again
        assert 0 < run.json()["stats"]["bytes_new"] < 30 << 20
        assert durafs("media", "list", "--json").json()[0]["state"] == "active"
        assert _temp_files(pool) == []
        restores_whole(source, tmp_path / "out")


def test_with_the_other_medium_offline_the_run_stops_naming_both(
    tmp_path: Path
) -> None:
    # a volume never waits for a medium mid-way (nothing could interrupt that wait)
    source = tmp_path / "src"
    _random_tree(source, 2)
    with tmpfs(tmp_path / "small", size="32m") as small:
        first, second = small / "pool", tmp_path / "second"
        setup_catalog(small)
        assert durafs("media", "add", "p", "--path", second).code == 0
        second.rename(tmp_path / "unplugged")
        run, filled = backup_filled_mid_volume(first, small / "filler",
                                               source, "--pool", "p")
        assert filled
        assert run.code == 3, run.err
        assert "P-001" in run.err and "the medium is full" in run.err, run.err
        assert "P-002 offline" in run.err, run.err
        assert _temp_files(first) == [] and _volumes(first) == []
        assert checkpoint_names() == []
