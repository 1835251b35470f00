"""Restore: one open per file, batches shared by workers, overwrite rules, damage, ACLs.

The field-by-field round trip of every oddity is test_fidelity.py; these tests pin down
how the restore gets there.
"""

from __future__ import annotations

import gc
import os
import random
import re
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from durafs.engine import restore
from durafs.engine.access import VolumeAccess
from durafs.engine.home import Home
from durafs.engine.restore import Restore, RestoreResult, parse_spec
from durafs.index.catalog import open_catalog
from tests.engine.cli import durafs, durafs_process, setup_catalog
from tests.support.nobody import as_nobody
from tests.support.oddtree import (
    MiB,
    acl_xattr,
    compare_trees,
    make_small_tree,
    require_root,
    tmpfs,
    world_dir,
)
from tests.support.straced import calls, opens, python_command, require_strace, run_traced

#: age's payload: 64 KiB plaintext chunks, each sealed with a 16-byte tag (docs/FORMAT.md).
AGE_CHUNK, AGE_TAG, AGE_NONCE = 64 * 1024, 16, 16


def _write(path: Path, data: bytes, mtime_ns: int = 1_700_000_000_123_456_789) -> None:
    path.write_bytes(data)
    os.utime(path, ns=(mtime_ns, mtime_ns))


def _content_tree(source: Path) -> None:
    """Files whose chunks land in many batches, are shared, repeat, or are holes."""
    rng = random.Random(5)
    source.mkdir()
    block = rng.randbytes(3 * MiB)
    _write(source / "big.bin", rng.randbytes(9 * MiB))  # several chunks, several batches
    _write(source / "twice.bin", block + rng.randbytes(MiB) + block)  # one chunk, twice
    _write(source / "copy-a", block)  # the same chunks in two files
    _write(source / "copy-b", block)
    for i in range(40):
        _write(source / f"small{i:02d}.txt", b"line %d\n" % i * (i * 37 + 1))
    _write(source / "empty", b"")
    with open(source / "holes-only", "wb") as f:
        f.truncate(5 * MiB)  # no data at all: no chunks, one hole
    with open(source / "trailing-hole", "wb") as f:
        f.write(rng.randbytes(100_000))
        f.truncate(3 * MiB)
    os.chmod(source / "small03.txt", 0o4750)  # set-id bits survive only chown-then-chmod
    os.chmod(source / "small04.txt", 0o000)
    for name in ("holes-only", "trailing-hole", "small03.txt", "small04.txt"):
        os.utime(source / name, ns=(1_600_000_000_000_000_001, 1_600_000_000_000_000_002))


def _restore_in_batches_of(spec: str, target: Path, batch_chunks: int) -> RestoreResult:
    """`durafs restore SPEC TARGET` through the engine, as the command runs it, with at
    most *batch_chunks* chunks in a batch."""
    home = Home()
    keys = home.keys(read=True)
    with home.catalog(readonly=True) as catalog:
        checkpoint, path = parse_spec(catalog, spec)
        access = VolumeAccess(catalog, keys)
        try:
            return Restore(catalog, access, batch_chunks=batch_chunks).run(
                checkpoint, path, os.fsencode(target))
        finally:
            access.close()


@pytest.mark.parametrize("batch_chunks", [restore.BATCH_CHUNKS, 1, 3])
def test_content_round_trips_whatever_the_batches(tmp_path: Path, batch_chunks: int) -> None:
    # Batches of 1 or 3 chunks put most files' chunks into several batches (locked, reopened).
    source = tmp_path / "src"
    _content_tree(source)
    setup_catalog(tmp_path)
    assert durafs("backup", source, "--pool", "p").code == 0
    out = tmp_path / "out"
    result = _restore_in_batches_of(f"default/latest{source}", out, batch_chunks)
    assert result.problems == []
    assert result.files == 47
    assert compare_trees(source, out) == []
    assert os.lstat(out / "holes-only").st_blocks == 0
    assert gc.isenabled() and gc.get_freeze_count() == 0  # paused and frozen only meanwhile


