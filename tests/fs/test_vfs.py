# SPDX-License-Identifier: GPL-3.0-or-later
"""The tree model without a mount: layout, inodes, attributes, listings, xattrs."""

from __future__ import annotations

import os
import stat

import blake3
import pytest

from durafs.fs.errors import (
    IsADirectory,
    NoSuchAttribute,
    NoSuchEntry,
    NotADirectory,
    NotASymlink,
    NotSupported,
    ReadOnly,
)
from durafs.fs.inodes import ROOT_INO, SEQ_BITS, decode, latest_ino, plan_ino
from durafs.fs.vfs import (
    FACTS,
    LATEST,
    XATTR_BLAKE3,
    XATTR_CHECKPOINT,
    XATTR_LOCATION,
    XATTR_MEDIA,
    Attr,
    DirStream,
    Tree,
)
from durafs.index.catalog import open_catalog

from .catalogs import LINK_NAMES, MANY, SPARSE_DATA, SPARSE_SIZE
from .conftest import Backed


def resolve(tree: Tree, path: bytes) -> Attr:
    """Look up a path below the mount's root, one component at a time."""
    attr = tree.getattr(ROOT_INO)
    for name in path.split(b"/"):
        attr = tree.lookup(attr.ino, name)
    return attr


def in_source(backed: Backed, checkpoint: str, rel: str) -> bytes:
    return b"default/" + checkpoint.encode() + b"/" + backed.cat.source_in_tree + (
        b"/" + rel.encode() if rel else b"")


def names(tree: Tree, ino: int) -> list[bytes]:
    return [name for name, _ in tree.entries(ino)]


def test_layout_plans_checkpoints_latest(tree: Tree, backed: Backed) -> None:
    assert names(tree, ROOT_INO) == [b"default"]
    plan = tree.lookup(ROOT_INO, b"default")
    assert stat.S_ISDIR(plan.mode) and not plan.stable
    assert names(tree, plan.ino) == sorted(
        [backed.first.encode(), backed.second.encode(), LATEST])
    latest = tree.lookup(plan.ino, LATEST)
    assert stat.S_ISLNK(latest.mode)
    assert tree.readlink(latest.ino) == backed.second.encode()
    assert latest.size == len(backed.second)
    # the checkpoint directory is the source's "/", and the source path is below it
    top = tree.lookup(plan.ino, backed.second.encode())
    assert top.stable and stat.S_ISDIR(top.mode)
    src = resolve(tree, in_source(backed, backed.second, ""))
    assert stat.S_ISDIR(src.mode)
    with pytest.raises(NoSuchEntry):
        tree.lookup(plan.ino, b"no-such-checkpoint")
    with pytest.raises(NoSuchEntry):
        tree.lookup(ROOT_INO, b"no-such-plan")


def test_reserved_inodes_decode() -> None:
    assert decode(ROOT_INO).kind == "root"
    assert decode(plan_ino(3)) .kind == "plan" and decode(plan_ino(3)).plan_id == 3
    assert decode(latest_ino(3)).kind == "latest" and decode(latest_ino(3)).plan_id == 3
    node = decode((12345 << SEQ_BITS) | 7)
    assert (node.kind, node.vid, node.seq) == ("tree", 12345, 7)
    assert plan_ino(1) < latest_ino(1) < plan_ino(2) < (1 << SEQ_BITS)


def test_attributes_are_the_sources(tree: Tree, backed: Backed) -> None:
    src = backed.cat.source
    for rel in ("small", "big", "private", "link", "fifo", "many", "hard/a"):
        attr = resolve(tree, in_source(backed, backed.second, rel))
        st = os.lstat(src / rel)
        assert attr.mode == st.st_mode, rel
        assert (attr.uid, attr.gid) == (st.st_uid, st.st_gid), rel
        assert attr.mtime_ns == st.st_mtime_ns, rel
        if not stat.S_ISDIR(st.st_mode):
            assert attr.size == st.st_size, rel
    link = resolve(tree, in_source(backed, backed.second, "link"))
    assert tree.readlink(link.ino) == b"small"
    with pytest.raises(NotASymlink):
        tree.readlink(resolve(tree, in_source(backed, backed.second, "small")).ino)


