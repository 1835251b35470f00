"""Faults: bad input, damaged media, lost catalogs, full and offline media."""

from __future__ import annotations

import ctypes
import json
import os
import random
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import apsw
import pytest

from durafs.engine.home import Home
from durafs.format.age import CT_CHUNK_SIZE, parse_header
from durafs.index.catalog import open_catalog
from durafs.index.rows import CheckpointRow, FilePiece
from tests.engine.cli import (
    checkpoint_names,
    durafs,
    durafs_process,
    one_file_backed_up,
    setup_catalog,
)
from tests.support.lockedxattr import locked_xattrs
from tests.support.oddtree import (
    compare_trees,
    make_small_tree,
    require_root,
    tmpfs,
    world_dir,
)


def test_fifos_and_sockets_are_recorded_never_opened(tmp_path: Path) -> None:
    import socket

    source = tmp_path / "src"
    source.mkdir()
    os.mkfifo(source / "fifo")  # opening it would block forever: the test would hang
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(os.fspath(source / "sock"))
    (source / "plain").write_text("x")
    setup_catalog(tmp_path)
    run = durafs("backup", source, "--pool", "p")
    assert run.code == 0, run.err
    types = {e["name"]: e["type"] for e in durafs("ls", f"default/latest{source}", "--json").json()}
    assert types == {"fifo": "p", "sock": "s", "plain": "f"}
    sock.close()


def test_growing_file_is_retried_then_reported(tmp_path: Path) -> None:
    source = tmp_path / "src"
    source.mkdir()
    (source / "calm").write_text("calm")
    growing = source / "growing.log"
    growing.write_bytes(os.urandom(30 << 20))
    stop = threading.Event()

    def append() -> None:
        with open(growing, "ab") as f:
            while not stop.is_set():
                f.write(b"more\n")
                f.flush()
                time.sleep(0.0005)

    setup_catalog(tmp_path)
    writer = threading.Thread(target=append)
    writer.start()
    try:
        run = durafs("backup", source, "--pool", "p", "--json")
    finally:
        stop.set()
        writer.join()
    assert run.code == 1
    problems = run.json()["problems"]
    reason = "changed while being read (3 attempts)"
    assert problems == [{"path": os.fspath(growing), "reason": reason}]
    assert f"{growing}: changed while being read" in run.err
    assert run.json()["stats"]["files"] == 1  # only calm is in the checkpoint
    assert durafs("checkpoints", "--json").json()[0]["files"] == 1
    out = tmp_path / "out"
    assert durafs("restore", f"default/latest{source}", out).code == 0
    assert (out / "calm").read_text() == "calm"