def test_each_file_is_created_once_and_opened_once(tmp_path: Path) -> None:
    """The restore as a child process under strace: every open it makes of a restored
    file, and every listing of xattrs, as the kernel saw them."""
    require_strace("counting the restore's opens and xattr listings")
    source = tmp_path / "src"
    source.mkdir()
    for i in range(300):
        (source / f"f{i}").write_text(f"file {i}\n" * (i + 1))
    setup_catalog(tmp_path)
    assert durafs("backup", source, "--pool", "p").code == 0
    out, log = tmp_path / "out", tmp_path / "strace.log"
    run = run_traced(log, ["-e", "trace=open,openat,openat2,listxattr,llistxattr,flistxattr"],
                     python_command("-m", "durafs.cli.main", "restore",
                                    f"default/latest{source}", out))
    assert run.returncode == 0, run.stderr
    restored = [(path, flags) for path, flags in opens(log) if re.fullmatch(rb"f\d+", path)]
    # each file opened once, and that open created it (O_EXCL): never reopened
    assert len(restored) == len({path for path, _ in restored}) == 300
    assert all({b"O_CREAT", b"O_EXCL"} <= flags for _, flags in restored), restored
    # Nothing to set and nothing inherited: only the target, which was there before, is
    # listed (it might hold ACLs of its own).
    assert sum(calls(log, name) for name in ("listxattr", "llistxattr", "flistxattr")) == 1
    assert compare_trees(source, out) == []


def test_nothing_is_replaced_without_overwrite(tmp_path: Path) -> None:
    source = tmp_path / "src"
    source.mkdir()
    make_small_tree(source)  # hello.txt, sub/data.bin, sub/link, sub/hello-again (hard link)
    os.mkfifo(source / "fifo")
    setup_catalog(tmp_path)
    assert durafs("backup", source, "--pool", "p").code == 0
    out, outside = tmp_path / "out", tmp_path / "outside"
    outside.write_text("must stay")
    (out / "sub").mkdir(parents=True)
    (out / "sub" / "data.bin").symlink_to(outside)  # never followed, never replaced
    (out / "sub" / "link").write_text("a file where a symlink was")
    (out / "sub" / "hello-again").write_text("a file where a hard link was")
    (out / "fifo").write_text("a file where a FIFO was")
    run = durafs("restore", f"default/latest{source}", out)
    assert run.code == 1
    for name in ("sub/data.bin", "sub/link", "sub/hello-again", "fifo"):
        assert f"{out / name}: exists (use --overwrite)" in run.err
    assert outside.read_text() == "must stay"
    assert os.readlink(out / "sub" / "data.bin") == os.fspath(outside)
    assert (out / "sub" / "link").read_text() == "a file where a symlink was"
    assert (out / "hello.txt").read_text() == "hello, world\n"
    run = durafs("restore", f"default/latest{source}", out, "--overwrite")
    assert run.code == 0, run.err
    assert outside.read_text() == "must stay"
    assert compare_trees(source, out) == []


def _small_tree_backed_up(tmp_path: Path) -> Path:
    """tmp_path/src holding make_small_tree's files, backed up once to pool `p`."""
    source = tmp_path / "src"
    source.mkdir()
    make_small_tree(source)  # hello.txt, sub/data.bin, sub/link, sub/hello-again (hard link)
    setup_catalog(tmp_path)
    assert durafs("backup", source, "--pool", "p").code == 0
    return source


def _age_payload_start(volume: bytes) -> int:
    """Where an age file's payload (after header and nonce) starts."""
    mac_line = volume.index(b"\n--- ") + 1
    return volume.index(b"\n", mac_line) + 1 + AGE_NONCE


