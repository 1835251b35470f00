"""Backup → restore reproduces every oddity of a source tree, field by field."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.engine.cli import checkpoint_names, durafs, setup_catalog
from tests.support.oddtree import compare_trees, make_odd_tree, make_small_tree, require_root


def test_odd_tree_round_trip(tmp_path: Path) -> None:
    require_root("the odd tree has foreign owners, devices and ACLs")
    source = tmp_path / "src"
    source.mkdir()
    make_odd_tree(source)
    setup_catalog(tmp_path)
    run = durafs("backup", source, "--pool", "p")
    assert run.code == 0, run.err
    out = tmp_path / "out"
    run = durafs("restore", f"default/latest{source}", out)
    assert run.code == 0, run.err
    assert compare_trees(source, out) == []


def test_later_checkpoints_keep_and_catch_metadata(tmp_path: Path) -> None:
    """The scan takes xattrs, ACLs and symlink targets of objects whose inode and ctime
    did not change from the previous checkpoint: a no-change checkpoint must still have
    all of them, and changes that only touch metadata must be seen."""
    require_root("the odd tree has foreign owners, devices and ACLs")
    source = tmp_path / "src"
    source.mkdir()
    make_odd_tree(source)
    setup_catalog(tmp_path)
    for _ in range(2):
        assert durafs("backup", source, "--pool", "p").code == 0
    second = tmp_path / "second"
    assert durafs("restore", f"default/latest{source}", second).code == 0
    assert compare_trees(source, second) == []
    os.setxattr(source / "xattrs" / "small", b"user.text", b"changed")
    os.removexattr(source / "xattrs", b"user.on-a-dir")
    subprocess.run(["setfacl", "-m", "u:4242:rw", source / "acl" / "file"], check=True)
    os.chmod(source / "hard" / "three", 0o604)
    os.unlink(source / "links" / "dangling")
    os.symlink(b"another/target", source / "links" / "dangling")
    assert durafs("backup", source, "--pool", "p").code == 0
    third = tmp_path / "third"
    assert durafs("restore", f"default/latest{source}", third).code == 0
    assert os.getxattr(third / "xattrs" / "small", b"user.text") == b"changed"
    assert compare_trees(source, third) == []


def test_restore_whole_checkpoint_recreates_absolute_paths(tmp_path: Path) -> None:
    source = tmp_path / "src"
    source.mkdir()
    make_small_tree(source)
    setup_catalog(tmp_path)
    assert durafs("backup", source, "--pool", "p").code == 0
    out = tmp_path / "out"
    assert durafs("restore", "default/latest", out).code == 0
    assert compare_trees(source, Path(os.fspath(out) + os.fspath(source))) == []


def test_restore_never_overwrites_without_flag(tmp_path: Path) -> None:
    source = tmp_path / "src"
    source.mkdir()
    (source / "f").write_text("new")
    setup_catalog(tmp_path)
    assert durafs("backup", source, "--pool", "p").code == 0
    out = tmp_path / "out"
    out.mkdir()
    (out / "f").write_text("precious")
    run = durafs("restore", f"default/latest{source}", out)
    assert run.code == 1 and "use --overwrite" in run.err
    assert (out / "f").read_text() == "precious"
    assert durafs("restore", f"default/latest{source}", out, "--overwrite").code == 0
    assert (out / "f").read_text() == "new"


def test_unchanged_files_are_not_read_again_and_add_no_rows(tmp_path: Path) -> None:
    source = tmp_path / "src"
    source.mkdir()
    for i in range(300):
        (source / f"f{i}").write_text(f"file {i}\n" * 50)
    setup_catalog(tmp_path)
    first = durafs("backup", source, "--pool", "p", "--json").json()["stats"]
    second = durafs("backup", source, "--pool", "p", "--json").json()["stats"]
    assert first["changed_files"] == 300
    assert second.get("changed_files", 0) == 0 and second["unchanged_files"] == 300
    assert second.get("bytes_read", 0) == 0
    (source / "f7").write_text("changed")
    third = durafs("backup", source, "--pool", "p", "--json").json()["stats"]
    assert third["changed_files"] == 1
    names = checkpoint_names()
    assert len(names) == 3 and names == sorted(names)
    out = tmp_path / "out"
    assert durafs("restore", f"default/{names[1]}{source}", out).code == 0
    assert (out / "f7").read_text() == "file 7\n" * 50


def test_exclude_and_ls_and_find(tmp_path: Path) -> None:
    source = tmp_path / "src"
    (source / "keep").mkdir(parents=True)
    (source / "cache").mkdir()
    (source / "keep" / "photo.jpg").write_bytes(b"jpg")
    (source / "keep" / "x.tmp").write_bytes(b"tmp")
    (source / "cache" / "big").write_bytes(b"c")
    setup_catalog(tmp_path)
    run = durafs("backup", source, "--pool", "p", "--exclude", "*.tmp", "--exclude", "/cache/")
    assert run.code == 0, run.err
    listing = durafs("ls", f"default/latest{source}/keep", "--json").json()
    assert [e["name"] for e in listing] == ["photo.jpg"]
    hits = durafs("find", "*.jpg", "--json").json()
    assert [h["path"] for h in hits] == [f"{source}/keep/photo.jpg"]
    assert durafs("find", "x.tmp", "--json").json() == []


def _deep_walk(top: Path, levels: int, create: bool) -> bytes:
    """Walk (or build) *levels* directories of 200-byte names below *top* with *at calls
    (no absolute path that long can be used) and return the leaf file's content."""
    fd = os.open(top, os.O_RDONLY)
    try:
        for _ in range(levels):
            if create:
                os.mkdir(b"d" * 200, dir_fd=fd)
            new = os.open(b"d" * 200, os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = new
        if create:
            leaf = os.open(b"leaf.txt", os.O_WRONLY | os.O_CREAT, 0o640, dir_fd=fd)
            os.write(leaf, b"deep down")
            os.close(leaf)
        leaf = os.open(b"leaf.txt", os.O_RDONLY, dir_fd=fd)
        try:
            assert os.fstat(leaf).st_mode & 0o777 == 0o640
            return os.read(leaf, 100)
        finally:
            os.close(leaf)
    finally:
        os.close(fd)


def test_paths_longer_than_path_max_round_trip(tmp_path: Path) -> None:
    source = tmp_path / "src"
    source.mkdir()
    assert _deep_walk(source, 25, create=True) == b"deep down"  # 5 KiB of path
    setup_catalog(tmp_path)
    run = durafs("backup", source, "--pool", "p")
    assert run.code == 0, run.err
    out = tmp_path / "out"
    run = durafs("restore", f"default/latest{source}", out)
    assert run.code == 0, run.err
    assert _deep_walk(out, 25, create=False) == b"deep down"
    subprocess.run(["rm", "-rf", source, out], check=True)  # pytest's cleanup recurses


def test_follow_symlinks_stores_what_links_point_to(tmp_path: Path) -> None:
    source, elsewhere = tmp_path / "src", tmp_path / "elsewhere"
    source.mkdir()
    elsewhere.mkdir()
    (elsewhere / "real.txt").write_text("the target")
    (source / "link.txt").symlink_to(elsewhere / "real.txt")
    setup_catalog(tmp_path)
    run = durafs("backup", source, "--pool", "p", "--follow-symlinks")
    assert run.code == 0, run.err
    out = tmp_path / "out"
    assert durafs("restore", f"default/latest{source}", out).code == 0
    assert not (out / "link.txt").is_symlink()
    assert (out / "link.txt").read_text() == "the target"


def test_edit_in_a_large_file_stores_only_nearby_chunks(tmp_path: Path) -> None:
    source = tmp_path / "src"
    source.mkdir()
    big = source / "big.bin"
    big.write_bytes(os.urandom(24 << 20))
    setup_catalog(tmp_path)
    assert durafs("backup", source, "--pool", "p").code == 0
    with open(big, "r+b") as f:
        f.seek(12 << 20)
        f.write(b"edited in the middle")
    stats = durafs("backup", source, "--pool", "p", "--json").json()["stats"]
    assert stats["changed_files"] == 1
    assert 1 <= stats["chunks_new"] <= 2 and stats["bytes_new"] <= 8 << 20
    out = tmp_path / "out"
    assert durafs("restore", f"default/latest{source}", out).code == 0
    assert (out / "big.bin").read_bytes() == big.read_bytes()


def test_large_files_among_many_small_ones_round_trip(tmp_path: Path) -> None:
    """Large files stream through a worker while the walk goes on (one at a time, the
    next ones waiting their turn), small ones go in batches: whatever the interleaving,
    every file comes back whole and each chunk is stored once."""
    source = tmp_path / "src"
    for d in range(3):
        sub = source / f"d{d}"
        sub.mkdir(parents=True)
        for i in range(150):
            (sub / f"small{i:03d}").write_bytes(os.urandom(i * 37))
        (sub / "large-a").write_bytes(os.urandom(12 << 20))
        (sub / "large-b").write_bytes(os.urandom(9 << 20) + bytes(1 << 20))
        (sub / "zz-after").write_text(f"after the large files of d{d}\n")
    (source / "d1" / "large-copy").write_bytes((source / "d0" / "large-a").read_bytes())
    setup_catalog(tmp_path)
    stats = durafs("backup", source, "--pool", "p", "--json").json()["stats"]
    assert stats["changed_files"] == 3 * 153 + 1
    assert stats["bytes_new"] == stats["bytes_read"] - (12 << 20)  # the copy is deduplicated
    out = tmp_path / "out"
    assert durafs("restore", f"default/latest{source}", out).code == 0
    assert compare_trees(source, out) == []


def test_later_backup_records_unchanged_entries_while_changed_files_are_read(
    tmp_path: Path,
) -> None:
    """In a later backup unchanged entries go to the tree at once, while the few changed
    files (large ones streaming in turn, small ones batched) are still being read: the
    new checkpoint has both, and the earlier one is untouched."""
    source = tmp_path / "src"
    for d in range(3):
        sub = source / f"d{d}"
        (sub / "inner").mkdir(parents=True)
        for i in range(40):
            (sub / f"small{i:02d}").write_bytes(os.urandom(100 + i))
            (sub / "inner" / f"deep{i:02d}").write_bytes(os.urandom(50 + i))
        (sub / "large-a").write_bytes(os.urandom(9 << 20))
        (sub / "large-b").write_bytes(os.urandom(10 << 20))
        os.symlink(b"large-a", sub / "link")
    setup_catalog(tmp_path)
    assert durafs("backup", source, "--pool", "p").code == 0
    first = tmp_path / "first"
    subprocess.run(["cp", "-a", source, first], check=True)
    for d in range(3):  # every large file re-read; one small file per directory changed
        sub = source / f"d{d}"
        for name in ("large-a", "large-b"):
            os.utime(sub / name, ns=(1, 10**18 + d))
        (sub / "small05").write_bytes(b"changed")
        (sub / "inner" / "deep39").write_bytes(b"changed too")
    (source / "d1" / "inner" / "new").write_text("new")
    os.chmod(source / "d2" / "inner", 0o750)
    run = durafs("backup", source, "--pool", "p", "--json")
    assert run.code == 0, run.err
    stats = run.json()["stats"]
    assert stats["changed_files"] == 3 * 4 + 1
    assert stats["unchanged_files"] == 3 * 78
    assert stats["bytes_new"] < 1 << 20  # the large files' chunks were all known
    names = checkpoint_names()
    for name, expected in ((names[0], first), (names[1], source)):
        out = tmp_path / f"out-{name}"
        assert durafs("restore", f"default/{name}{source}", out).code == 0
        assert compare_trees(expected, out) == []


def test_a_first_backup_stores_repeated_content_once(tmp_path: Path) -> None:
    """Into an empty pool the workers ask the index nothing (engine/known.py): dedup
    within the run is the walking thread's alone, for small files and large ones."""
    source = tmp_path / "src"
    source.mkdir()
    small, large = os.urandom(3000), os.urandom(6 << 20)
    for n in range(5):
        (source / f"small-{n}").write_bytes(small)
        (source / f"large-{n}.bin").write_bytes(large)
    setup_catalog(tmp_path)
    stats = durafs("backup", source, "--pool", "p", "--json").json()["stats"]
    large_chunks = stats["chunks_new"] - 1
    assert 2 <= large_chunks <= 24  # 6 MiB cut into chunks of 256 KiB to 4 MiB
    assert stats["bytes_new"] == len(small) + len(large)
    out = tmp_path / "out"
    assert durafs("restore", f"default/latest{source}", out).code == 0
    assert all((out / f"large-{n}.bin").read_bytes() == large for n in range(5))