def _once_read(path: Path, action: Callable[[], None]) -> threading.Thread:
    """A thread that runs *action* as soon as a reader of *path* has closed it (inotify's
    IN_CLOSE_NOWRITE), or gives up after 60 s."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = libc.inotify_init1(os.O_CLOEXEC)
    assert fd >= 0 and libc.inotify_add_watch(fd, os.fsencode(path), 0x10) >= 0

    def wait() -> None:
        try:
            if select.select([fd], [], [], 60)[0]:
                action()
        finally:
            os.close(fd)
    thread = threading.Thread(target=wait)
    thread.start()
    return thread


def test_a_hard_link_has_the_status_its_content_was_read_with(tmp_path: Path) -> None:
    source = tmp_path / "src"
    source.mkdir()
    first = source / "a"
    first.write_bytes(os.urandom(2 << 20))
    os.link(first, source / "z")
    between = source / "m"  # walked between the two names: z is met well after a's read
    between.mkdir()
    for n in range(5000):
        (between / str(n)).touch()
    setup_catalog(tmp_path)

    def append() -> None:
        with open(first, "ab") as f:
            f.write(b"written after the read")
    thread = _once_read(first, append)
    run = durafs("backup", source, "--pool", "p")
    thread.join()
    assert run.code == 0, run.err
    entries = {e["name"]: e for e in durafs("ls", f"default/latest{source}", "--json").json()}
    # both names stand for the content read, 2 MiB: z's lstat saw the appended bytes
    assert entries["a"]["size"] == entries["z"]["size"] == 2 << 20
    assert entries["a"]["mtime_ns"] == entries["z"]["mtime_ns"]


def test_unreadable_paths_are_named_and_the_rest_is_kept(tmp_path: Path) -> None:
    require_root("the backup runs as an unprivileged user against root-only files")
    with world_dir() as world:
        source = world / "src"
        source.mkdir()
        make_small_tree(source)
        secret = source / "secret.txt"
        secret.write_text("root only")
        os.chmod(secret, 0o600)
        closed = source / "closed"
        closed.mkdir()
        (closed / "inner").write_text("x")
        os.chmod(closed, 0o700)
        for path in [source, *source.rglob("*")]:
            if path not in (secret, closed, closed / "inner"):
                os.lchown(path, 65534, 65534)
        home = world / "home"
        home.mkdir()
        os.chown(home, 65534, 65534)
        env = {**os.environ, "DURAFS_HOME": os.fspath(home / "cat"), "HOME": os.fspath(home)}
        command = os.path.join(os.path.dirname(sys.executable), "durafs")
        as_nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--", command]

        def run(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run([*as_nobody, *args], env=env, capture_output=True, text=True)
        assert run("init").returncode == 0
        pool = os.fspath(home / "pool")
        assert run("pool", "add", "p", "--kind", "dir", "--path", pool).returncode == 0
        result = run("backup", os.fspath(source), "--pool", "p")
        assert result.returncode == 1, result.stderr
        assert f"{secret}: permission denied" in result.stderr.lower()
        assert f"{closed}" in result.stderr
        out = home / "out"
        restored = run("restore", f"default/latest{source}", os.fspath(out))
        # root's directory comes back, its owner not: named (nobody may not give it)
        assert restored.returncode == 1, restored.stderr
        assert f"{out}/closed: " in restored.stderr and "user 0 and group 0 not given" \
            in restored.stderr, restored.stderr
        assert (out / "a.txt").exists() if (source / "a.txt").exists() else True
        restored = {p.name for p in out.rglob("*")}
        assert "secret.txt" not in restored and "closed" in restored


def test_times_beyond_1677_2262_are_named_and_the_file_kept_with_them_clamped(
    tmp_path: Path,
) -> None:
    """The index holds times as signed 64-bit nanoseconds (1677-2262); ext4 takes times
    up to 2446, tmpfs any. Such a file made the whole backup fail with a traceback and
    no checkpoint; now its data is kept, its times clamped and named on every run."""
    shm = Path(tempfile.mkdtemp(prefix="durafs-times-", dir="/dev/shm"))  # tmpfs: any time
    try:
        source = shm / "src"
        source.mkdir()
        (source / "plain").write_bytes(b"plain")
        odd = source / "odd"
        odd.write_bytes(b"from the future")
        year_1500, year_2300 = -14_831_769_600 * 10**9, 10_413_792_000 * 10**9
        os.utime(odd, ns=(year_1500, year_2300))
        setup_catalog(tmp_path, encryption="none")
        for _ in range(2):
            run = durafs("backup", source, "--pool", "p", "--json")
            assert run.code == 1, run.err
            problems = run.json()["problems"]
            assert {p["path"] for p in problems} == {str(odd)}
            reasons = " ".join(p["reason"] for p in problems)
            assert "modification time" in reasons and "2262-04-11" in reasons
            assert "access time" in reasons and "1677-09-21" in reasons
        assert run.json()["stats"]["unchanged_files"] == 2  # the clamped times compare equal
        out = tmp_path / "out"
        assert durafs("restore", f"default/latest{source}", out).code == 0
        assert (out / "odd").read_bytes() == b"from the future"
        assert os.stat(out / "odd").st_mtime_ns == 2**63 - 1
        assert os.stat(out / "plain").st_mtime_ns == os.stat(source / "plain").st_mtime_ns
    finally:
        shutil.rmtree(shm)


def test_xattrs_that_could_not_be_read_are_read_again_by_the_next_backup(
    tmp_path: Path,
) -> None:
    require_root("the first backup runs as an unprivileged user, the second as root")
    with locked_xattrs() as world:
        world.lock()
        result = world.run("backup", os.fspath(world.source), "--pool", "p")
        assert result.returncode == 1
        assert f"{world.locked}: extended attributes not read" in result.stderr
        # Nothing about the directory changed, but root can read what nobody could: the
        # first checkpoint's (incomplete) xattrs must not be taken as the whole.
        result = world.run("backup", os.fspath(world.source), "--pool", "p", root=True)
        assert result.returncode == 0, result.stderr
        out = world.home / "out"
        result = world.run("restore", f"default/latest{world.source}", os.fspath(out),
                           root=True)
        assert result.returncode == 0, result.stderr
        assert os.getxattr(out / "locked", "user.origin") == b"kept"


def test_hard_links_to_an_unreadable_file_are_not_counted(tmp_path: Path) -> None:
    require_root("the backup runs as an unprivileged user against a root-only file")
    with world_dir() as world:
        source = world / "src"
        source.mkdir()
        (source / "secret").write_text("root only")
        os.chmod(source / "secret", 0o600)
        os.link(source / "secret", source / "secret-too")
        (source / "open").write_text("anyone")
        home = world / "home"
        home.mkdir()
        os.chown(home, 65534, 65534)
        env = {**os.environ, "DURAFS_HOME": os.fspath(home / "cat"), "HOME": os.fspath(home)}
        command = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--",
                   sys.executable, "-m", "durafs.cli.main"]

        def run(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run([*command, *args], env=env, capture_output=True, text=True)
        assert run("init", "--encryption", "none").returncode == 0
        pool = os.fspath(home / "pool")
        assert run("pool", "add", "p", "--kind", "dir", "--path", pool).returncode == 0
        result = run("backup", os.fspath(source), "--pool", "p", "--json")
        assert result.returncode == 1
        assert {p["path"] for p in json.loads(result.stdout)["problems"]} == {
            os.fspath(source / "secret"), os.fspath(source / "secret-too")}
        listed = json.loads(run("checkpoints", "--json").stdout)[-1]
        assert (listed["files"], listed["bytes"]) == (1, len("anyone"))


def test_damaged_volume_names_exactly_the_hurt_chunks_and_paths(tmp_path: Path) -> None:
    source = tmp_path / "src"
    source.mkdir()
    for i in range(20):
        (source / f"file{i}").write_bytes(os.urandom(100_000))
    pool = setup_catalog(tmp_path, encryption="none")
    assert durafs("backup", source, "--pool", "p").code == 0
    checkpoint, piece = _flip_a_byte_of(pool, source / "file7")
    run = durafs("verify", "--read-data", "--json")
    assert run.code == 1
    report = run.json()
    assert len(report["damage"]) == 1
    damage = report["damage"][0]
    assert damage["chunk"] == piece.chunk.cid.hex()
    assert damage["paths"] == [f"default/{checkpoint.name}{source}/file7"]
    out = tmp_path / "out"
    run = durafs("restore", f"default/latest{source}", out)
    assert run.code == 1 and "file7" in run.err
    for i in range(20):
        if i != 7:
            assert (out / f"file{i}").read_bytes() == (source / f"file{i}").read_bytes()


def _every_checkpoint_restores_whole(source: Path, tmp_path: Path) -> None:
    for name in checkpoint_names():
        out = tmp_path / f"out-{name}"
        run = durafs("restore", f"default/{name}{source}", out)
        assert run.code == 0, run.err
        assert compare_trees(source, out) == []


def _flip_a_byte_of(pool: Path, file: Path, *, flip: bool = True,
                    ) -> tuple[CheckpointRow, FilePiece]:
    """Flip a byte in the middle of the frame of *file*'s first chunk (unless not
    *flip*), as stored in the latest checkpoint on *pool*: (that checkpoint, the piece)."""
    with open_catalog(Home().index_path, readonly=True) as catalog:
        plan = catalog.plan("default")
        assert plan is not None
        checkpoint = catalog.checkpoint("default", "latest")
        assert checkpoint is not None
        victim = catalog.resolve(plan.id, checkpoint.seq, os.fsencode(file))
        assert victim is not None
        piece = catalog.file_chunks(victim)[0]
        volume = catalog.volume(piece.chunk.volume_id)
        assert volume is not None and volume.name
    if not flip:
        return checkpoint, piece
    with open(pool / "volumes" / volume.name, "r+b") as f:
        f.seek(piece.chunk.offset + piece.chunk.length // 2)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 0xFF]))
    return checkpoint, piece


@pytest.mark.parametrize("kind", ["random", "text"])
def test_a_chunk_found_damaged_is_stored_again_and_old_checkpoints_heal(
    tmp_path: Path, kind: str,
) -> None:
    """A chunk verify finds damaged was still deduplicated against, and an unchanged file
    kept pointing at it: every new checkpoint was as hurt as the old one although the
    source still had the data. Now the next backup reads the file again, stores the chunk
    again and moves its row there, so every checkpoint restores whole; the damaged frame
    left on the medium is named as needed by nothing. (A raw frame decodes to other bytes;
    a compressed one fails to decode, and the scan steps over it by its block headers.)"""
    source = tmp_path / "src"
    source.mkdir()
    words = [b"alpha ", b"beta ", b"gamma\n", b"delta ", b"epsilon "]
    (source / "hurt").write_bytes(os.urandom(300_000) if kind == "random" else
                                  b"".join(random.Random(3).choices(words, k=60_000)))
    (source / "copy").write_bytes((source / "hurt").read_bytes())  # the same chunk
    (source / "fine").write_bytes(os.urandom(300_000))
    pool = setup_catalog(tmp_path, encryption="none")
    assert durafs("backup", source, "--pool", "p").code == 0
    _flip_a_byte_of(pool, source / "hurt")
    assert durafs("verify").code == 0  # structure only: the frame is not read
    run = durafs("verify", "--read-data", "--json")
    assert run.code == 1 and len(run.json()["damage"]) == 1, run.out
    report = durafs("backup", source, "--pool", "p", "--json").json()
    assert report["stats"]["unchanged_files"] == 1, report  # hurt and copy read again
    run = durafs("verify", "--read-data", "--json")
    assert run.code == 0 and run.json()["damage"] == [], run.out
    [unneeded] = run.json()["damage_unneeded"]
    assert "damaged" in unneeded, unneeded
    _every_checkpoint_restores_whole(source, tmp_path)
    # with nothing damaged any more, unchanged files are not read again
    report = durafs("backup", source, "--pool", "p", "--json").json()
    assert report["stats"]["unchanged_files"] == 3, report


def test_recover_after_a_heal_takes_the_sound_copy_of_a_chunk(tmp_path: Path) -> None:
    """After a heal a chunk is on the medium twice: the damaged frame and the sound copy
    the backup stored again. Recover kept the first copy of a chunk stored twice, the
    damaged one, so every checkpoint (the one made after the heal too) lost the file
    again, though the media held it whole. Now it checks such a chunk and takes a sound
    copy."""
    source = tmp_path / "src"
    source.mkdir()
    (source / "hurt").write_bytes(os.urandom(200_000))
    (source / "fine").write_bytes(os.urandom(200_000))
    pool = setup_catalog(tmp_path, encryption="none")
    assert durafs("backup", source, "--pool", "p").code == 0
    _flip_a_byte_of(pool, source / "hurt")
    assert durafs("verify", "--read-data").code == 1
    assert durafs("backup", source, "--pool", "p").code == 0  # the heal
    before = checkpoint_names()
    shutil.rmtree(Home().path)
    run = durafs("recover", "--path", pool)
    assert run.code == 0, run.err
    assert checkpoint_names() == before
    _every_checkpoint_restores_whole(source, tmp_path)
    run = durafs("verify", "--read-data", "--json")
    assert run.code == 0 and len(run.json()["damage_unneeded"]) == 1, run.out


@pytest.mark.parametrize("encryption", ["none", "key"])
def test_every_chunk_past_a_cut_is_told_where_the_volume_really_ends(
    tmp_path: Path, encryption: str
) -> None:
    source = tmp_path / "src"
    source.mkdir()
    for i in range(4):  # incompressible: frames of ~100 kB, one after the other
        (source / f"f{i}").write_bytes(os.urandom(100_000))
    pool = setup_catalog(tmp_path, encryption=encryption)
    assert durafs("backup", source, "--pool", "p").code == 0
    volume = next((pool / "volumes").glob("*-data-*"))
    cut = 150_000
    os.truncate(volume, cut)
    end = cut  # in plaintext offsets, as the chunks' are
    if encryption != "none":
        data = volume.read_bytes()
        payload = cut - (parse_header(data)[1] + 16)  # less age's header and nonce
        end = payload - -(-payload // CT_CHUNK_SIZE) * 16  # less a tag per STREAM chunk
    run = durafs("verify", "--read-data", "--json")
    assert run.code == 1, run.out
    damage = run.json()["damage"]
    # f0 lies before the cut; f1 across it; f2 and f3 wholly past it
    assert sorted(p for d in damage for p in d["paths"]) == [
        f"default/{checkpoint_names()[0]}{source}/f{i}" for i in (1, 2, 3)]
    wanted = re.compile(rf"{re.escape(volume.name)}: volume ends at {end}, "
                        r"expected data up to (\d+)")
    ends = []
    for d in damage:
        found = wanted.fullmatch(d["reason"])
        assert found, d["reason"]
        ends.append(int(found[1]))
    assert len(set(ends)) == 3 and min(ends) > end


def _flip(path: Path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x01]))


# where in a volume, found with tarfile: (kind of volume, member, place); "created" is the
# last digit of the header's created_ns (the JSON stays valid, only the member hash tells)
VOLUME_REGIONS = [
    ("catalog", "durafs/catalog/tree.jsonl.zst", "data"),
    ("catalog", "durafs/catalog/checkpoint.json", "tar header"),
    ("catalog", "durafs/catalog/tree.jsonl.zst", "padding"),
    ("data", "durafs/data/00000001.zst", "tar header"),
    ("data", "durafs/data/00000001.zst", "padding"),
    ("data", "durafs/manifest.jsonl.zst", "tar header"),
    ("data", "durafs/volume.json", "created"),
]


@pytest.mark.parametrize(("kind", "member", "place"), VOLUME_REGIONS)
def test_verify_read_data_finds_damage_anywhere_in_a_volume(
    tmp_path: Path, kind: str, member: str, place: str
) -> None:
    """docs/FORMAT.md §3.4: every byte of a volume is covered, so reading every byte back
    finds a flipped one wherever it is, not only in the chunks' frames. Mode none: no age
    AEAD to catch it as a side effect."""
    import tarfile

    source = tmp_path / "src"
    source.mkdir()
    make_small_tree(source)
    pool = setup_catalog(tmp_path, encryption="none")
    assert durafs("backup", source, "--pool", "p").code == 0
    assert durafs("verify", "--read-data").code == 0
    volume = next((pool / "volumes").glob(f"*-{kind}-*.tar"))
    with tarfile.open(volume) as tar:
        info = tar.getmember(member)
    if place == "data":
        offset = info.offset_data + info.size // 2
    elif place == "tar header":
        offset = info.offset + 140  # the mtime field
    elif place == "padding":
        assert info.size % 512, "the member needs padding for this test"
        offset = info.offset_data + info.size
    else:
        header = volume.read_bytes()[info.offset_data : info.offset_data + info.size]
        offset = info.offset_data + header.index(b',"encryption"') - 1
    _flip(volume, offset)
    run = durafs("verify", "--read-data")
    assert run.code == 1, run.out
    assert "DAMAGE" in run.out and volume.name in run.out


@pytest.mark.parametrize("encryption", ["key", "password", "none"])
def test_recover_rebuilds_the_index_from_the_medium(
    tmp_path: Path, encryption: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if encryption == "password":
        monkeypatch.setenv("DURAFS_PASSPHRASE", "a long passphrase")
    source = tmp_path / "src"
    source.mkdir()
    make_small_tree(source)
    pool = setup_catalog(tmp_path, encryption=encryption)
    assert durafs("backup", source, "--pool", "p").code == 0
    (source / "later.txt").write_text("second checkpoint")
    assert durafs("backup", source, "--pool", "p").code == 0
    before = checkpoint_names()
    identity = tmp_path / "identity.txt"
    args: list[str | Path] = []
    if encryption == "key":
        assert durafs("key", "export-identity", identity).code == 0
        args = ["--identity", identity]
    shutil.rmtree(Home().path)
    run = durafs("recover", "--path", pool, *args)
    assert run.code == 0, run.err
    assert "plans come back without their hooks" in run.err  # the media do not hold them
    assert checkpoint_names() == before
    for name in before:
        out = tmp_path / f"out-{name}"
        assert durafs("restore", f"default/{name}{source}", out).code == 0
    assert compare_trees(source, tmp_path / f"out-{before[-1]}") == []
    assert not (tmp_path / f"out-{before[0]}" / "later.txt").exists()
    assert durafs("verify", "--read-data").code == 0
    # and backups continue where they left off: nothing new to store
    stats = durafs("backup", source, "--pool", "p", "--json").json()["stats"]
    assert stats.get("bytes_new", 0) == 0


def test_recover_reads_a_medium_named_twice_once_and_refuses_two_copies_up_front(
    tmp_path: Path,
) -> None:
    source, pool = one_file_backed_up(tmp_path)
    names = checkpoint_names()
    identity = tmp_path / "identity.txt"
    assert durafs("key", "export-identity", identity).code == 0
    shutil.rmtree(Home().path)
    # a copy of the disk, say: the same medium at another place
    copy = tmp_path / "copy"
    shutil.copytree(pool, copy)
    run = durafs("recover", "--path", pool, "--path", copy, "--identity", identity)
    assert run.code == 2
    medium_id = json.loads((pool / "DURAFS-MEDIUM.json").read_text())["medium_id"]
    assert run.err == (f"durafs: {pool} and {copy} hold the same medium P-001 ({medium_id}): "
                       "give only one of them\n")
    assert not Home().path.exists()  # refused before anything was written
    run = durafs("recover", "--path", pool, "--path", tmp_path / "nothing", "--identity", identity)
    assert run.code == 2 and "nothing: no durafs medium marker found" in run.err, run.err
    assert not Home().path.exists()
    # one directory, however it is spelled, is one medium: read once
    link = tmp_path / "link"
    link.symlink_to(pool)
    run = durafs("recover", "--path", pool, "--path", f"{pool}/", "--path", link,
                 "--identity", identity, "--json")
    assert run.code == 0, run.err
    assert (run.json()["media"], run.json()["problems"]) == (1, [])
    assert checkpoint_names() == names
    out = tmp_path / "out"
    assert durafs("restore", f"default/latest{source}", out).code == 0
    assert (out / "f").read_text() == "x"


def test_recover_keeps_files_whose_data_volume_is_lost_as_lost(tmp_path: Path) -> None:
    """A file whose chunks no volume on the media holds must not come back as zeros, nor
    silently go: recover names it and keeps it with its chunks lost, so restore and verify
    name it too; the next backup reads it again and every checkpoint is whole again."""
    source = tmp_path / "src"
    source.mkdir()
    (source / "lost").write_bytes(os.urandom(200_000))
    (source / "linked").write_bytes(os.urandom(1000))
    os.link(source / "lost", source / "lost-too")
    pool = setup_catalog(tmp_path, encryption="none")
    assert durafs("backup", source, "--pool", "p").code == 0
    first = {p.name for p in (pool / "volumes").iterdir()}
    (source / "kept").write_bytes(os.urandom(200_000))
    assert durafs("backup", source, "--pool", "p").code == 0
    names = checkpoint_names()
    # the first run's data volume goes missing; the second holds only "kept"
    (data,) = [n for n in first if "-data-" in n]
    (pool / "volumes" / data).unlink()
    shutil.rmtree(Home().path)
    run = durafs("recover", "--path", pool)
    assert run.code == 1, run.err
    for name in names:
        for lost in ("lost", "linked"):
            assert f"default/{name}{source}/{lost}: 1 of its 1 chunks" in run.err, run.err
    assert checkpoint_names() == names
    listed = {e["name"] for e in durafs("ls", f"default/latest{source}", "--json").json()}
    assert listed == {"kept", "lost", "lost-too", "linked"}
    out = tmp_path / "out"
    run = durafs("restore", f"default/latest{source}", out, "--json")
    assert run.code == 1
    assert {Path(p.split(":")[0]).name for p in run.json()["problems"]} == {
        "lost", "lost-too", "linked"}
    assert (out / "kept").read_bytes() == (source / "kept").read_bytes()
    assert durafs("verify").code == 1
    # the next backup reads the unchanged files again: every checkpoint is whole again
    assert durafs("backup", source, "--pool", "p").code == 0
    for name in names:
        out = tmp_path / f"again-{name}"
        run = durafs("restore", f"default/{name}{source}", out)
        assert run.code == 0, run.err
        for restored in out.iterdir():
            assert restored.read_bytes() == (source / restored.name).read_bytes()
    assert durafs("verify", "--read-data").code == 0


def test_a_lost_newest_volume_file_does_not_stop_later_backups(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """New volumes are numbered after every volume the index knows on the medium, not
    only those still there: the lost one's seq is not given again (which the index
    refused, run after run), and a volume that an older durafs so numbered is left
    unadopted, named, while the backup goes on."""
    source, pool = one_file_backed_up(tmp_path)
    volumes = pool / "volumes"
    (newest,) = volumes.glob("000002-*")
    newest.unlink()
    for text in ("changed", "changed again"):
        (source / "f").write_text(text)
        run = durafs("backup", source, "--pool", "p")
        assert run.code == 0, run.err
    seqs = sorted(int(p.name[:6]) for p in volumes.glob("0*"))
    assert seqs == [1, 3, 4, 5, 6]
    # as an older durafs left it: a volume at the lost one's seq, unknown to the index
    (data,) = volumes.glob("000005-data-*")
    shutil.copy(data, volumes / data.name.replace("000005-", "000002-"))
    (source / "f").write_text("and again")
    run = durafs("backup", source, "--pool", "p")
    assert run.code == 0, run.err
    assert "not adopting 000002-data-" in caplog.text and "its seq 2 is that of" in caplog.text
    out = tmp_path / "out"
    assert durafs("restore", f"default/latest{source}", out).code == 0
    assert (out / "f").read_text() == "and again"


@pytest.mark.parametrize("where", ["age chunk", "block header"])
def test_damage_that_stops_the_scan_heals_and_then_is_no_damage(
    tmp_path: Path, where: str,
) -> None:
    """In an encrypted volume a flipped byte fails its age chunk; in a compressed frame a
    flipped block header leaves no way to the frames after it. Either stops the scan.
    Once a backup stored again what it hurt, every chunk of the volume reads sound one
    by one: the damage is listed as needed by nothing (exit 0), not as damage forever."""
    source = tmp_path / "src"
    source.mkdir()
    words = [b"alpha ", b"beta ", b"gamma\n", b"delta "]
    for i in range(6):
        (source / f"f{i}").write_bytes(os.urandom(200_000) if where == "age chunk" else
                                       b"".join(random.Random(i).choices(words, k=40_000)))
    pool = setup_catalog(tmp_path, encryption="key" if where == "age chunk" else "none")
    assert durafs("backup", source, "--pool", "p").code == 0
    (volume,) = (pool / "volumes").glob("*-data-*")
    if where == "age chunk":
        offset = volume.stat().st_size // 2
    else:  # in the header of f3's frame (its content size, or its first block's header)
        _, piece = _flip_a_byte_of(pool, source / "f3", flip=False)
        offset = piece.chunk.offset + 6
    with open(volume, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 0xFF]))
    run = durafs("verify", "--read-data", "--json")
    assert run.code == 1 and run.json()["damage"], run.out
    assert durafs("backup", source, "--pool", "p").code == 0
    run = durafs("verify", "--read-data", "--json")
    assert run.code == 0, run.out
    assert run.json()["damage"] == [] and run.json()["structure"] == []
    [unneeded] = run.json()["damage_unneeded"]
    assert "damaged" in unneeded or "no checkpoint needs what is there" in unneeded, unneeded
    _every_checkpoint_restores_whole(source, tmp_path)


def test_a_volume_found_lost_is_stored_again_and_old_checkpoints_heal(tmp_path: Path) -> None:
    """verify notes a volume file gone from its medium; the next backup does not count on
    its chunks (unchanged files are read again), stores them again, and the checkpoints
    made before the loss restore whole again from the new copies."""
    source = tmp_path / "src"
    source.mkdir()
    (source / "a").write_bytes(os.urandom(300_000))
    (source / "b").write_bytes(b"b" * 5000)
    pool = setup_catalog(tmp_path, encryption="none")
    assert durafs("backup", source, "--pool", "p").code == 0
    (data,) = (pool / "volumes").glob("*-data-*")
    data.unlink()
    run = durafs("verify", "--json")
    assert run.code == 1 and run.json()["lost"] == [data.name], run.out
    assert durafs("backup", source, "--pool", "p").code == 0  # unchanged, yet read again
    _every_checkpoint_restores_whole(source, tmp_path)
    # still lost, but nothing needs it: no damage; its seq is never given again
    run = durafs("verify", "--read-data", "--json")
    assert run.code == 0, run.out
    assert run.json()["lost"] == run.json()["lost_unneeded"] == [data.name]
    # with nothing lost, an unchanged file is not read again
    report = durafs("backup", source, "--pool", "p", "--json").json()
    assert report["stats"]["unchanged_files"] == 2
    seqs = [int(p.name[:6]) for p in (pool / "volumes").glob("0*")]
    assert int(data.name[:6]) not in seqs and len(seqs) == len(set(seqs))


def test_a_lost_catalog_volume_is_written_again_with_the_deltas_after_it(
    tmp_path: Path,
) -> None:
    """A catalog volume found lost is no base for deltas; the next backup writes full
    catalog volumes for its checkpoint and for every later one whose delta chain went
    through it, so recover still rebuilds every checkpoint."""
    source = tmp_path / "src"
    source.mkdir()
    pool = setup_catalog(tmp_path, encryption="none")
    for text in ("one", "two", "three"):
        (source / "f").write_text(text)
        assert durafs("backup", source, "--pool", "p").code == 0
    names = checkpoint_names()
    (first,) = (pool / "volumes").glob("000002-catalog-*")  # the full tree of the chain
    first.unlink()
    run = durafs("verify", "--json")
    assert run.code == 1 and run.json()["lost"] == [first.name]
    (source / "f").write_text("four")
    assert durafs("backup", source, "--pool", "p").code == 0
    run = durafs("verify", "--json")
    assert run.code == 0 and run.json()["lost_unneeded"] == [first.name], run.out
    shutil.rmtree(Home().path)
    run = durafs("recover", "--path", pool)
    assert run.code == 0, run.err
    assert checkpoint_names() == [*names, checkpoint_names()[-1]]
    for name, text in zip(checkpoint_names(), ("one", "two", "three", "four"), strict=True):
        out = tmp_path / f"out-{name}"
        assert durafs("restore", f"default/{name}{source}", out).code == 0
        assert (out / "f").read_text() == text


def test_a_pool_fills_its_media_in_the_order_they_were_added(tmp_path: Path) -> None:
    source, pool = one_file_backed_up(tmp_path)
    # a medium added later whose label sorts first takes nothing while the first has room
    assert durafs("media", "add", "p", "--path", tmp_path / "later", "--label", "A-0").code == 0
    (source / "f").write_text("changed")
    assert durafs("backup", source, "--pool", "p").code == 0
    assert not (tmp_path / "later" / "volumes").exists() or not any(
        (tmp_path / "later" / "volumes").iterdir())
    assert len(list((pool / "volumes").glob("*-data-*"))) == 2


def test_backup_waits_for_an_offline_medium_and_names_it(tmp_path: Path) -> None:
    source = tmp_path / "src"
    source.mkdir()
    (source / "f").write_text("x")
    pool = setup_catalog(tmp_path)
    pool.rename(tmp_path / "unplugged")
    run = durafs("backup", source, "--pool", "p", "--media-timeout", "1")
    assert run.code == 3
    assert "P-001" in run.err and f"last seen at {pool}" in run.err


def test_full_medium_spills_onto_the_next(tmp_path: Path) -> None:
    require_root("loop-mounted ext4 file systems need root")
    source = tmp_path / "src"
    source.mkdir()
    for i in range(6):
        (source / f"r{i}").write_bytes(os.urandom(5 << 20))
    mounts = []
    try:
        for n in (1, 2):
            image, mnt = tmp_path / f"disk{n}.img", tmp_path / f"disk{n}"
            subprocess.run(["truncate", "-s", "24M", image], check=True)
            lazy_off = "lazy_itable_init=0,lazy_journal_init=0"
            subprocess.run(["mkfs.ext4", "-q", "-F", "-E", lazy_off, image], check=True)
            mnt.mkdir()
            subprocess.run(["mount", "-o", "loop", image, mnt], check=True)
            mounts.append(mnt)
        assert durafs("init").code == 0
        assert durafs("pool", "add", "p", "--kind", "dir", "--path", mounts[0] / "d",
                      "--volume-size", "4M").code == 0
        assert durafs("media", "add", "p", "--path", mounts[1] / "d").code == 0
        run = durafs("backup", source, "--pool", "p")
        assert run.code == 0, run.err
        media = durafs("media", "list", "--json").json()
        # the first is marked full once less than a volume's minimum is left on it; with
        # a little more left than that, but less than the next chunk, it is only passed
        # over (a smaller chunk may fit later): where the cuts fall is random
        assert [m["state"] for m in media] in (["full", "active"], ["active", "active"])
        assert all(list((mnt / "d" / "volumes").glob("*-data-*")) for mnt in mounts)
        out = tmp_path / "out"
        assert durafs("restore", f"default/latest{source}", out).code == 0
        assert compare_trees(source, out) == []
    finally:
        for mnt in mounts:
            unmount(mnt)


@pytest.mark.parametrize("encryption", ["key", "none"])
def test_a_chunk_bigger_than_the_room_left_goes_to_the_next_medium(
    tmp_path: Path, encryption: str
) -> None:
    # volumes of 1 MiB, but the chunks of a big random file are larger: the first medium
    # (3 MiB) is left with room for small volumes only, and a big chunk moves on
    source = tmp_path / "src"
    source.mkdir()
    (source / "big").write_bytes(random.Random(4).randbytes(6_000_000))
    for i in range(300):
        (source / f"small{i:03d}").write_text(f"small file {i}\n" * (i % 7 + 1))
    setup_catalog(tmp_path, encryption=encryption, capacity="3M", volume_size="1M")
    assert durafs("media", "add", "p", "--path", tmp_path / "second",
                  "--capacity", "100M").code == 0
    run = durafs("backup", source, "--pool", "p")
    assert run.code == 0, run.err
    media = durafs("media", "list", "--json").json()
    assert all(m["used"] <= m["capacity"] for m in media), media
    assert media[0]["used"] > 0 and media[1]["used"] > 0
    out = tmp_path / "out"
    assert durafs("restore", f"default/latest{source}", out).code == 0
    assert compare_trees(source, out) == []
    assert durafs("verify", "--read-data").code == 0


def test_a_catalog_volume_bigger_than_the_room_left_goes_to_the_next_medium(
    tmp_path: Path,
) -> None:
    # little data, but a tree made large by incompressible xattrs: the first medium has
    # room for the data volume and more, not for the catalog volume
    source = tmp_path / "src"
    source.mkdir()
    rng = random.Random(5)
    for i in range(600):
        path = source / f"f{i:03d}"
        path.write_text(str(i))
        os.setxattr(path, "user.blob", rng.randbytes(4000))
    pool = setup_catalog(tmp_path, encryption="none", capacity="2M")
    second = tmp_path / "second"
    assert durafs("media", "add", "p", "--path", second, "--capacity", "100M").code == 0
    run = durafs("backup", source, "--pool", "p")
    assert run.code == 0, run.err
    assert [p.name for p in (pool / "volumes").iterdir() if "-catalog-" in p.name] == []
    assert [p.name for p in (second / "volumes").iterdir() if "-catalog-" in p.name]
    assert durafs("verify").code == 0
    # and the next run neither fails nor writes it again
    run = durafs("backup", source, "--pool", "p")
    assert run.code == 0, run.err
    shutil.rmtree(Home().path)
    assert durafs("recover", "--path", pool, "--path", second).code == 0
    out = tmp_path / "out"
    assert durafs("restore", f"default/latest{source}", out).code == 0
    assert compare_trees(source, out) == []


def test_a_delta_that_moves_to_another_medium_is_written_as_a_full_tree(
    tmp_path: Path,
) -> None:
    # the first checkpoint's catalog volume fits on the first medium; the second's delta,
    # made large by incompressible xattrs, does not, and a delta must lie on its base's
    # medium: on the second medium it has to be a full tree
    source = tmp_path / "src"
    source.mkdir()
    (source / "first").write_text("first")
    pool = setup_catalog(tmp_path, encryption="none", capacity="2M")
    second = tmp_path / "second"
    assert durafs("media", "add", "p", "--path", second, "--capacity", "100M").code == 0
    assert durafs("backup", source, "--pool", "p").code == 0
    assert len([p for p in (pool / "volumes").iterdir() if "-catalog-" in p.name]) == 1
    rng = random.Random(6)
    for i in range(600):
        path = source / f"f{i:03d}"
        path.write_text(str(i))
        os.setxattr(path, "user.blob", rng.randbytes(4000))
    run = durafs("backup", source, "--pool", "p")
    assert run.code == 0, run.err
    assert [p.name for p in (second / "volumes").iterdir() if "-catalog-" in p.name]
    run = durafs("verify")
    assert run.code == 0, run.out + run.err
    # the full tree alone rebuilds the checkpoint's tree, whatever became of the first medium
    shutil.rmtree(Home().path)
    run = durafs("recover", "--path", second)
    assert "default/" in run.out + run.err
    assert durafs("checkpoints").out.count("default") == 1


def unmount(mnt: Path) -> None:
    """Unmount, retrying while something (udev probing a new loop device) keeps it busy."""
    for _ in range(50):
        if subprocess.run(["umount", mnt], capture_output=True).returncode == 0:
            return
        time.sleep(0.1)
    subprocess.run(["umount", "-l", mnt], check=True)


def test_a_failure_while_large_files_stream_ends_the_run(tmp_path: Path) -> None:
    """The medium fills while workers stream large files into the walk's queues: the run
    must stop with the reason, not wait forever for the walk to take their chunks."""
    source = tmp_path / "src"
    source.mkdir()
    for i in range(3):
        (source / f"big{i}").write_bytes(os.urandom(24 << 20))  # streamed (> 8 MiB)
    with tmpfs(tmp_path / "small", size="32m") as small:
        assert durafs("init", "--encryption", "none").code == 0
        assert durafs("pool", "add", "p", "--kind", "dir", "--path", small / "pool").code == 0
        run = subprocess.run(
            [sys.executable, "-m", "durafs.cli.main", "backup", os.fspath(source), "--pool",
             "p"], capture_output=True, text=True, timeout=60, check=False)
    assert run.returncode == 3, run.stderr
    # told before a volume starts ("no room left") or when a write fails ("is full")
    assert "room" in run.stderr or "the medium is full" in run.stderr, run.stderr


def test_pseudo_files_are_stored_with_the_size_they_read(tmp_path: Path) -> None:
    """procfs tells size 0 and sysfs a page for files holding a line: the size recorded
    is what was read, so restore, the mount and `ls` agree with the content."""
    proc, sys_dir = Path("/proc/sys/kernel/random"), Path("/sys/kernel/mm/transparent_hugepage")
    boot_id, enabled = (proc / "boot_id").read_bytes(), (sys_dir / "enabled").read_bytes()
    assert os.stat(proc / "boot_id").st_size == 0 and os.stat(sys_dir / "enabled").st_size == 4096
    setup_catalog(tmp_path)
    run = durafs("backup", proc, sys_dir, "--pool", "p")
    assert run.code in (0, 1), run.err  # some files there are unreadable, even to root
    sizes = {e["name"]: e["size"] for e in durafs("ls", f"default/latest{proc}", "--json").json()}
    assert sizes["boot_id"] == len(boot_id)
    sizes = {e["name"]: e["size"]
             for e in durafs("ls", f"default/latest{sys_dir}", "--json").json()}
    assert sizes["enabled"] == len(enabled)
    out = tmp_path / "out"
    durafs("restore", f"default/latest{sys_dir}/enabled", out)
    assert (out / "enabled").read_bytes() == enabled
    durafs("restore", f"default/latest{proc}/boot_id", out)
    assert (out / "boot_id").read_bytes() == boot_id


def test_a_checkpoint_of_pseudo_files_counts_the_bytes_it_holds(tmp_path: Path) -> None:
    boot_id, enabled = Path("/proc/sys/kernel/random/boot_id"), Path(
        "/sys/kernel/mm/transparent_hugepage/enabled")
    size = len(boot_id.read_bytes()) + len(enabled.read_bytes())
    setup_catalog(tmp_path)
    run = durafs("backup", boot_id, enabled, "--pool", "p", "--json")
    assert run.code == 0, run.err
    assert run.json()["stats"]["bytes"] == size  # not 0 + 4096, what their status tells
    assert durafs("checkpoints", "--json").json()[-1]["bytes"] == size


def _raw_index() -> apsw.Connection:
    """The index as SQLite sees it, foreign keys unenforced, its WAL folded in."""
    conn = apsw.Connection(str(Home().index_path))
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return conn


def test_verify_finds_a_damaged_index_and_says_how_to_rebuild_it(tmp_path: Path) -> None:
    source = tmp_path / "src"
    source.mkdir()
    for i in range(300):
        (source / f"file{i}").write_text(f"file {i}\n" * 50)
    setup_catalog(tmp_path)
    assert durafs("backup", source, "--pool", "p").code == 0
    assert durafs("verify").code == 0
    # rows pointing nowhere (as a half-applied edit would leave them)
    conn = _raw_index()
    medium = conn.execute("SELECT id, label FROM media").fetchall()[0]
    conn.execute("UPDATE volumes SET medium_id = 9999 WHERE medium_id = ?", (medium[0],))
    conn.close()
    run = durafs("verify", "--json")
    assert run.code == 1
    structure = run.json()["structure"]
    assert any("point at rows that do not exist (the first: volumes row" in s
               for s in structure), structure
    assert any("durafs recover" in s for s in structure)
    conn = _raw_index()
    conn.execute("UPDATE volumes SET medium_id = ?", (medium[0],))
    # a page of an index b-tree zeroed on disk (bit rot, a bad sector)
    page_size = conn.execute("PRAGMA page_size").fetchall()[0][0]
    root = conn.execute(
        "SELECT rootpage FROM sqlite_schema WHERE name = 'chunks_volume'").fetchall()[0][0]
    conn.close()
    with open(Home().index_path, "r+b") as f:
        f.seek((root - 1) * page_size)
        f.write(b"\xa5" * page_size)
    run = durafs("verify", "--json")
    assert run.code == 1, run.err
    structure = run.json()["structure"]
    named = f"the index {Home().index_path} "
    assert structure[0].startswith(named + "is damaged: ") and "recover" in structure[-1]
    # the schema's own page: SQLite refuses the file before verify's check can run, and
    # verify still reports it as damage, on stdout
    with open(Home().index_path, "r+b") as f:
        f.seek(100)
        f.write(b"\xff" * 300)
    run = durafs("verify", "--json")
    assert run.code == 1, run.err
    report = run.json()
    assert not report["ok"] and report["structure"][0].startswith(named + "is damaged (")
    assert "durafs recover" in report["structure"][0]


def test_verify_of_an_offline_medium_is_not_a_success(tmp_path: Path) -> None:
    _, pool = one_file_backed_up(tmp_path)
    pool.rename(tmp_path / "unplugged")
    for args in ([], ["--read-data"]):
        run = durafs("verify", *args)
        assert run.code == 1, (args, run.out)
        assert "P-001" in run.out
        assert run.out.startswith("0 volumes checked")  # none was reachable
        # each volume not checked is named, once
        volumes = sorted(p.name for p in (tmp_path / "unplugged" / "volumes").iterdir())
        not_checked = [line for line in run.out.splitlines() if line.startswith("not checked")]
        assert sorted(line.split()[2].rstrip(":") for line in not_checked) == volumes
        report = durafs("verify", *args, "--json").json()
        # nothing found damaged, but nothing checked either: a script must not read "ok" alone
        assert (report["ok"], report["complete"], len(report["offline"])) == (
            True, False, len(volumes))
        # simply not there: offline, as for any disk on its shelf
        assert all(line.endswith("is offline") for line in not_checked)
    listed = durafs("media", "list", "--json").json()[0]
    assert (listed["online"], listed["reason"]) == (False, f"{pool} does not exist")
    (tmp_path / "unplugged").rename(pool)
    assert durafs("verify", "--read-data").code == 0
    assert durafs("verify", "--json").json()["complete"] is True
    assert durafs("media", "list", "--json").json()[0]["reason"] is None


def test_a_damaged_or_foreign_marker_at_a_media_path_is_named_not_called_offline(
    tmp_path: Path,
) -> None:
    source, pool = one_file_backed_up(tmp_path)
    marker = pool / "DURAFS-MEDIUM.json"
    good = marker.read_bytes()
    other_id = "0" * 32  # another medium of the same catalog: a swapped disk
    foreign = json.dumps({**json.loads(good), "medium_id": other_id, "label": "Q-001"})
    cases = {
        "{bad json": f"{marker} is damaged (not valid JSON",
        foreign: f"{pool} holds medium Q-001 ({other_id}), not P-001",
    }
    for content, reason in cases.items():
        marker.write_text(content)
        run = durafs("verify")
        assert run.code == 1, run.out
        not_checked = [line for line in run.out.splitlines() if line.startswith("not checked")]
        assert len(not_checked) == 2, run.out  # the data and the catalog volume
        assert all(f"medium P-001 of pool p (last seen at {pool}) cannot be used: {reason}"
                   in line for line in not_checked), run.out
        assert "offline" not in run.out
        listed = durafs("media", "list", "--json").json()[0]
        assert listed["online"] is False and listed["reason"].startswith(reason)
        assert reason in durafs("media", "list").out
        run = durafs("backup", source, "--pool", "p", "--media-timeout", "0")
        assert run.code == 3, run.err
        assert f"waiting for medium P-001 of pool p (last seen at {pool}): {reason}" in run.err
        assert "bring it online" not in run.err and f"cannot be used: {reason}" in run.err
        tried = tmp_path / "tried"
        run = durafs("restore", f"default/latest{source}", tried, "--media-timeout", "0")
        assert run.code == 1, run.err
        expected = f"{tried / 'f'}: medium P-001 of pool p (last seen at {pool}) cannot be used: "
        assert expected + reason in run.err
    # a restore still waits (the right disk may come there), and goes on once it does
    out = tmp_path / "out"
    with durafs_process("restore", "--media-timeout", "60", f"default/latest{source}", out,
                        stderr=subprocess.PIPE, env=os.environ) as proc:
        assert proc.stderr is not None
        line = proc.stderr.readline().decode()
        assert reason in line, line
        marker.write_bytes(good)
        err = proc.stderr.read().decode()
    assert proc.returncode == 0, err
    assert (out / "f").read_text() == "x"


def test_a_command_meeting_a_damaged_index_names_it_and_says_how_to_rebuild(
    tmp_path: Path,
) -> None:
    source = tmp_path / "src"
    source.mkdir()
    (source / "a").write_text("a\n")
    setup_catalog(tmp_path)
    assert durafs("backup", source, "--pool", "p").code == 0
    with open(Home().index_path, "r+b") as f:  # the file's header overwritten
        f.write(b"\xa5" * 100)
    run = durafs("checkpoints")
    assert run.code == 3
    assert f"the index {Home().index_path} is damaged" in run.err
    assert "durafs recover --path" in run.err


#: strace options that hold a process right after each rename(2), and right after it
#: opens *path*.
AFTER_RENAME = ["-e", "trace=rename", "-e", "inject=rename:delay_exit=60000000"]


def after_opening(path: Path) -> list[str]:
    return ["-P", os.fspath(path), "-e", "trace=openat",
            "-e", "inject=openat:delay_exit=60000000"]


def _killed_when(
    held: list[str], reached: Callable[[int], bool], *args: str | os.PathLike[str]
) -> None:
    """Run `durafs ARGS…` under strace, which holds it after the system calls *held* says;
    kill -9 it once *reached* (given its pid) says it is held at the moment wanted."""
    if shutil.which("strace") is None:
        pytest.skip("needs strace to stop a process at a chosen system call")
    command = ["strace", "-f", "-qq", "-o", os.devnull, *held,
               sys.executable, "-m", "durafs.cli.main", *map(os.fspath, args)]
    with subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) as proc:
        deadline = time.monotonic() + 60
        children: list[str] = []
        while not children or not reached(int(children[0])):
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.01)
            children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        for child in children:
            os.kill(int(child), signal.SIGKILL)
        proc.kill()  # strace would sit out its delay before it saw its child die
        proc.wait(timeout=60)
        for child in children:  # gone (a tracee's kill -9 needs no tracer to act)
            while Path(f"/proc/{child}").exists():
                time.sleep(0.01)


def _holds_open(pid: int, path: Path) -> bool:
    try:
        return any(fd.readlink() == path for fd in Path(f"/proc/{pid}/fd").iterdir())
    except FileNotFoundError:  # an fd closed meanwhile
        return False


def test_a_catalog_volume_left_unrecorded_by_a_kill_is_adopted(tmp_path: Path) -> None:
    """kill -9 between a catalog volume's rename and its record: the next backup records
    that volume for its checkpoint, rather than writing the tree again and leaving the
    first copy on the medium, in no index, for ever."""
    source = tmp_path / "src"
    source.mkdir()
    make_small_tree(source)
    pool = setup_catalog(tmp_path)
    assert durafs("backup", source, "--pool", "p").code == 0
    catalogs = set((pool / "volumes").glob("*-catalog-*"))
    _killed_when(AFTER_RENAME,
                 lambda pid: set((pool / "volumes").glob("*-catalog-*")) != catalogs,
                 "backup", source, "--pool", "p")
    names = checkpoint_names()
    assert len(names) == 2  # the checkpoint was committed; its catalog volume not recorded
    on_medium = {p.name for p in (pool / "volumes").iterdir()}
    assert durafs("backup", source, "--pool", "p").code == 0
    added = {p.name for p in (pool / "volumes").iterdir()} - on_medium
    assert len(added) == 1, added  # the third checkpoint's catalog volume, nothing more
    run = durafs("verify", "--read-data", "--json")
    assert run.code == 0, run.err
    assert run.json()["volumes"] == len(on_medium) + 1  # every volume is in the index


def test_a_killed_recover_is_run_again_and_its_half_index_is_trusted_by_nothing(
    tmp_path: Path,
) -> None:
    source = tmp_path / "src"
    source.mkdir()
    make_small_tree(source)
    pool = setup_catalog(tmp_path)
    assert durafs("backup", source, "--pool", "p").code == 0
    (source / "later.txt").write_text("second checkpoint")
    assert durafs("backup", source, "--pool", "p").code == 0
    names = checkpoint_names()
    identity = tmp_path / "identity.txt"
    assert durafs("key", "export-identity", identity).code == 0
    shutil.rmtree(Home().path)
    # killed while it reads the last volume: the others are in its index, no checkpoint is
    last = sorted((pool / "volumes").iterdir())[-1]
    _killed_when(after_opening(last), lambda pid: _holds_open(pid, last),
                 "recover", "--path", pool, "--identity", identity)
    for command in (["checkpoints"], ["verify"], ["backup", source, "--pool", "p"]):
        run = durafs(*command)
        assert run.code == 3 and "run `durafs recover` again" in run.err, (command, run)
    run = durafs("recover", "--path", pool, "--identity", identity)
    assert run.code == 0, run.err
    assert checkpoint_names() == names
    assert durafs("verify", "--read-data").code == 0
    out = tmp_path / "out"
    assert durafs("restore", f"default/latest{source}", out).code == 0
    assert compare_trees(source, out) == []


def test_verify_finds_a_volume_file_replaced_by_another_volumes(tmp_path: Path) -> None:
    """Two small catalog volumes have the same size: one copied over the other reads back
    whole (size, manifest, seal, members), but it is not the volume the index records."""
    source = tmp_path / "src"
    source.mkdir()
    pool = setup_catalog(tmp_path, encryption="none")
    for n in range(3):
        (source / "a").write_text(str(n))
        assert durafs("backup", source, "--pool", "p").code == 0
    catalogs = sorted((pool / "volumes").glob("*-catalog-*"))
    assert catalogs[1].stat().st_size == catalogs[2].stat().st_size
    shutil.copyfile(catalogs[1], catalogs[2])
    descriptors = len(os.listdir("/proc/self/fd"))
    for args in ((), ("--read-data",)):
        run = durafs("verify", *args, "--json")
        assert run.code == 1, run.out
        assert any(catalogs[2].name in p for p in run.json()["structure"]), run.out
    with open(catalogs[0], "r+b") as f:  # and one whose header does not even parse
        f.write(b"\0" * 64)
    run = durafs("verify", "--json")
    assert run.code == 1 and any(catalogs[0].name in p for p in run.json()["structure"])
    # the refused volumes' files are not left open (verify runs in this process)
    assert len(os.listdir("/proc/self/fd")) == descriptors


def test_a_file_left_out_by_recover_and_then_deleted_stays_deleted(tmp_path: Path) -> None:
    """The checkpoint recover recorded without a file is not its catalog volume's tree: the
    next backup's catalog volume must not be a delta of that volume, which would not list
    the file as deleted, and a later recover (its data volume found again) would put it
    back into a checkpoint made after it was gone."""
    source = tmp_path / "src"
    source.mkdir()
    (source / "lost").write_bytes(os.urandom(1000))
    pool = setup_catalog(tmp_path, encryption="none")
    assert durafs("backup", source, "--pool", "p").code == 0
    (data,) = (pool / "volumes").glob("*-data-*")
    shutil.move(data, tmp_path / "away")  # the medium holding it is elsewhere for a while
    shutil.rmtree(Home().path)
    run = durafs("recover", "--path", pool)
    assert run.code == 1 and "lost: 1 of its 1 chunks" in run.err, run.err
    (source / "lost").unlink()
    (source / "kept").write_bytes(os.urandom(1000))
    assert durafs("backup", source, "--pool", "p").code == 0
    names = checkpoint_names()
    shutil.move(tmp_path / "away", data)
    shutil.rmtree(Home().path)
    run = durafs("recover", "--path", pool)
    assert run.code == 0, run.err
    assert checkpoint_names() == names
    listed = {e["name"] for e in durafs("ls", f"default/latest{source}", "--json").json()}
    assert listed == {"kept"}
    listed = {e["name"] for e in durafs("ls", f"default/{names[0]}{source}", "--json").json()}
    assert listed == {"lost"}