def test_damage_in_an_encrypted_volume_hurts_only_the_files_under_it(tmp_path: Path) -> None:
    source = tmp_path / "src"
    source.mkdir()
    for i in range(20):
        (source / f"file{i:02d}").write_bytes(random.Random(i).randbytes(100_000))
    pool = setup_catalog(tmp_path)
    assert durafs("backup", source, "--pool", "p").code == 0
    with open_catalog(Home().index_path, readonly=True) as catalog:
        plan, checkpoint = catalog.plan("default"), catalog.checkpoint("default", "latest")
        assert plan is not None and checkpoint is not None
        frames = {}
        for i in range(20):
            version = catalog.resolve(plan.id, checkpoint.seq, os.fsencode(source / f"file{i:02d}"))
            assert version is not None
            (piece,) = catalog.file_chunks(version)
            frames[i] = (piece.chunk.offset, piece.chunk.offset + piece.chunk.length)
        volume = catalog.volume(piece.chunk.volume_id)
        assert volume is not None and volume.name
    # Flip a byte of the age chunk holding the middle of file07's frame: every frame touching
    # that 64 KiB chunk is lost, the rest of the batch must still be restored.
    damaged = (frames[7][0] + frames[7][1]) // 2 // AGE_CHUNK
    path = pool / "volumes" / volume.name
    data = bytearray(path.read_bytes())
    where = _age_payload_start(bytes(data)) + damaged * (AGE_CHUNK + AGE_TAG) + 100
    data[where] ^= 0xFF
    path.write_bytes(bytes(data))
    hurt = {i for i, (start, end) in frames.items()
            if start // AGE_CHUNK <= damaged <= (end - 1) // AGE_CHUNK}
    assert 7 in hurt and len(hurt) <= 3
    out = tmp_path / "out"
    run = durafs("restore", f"default/latest{source}", out, "--json")
    assert run.code == 1
    named = {p.split(": ")[0] for p in run.json()["problems"]}
    assert named == {os.fspath(out / f"file{i:02d}") for i in hurt}
    for i in set(range(20)) - hurt:
        assert (out / f"file{i:02d}").read_bytes() == (source / f"file{i:02d}").read_bytes()


def _default_acl(ident: int) -> bytes:
    """A system.posix_acl_default value giving user *ident* r-x."""
    return acl_xattr([(0x01, 7, 0xFFFFFFFF), (0x02, 5, ident), (0x04, 5, 0xFFFFFFFF),
                      (0x10, 5, 0xFFFFFFFF), (0x20, 5, 0xFFFFFFFF)])


def test_acls_a_target_would_pass_on_are_removed(tmp_path: Path) -> None:
    require_root("a foreign user in an ACL")
    source = tmp_path / "src"
    source.mkdir()
    make_small_tree(source)
    os.mkfifo(source / "fifo")
    setup_catalog(tmp_path)
    assert durafs("backup", source, "--pool", "p").code == 0
    out = tmp_path / "out"
    out.mkdir()
    os.setxattr(out, b"system.posix_acl_default", _default_acl(12345))
    run = durafs("restore", f"default/latest{source}", out)
    assert run.code == 0, run.err
    assert compare_trees(source, out) == []  # no ACL anywhere below, as in the source
    assert stat.S_IMODE(os.lstat(out / "sub" / "data.bin").st_mode) == 0o600


def test_overwrite_keeps_what_is_there_when_a_node_cannot_be_made(tmp_path: Path) -> None:
    require_root("a device node in the backup, and a restore without CAP_MKNOD")
    source = tmp_path / "src"
    source.mkdir()
    os.mknod(source / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    os.mkfifo(source / "fifo")
    setup_catalog(tmp_path)
    assert durafs("backup", source, "--pool", "p").code == 0
    out = tmp_path / "out"
    out.mkdir()
    (out / "null").write_text("precious\n")
    (out / "fifo").write_text("old\n")
    # root without CAP_MKNOD, as in many containers: the device node cannot be made
    run = subprocess.run(
        ["setpriv", "--bounding-set=-mknod", "--inh-caps=-mknod", "--", sys.executable, "-m",
         "durafs.cli.main", "restore", f"default/latest{source}", out, "--overwrite"],
        capture_output=True, text=True)
    assert run.returncode == 1
    assert (out / "null").read_text() == "precious\n"
    assert f"{out / 'null'}: creating a character device node needs root" in run.stderr
    assert stat.S_ISFIFO(os.lstat(out / "fifo").st_mode)
    assert sorted(os.listdir(out)) == ["fifo", "null"]  # no temporary name left behind


def test_a_single_file_lands_in_the_target_under_its_name(tmp_path: Path) -> None:
    source = _small_tree_backed_up(tmp_path)
    out = tmp_path / "out"
    run = durafs("restore", f"default/latest{source}/sub/data.bin", out)
    assert run.code == 0, run.err
    assert os.listdir(out) == ["data.bin"]
    assert compare_trees(source / "sub", out) == [
        "deeper: only in " + os.fspath(source / "sub"),
        "deeper/zero: only in " + os.fspath(source / "sub"),
        "hello-again: only in " + os.fspath(source / "sub"),
        "link: only in " + os.fspath(source / "sub"),
    ]
    run = durafs("restore", f"default/latest{source}/sub/link", out)
    assert run.code == 0, run.err
    assert os.readlink(out / "link") == "../hello.txt"


def _flip_byte_of(pool: Path, needle: bytes) -> None:
    """Damage the unencrypted volume that stores *needle* (raw: random data)."""
    for volume in (pool / "volumes").iterdir():
        data = bytearray(volume.read_bytes())
        where = data.find(needle)
        if where >= 0:
            data[where] ^= 0xFF
            volume.write_bytes(bytes(data))
            return
    raise AssertionError("no volume holds those bytes")


def test_a_symlink_in_the_target_is_never_followed(tmp_path: Path) -> None:
    """A symlink where the backup has a directory would take whatever goes under that
    directory elsewhere: nothing goes under it, and --overwrite replaces the link itself."""
    source = _small_tree_backed_up(tmp_path)
    out, outside = tmp_path / "out", tmp_path / "outside"
    outside.mkdir()
    out.mkdir()
    (out / "sub").symlink_to(outside)
    run = durafs("restore", f"default/latest{source}", out)
    assert run.code == 1
    assert f"{out / 'sub'}: exists (use --overwrite); nothing under it was restored" in run.err
    assert os.listdir(outside) == []
    assert (out / "hello.txt").read_text() == "hello, world\n"
    run = durafs("restore", f"default/latest{source}", out, "--overwrite")
    assert run.code == 0, run.err
    assert os.listdir(outside) == []
    assert compare_trees(source, out) == []


def test_a_target_that_is_a_symlink_means_the_directory_it_names(tmp_path: Path) -> None:
    source = _small_tree_backed_up(tmp_path)
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "via").symlink_to(real)
    run = durafs("restore", f"default/latest{source}", tmp_path / "via")
    assert run.code == 0, run.err
    assert compare_trees(source, real) == []


def test_overwrite_writes_beside_and_renames_so_a_failed_copy_loses_nothing(
    tmp_path: Path,
) -> None:
    source = tmp_path / "src"
    source.mkdir()
    (source / "good").write_bytes(b"new content\n")
    (source / "bad").write_bytes(random.Random(1).randbytes(300_000))
    pool = setup_catalog(tmp_path, encryption="none")
    assert durafs("backup", source, "--pool", "p").code == 0
    _flip_byte_of(pool, (source / "bad").read_bytes()[100_000:100_064])
    out = tmp_path / "out"
    out.mkdir()
    (out / "good").write_text("old good\n")
    (out / "bad").write_text("precious old copy\n")
    elsewhere = tmp_path / "elsewhere"
    os.link(out / "good", elsewhere)  # a hard link outside keeps the old content
    run = durafs("restore", f"default/latest{source}", out, "--overwrite", "--json")
    assert run.code == 1
    assert (out / "good").read_bytes() == b"new content\n"
    assert elsewhere.read_text() == "old good\n"
    assert (out / "bad").read_text() == "precious old copy\n"
    # one problem for the one path: what was wrong with the copy, and what became of it
    (problem,) = run.json()["problems"]
    assert problem.startswith(f"{out / 'bad'}: ") and " chunk " in problem
    assert problem.endswith("; left as it was (the backup's copy is damaged)")
    assert (run.json()["files"], run.json()["bytes"]) == (1, len(b"new content\n"))
    assert sorted(os.listdir(out)) == ["bad", "good"]  # no temporary name left behind


def test_a_damaged_file_is_not_counted_and_keeps_no_original_time(tmp_path: Path) -> None:
    source = tmp_path / "src"
    source.mkdir()
    _write(source / "ok", b"fine\n")
    _write(source / "bad", random.Random(2).randbytes(300_000))
    pool = setup_catalog(tmp_path, encryption="none")
    assert durafs("backup", source, "--pool", "p").code == 0
    _flip_byte_of(pool, (source / "bad").read_bytes()[5000:5064])
    out = tmp_path / "out"
    run = durafs("restore", f"default/latest{source}", out, "--json")
    assert run.code == 1 and run.json()["files"] == 1
    assert os.stat(out / "ok").st_mtime_ns == os.stat(source / "ok").st_mtime_ns
    # a size-and-time check (rsync's) must not take the damaged copy for the original
    assert os.stat(out / "bad").st_mtime_ns != os.stat(source / "bad").st_mtime_ns


def test_an_offline_medium_is_waited_for_once_per_run(tmp_path: Path) -> None:
    source = tmp_path / "src"
    source.mkdir()
    for i in range(12):  # several batches
        (source / f"f{i:02d}").write_bytes(random.Random(i).randbytes(MiB))
    pool = setup_catalog(tmp_path)
    assert durafs("backup", source, "--pool", "p").code == 0
    pool.rename(tmp_path / "unplugged")
    started = time.monotonic()
    run = durafs("restore", "--media-timeout", "1", f"default/latest{source}",
                 tmp_path / "out", "--json")
    took = time.monotonic() - started
    assert run.code == 1 and len(run.json()["problems"]) == 12
    assert took < 2 * restore.WORKERS + 1  # each worker waited once at most, not per batch
    assert run.json()["files"] == 0


def test_a_hard_link_takes_over_when_its_first_name_is_not_restored(tmp_path: Path) -> None:
    source = tmp_path / "src"
    source.mkdir()
    (source / "a").write_text("shared content\n")
    os.link(source / "a", source / "b")
    os.link(source / "a", source / "c")
    setup_catalog(tmp_path)
    assert durafs("backup", source, "--pool", "p").code == 0
    out = tmp_path / "out"
    out.mkdir()
    (out / "a").write_text("something else\n")
    run = durafs("restore", f"default/latest{source}", out, "--json")
    assert run.code == 1
    assert run.err.count("exists (use --overwrite)") == 1
    # b took the content over and c is a link to it: two names restored
    assert (run.json()["files"], run.json()["bytes"]) == (2, 2 * len("shared content\n"))
    assert (out / "a").read_text() == "something else\n"
    assert (out / "b").read_text() == "shared content\n"
    assert os.stat(out / "b").st_ino == os.stat(out / "c").st_ino
    assert os.stat(out / "b").st_nlink == 2


def test_a_hard_link_group_goes_on_to_the_next_link_until_one_takes_over(
    tmp_path: Path,
) -> None:
    source = tmp_path / "src"
    source.mkdir()
    (source / "a").write_text("shared content\n")
    for name in ("b", "c", "d"):
        os.link(source / "a", source / name)
    setup_catalog(tmp_path)
    assert durafs("backup", source, "--pool", "p").code == 0
    out = tmp_path / "out"
    out.mkdir()
    for name in ("a", "b"):
        (out / name).write_text(f"something else {name}\n")
    run = durafs("restore", f"default/latest{source}", out, "--json")
    assert run.code == 1
    assert (out / "c").read_text() == "shared content\n"
    assert os.stat(out / "c").st_ino == os.stat(out / "d").st_ino
    assert (out / "b").read_text() == "something else b\n"
    assert sorted(run.json()["problems"]) == [
        f"{out / name}: exists (use --overwrite)" for name in ("a", "b")]
    assert run.json()["files"] == 2  # c and its link d


@pytest.mark.parametrize("overwrite", [True, False], ids=["overwrite", "new-files"])
def test_hard_links_to_a_damaged_file_are_named_and_replace_nothing(
    tmp_path: Path, overwrite: bool
) -> None:
    source = tmp_path / "src"
    source.mkdir()
    (source / "a").write_bytes(random.Random(4).randbytes(300_000))
    os.link(source / "a", source / "b")
    pool = setup_catalog(tmp_path, encryption="none")
    assert durafs("backup", source, "--pool", "p").code == 0
    _flip_byte_of(pool, (source / "a").read_bytes()[100_000:100_064])
    out = tmp_path / "out"
    out.mkdir()
    if overwrite:
        for name in ("a", "b"):
            (out / name).write_text(f"old {name}\n")
    run = durafs("restore", f"default/latest{source}", out, "--json",
                 *(["--overwrite"] if overwrite else []))
    assert run.code == 1
    if overwrite:  # a damaged copy leaves the old one, under either name
        assert (out / "a").read_text() == "old a\n"
        assert (out / "b").read_text() == "old b\n"
    else:  # the damaged copy, with holes, under both names
        assert os.stat(out / "a").st_ino == os.stat(out / "b").st_ino
    assert sorted(os.listdir(out)) == ["a", "b"]
    # one problem per name, and neither name counted as restored
    assert sorted(p.split(": ")[0] for p in run.json()["problems"]) == [
        os.fspath(out / "a"), os.fspath(out / "b")]
    assert (run.json()["files"], run.json()["bytes"]) == (0, 0)


def test_a_restore_counts_every_name_as_the_backup_did(tmp_path: Path) -> None:
    source = tmp_path / "src"
    source.mkdir()
    (source / "a").write_text("hi\n")
    os.link(source / "a", source / "b")
    (source / "sub").mkdir()
    os.link(source / "a", source / "sub" / "c")
    (source / "alone").write_text("on its own\n")
    setup_catalog(tmp_path, encryption="none")
    backup = durafs("backup", source, "--pool", "p", "--json").json()["stats"]
    assert backup["files"] == 4
    listed = durafs("checkpoints", "--json").json()[0]
    run = durafs("restore", f"default/latest{source}", tmp_path / "out", "--json")
    assert run.code == 0, run.err
    assert (run.json()["files"], run.json()["bytes"]) == (listed["files"], listed["bytes"])
    assert (run.json()["files"], run.json()["bytes"]) == (4, 3 * len("hi\n") + len("on its own\n"))
    run = durafs("restore", f"default/latest{source}", tmp_path / "again")
    assert run.out == "restored 4 files, 20 B\n"


def test_bad_paths_and_targets_are_told_in_words(tmp_path: Path) -> None:
    source = _small_tree_backed_up(tmp_path)
    run = durafs("restore", f"default/latest{source}//sub", tmp_path / "out")
    assert run.code == 2
    assert f"{source}//sub: not a normalised path" in run.err
    (tmp_path / "file").write_text("x")
    run = durafs("restore", f"default/latest{source}", tmp_path / "file")
    assert run.code == 2
    assert f"{tmp_path / 'file'}: exists and is not a directory" in run.err
    # a trailing / names a directory, as in a shell (rsync refuses file/ too)
    for command in (("restore", f"default/latest{source}/hello.txt/", tmp_path / "out2"),
                    ("ls", f"default/latest{source}/hello.txt/")):
        run = durafs(*command)
        assert run.code == 2 and f"{source}/hello.txt/: not a directory" in run.err, run.err
    assert not (tmp_path / "out2").exists()
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere" / "deeper")
    run = durafs("restore", f"default/latest{source}", tmp_path / "dangling")
    assert run.code == 2
    assert f"{tmp_path / 'dangling'}: is a symlink to nothing" in run.err


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["INT", "TERM"])
@pytest.mark.parametrize("overwrite", [True, False], ids=["overwrite", "new-file"])
def test_an_interrupted_restore_leaves_no_half_written_file(
    tmp_path: Path, overwrite: bool, signum: signal.Signals
) -> None:
    source = tmp_path / "src"
    source.mkdir()
    _write(source / "big", random.Random(3).randbytes(96 * MiB))  # ~50 batches
    setup_catalog(tmp_path, encryption="none")
    assert durafs("backup", source, "--pool", "p").code == 0
    out = tmp_path / "out"
    out.mkdir()
    if overwrite:
        (out / "big").write_text("the old content\n")
    args = ["--overwrite"] if overwrite else []
    being_written = ".durafs-restore-*" if overwrite else "big"
    with durafs_process("restore", *args, f"default/latest{source}", out,
                        stderr=subprocess.PIPE) as proc:
        deadline = time.monotonic() + 30
        while not list(out.glob(being_written)):
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.005)
        proc.send_signal(signum)
        proc.wait(30)
    assert proc.returncode == 128 + signum
    if overwrite:  # the old file as it was, and no temporary beside it
        assert sorted(p.name for p in out.iterdir()) == ["big"]
        assert (out / "big").read_text() == "the old content\n"
    else:
        assert list(out.iterdir()) == []


