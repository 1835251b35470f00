"""`same_as_before`: when a path met by the scan may keep its previous version as it is."""

from __future__ import annotations

import dataclasses
import os
import stat
from pathlib import Path

import pytest

from durafs.engine.prevtree import same_as_before
from durafs.engine.scan import ScanItem
from durafs.index.rows import VersionRow, pack_xattrs

XATTRS = {b"user.note": b"kept"}


def item_and_prev(tmp_path: Path) -> tuple[ScanItem, VersionRow]:
    """A scanned file and the version a previous checkpoint recorded for it."""
    path = tmp_path / "f"
    path.write_bytes(b"content")
    st = os.lstat(path)
    item = ScanItem(os.fsencode(path), st, "f", None, dict(XATTRS), "alice", "staff", None)
    prev = VersionRow(
        id=7, path_id=3, first_seq=1, last_seq=None, type="f", mode=stat.S_IMODE(st.st_mode),
        uid=st.st_uid, gid=st.st_gid, uname="alice", gname="staff", size=st.st_size,
        mtime_ns=st.st_mtime_ns, atime_ns=0, ctime_ns=st.st_ctime_ns, ino=st.st_ino,
        dev=st.st_dev, nlink=st.st_nlink, rdev=0, target=None, xattrs=pack_xattrs(XATTRS),
        hardlink_id=None, chunks=b"", blake3=b"h" * 32,
    )
    return item, prev


def test_the_same_object_is_the_same(tmp_path: Path) -> None:
    item, prev = item_and_prev(tmp_path)
    assert same_as_before(item, prev)
    # atime and what the backup itself keeps (chunks, hash, row ids) do not count
    assert same_as_before(item, dataclasses.replace(prev, atime_ns=5, id=8, blake3=None))


@pytest.mark.parametrize("change", [
    {"mtime_ns": 1}, {"ctime_ns": 1}, {"size": 1}, {"ino": 1}, {"dev": 1}, {"nlink": 2},
    {"mode": 0o600}, {"uid": 4242}, {"gid": 4242}, {"uname": "bob"}, {"gname": None},
    {"target": b"x"}, {"xattrs": None}, {"type": "l"}, {"hardlink_id": 7}, {"rdev": 5},
], ids=lambda change: next(iter(change)))
def test_any_recorded_difference_is_a_change(tmp_path: Path, change: dict[str, object]) -> None:
    item, prev = item_and_prev(tmp_path)
    assert not same_as_before(item, dataclasses.replace(prev, **change))


def test_changes_on_the_scanned_side_count_too(tmp_path: Path) -> None:
    item, prev = item_and_prev(tmp_path)
    assert not same_as_before(dataclasses.replace(item, xattrs={}), prev)
    assert not same_as_before(dataclasses.replace(item, user=""), prev)
    assert not same_as_before(dataclasses.replace(item, hardlink_key=(1, 2)), prev)