def test_inodes_are_stable_and_arithmetic(tree: Tree, backed: Backed) -> None:
    path = in_source(backed, backed.second, "many/entry-3")
    first = resolve(tree, path)
    assert resolve(tree, path) == first
    assert tree.getattr(first.ino) == first
    # a new model over a new connection computes the same numbers: nothing is remembered
    catalog = open_catalog(backed.cat.index, readonly=True)
    try:
        assert resolve(Tree(catalog), path).ino == first.ino
    finally:
        catalog.close()
    # an unchanged file has one version, but a different inode in each checkpoint
    older = resolve(tree, in_source(backed, backed.first, "many/entry-3"))
    assert older.ino >> SEQ_BITS == first.ino >> SEQ_BITS
    assert older.ino != first.ino


def test_hard_links_share_one_inode_with_the_group_nlink(tree: Tree, backed: Backed) -> None:
    for checkpoint in (backed.first, backed.second):
        attrs = [resolve(tree, in_source(backed, checkpoint, n.decode())) for n in LINK_NAMES]
        assert len({a.ino for a in attrs}) == 1
        assert all(a.nlink == len(LINK_NAMES) for a in attrs)
        assert tree.getattr(attrs[0].ino).nlink == len(LINK_NAMES)
    plain = resolve(tree, in_source(backed, backed.second, "small"))
    assert plain.nlink == 1


