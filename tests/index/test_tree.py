# SPDX-License-Identifier: GPL-3.0-or-later
"""Recording checkpoint trees and reading them back."""

from __future__ import annotations

import os
import stat
import tracemalloc
from pathlib import Path
from typing import Any

import pytest

from durafs.errors import CatalogError, UsageError
from durafs.index.catalog import Catalog, open_catalog
from durafs.index.rows import Entry, NewChunk, PlanRow, pack_pieces, pack_xattrs

from .support import EntryFactory, attrs, commit, dump, make_entry, tree_at, version_count

ALICE = b"/home/alice"
CAFE = ALICE + b"/caf\xe9"  # latin-1, not UTF-8


def checkpoint_1() -> list[Entry]:
    d = "d"
    return [
        make_entry(b"/", d),
        make_entry(b"/home", d),
        make_entry(ALICE, d),
        make_entry(ALICE + b"/caf\xe9", content=b"x"),
        make_entry(ALICE + b"/docs", d),
        make_entry(ALICE + b"/docs/a.txt", content=b"alpha"),
        make_entry(ALICE + b"/docs/b.txt", content=b"bravo"),
        make_entry(ALICE + b"/link", "l", target=b"docs/a.txt"),
        make_entry(ALICE + b"/old.txt", content=b"old"),
        make_entry(ALICE + b"/photos", d),
        make_entry(ALICE + b"/photos/p1.jpg", content=b"jpeg", ino=77),
    ]


def checkpoint_2() -> list[Entry]:
    """b modified, c added, old deleted, photos renamed to pictures, a's atime changed."""
    d = "d"
    return [
        make_entry(b"/", d),
        make_entry(b"/home", d),
        make_entry(ALICE, d, mtime=2000),
        make_entry(CAFE, content=b"x"),
        make_entry(ALICE + b"/docs", d, mtime=2000),
        make_entry(ALICE + b"/docs/a.txt", content=b"alpha", atime=5555),
        make_entry(ALICE + b"/docs/b.txt", content=b"bravo2", mtime=2000),
        make_entry(ALICE + b"/docs/c.txt", content=b"charlie", mtime=2000),
        make_entry(ALICE + b"/link", "l", target=b"docs/a.txt"),
        make_entry(ALICE + b"/pictures", d),
        make_entry(ALICE + b"/pictures/p1.jpg", content=b"jpeg", ino=77),
    ]


def checkpoint_3() -> list[Entry]:
    """old re-added as it was, c deleted, docs chmod-ed."""
    d = "d"
    return [
        make_entry(b"/", d),
        make_entry(b"/home", d),
        make_entry(ALICE, d, mtime=3000),
        make_entry(CAFE, content=b"x"),
        make_entry(ALICE + b"/docs", d, mtime=3000, mode=0o700),
        make_entry(ALICE + b"/docs/a.txt", content=b"alpha", atime=7777),
        make_entry(ALICE + b"/docs/b.txt", content=b"bravo2", mtime=2000),
        make_entry(ALICE + b"/link", "l", target=b"docs/a.txt"),
        make_entry(ALICE + b"/old.txt", content=b"old"),
        make_entry(ALICE + b"/pictures", d),
        make_entry(ALICE + b"/pictures/p1.jpg", content=b"jpeg", ino=77),
    ]


def test_three_checkpoints_read_back_exactly(catalog: Catalog) -> None:
    plan = catalog.ensure_plan("home")
    checkpoints = {1: checkpoint_1(), 2: checkpoint_2(), 3: checkpoint_3()}
    counts = {seq: commit(catalog, plan, seq, entries) for seq, entries in checkpoints.items()}
    assert counts[1] == {"entries": 11, "kept": 0, "new": 11}
    assert counts[2] == {"entries": 11, "kept": 5, "new": 6}
    assert counts[3] == {"entries": 11, "kept": 8, "new": 3}
    # Unchanged entries added no row: 11 + 6 + 3 versions, and old.txt reused its path.
    assert version_count(catalog) == 20
    assert catalog.db.get_val("SELECT count(*) FROM paths") == 1 + 10 + 3
    assert catalog.db.get_val("SELECT count(*) FROM path_names") == 14
    for seq, entries in checkpoints.items():
        expected = {e.path: attrs(e) for e in entries}
        assert tree_at(catalog, plan, seq) == expected
        for e in entries:
            version = catalog.resolve(plan.id, seq, e.path)
            assert version is not None and attrs_of(version) == attrs(e)
        check_listings(catalog, plan, seq, set(expected))