@pytest.mark.parametrize("overwrite", [True, False], ids=["overwrite", "new-file"])
def test_a_file_the_full_target_cannot_hold_is_named_and_not_left_half_written(
    tmp_path: Path, overwrite: bool
) -> None:
    source = tmp_path / "src"
    source.mkdir()
    _write(source / "big", random.Random(6).randbytes(3 * MiB))
    setup_catalog(tmp_path, encryption="none")
    assert durafs("backup", source, "--pool", "p").code == 0
    with tmpfs(tmp_path / "full", size="1m") as out:
        if overwrite:
            (out / "big").write_text("the old content\n")
        run = durafs("restore", f"default/latest{source}", out, "--json",
                     *(["--overwrite"] if overwrite else []))
        assert run.code == 1
        full = f"{out / 'big'}: No space left on device"
        if overwrite:  # the old file stays, and the backup is not blamed
            assert run.json()["problems"] == [
                f"{full}; left as it was (the backup's copy could not be written)"]
            assert os.listdir(out) == ["big"]
            assert (out / "big").read_text() == "the old content\n"
        else:
            # what could not be written whole is gone, as after an interrupted restore:
            # no file of the right size with zeros where the data did not fit takes its
            # place (or the room a rerun needs), and no rerun takes it for the file
            assert run.json()["problems"] == [full]
            assert os.listdir(out) == []
        assert run.json()["files"] == 0


