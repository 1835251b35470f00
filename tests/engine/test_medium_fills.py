"""A medium that fills while a data volume is being written to it: something else on the
same file system took the room the volume was started with (a real ENOSPC on a small
tmpfs). The volume goes on on another medium of the pool, or the run stops cleanly and the
next one stores what is missing."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from durafs.media import directory
from tests.engine.cli import checkpoint_names, durafs, setup_catalog
from tests.support.oddtree import compare_trees, tmpfs

#: The filler starts once the volume being written on the first medium has this much.
FILL_AFTER = 2 << 20


def _fill(where: Path) -> None:
    """Take every free byte of *where*'s file system, as another program would."""
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
def filled_mid_volume(
    monkeypatch: pytest.MonkeyPatch, medium: Path, filler: Path, after_volumes: int = 0
) -> Iterator[Callable[[], bool]]:
    """Fill *medium*'s file system (writing *filler*) at one exact moment: when the data
    volume being written there already has FILL_AFTER bytes, and *after_volumes* volumes
    are committed on it. Yields whether that moment came.

    The hook only picks the moment, deterministically; the ENOSPC the backup then meets
    comes from the real file system."""
    real_write_all = directory.write_all
    done: list[bool] = []
    volumes = medium / "volumes"

    def write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
        if not done and _is_temp_volume_in(fd, volumes) and os.fstat(fd).st_size >= FILL_AFTER:
            committed = [n for n in os.listdir(volumes) if not n.startswith(".")]
            if len(committed) >= after_volumes:
                done.append(True)
                _fill(filler)
        real_write_all(fd, data)

    monkeypatch.setattr(directory, "write_all", write_all)
    yield lambda: bool(done)
    monkeypatch.setattr(directory, "write_all", real_write_all)


def _is_temp_volume_in(fd: int, volumes: Path) -> bool:
    path = Path(os.readlink(f"/proc/self/fd/{fd}"))
    return path.parent == volumes and path.name.startswith(".tmp-")


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
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, encryption: str
) -> None:
    source = tmp_path / "src"
    _random_tree(source, 4)
    with tmpfs(tmp_path / "small", size="64m") as small:
        first, second = small / "pool", tmp_path / "second"
        assert durafs("init", "--encryption", encryption).code == 0
        assert durafs("pool", "add", "p", "--kind", "dir", "--path", first).code == 0
        assert durafs("media", "add", "p", "--path", second).code == 0
        with filled_mid_volume(monkeypatch, first, small / "filler") as filled:
            run = durafs("backup", source, "--pool", "p", "--json")
        assert filled()
        assert run.code == 0, run.err
        assert run.json()["stats"]["bytes_read"] == 20 << 20  # each file read once
        media = durafs("media", "list", "--json").json()
        assert [m["state"] for m in media] == ["full", "active"]
        # nothing of the volume was left on the full medium, nothing half-written anywhere
        assert _volumes(first) == [] and _temp_files(first, second) == []
        assert [v.split("-")[1] for v in _volumes(second)] == ["data", "catalog"]
        out = tmp_path / "out"
        assert durafs("restore", f"default/latest{source}", out).code == 0
        assert compare_trees(source, out) == []
        assert durafs("verify", "--read-data").code == 0


def test_with_no_medium_to_move_to_the_run_stops_and_the_next_completes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
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
        with filled_mid_volume(monkeypatch, pool, small / "filler", after_volumes=4) as filled:
            run = durafs("backup", source, "--pool", "p", "--json")
        assert filled()
        assert run.code == 3, run.err
        assert "P-001" in run.err and "full" in run.err, run.err
        assert _temp_files(pool) == []
        assert len(checkpoint_names()) == 1  # the earlier one, intact
        assert durafs("verify", "--read-data").code == 0
        # the earlier backup's two volumes, and the run's data volumes committed before
        # the disk filled, are kept
        assert len(_volumes(pool)) == 4

        (small / "filler").unlink()  # the other program freed its space
        run = durafs("backup", source, "--pool", "p", "--json")
        assert run.code == 0, run.err
        # only what the stopped run did not commit is stored again
        assert 0 < run.json()["stats"]["bytes_new"] < 30 << 20
        assert durafs("media", "list", "--json").json()[0]["state"] == "active"
        assert _temp_files(pool) == []
        out = tmp_path / "out"
        assert durafs("restore", f"default/latest{source}", out).code == 0
        assert compare_trees(source, out) == []
        assert durafs("verify", "--read-data").code == 0


def test_with_the_other_medium_offline_the_run_stops_naming_both(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a volume never waits for a medium mid-way (nothing could interrupt that wait)
    source = tmp_path / "src"
    _random_tree(source, 2)
    with tmpfs(tmp_path / "small", size="32m") as small:
        first, second = small / "pool", tmp_path / "second"
        setup_catalog(small)
        assert durafs("media", "add", "p", "--path", second).code == 0
        second.rename(tmp_path / "unplugged")
        with filled_mid_volume(monkeypatch, first, small / "filler") as filled:
            run = durafs("backup", source, "--pool", "p")
        assert filled()
        assert run.code == 3, run.err
        assert "P-001" in run.err and "the medium is full" in run.err, run.err
        assert "P-002 offline" in run.err, run.err
        assert _temp_files(first) == [] and _volumes(first) == []
        assert checkpoint_names() == []