def attrs_of(v: Any) -> tuple[Any, ...]:
    return (v.type, v.mode, v.size, v.mtime_ns, v.blake3, v.target)


def check_listings(catalog: Catalog, plan: PlanRow, seq: int, paths: set[bytes]) -> None:
    for path in paths:
        version = catalog.resolve(plan.id, seq, path)
        assert version is not None
        if version.type != "d":
            continue
        prefix = path.rstrip(b"/") + b"/"
        children = sorted(
            p[len(prefix) :]
            for p in paths
            if p.startswith(prefix) and b"/" not in p[len(prefix) :] and p != path
        )
        names = [name for name, _ in catalog.listdir(plan.id, seq, version.path_id)]
        assert names == children


def test_history_details(catalog: Catalog) -> None:
    plan = catalog.ensure_plan("home")
    for seq, entries in ((1, checkpoint_1()), (2, checkpoint_2()), (3, checkpoint_3())):
        commit(catalog, plan, seq, entries)
    a = [catalog.resolve(plan.id, seq, ALICE + b"/docs/a.txt") for seq in (1, 2, 3)]
    assert a[0] == a[1] == a[2]  # one version, still open, its first atime kept
    assert a[0] is not None and a[0].last_seq is None and a[0].atime_ns == 1000
    old1 = catalog.resolve(plan.id, 1, ALICE + b"/old.txt")
    old3 = catalog.resolve(plan.id, 3, ALICE + b"/old.txt")
    assert catalog.resolve(plan.id, 2, ALICE + b"/old.txt") is None
    assert old1 is not None and old3 is not None
    assert (old1.path_id, old1.last_seq) == (old3.path_id, 1) and old1.id != old3.id
    assert catalog.resolve(plan.id, 1, ALICE + b"/pictures") is None
    assert catalog.resolve(plan.id, 3, ALICE + b"/photos/p1.jpg") is None
    assert catalog.resolve(plan.id, 3, ALICE + b"/docs/a.txt/x") is None
    with pytest.raises(UsageError):
        catalog.resolve(plan.id, 1, b"home/alice")
    assert catalog.version(old3.id) == old3 and catalog.version(10**9) is None
    assert catalog.path_of(old3.path_id) == ALICE + b"/old.txt"
    assert catalog.path_of(plan.root_id) == b"/"


def test_checkpoint_rows(catalog: Catalog) -> None:
    plan = catalog.ensure_plan("home", {"sources": ["/home"]})
    assert catalog.next_seq(plan.id) == 1
    commit(catalog, plan, 1, checkpoint_1())
    commit(catalog, plan, 2, checkpoint_2())
    other = catalog.ensure_plan("etc")
    commit(catalog, other, 1, [make_entry(b"/", "d")])
    rows = catalog.checkpoints("home")
    assert [(c.plan, c.seq, c.name, c.state) for c in rows] == [
        ("home", 1, "c1", "complete"),
        ("home", 2, "c2", "complete"),
    ]
    assert rows[0].sources == ["/home"] and rows[1].stats == {"files": 2}
    assert [c.plan for c in catalog.checkpoints()] == ["etc", "home", "home"]
    assert catalog.checkpoint("home", "latest") == rows[1]
    assert catalog.checkpoint("home", "c1") == rows[0]
    assert catalog.checkpoint("home", "c9") is None
    assert catalog.checkpoint("nope", "latest") is None
    assert catalog.checkpoint_by_seq(plan.id, 2) == rows[1]
    assert catalog.next_seq(plan.id) == 3
    assert catalog.plan("home") == catalog.plan_by_id(plan.id)
    assert [p.name for p in catalog.plans()] == ["etc", "home"]
    assert catalog.plan("home").config == {"sources": ["/home"]}  # type: ignore[union-attr]