def _restore_as_nobody(*args: str | os.PathLike[str]) -> tuple[int, str]:
    """`durafs ARGS…` as nobody: (status, stderr)."""
    def restore() -> tuple[int, str]:
        run = durafs(*args)
        return run.code, run.err

    code, err = as_nobody(restore)
    return code, err


def test_an_unprivileged_restore_over_its_own_read_only_directories(tmp_path: Path) -> None:
    require_root("switching to another user (root may write in any directory)")
    with world_dir() as world:
        home, source, out = _read_only_tree_backed_up(world)
        subprocess.run(["chown", "-R", "65534:65534", home, world / "pool"], check=True)
        # nobody's earlier restore (made by root with nobody's files: the same tree, and
        # every module the restore needs is loaded for the child)
        assert durafs("--home", home, "restore", f"default/latest{source}", out).code == 0
        assert os.stat(out / "ro").st_uid == 65534
        (out / "ro" / "file").chmod(0o600)
        (out / "ro" / "file").write_text("changed since\n")
        # the directories have mode 0555: a user may not create in them as they are (root
        # may), so each is opened to its owner until its own mode is given back, as rsync
        # does
        run = _restore_as_nobody("--home", home, "restore", f"default/latest{source}", out,
                                 "--overwrite")
        assert run == (0, "")
        assert compare_trees(source, out) == []
        assert stat.S_IMODE(os.stat(out / "ro").st_mode) == 0o555


