"""kill -9 at random moments during backups: the index and every checkpoint survive, and the
next run stores only what is missing."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from pathlib import Path

import apsw
import pytest

from durafs.engine.home import Home
from durafs.format.reader import VolumeReader
from durafs.media.directory import DirectoryMedium
from tests.engine.cli import checkpoint_names, durafs, durafs_process, setup_catalog
from tests.support.oddtree import compare_trees

KILLS = 20
FILES = 100
FILE_SIZE = 2 << 20  # 100 × 2 MiB = 200 MiB


def mutate(source: Path, rng: random.Random, fraction: float) -> None:
    for i in range(FILES):
        if rng.random() < fraction:
            (source / f"d{i % 7}" / f"f{i}").write_bytes(rng.randbytes(FILE_SIZE))


def chunk_ids_on_medium(pool: Path) -> list[bytes]:
    """Every chunk id in every committed volume of the medium (duplicates kept)."""
    medium = DirectoryMedium(pool)
    identities = Home().keys(read=True).identities
    ids = []
    for stored in medium.list_volumes():
        with medium.open_volume(stored.name) as handle:
            reader = VolumeReader(handle.read_at, identities=identities, size=handle.size)
            ids += [c.id for c in reader.read_manifest().chunks]
    return ids


def integrity_ok() -> None:
    conn = apsw.Connection(os.fspath(Home().index_path))
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    finally:
        conn.close()


@pytest.mark.slow
def test_kill_9_during_backups(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = random.Random(1234)
    source = tmp_path / "src"
    for d in range(7):
        (source / f"d{d}").mkdir(parents=True)
    mutate(source, rng, 1.0)
    pool = setup_catalog(tmp_path)
    # how long one full backup takes, to spread the kills over a whole run
    home = os.environ["DURAFS_HOME"]
    # its own catalog, beside (not around) its medium
    monkeypatch.setenv("DURAFS_HOME", os.fspath(tmp_path / "probe" / "home"))
    started = time.monotonic()
    setup_catalog(tmp_path / "probe")
    assert durafs("backup", source, "--pool", "p").code == 0
    duration = time.monotonic() - started
    monkeypatch.setenv("DURAFS_HOME", home)

    kills = round_no = 0
    while kills < KILLS:
        assert round_no < 2 * KILLS, f"only {kills} kills landed in {round_no} rounds"
        if round_no:
            mutate(source, rng, 0.3)
        round_no += 1
        before = set(checkpoint_names())
        proc = durafs_process("backup", source, "--pool", "p",
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.05, duration))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
        integrity_ok()
        started = time.monotonic()
        run = durafs("backup", source, "--pool", "p", "--json")
        assert run.code == 0, run.err
        # the next kill lands within a run as long as this one (plus process start-up)
        duration = time.monotonic() - started + 0.3
        integrity_ok()
        new = sorted(set(checkpoint_names()) - before)
        assert new, "the resumed run made a checkpoint"
        for name in new:
            out = tmp_path / f"out-{round_no}-{name}"
            assert durafs("restore", f"default/{name}{source}", out).code == 0
            assert compare_trees(source, out) == [], name
            subprocess.run(["rm", "-rf", out], check=True)
        ids = chunk_ids_on_medium(pool)
        assert len(ids) == len(set(ids)), f"round {round_no}: a chunk was stored twice"
    assert durafs("verify", "--read-data").code == 0


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["INT", "TERM"])
def test_an_interrupted_backup_says_so_cleans_up_and_resumes(
    tmp_path: Path, signum: signal.Signals
) -> None:
    rng = random.Random(99)
    source = tmp_path / "src"
    for d in range(7):
        (source / f"d{d}").mkdir(parents=True)
    mutate(source, rng, 0.5)
    pool = setup_catalog(tmp_path, volume_size="8M")
    with durafs_process("backup", source, "--pool", "p",
                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) as proc:
        deadline = time.monotonic() + 60
        while not list((pool / "volumes").glob(".tmp-*")):  # a volume is being written
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.005)
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signum, err
    assert b"durafs: interrupted" in err or b"durafs: terminated" in err
    assert list((pool / "volumes").glob(".tmp-*")) == [], err.decode()  # the open volume: gone
    integrity_ok()
    assert checkpoint_names() == []
    run = durafs("backup", source, "--pool", "p")
    assert run.code == 0, run.err
    out = tmp_path / "out"
    assert durafs("restore", f"default/latest{source}", out).code == 0
    assert compare_trees(source, out) == []
    ids = chunk_ids_on_medium(pool)
    assert len(ids) == len(set(ids))