def test_walk_is_depth_first_in_name_order(catalog: Catalog) -> None:
    plan = catalog.ensure_plan("home")
    commit(catalog, plan, 1, checkpoint_1())
    paths = [p for p, _ in catalog.walk(plan.id, 1, plan.root_id)]
    assert paths == sorted(paths, key=lambda p: p.split(b"/"))
    alice = catalog.resolve(plan.id, 1, ALICE)
    assert alice is not None
    sub = [p for p, _ in catalog.walk(plan.id, 1, alice.path_id)]
    assert sub[0] == ALICE and len(sub) == 9
    assert list(catalog.walk(plan.id, 0, plan.root_id)) == []  # before the first one


def test_find(catalog: Catalog) -> None:
    plan = catalog.ensure_plan("home")
    for seq, entries in ((1, checkpoint_1()), (2, checkpoint_2()), (3, checkpoint_3())):
        commit(catalog, plan, seq, entries)
    catalog.ensure_plan("empty")

    def names(pattern: str, plan: str | None = None) -> list[tuple[str, str, bytes]]:
        return list(catalog.find(pattern, plan))

    docs = ALICE + b"/docs"
    assert names("a.txt") == [("home", f"c{s}", docs + b"/a.txt") for s in (1, 2, 3)]
    assert names("old") == [
        ("home", "c1", ALICE + b"/old.txt"),
        ("home", "c3", ALICE + b"/old.txt"),
    ]
    assert names("*.jpg") == [
        ("home", "c1", ALICE + b"/photos/p1.jpg"),
        ("home", "c2", ALICE + b"/pictures/p1.jpg"),
        ("home", "c3", ALICE + b"/pictures/p1.jpg"),
    ]
    assert names("?.txt", "home")[0] == ("home", "c1", docs + b"/a.txt")
    assert names("caf") == [("home", f"c{s}", CAFE) for s in (1, 2, 3)]
    assert names("A.TXT") == []  # case-sensitive
    assert names("a.txt", "empty") == []


def test_find_a_name_that_is_not_utf8(catalog: Catalog) -> None:
    # what a user types for such a name reaches durafs as os.fsdecode() of its bytes (lone
    # surrogates, which SQLite cannot take), and must find it as name_text() indexed it
    plan = catalog.ensure_plan("home")
    entries = [make_entry(b"/", "d"), make_entry(b"/r\xe9sum\xe9.txt"), make_entry(b"/plain")]
    commit(catalog, plan, 1, entries)
    found = [("home", "c1", b"/r\xe9sum\xe9.txt")]
    assert list(catalog.find(os.fsdecode(b"r\xe9sum\xe9"))) == found
    assert list(catalog.find(os.fsdecode(b"*\xe9.txt"))) == found


def test_paging_through_a_directory(catalog: Catalog) -> None:
    plan = catalog.ensure_plan("p")
    files = [make_entry(b"/d/f%02d" % i) for i in range(25)]
    commit(catalog, plan, 1, [make_entry(b"/", "d"), make_entry(b"/d", "d"), *files])
    d = catalog.resolve(plan.id, 1, b"/d")
    assert d is not None
    paged = [name for name, _ in catalog.iterdir(plan.id, 1, d.path_id, page=10)]
    assert paged == [b"f%02d" % i for i in range(25)]
    window = catalog.listdir(plan.id, 1, d.path_id, after=b"f10", limit=3)
    assert [name for name, _ in window] == [b"f11", b"f12", b"f13"]
    assert catalog.lookup(plan.id, 1, d.path_id, b"f07") == catalog.resolve(plan.id, 1, b"/d/f07")
    assert catalog.lookup(plan.id, 1, d.path_id, b"nope") is None