def _read_only_tree_backed_up(world: Path) -> tuple[Path, Path, Path]:
    """nobody's tree with read-only directories (src/ro 0555, src/ro/sub 0555) backed up
    by root into a catalog at world/home, pool `p` at world/pool: (home, source, the
    TARGET to restore to)."""
    home, source, out = world / "home", world / "src", world / "out"
    (source / "ro" / "sub").mkdir(parents=True)
    _write(source / "ro" / "file", b"in a read-only directory\n")
    _write(source / "ro" / "sub" / "deeper", b"deeper\n")
    for directory in (source / "ro" / "sub", source / "ro"):
        directory.chmod(0o555)
    subprocess.run(["chown", "-R", "65534:65534", source], check=True)
    assert durafs("--home", home, "init", "--encryption", "none").code == 0
    assert durafs("--home", home, "pool", "add", "p", "--kind", "dir", "--path",
                  world / "pool").code == 0
    assert durafs("--home", home, "backup", source, "--pool", "p").code == 0
    return home, source, out


def read_only_dirs_restored(world: Path) -> tuple[Path, Path, Path, dict[Path, int]]:
    """A backup of nobody's tree with read-only directories, restored by root into a
    TARGET nobody owns, whose medium is then offline: (home, source, TARGET, the modes
    of TARGET's directories). A restore by nobody over it opens each directory."""
    home, source, out = _read_only_tree_backed_up(world)
    assert durafs("--home", home, "restore", f"default/latest{source}", out).code == 0
    subprocess.run(["chown", "-R", "65534:65534", home, world / "pool", out], check=True)
    out.chmod(0o500)  # TARGET itself is opened too
    (world / "pool").rename(world / "unplugged")
    dirs = (out, out / "ro", out / "ro" / "sub")
    return home, source, out, {d: stat.S_IMODE(os.stat(d).st_mode) for d in dirs}


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["INT", "TERM"])
def test_an_interrupted_unprivileged_restore_gives_opened_directories_their_modes_back(
    tmp_path: Path, signum: signal.Signals
) -> None:
    """The read-only directories an unprivileged restore opens to their owner (to write
    in them) get their own modes back even when it is interrupted before it gives them
    the checkpoint's: here while it waits for an offline medium, after the walk opened
    every one."""
    require_root("switching to another user (root may write in any directory)")
    with world_dir() as world:
        home, source, out, modes = read_only_dirs_restored(world)
        with nobody_restoring(home, source, out) as proc:
            def opened() -> None:
                assert stat.S_IMODE(os.stat(out / "ro").st_mode) == 0o755

            err = interrupted_while_waiting(proc, signum, meanwhile=opened)
        assert proc.returncode == 128 + signum, err
        assert {d: stat.S_IMODE(os.stat(d).st_mode) for d in modes} == modes
        assert sorted(os.listdir(out / "ro")) == ["file", "sub"]  # no temporary left


