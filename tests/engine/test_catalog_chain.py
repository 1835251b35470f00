"""Incremental catalog volumes: deltas on the previous checkpoint's catalog volume, full
ones when a delta would not stand alone, and `durafs recover` rebuilding every checkpoint
of a chain (docs/FORMAT.md §4)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from durafs.engine.backup import Backup, BackupOptions
from durafs.engine.catalogchain import ChainedTree
from durafs.engine.catalogspool import find_base
from durafs.engine.catalogvol import tree_entries
from durafs.engine.home import Home
from durafs.errors import FormatError
from durafs.format.catalog import (
    CATALOG_FORMAT,
    CHECKPOINT_MEMBER,
    TREE_MEMBER,
    CheckpointRecord,
    TreeEntry,
    read_catalog_lines,
    read_deleted,
)
from durafs.format.header import HEADER_MEMBER, VolumeHeader, dumps
from durafs.format.reader import VolumeReader
from durafs.format.writer import VolumeWriter
from durafs.index.catalog import open_catalog
from durafs.media.directory import DirectoryMedium
from tests.engine.cli import checkpoint_names, durafs, setup_catalog
from tests.support.lockedxattr import locked_xattrs
from tests.support.oddtree import compare_trees, fill, require_root, tmpfs


def catalog_volumes(pool: Path) -> list[tuple[str, CheckpointRecord, list[bytes], list[bytes]]]:
    """(file name, record, tree lines, deleted paths) of every catalog volume on a medium."""
    medium = DirectoryMedium(pool)
    found = []
    for stored in medium.list_volumes():
        if stored.kind != "catalog":
            continue
        with medium.open_volume(stored.name) as handle:
            reader = VolumeReader(handle.read_at, size=handle.size, name=stored.name)
            record, lines = read_catalog_lines(reader)
            found.append((stored.name, record, list(lines), read_deleted(reader)))
    return found


def depths(pool: Path) -> list[int]:
    return [record.depth for _, record, _, _ in catalog_volumes(pool)]


def backup(source: Path, pool: str = "p") -> None:
    run = durafs("backup", source, "--pool", pool)
    assert run.code == 0, run.err


def backup_in_chains_of(source: Path, max_deltas: int) -> None:
    """A backup of *source* to pool p through the engine (as `durafs backup` runs it),
    with at most *max_deltas* delta catalog volumes after a full one."""
    home = Home()
    with home.catalog() as catalog:
        options = BackupOptions([os.fsencode(source)], "p", max_deltas=max_deltas)
        result = Backup(catalog, home.keys(read=False), options).run()
    assert result.checkpoint is not None and result.problems == []


def snapshot(source: Path, dest: Path) -> None:
    """What the checkpoint just made must restore to (cp -a keeps hard links, times,
    modes and xattrs)."""
    subprocess.run(["cp", "-a", source, dest], check=True)


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def initial_tree(src: Path) -> None:
    write(src / "a" / "one.txt", "one\n" * 100)
    write(src / "a" / "two.txt", "two\n")
    write(src / "b" / "sub" / "deep.txt", "deep\n")
    write(src / "c" / "x", "x\n")
    write(src / "c" / "y", "y\n")
    write(src / "plain.txt", "plain\n")
    write(src / "dir2file" / "child", "child\n")
    write(src / "file2dir", "a file for now\n")
    write(src / "a" / "h2", "linked\n" * 50)  # a/h2 comes first in the walk: it leads
    os.link(src / "a" / "h2", src / "h1")
    (src / "sym").symlink_to("a/one.txt")


def mutations(src: Path) -> list[tuple[str, object]]:
    """Changes made between checkpoints, each (description, callable)."""

    def step1() -> None:
        write(src / "a" / "one.txt", "one, changed\n" * 100)
        (src / "a" / "two.txt").unlink()
        (src / "c").rename(src / "c2")  # a directory rename: new paths, old ones deleted
        os.chmod(src / "plain.txt", 0o600)  # metadata only
        os.link(src / "h1", src / "b" / "h3")  # nlink changes for the whole group
        shutil.rmtree(src / "dir2file")
        write(src / "dir2file", "now a file\n")
        (src / "file2dir").unlink()
        write(src / "file2dir" / "inner", "now a directory\n")
        (src / "sym").unlink()
        (src / "sym").symlink_to("plain.txt")

    def step3() -> None:
        write(src / "z" / ".keep", "")
        (src / "a" / "h2").rename(src / "z" / "h2")  # the group's leader moves behind b/h3
        write(src / "a" / "new.txt", "new\n")
        shutil.rmtree(src / "b" / "sub")

    def step4() -> None:
        (src / "h1").unlink()  # the group shrinks; b/h3 still leads
        write(src / "a" / "two.txt", "two is back\n")  # a path deleted earlier, re-added
        os.utime(src / "c2", ns=(1_000_000_000, 2_000_000_000))

    return [("change, delete, rename, chmod, link", step1), ("nothing", lambda: None),
            ("move the leader, delete a subtree", step3), ("unlink, re-add", step4)]


def test_chain_of_deltas_recovers_every_checkpoint(tmp_path: Path) -> None:
    src, snaps = tmp_path / "data" / "src", tmp_path / "snaps"
    initial_tree(src)
    snaps.mkdir()  # not beside src: that would change src's parent between checkpoints
    pool = setup_catalog(tmp_path, encryption="none")
    backup(src)
    snapshot(src, snaps / "0")
    for n, (_, change) in enumerate(mutations(src), 1):
        change()  # type: ignore[operator]
        backup(src)
        snapshot(src, snaps / str(n))
    volumes = catalog_volumes(pool)
    assert [r.depth for _, r, _, _ in volumes] == [0, 1, 2, 3, 4]
    names = checkpoint_names()
    for (_, record, _, _), (_, base, _, _) in zip(volumes[1:], volumes, strict=False):
        assert record.base is not None and record.base.checkpoint == base.name
    _, _, lines, deleted = volumes[2]
    assert lines == [] and deleted == [], "a checkpoint without changes writes no tree line"
    deleted1 = {os.fsdecode(p).removeprefix(os.fspath(src)) for p in volumes[1][3]}
    assert {"/a/two.txt", "/c", "/c/x", "/c/y", "/dir2file/child"} == deleted1

    shutil.rmtree(Home().path)
    run = durafs("recover", "--path", pool)
    assert run.code == 0, run.err
    assert checkpoint_names() == names
    for n, name in enumerate(names):
        out = tmp_path / f"out-{n}"
        run = durafs("restore", f"default/{name}{src}", out)
        assert run.code == 0, run.err
        assert compare_trees(snaps / str(n), out) == [], name
    assert durafs("verify", "--read-data").code == 0
    # the recovered index knows the chain: the next catalog volume is its next delta
    backup(src)
    assert depths(pool) == [0, 1, 2, 3, 4, 5]


def listings(name: str) -> dict[str, object]:
    """`durafs ls --json` of every directory of checkpoint *name*, by path."""
    found: dict[str, object] = {}
    todo = ["/"]
    while todo:
        path = todo.pop()
        run = durafs("ls", f"default/{name}{path}", "--json")
        assert run.code == 0, run.err
        found[path] = rows = run.json()
        todo += [path.rstrip("/") + "/" + r["name"] for r in rows if r["type"] == "d"]
    return found


def test_recover_rebuilds_the_listings_the_index_had(tmp_path: Path) -> None:
    # a directory's and a symlink's st_size are in the index like a file's: the catalog
    # volumes must carry them too, or recover changes what `ls` shows and the next backup
    # takes every directory and symlink for changed
    src = tmp_path / "data" / "src"
    write(src / "d" / "f", "f\n")
    (src / "d" / "long-enough-symlink-target").symlink_to("d/f" * 20)
    for n in range(40):  # a directory bigger than an empty one
        write(src / "big" / f"file-with-a-long-name-{n:03}", "")
    pool = setup_catalog(tmp_path, encryption="none")
    backup(src)  # a full catalog volume
    write(src / "big" / "one-more", "")
    (src / "d" / "f").unlink()
    backup(src)  # a delta
    names = checkpoint_names()
    before = {name: listings(name) for name in names}
    sizes = {r["name"]: r["size"] for r in before[names[0]][f"{src}/d"]}  # type: ignore[attr-defined]
    assert sizes["long-enough-symlink-target"] == 60
    shutil.rmtree(Home().path)
    run = durafs("recover", "--path", pool)
    assert run.code == 0, run.err
    assert {name: listings(name) for name in names} == before
    backup(src)
    _, _, lines, _ = catalog_volumes(pool)[-1]
    inside = [line for line in lines if os.fsencode(src) in line]
    assert inside == [], "after recover, an unchanged tree is unchanged"


def test_recover_keeps_a_file_linked_from_outside_the_source_linked(tmp_path: Path) -> None:
    # nlink 2 with the other name outside the source: a hard-link group of one member,
    # which the index records as linked to itself, with no "h" line in the catalog volume
    src, outside = tmp_path / "data" / "src", tmp_path / "data" / "outside"
    write(outside, "shared\n")
    src.mkdir()
    os.link(outside, src / "solo")
    pool = setup_catalog(tmp_path, encryption="none")
    backup(src)

    def linked() -> list[tuple[int, int, bool]]:
        with open_catalog(Home().index_path) as catalog:
            rows = catalog.db.query(
                "SELECT v.first_seq, v.last_seq, v.hardlink_id = v.id FROM versions v"
                " JOIN paths p ON p.id = v.path_id WHERE p.name = ?", (b"solo",))
        return [(first, last, bool(self_linked)) for first, last, self_linked in rows]

    assert linked() == [(1, None, True)]
    shutil.rmtree(Home().path)
    run = durafs("recover", "--path", pool)
    assert run.code == 0, run.err
    assert linked() == [(1, None, True)]
    backup(src)
    assert linked() == [(1, None, True)], "after recover, the unchanged file stays unchanged"


def test_a_full_tree_from_the_index_keeps_every_size(tmp_path: Path) -> None:
    src = tmp_path / "src"
    write(src / "d" / "f", "f\n")
    (src / "link").symlink_to("d/f")
    setup_catalog(tmp_path, encryption="none")
    backup(src)
    with open_catalog(Home().index_path) as catalog:
        plan = catalog.plan("default")
        assert plan is not None
        written = {e.path: e.size for e in tree_entries(catalog, plan.id, 1)}
        indexed = {path: v.size for path, v in catalog.walk(plan.id, 1, plan.root_id)}
    assert written == indexed
    assert written[os.fsencode(src / "link")] == 3


def test_a_full_catalog_volume_every_max_deltas(tmp_path: Path) -> None:
    src = tmp_path / "src"
    write(src / "f", "0")
    pool = setup_catalog(tmp_path, encryption="none")
    for i in range(6):
        write(src / "f", str(i))
        backup_in_chains_of(src, max_deltas=2)
    assert depths(pool) == [0, 1, 2, 0, 1, 2]


def test_a_delta_never_spans_pools(tmp_path: Path) -> None:
    src = tmp_path / "src"
    write(src / "f", "x")
    pool = setup_catalog(tmp_path, encryption="none")
    other = tmp_path / "other"
    assert durafs("pool", "add", "q", "--kind", "dir", "--path", other).code == 0
    backup(src)
    backup(src, "q")
    backup(src)  # the previous checkpoint went to q: p's tree may have changed since
    backup(src)
    assert depths(pool) == [0, 0, 1]
    assert depths(other) == [0]


def _medium_one_full(small: Path, *, known: bool) -> None:
    """Medium one's small file system is filled by something else; *known*: the catalog
    says so already (as a run that looked at it since would have written)."""
    fill(small / "filler")
    if known:
        with open_catalog(Home().index_path) as catalog:
            catalog.update_medium(catalog.media()[0].id, state="full")


def test_base_on_another_medium_gives_a_full_volume(tmp_path: Path) -> None:
    src = tmp_path / "src"
    write(src / "f", "x")
    with tmpfs(tmp_path / "small", size="16m") as small:
        pool = setup_catalog(small, encryption="none")
        second = tmp_path / "second"
        assert durafs("media", "add", "p", "--path", second).code == 0
        backup(src)
        backup(src)
        _medium_one_full(small, known=True)  # known before the run: a full spool
        write(src / "f", "y")
        backup(src)
        backup(src)
        assert depths(pool) == [0, 1]
        assert depths(second) == [0, 1]


def test_medium_change_during_the_run_falls_back_to_the_full_tree(tmp_path: Path) -> None:
    src = tmp_path / "src"
    write(src / "a", "a")
    write(src / "d" / "b", "b")
    with tmpfs(tmp_path / "small", size="16m") as small:
        pool = setup_catalog(small, encryption="none")
        second = tmp_path / "second"
        assert durafs("media", "add", "p", "--path", second).code == 0
        backup(src)
        write(src / "a", "changed")
        home = Home()
        with home.catalog() as catalog:
            run = Backup(catalog, home.keys(read=False),
                         BackupOptions([os.fsencode(src)], "p"))
            _medium_one_full(small, known=False)  # not known full, so planned as a delta...
            assert find_base(catalog, "default", "p") is not None
            # ... but it lands on the second medium
            assert run.run().checkpoint is not None
        (_, record, lines, _), = catalog_volumes(second)
        assert record.base is None and len(lines) == len(src.parts) + 3  # and a, d, d/b
        out = tmp_path / "out"
        assert durafs("restore", f"default/latest{src}", out).code == 0
        assert compare_trees(src, out) == []
        assert depths(pool) == [0]


def test_a_missing_base_is_named_and_the_rest_recovered(tmp_path: Path) -> None:
    src = tmp_path / "src"
    pool = setup_catalog(tmp_path, encryption="none")
    for i in range(5):
        write(src / f"f{i}", str(i))
        backup_in_chains_of(src, max_deltas=2)
    names = checkpoint_names()
    volumes = catalog_volumes(pool)
    assert [r.depth for _, r, _, _ in volumes] == [0, 1, 2, 0, 1]
    lost, orphan = volumes[1][0], volumes[2][0]
    (pool / "volumes" / lost).unlink()
    shutil.rmtree(Home().path)
    run = durafs("recover", "--path", pool)
    assert run.code == 1
    assert orphan in run.err and lost.split("-", 2)[2].split(".")[0] in run.err
    assert checkpoint_names() == [names[0], names[3], names[4]]
    out = tmp_path / "out"
    assert durafs("restore", f"default/{names[4]}{src}", out).code == 0
    assert sorted(p.name for p in out.iterdir()) == [f"f{i}" for i in range(5)]


def test_verify_names_a_delta_whose_base_the_index_lost(tmp_path: Path) -> None:
    src = tmp_path / "src"
    write(src / "f", "x")
    pool = setup_catalog(tmp_path, encryption="none")
    backup(src)
    backup(src)
    (base_name, _, _, _), (delta_name, _, _, _) = catalog_volumes(pool)
    with open_catalog(Home().index_path) as catalog:
        catalog.db.execute("DELETE FROM volumes WHERE name = ?", (base_name,))
    run = durafs("verify", "--json")
    assert run.code == 1
    problems = run.json()["structure"]
    assert any(delta_name in p and "base catalog volume" in p for p in problems), problems


def _rewrite_with_record_version(pool: Path, version: int) -> str:
    """Write the pool's one catalog volume again, the same in all but its checkpoint
    record's format version (as a later durafs would write it, docs/FORMAT.md §4, §8);
    returns the new volume's name. The volume is whole: manifest and seal are made for
    the new bytes by the real writer."""
    medium = DirectoryMedium(pool)
    (stored,) = [v for v in medium.list_volumes() if v.kind == "catalog"]
    with medium.open_volume(stored.name) as handle:
        reader = VolumeReader(handle.read_at, size=handle.size, name=stored.name)
        members = {m.name: reader.read_member(m) for m in reader.read_manifest().members}
    header = VolumeHeader.from_json(members[HEADER_MEMBER], stored.name)
    record = {**json.loads(members[CHECKPOINT_MEMBER]), "format": version}
    (pool / "volumes" / stored.name).unlink()
    sink = medium.create_volume("catalog", header.volume_id, False)
    writer = VolumeWriter(sink, header)
    writer.add_member(CHECKPOINT_MEMBER, dumps(record))
    writer.add_member(TREE_MEMBER, members[TREE_MEMBER])
    writer.finish()
    return sink.commit().name


def test_recover_refuses_an_unknown_catalog_version(tmp_path: Path) -> None:
    src = tmp_path / "src"
    write(src / "f", "x")
    pool = setup_catalog(tmp_path, encryption="none")
    backup(src)
    unknown = CATALOG_FORMAT + 1  # a record only a later durafs can read
    name = _rewrite_with_record_version(pool, unknown)
    shutil.rmtree(Home().path)
    run = durafs("recover", "--path", pool)
    assert run.code == 1
    assert name in run.err and "catalog" in run.err
    assert f"format version {unknown} is not supported" in run.err


def test_chained_tree_applies_deltas_in_place_and_puts_links_last() -> None:
    def line(path: str, kind: str = "f", **extra: object) -> bytes:
        record = TreeEntry(os.fsencode(path), kind).to_record()
        return dumps({**record, **extra})

    tree = ChainedTree()
    try:
        tree.apply("v0", [line("/", "d"), line("/a", "d"), line("/a/x"), line("/b", "d"),
                          line("/b/y", "h", link="/a/x")], full=True)
        # /a/x moves to /c/x (after /b/y in the tree) and /b/y links to it in place
        tree.apply("v1", [line("/a", "d", mode=0o700), line("/b/y", "h", link="/c/x"),
                          line("/c", "d"), line("/c/x")], [b"/a/x"], full=False)
        entries = [(os.fsdecode(e.path), e.type, e.mode) for e in tree.entries()]
        assert entries == [("/", "d", 0), ("/a", "d", 0o700), ("/b", "d", 0), ("/c", "d", 0),
                           ("/c/x", "f", 0), ("/b/y", "h", 0)]
        assert tree.links() == {b"/c/x"} and tree.at == "v1"
        with pytest.raises(FormatError, match="v2"):
            tree.apply("v2", [line("/d", "d"), b"{not json"], full=False)
        assert tree.at == "v1" and len(list(tree.entries())) == 6  # rolled back
    finally:
        tree.close()


def test_xattrs_not_read_are_read_again_after_the_catalog_is_recovered(
    tmp_path: Path,
) -> None:
    """The paths whose xattrs a backup could not read go to the media with its checkpoint
    (here in a delta), so after `recover` the next backup still reads them again rather
    than keeping the incomplete set for ever."""
    require_root("the first backups run as an unprivileged user, the last as root")
    with locked_xattrs() as world:
        source, locked, pool = world.source, world.locked, world.pool
        # a complete first checkpoint, so the next one's catalog volume is a delta of it
        result = world.run("backup", os.fspath(source), "--pool", "p")
        assert result.returncode == 0, result.stderr
        world.lock()
        result = world.run("backup", os.fspath(source), "--pool", "p")
        assert result.returncode == 1
        assert f"{locked}: extended attributes not read" in result.stderr
        records = [record for _, record, _, _ in catalog_volumes(Path(pool))]
        assert [r.xattrs_unread for r in records] == [[], [os.fsencode(locked)]]
        assert records[-1].base is not None  # the list goes into deltas too
        shutil.rmtree(world.home / "cat")
        result = world.run("recover", "--path", pool)
        assert result.returncode == 0, result.stderr
        # Nothing about the directory changed since, but root can read what nobody could
        result = world.run("backup", os.fspath(source), "--pool", "p", root=True)
        assert result.returncode == 0, result.stderr
        out = world.home / "out"
        result = world.run("restore", f"default/latest{source}", os.fspath(out), root=True)
        assert result.returncode == 0, result.stderr
        assert os.getxattr(out / "locked", "user.origin") == b"kept"