def test_hard_link_groups(catalog: Catalog) -> None:
    plan = catalog.ensure_plan("p")

    def tree(content: bytes, with_x: bool = True) -> list[Entry]:
        linked: dict[str, Any] = {"nlink": 2, "hardlink_key": (2049, 5)} if with_x else {}
        entries = [make_entry(b"/", "d"), make_entry(b"/d", "d"), make_entry(b"/e", "d")]
        if with_x:
            entries.append(make_entry(b"/d/x", content=content, ino=5, **linked))
        entries += [
            make_entry(b"/d/z", content=b"zz"),
            make_entry(b"/e/y", content=content, ino=5, **linked),
        ]
        return entries

    commit(catalog, plan, 1, tree(b"one"))
    x = catalog.resolve(plan.id, 1, b"/d/x")
    y = catalog.resolve(plan.id, 1, b"/e/y")
    z = catalog.resolve(plan.id, 1, b"/d/z")
    assert x and y and z
    assert (x.hardlink_id, y.hardlink_id, z.hardlink_id) == (x.id, x.id, None)
    assert [v.id for v in catalog.hardlink_group(x.id, 1)] == [x.id, y.id]

    assert commit(catalog, plan, 2, tree(b"one"))["new"] == 0  # groups unchanged, no row
    assert [v.id for v in catalog.hardlink_group(x.id, 2)] == [x.id, y.id]

    commit(catalog, plan, 3, tree(b"two"))  # content of the group changed
    x3 = catalog.resolve(plan.id, 3, b"/d/x")
    y3 = catalog.resolve(plan.id, 3, b"/e/y")
    assert x3 and y3 and x3.id != x.id and y3.hardlink_id == x3.id
    assert [v.id for v in catalog.hardlink_group(x3.id, 3)] == [x3.id, y3.id]
    assert [v.id for v in catalog.hardlink_group(x.id, 3)] == []

    commit(catalog, plan, 4, tree(b"two", with_x=False))  # y is alone now
    y4 = catalog.resolve(plan.id, 4, b"/e/y")
    assert y4 and y4.hardlink_id is None
    assert [v.id for v in catalog.hardlink_group(x3.id, 3)] == [x3.id, y3.id]  # history kept


def test_first_member_changes_relinks_unchanged_members(catalog: Catalog) -> None:
    plan = catalog.ensure_plan("p")
    key: dict[str, Any] = {"nlink": 2, "hardlink_key": "k"}

    def tree(x_mode: int) -> list[Entry]:
        return [
            make_entry(b"/", "d"),
            make_entry(b"/a", mode=x_mode, ino=9, **key),
            make_entry(b"/b", ino=9, **key),
        ]

    commit(catalog, plan, 1, tree(0o644))
    commit(catalog, plan, 2, tree(0o600))  # chmod shows on both; only a's row differs here
    a = catalog.resolve(plan.id, 2, b"/a")
    b = catalog.resolve(plan.id, 2, b"/b")
    assert a and b and b.hardlink_id == a.id and b.first_seq == 2


def test_file_chunks(catalog: Catalog) -> None:
    pool = catalog.add_pool("usb", "dir", volume_size=1 << 30)
    disk = catalog.add_medium(pool.id, uuid="u", label="HDD-1")
    volume = catalog.add_volume(
        disk.id, uuid="v", kind="data", seq=1, name="v1", plain_size=1, stored_size=1
    )
    new = [NewChunk(os.urandom(32), 512 * i, 100, 4096, False) for i in range(2)]
    ids = catalog.add_chunks(pool.id, volume.id, new)
    pieces = [(0, ids[new[0].cid], 4096), (8192, ids[new[1].cid], 4096)]  # hole between
    plan = catalog.ensure_plan("p")
    sparse = make_entry(b"/sparse", content=b"", chunks=pack_pieces(pieces))
    commit(catalog, plan, 1, [make_entry(b"/", "d"), sparse])
    version = catalog.resolve(plan.id, 1, b"/sparse")
    assert version is not None and version.pieces() == pieces
    located = catalog.file_chunks(version)
    assert [(p.file_offset, p.chunk.cid, p.size, p.chunk.medium_id) for p in located] == [
        (0, new[0].cid, 4096, disk.id),
        (8192, new[1].cid, 4096, disk.id),
    ]
    broken = make_entry(b"/broken", chunks=pack_pieces([(0, 999_999, 1)]))
    commit(catalog, plan, 2, [make_entry(b"/", "d"), broken])
    version = catalog.resolve(plan.id, 2, b"/broken")
    assert version is not None
    with pytest.raises(CatalogError, match="missing chunk"):
        catalog.file_chunks(version)