def nobody_restoring(home: Path, source: Path, out: Path) -> subprocess.Popen[bytes]:
    """`durafs restore --overwrite default/latest/SOURCE TARGET` by nobody, started; its
    stderr is a pipe."""
    command = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--",
               sys.executable, "-m", "durafs.cli.main", "--home", os.fspath(home),
               "restore", "--overwrite", f"default/latest{source}", os.fspath(out)]
    return subprocess.Popen(command, stderr=subprocess.PIPE)


def interrupted_while_waiting(
    proc: subprocess.Popen[bytes], signum: int, meanwhile: Callable[[], None] = lambda: None
) -> str:
    """Send *signum* to the restore *proc* once it says it waits for medium P-001 (and
    *meanwhile* ran); its stderr, once it ended."""
    assert proc.stderr is not None
    line = proc.stderr.readline()
    assert b"waiting for medium P-001" in line, line
    meanwhile()
    proc.send_signal(signum)
    try:
        proc.wait(10)
    finally:
        proc.kill()
    return proc.stderr.read().decode()


class _Unexpected(Exception):
    """What the test's wait callback raises: a failure the restore does not expect."""


def test_an_unprivileged_restore_ended_by_an_error_gives_directories_their_modes_back(
    tmp_path: Path,
) -> None:
    require_root("switching to another user (root may write in any directory)")
    with world_dir() as world:
        home, source, out, modes = read_only_dirs_restored(world)

        def fail(message: str) -> None:
            raise _Unexpected(message)

        def run() -> str:
            catalog_home = Home(os.fspath(home))
            keys = catalog_home.keys(read=True)
            with catalog_home.catalog(readonly=True) as catalog:
                checkpoint, path = restore.parse_spec(catalog, f"default/latest{source}")
                access = VolumeAccess(catalog, keys, wait=None, on_wait=fail)
                try:
                    restore.Restore(catalog, access, overwrite=True).run(
                        checkpoint, path, os.fsencode(out))
                except _Unexpected as exc:
                    return str(exc)
                finally:
                    access.close()
            return "restored"

        assert "waiting for medium P-001" in as_nobody(run)
        assert {d: stat.S_IMODE(os.stat(d).st_mode) for d in modes} == modes


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["INT", "TERM"])
def test_a_restore_waiting_for_an_offline_medium_ends_at_a_signal(
    tmp_path: Path, signum: signal.Signals
) -> None:
    """Ctrl-C or SIGTERM while the workers wait for a medium (no --media-timeout: for
    ever) ends the restore at once, not when the medium comes back."""
    source = tmp_path / "src"
    source.mkdir()
    for name in ("a", "b", "c"):
        _write(source / name, random.Random(name).randbytes(64 * 1024))
    pool = setup_catalog(tmp_path)
    assert durafs("backup", source, "--pool", "p").code == 0
    pool.rename(tmp_path / "unplugged")
    out = tmp_path / "out"
    with durafs_process("restore", f"default/latest{source}", out,
                        stderr=subprocess.PIPE) as proc:
        err = interrupted_while_waiting(proc, signum)
    assert proc.returncode == 128 + signum, err
    assert list(out.iterdir()) == []  # nothing taken for a restored (or damaged) file
    (tmp_path / "unplugged").rename(pool)
    assert durafs("restore", f"default/latest{source}", out).code == 0
    assert compare_trees(source, out) == []