def test_sparse_file_blocks_count_only_data(tree: Tree, backed: Backed) -> None:
    attr = resolve(tree, in_source(backed, backed.second, "sparse"))
    assert attr.size == SPARSE_SIZE
    # stored data regions are whole file-system blocks around the data (SEEK_DATA)
    data = sum(len(d) for _, d in SPARSE_DATA)
    assert data <= attr.blocks * 512 <= data + 2 * 4096 * len(SPARSE_DATA)
    assert attr.blocks * 512 == sum(p.size for p in tree.read_plan(attr.ino).pieces)
    big = resolve(tree, in_source(backed, backed.second, "big"))
    assert big.blocks == -(-big.size // 512)


def test_listing_pages_and_positions(tree: Tree, backed: Backed) -> None:
    many = resolve(tree, in_source(backed, backed.second, "many"))
    expected = [b".", b"..", *sorted(f"entry-{i}".encode() for i in range(MANY))]
    stream = DirStream(tree, many.ino, page=2)  # several pages, one query each
    got = list(stream.entries_from(0))
    assert [name for _, name, _ in got] == expected
    assert [pos for pos, _, _ in got] == list(range(1, MANY + 3))
    # continuing from a cookie, and going back (seekdir), give the same entries
    assert [n for _, n, _ in stream.entries_from(6)] == expected[6:]
    assert [n for _, n, _ in stream.entries_from(1)] == expected[1:]
    assert [n for _, n, _ in stream.entries_from(3)] == expected[3:]
    assert list(stream.entries_from(MANY + 2)) == []
    # attributes come with every entry (readdirplus), equal to a lookup's; the dots
    # carry the directory's own
    for _, name, attr in got:
        assert attr == (tree.getattr(many.ino) if name in (b".", b"..")
                        else tree.lookup(many.ino, name))


def test_checkpoints_differ_where_the_source_changed(tree: Tree, backed: Backed) -> None:
    first_src = resolve(tree, in_source(backed, backed.first, ""))
    second_src = resolve(tree, in_source(backed, backed.second, ""))
    assert b"added" not in names(tree, first_src.ino)
    assert b"added" in names(tree, second_src.ino)
    old = resolve(tree, in_source(backed, backed.first, "small"))
    new = resolve(tree, in_source(backed, backed.second, "small"))
    assert old.ino != new.ino and (old.size, new.size) == (6, 8)


def test_lookup_errors(tree: Tree, backed: Backed) -> None:
    small = resolve(tree, in_source(backed, backed.second, "small"))
    with pytest.raises(NotADirectory):
        tree.lookup(small.ino, b"x")
    with pytest.raises(NotADirectory):
        tree.entries(small.ino)
    src = resolve(tree, in_source(backed, backed.second, ""))
    with pytest.raises(NoSuchEntry):
        tree.lookup(src.ino, b"missing")
    with pytest.raises(IsADirectory):
        tree.read_plan(src.ino)
    with pytest.raises(NoSuchEntry):
        tree.getattr((10**9 << SEQ_BITS) | 1)  # no such version


def test_xattrs_listed_are_the_sources_own(tree: Tree, backed: Backed) -> None:
    small = resolve(tree, in_source(backed, backed.second, "small"))
    listed = tree.listxattr(small.ino)
    assert listed == [b"user.colour", b"user.empty"]
    assert not FACTS & set(listed)
    assert tree.getxattr(small.ino, b"user.colour") == b"blue"
    assert tree.getxattr(small.ino, b"user.empty") == b""
    with pytest.raises(NoSuchAttribute):
        tree.getxattr(small.ino, b"user.missing")
    assert tree.listxattr(ROOT_INO) == []


def test_find_xattr_answers_none_for_what_is_not_there(tree: Tree, backed: Backed) -> None:
    small = resolve(tree, in_source(backed, backed.second, "small"))
    assert tree.find_xattr(small.ino, b"user.colour") == b"blue"
    assert tree.find_xattr(small.ino, b"system.posix_acl_access") is None
    empty = resolve(tree, in_source(backed, backed.second, "empty"))  # no xattrs at all
    assert tree.find_xattr(empty.ino, b"system.posix_acl_access") is None
    assert tree.find_xattr(ROOT_INO, b"user.colour") is None
    with pytest.raises(NotSupported):  # ls -l then stops asking on this mount
        tree.find_xattr(small.ino, b"security.selinux")


def test_chunks_after_follow_volume_order(tree: Tree, backed: Backed) -> None:
    big = tree.read_plan(resolve(tree, in_source(backed, backed.first, "big")).ino)
    first = big.pieces[0].chunk  # (how many pieces depends on the catalog's chunker seed)
    after = tree.chunks_after(first.volume_id, first.id, len(big.pieces) - 1)
    assert [c.id for c in after] == [p.chunk.id for p in big.pieces[1:]]
    offsets = [first.offset] + [c.offset for c in after]
    assert offsets == sorted(offsets)


def test_durafs_facts_by_name(tree: Tree, backed: Backed) -> None:
    big = resolve(tree, in_source(backed, backed.second, "big"))
    label = tree.data_media(big.ino)[0].label
    assert tree.getxattr(big.ino, XATTR_MEDIA) == label.encode()
    assert tree.getxattr(big.ino, XATTR_LOCATION) == os.fsencode(backed.cat.pool)
    assert tree.getxattr(big.ino, XATTR_BLAKE3) == blake3.blake3(
        backed.contents["big"]).hexdigest().encode()
    assert tree.getxattr(big.ino, XATTR_CHECKPOINT) == f"default/{backed.second}".encode()
    src = resolve(tree, in_source(backed, backed.first, ""))
    assert tree.getxattr(src.ino, XATTR_CHECKPOINT) == f"default/{backed.first}".encode()
    with pytest.raises(NoSuchAttribute):
        tree.getxattr(src.ino, XATTR_MEDIA)  # directories have no data
    empty = resolve(tree, in_source(backed, backed.second, "empty"))
    assert tree.getxattr(empty.ino, XATTR_MEDIA) == b""


def test_read_plan_covers_the_file(tree: Tree, backed: Backed) -> None:
    big = resolve(tree, in_source(backed, backed.second, "big"))
    plan = tree.read_plan(big.ino)
    assert plan.size == len(backed.contents["big"])
    assert len(plan.pieces) > 1  # over 1 MiB: cut into several chunks
    assert sum(p.size for p in plan.pieces) == plan.size
    assert all(p.chunk.volume_id in plan.volumes for p in plan.pieces)
    assert plan.what.endswith("/src/big")


def test_writes_are_refused(tree: Tree) -> None:
    with pytest.raises(ReadOnly):
        tree.refuse_change("mkdir")
    with pytest.raises(ReadOnly):
        tree.check_open(ROOT_INO, os.O_WRONLY)
    tree.check_open(ROOT_INO, os.O_RDONLY)


def test_statfs_counts_stored_bytes(tree: Tree, backed: Backed) -> None:
    stats = tree.statfs()
    stored = sum(p.stat().st_size for p in (backed.cat.pool / "volumes").iterdir())
    assert stats.stored_bytes == stored
    assert stats.files > 0