def test_all_attributes_round_trip(catalog: Catalog, entry: EntryFactory) -> None:
    plan = catalog.ensure_plan("p")
    xattrs = pack_xattrs({b"user.k": b"v", b"system.posix_acl_access": b"\x02\x00" * 7})
    entries = [
        entry(b"/", "d"),
        entry(b"/dev0", "c", rdev=0x0103, mode=0o660, uid=0, gid=6, uname=None, gname="disk"),
        entry(b"/fifo", "p", mode=0o600),
        entry(b"/sock", "s", mode=0o777),
        entry(b"/blk", "b", rdev=0x0801),
        entry(b"/new\nline", content=b"n", xattrs=xattrs, mode=0o4755),
        entry(b"/sym", "l", target=b"\xff/../x"),
    ]
    commit(catalog, plan, 1, entries)
    for e in entries:
        v = catalog.resolve(plan.id, 1, e.path)
        assert v is not None
        got = (
            v.type,
            v.mode,
            v.uid,
            v.gid,
            v.uname,
            v.gname,
            v.size,
            v.mtime_ns,
            v.atime_ns,
            v.ctime_ns,
            v.ino,
            v.dev,
            v.nlink,
            v.rdev,
            v.target,
            v.xattrs,
            v.chunks,
            v.blake3,
        )
        assert got == (
            e.type,
            e.mode,
            e.uid,
            e.gid,
            e.uname,
            e.gname,
            e.size,
            e.mtime_ns,
            e.atime_ns,
            e.ctime_ns,
            e.ino,
            e.dev,
            e.nlink,
            e.rdev,
            e.target,
            e.xattrs,
            e.chunks,
            e.blake3,
        )
    newline = catalog.resolve(plan.id, 1, b"/new\nline")
    assert newline is not None
    assert newline.xattr_dict()[b"user.k"] == b"v" and newline.st_mode == 0o104755


def test_entry_from_stat(tmp_path: Path) -> None:
    target = tmp_path / "f"
    target.write_bytes(b"hello")
    (tmp_path / "l").symlink_to("f")
    f = Entry.from_stat(b"/f", os.lstat(target), uname="me")
    link = Entry.from_stat(b"/l", os.lstat(tmp_path / "l"), target=b"f")
    st = os.lstat(target)
    assert (f.type, f.size, f.mode, f.ino, f.uname, f.gname) == (
        "f",
        5,
        st.st_mode & 0o7777,
        st.st_ino,
        "me",
        None,
    )
    assert (link.type, link.target, link.rdev) == ("l", b"f", 0)


def test_readers_see_new_checkpoints_without_reopening(catalog: Catalog) -> None:
    plan = catalog.ensure_plan("home")
    with open_catalog(catalog.db.path, readonly=True) as reader:
        assert reader.checkpoints() == []
        assert reader.resolve(plan.id, 1, ALICE) is None
        commit(catalog, plan, 1, checkpoint_1())
        assert [c.name for c in reader.checkpoints()] == ["c1"]
        assert tree_at(reader, plan, 1) == tree_at(catalog, plan, 1)
        pages = reader.iterdir(plan.id, 1, plan.root_id, page=1)
        next(pages)  # a half-read iterator must not pin the reader to an old snapshot
        commit(catalog, plan, 2, checkpoint_2())
        assert reader.checkpoint("home", "latest").name == "c2"  # type: ignore[union-attr]
        assert reader.resolve(plan.id, 2, ALICE + b"/docs/c.txt") is not None


def test_exception_inside_the_writer_leaves_no_trace(catalog: Catalog) -> None:
    plan = catalog.ensure_plan("home")
    commit(catalog, plan, 1, checkpoint_1())
    before = dump(catalog)
    with pytest.raises(RuntimeError), catalog.tree_writer(plan.id, 2, "c2") as writer:
        for e in checkpoint_2():
            writer.add(e)
        raise RuntimeError("backup failed")
    assert dump(catalog) == before