def test_a_ctrl_c_during_an_overwriting_restore_leaves_no_temporary_and_nothing_removed(
    tmp_path: Path,
) -> None:
    """Whenever the SIGINT comes, every name still holds the old copy or the new one, and
    no `.durafs-restore-*` temporary stays (a node is made beside the old one and renamed
    over it as one step)."""
    source = tmp_path / "src"
    source.mkdir()
    for i in range(3000):
        (source / f"l{i}").symlink_to(f"target{i}")
    setup_catalog(tmp_path, encryption="none")
    assert durafs("backup", source, "--pool", "p").code == 0
    out = tmp_path / "out"
    rng = random.Random(7)
    for _ in range(4):
        assert durafs("restore", f"default/latest{source}", out, "--overwrite").code == 0
        with durafs_process("restore", f"default/latest{source}", out, "--overwrite",
                            stderr=subprocess.DEVNULL) as proc:
            time.sleep(rng.uniform(0.3, 0.8))
            proc.send_signal(signal.SIGINT)
        assert proc.returncode in (0, 128 + signal.SIGINT)
        names = sorted(p.name for p in out.iterdir())
        assert names == sorted(f"l{i}" for i in range(3000))
        assert all(os.readlink(out / f"l{i}") == f"target{i}" for i in range(3000))