def test_failing_finish_leaves_no_trace(catalog: Catalog) -> None:
    plan = catalog.ensure_plan("home")
    commit(catalog, plan, 1, checkpoint_1())
    before = dump(catalog)
    # The bad row is the last one applied: paths, names and closed versions came first.
    bad = [*checkpoint_2(), make_entry(b"/zzz", mode=0o170000)]
    with pytest.raises(CatalogError, match="constraint"):
        commit(catalog, plan, 2, bad)
    assert dump(catalog) == before
    commit(catalog, plan, 2, checkpoint_2())
    assert tree_at(catalog, plan, 2) == {e.path: attrs(e) for e in checkpoint_2()}


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        ([make_entry(b"/a", "d")], "root b'/' must be the first"),
        ([make_entry(b"/", "d"), make_entry(b"/a/b")], "must be added before"),
        ([make_entry(b"/", "d"), make_entry(b"/a"), make_entry(b"/a/b")], "non-directory"),
        ([make_entry(b"/", "d"), make_entry(b"/a"), make_entry(b"/a")], "added twice"),
        ([make_entry(b"/", "d"), make_entry(b"/", "d")], "added twice"),
        ([make_entry(b"/", "d"), make_entry(b"/a/")], "normalised"),
        ([make_entry(b"/", "d"), make_entry(b"relative")], "normalised"),
        ([make_entry(b"/", "d"), make_entry(b"/a/..")], "normalised"),
        ([make_entry(b"/", "d"), make_entry(b"/nul\0")], "normalised"),
    ],
)
def test_bad_walks_are_refused(catalog: Catalog, entries: list[Entry], message: str) -> None:
    plan = catalog.ensure_plan("p")
    before = dump(catalog)
    with pytest.raises(CatalogError, match=message):
        commit(catalog, plan, 1, entries)
    assert dump(catalog) == before


def test_duplicate_of_an_existing_path_is_refused(catalog: Catalog) -> None:
    plan = catalog.ensure_plan("p")
    commit(catalog, plan, 1, [make_entry(b"/", "d"), make_entry(b"/a")])
    with pytest.raises(CatalogError, match="added twice"):
        commit(
            catalog, plan, 2, [make_entry(b"/", "d"), make_entry(b"/a"), make_entry(b"/a", mtime=5)]
        )


def test_checkpoint_names_and_seqs_are_checked(catalog: Catalog) -> None:
    plan = catalog.ensure_plan("p")
    commit(catalog, plan, 1, [make_entry(b"/", "d")])
    with pytest.raises(UsageError, match="already used"):
        catalog.tree_writer(plan.id, 1, "again")
    with pytest.raises(UsageError, match="has a checkpoint"):
        catalog.tree_writer(plan.id, 2, "c1")
    for name in ("latest", "a/b", ""):
        with pytest.raises(UsageError, match="cannot be a checkpoint name"):
            catalog.tree_writer(plan.id, 2, name)
    with pytest.raises(UsageError, match="no plan"):
        catalog.tree_writer(999, 1, "x")
    with pytest.raises(UsageError):
        catalog.ensure_plan("a/b")


def test_a_stale_writer_is_refused(catalog: Catalog) -> None:
    plan = catalog.ensure_plan("p")
    commit(catalog, plan, 1, [make_entry(b"/", "d")])
    late = catalog.tree_writer(plan.id, 3, "c3")
    late.add(make_entry(b"/", "d"))
    commit(catalog, plan, 2, [make_entry(b"/", "d"), make_entry(b"/new")])
    with pytest.raises(CatalogError, match="while c3 was staged"):
        late.finish()
    late.close()
    with pytest.raises(CatalogError, match="finished or discarded"):
        late.add(make_entry(b"/x"))
    assert [c.seq for c in catalog.checkpoints("p")] == [1, 2]


def test_seq_gaps_keep_history_exact(catalog: Catalog) -> None:
    """Seqs need not be consecutive (a pruned-away run): closing uses the newest seq."""
    plan = catalog.ensure_plan("p")
    commit(catalog, plan, 1, [make_entry(b"/", "d"), make_entry(b"/a")])
    commit(catalog, plan, 5, [make_entry(b"/", "d")])
    a = catalog.resolve(plan.id, 1, b"/a")
    assert a is not None and a.last_seq == 1
    assert catalog.next_seq(plan.id) == 6


COMPARED = {
    "type": "p",
    "mode": 0o600,
    "uid": 7,
    "gid": 7,
    "uname": "bob",
    "gname": None,
    "size": 99,
    "mtime_ns": 5,
    "ctime_ns": 5,
    "ino": 12345,
    "dev": 1,
    "nlink": 3,
    "rdev": 3,
    "target": b"t",
    "xattrs": pack_xattrs({b"user.a": b"1"}),
    "chunks": b"",
    "blake3": bytes(32),
}


@pytest.mark.parametrize("field", sorted(COMPARED))
def test_every_compared_field_makes_a_new_version(catalog: Catalog, field: str) -> None:
    plan = catalog.ensure_plan("p")
    commit(catalog, plan, 1, [make_entry(b"/", "d"), make_entry(b"/f", content=b"abc")])
    changed = make_entry(b"/f", content=b"abc", atime=1)
    setattr(changed, field, COMPARED[field])
    assert commit(catalog, plan, 2, [make_entry(b"/", "d"), changed])["new"] == 1
    version = catalog.resolve(plan.id, 2, b"/f")
    assert version is not None and getattr(version, field) == COMPARED[field]


def test_atime_alone_changes_nothing(catalog: Catalog) -> None:
    plan = catalog.ensure_plan("p")
    commit(catalog, plan, 1, [make_entry(b"/", "d"), make_entry(b"/f", content=b"abc")])
    touched = make_entry(b"/f", content=b"abc", atime=999_999)
    assert commit(catalog, plan, 2, [make_entry(b"/", "d"), touched])["new"] == 0


def test_keep_carries_the_previous_version_on(catalog: Catalog) -> None:
    """`keep` is `add` of an unchanged entry without the entry: the same tree, the same
    counts, no new version; a path with no version of its own to keep is refused."""
    plan = catalog.ensure_plan("home")
    commit(catalog, plan, 1, checkpoint_1())
    before = version_count(catalog)
    with catalog.tree_writer(plan.id, 2, "c2", sources=["/home"]) as writer:
        for e in checkpoint_1():
            if e.type == "f":
                writer.keep(e.path)
            else:
                writer.add(e)
        with pytest.raises(CatalogError, match="no version of its own"):
            writer.keep(ALICE + b"/never-there")
        writer.finish()
    assert writer.counts == {"entries": 11, "kept": 11, "new": 0}
    assert version_count(catalog) == before
    assert tree_at(catalog, plan, 2) == tree_at(catalog, plan, 1)


def test_find_holds_the_paths_found_not_every_line_it_gives(catalog: Catalog) -> None:
    # a path unchanged in C checkpoints is one version but C lines: reading the lines
    # whole (a row each) took memory for paths x checkpoints, millions for a large find
    plan = catalog.ensure_plan("p")
    entries = [make_entry(b"/", "d"), *(make_entry(b"/f%05d" % i) for i in range(1000))]
    for seq in range(1, 101):
        commit(catalog, plan, seq, entries)
    tracemalloc.start()
    try:
        lines = sum(1 for _ in catalog.find("f"))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert lines == 100 * 1000
    assert peak < 1_000_000, peak  # 26 MB before: over 200 bytes a line


def test_entries_from_any_stat_fit_the_index(catalog: Catalog) -> None:
    """st_ino and st_dev are unsigned 64-bit (overlayfs sets their high bits) and times
    reach past what signed 64-bit nanoseconds hold: every such status still makes an
    entry the index takes, the same one each time (so unchanged files compare equal)."""
    huge = os.stat_result(
        (stat.S_IFREG | 0o644, 2**64 - 1, 2**63 + 5, 1, 0, 0, 10, 1, 2, 3),
        {"st_atime_ns": 10**22, "st_mtime_ns": -(10**22), "st_ctime_ns": 3},
    )
    entry = Entry.from_stat(b"/f", huge)
    assert (entry.ino, entry.dev) == (-1, -(2**63) + 5)
    assert (entry.atime_ns, entry.mtime_ns, entry.ctime_ns) == (2**63 - 1, -(2**63), 3)
    plan = catalog.ensure_plan("p")
    commit(catalog, plan, 1, [make_entry(b"/", "d"), entry])
    (version,) = [v for path, v in catalog.walk(plan.id, 1, plan.root_id) if path == b"/f"]
    assert (version.ino, version.dev, version.mtime_ns) == (-1, -(2**63) + 5, -(2**63))
    assert Entry.from_stat(b"/f", huge) == entry
