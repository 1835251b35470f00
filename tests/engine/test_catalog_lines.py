"""The catalog volume's tree lines and the manifest's chunk lines are built directly, not
through the JSON encoder: they must be byte for byte what the encoder makes of the records
readers parse them into (docs/FORMAT.md), whatever the names, times and attributes."""

from __future__ import annotations

import json
import os

import pytest

from durafs.engine.catalogspool import _line
from durafs.format.catalog import TreeEntry
from durafs.format.header import ChunkEntry, dumps
from durafs.index.rows import Entry, pack_pieces, pack_xattrs

ODD_NAMES = [b"/plain", b"/caf\xc3\xa9 \xe2\x98\x83", b"/not-utf8-\xff\xfe", b'/quote" and \\',
             b"/new\nline\ttab\x01\x1f\x7f", b"/" + b"n" * 255, b"/\xed\xa0\x80 surrogate bytes"]
CID = bytes(range(32))
CID2 = bytes(range(32, 64))


Pieces = list[tuple[int, bytes, int]]
Case = tuple[Entry, bytes | None, dict[int, bytes], Pieces | None]


def entries() -> list[Case]:
    """(entry, hard-link leader, chunk ids by row id, pieces) of every kind the spool takes."""
    cases: list[Case] = []
    for i, path in enumerate(ODD_NAMES):
        base = Entry(path, "f", 0o4755, 1000 + i, 0, "ålice" if i % 2 else None, None, 12,
                     -(10**18), 2**62, 0, -(2**63), 2**63 - 1, 1)
        cases.append((base, None, {}, [(0, CID, 12)]))
    cases += [
        (Entry(b"/empty", "f", 0, 0, 0, None, None, 0, 1, 2, 3, 4, 5, 1, blake3=CID), None, {},
         []),
        (Entry(b"/by-row", "f", 0o644, 0, 0, "root", "root", 9, 1, 2, 3, 4, 5, 1,
               chunks=pack_pieces([(0, 7, 4), (8192, 9, 5)]), blake3=CID2), None,
         {7: CID, 9: CID2}, None),
        (Entry(b"/link", "l", 0o777, 0, 0, None, None, 3, 1, 2, 3, 4, 5, 1,
               target=b"../t\xffarget\"\\"), None, {}, None),
        (Entry(b"/dev/sda", "b", 0o660, 0, 6, None, "disk", 0, 1, 2, 3, 4, 5, 1, rdev=2049),
         None, {}, None),
        (Entry(b"/x", "d", 0o1777, 0, 0, None, None, 0, 1, 2, 3, 4, 5, 2,
               xattrs=pack_xattrs({b"user.\xff\"odd": b"\x00\xffbinary",
                                   b"system.posix_acl_access": b"\x02\x00\x00\x00"})),
         None, {}, None),
        (Entry(b"/second name", "f", 0o644, 0, 0, None, None, 9, 1, 2, 3, 4, 5, 2,
               chunks=pack_pieces([(0, 7, 9)])), b"/first \xff name", {7: CID}, None),
        (Entry(b"/fifo", "p", 0o600, 0, 0, None, None, 0, 1, 2, 3, 4, 5, 1), None, {}, None),
    ]
    return cases


@pytest.mark.parametrize("case", range(len(entries())))
def test_a_tree_line_is_what_the_encoder_makes_of_its_record(case: int) -> None:
    entry, link, cids, pieces = entries()[case]
    line = _line(entry, link, cids, pieces)
    parsed = TreeEntry.from_record(json.loads(line))
    assert line.encode("ascii") == dumps(parsed.to_record())
    assert (parsed.path, parsed.mode, parsed.uid, parsed.size) == (
        entry.path, entry.mode, entry.uid, entry.size)
    assert (parsed.mtime_ns, parsed.atime_ns, parsed.ctime_ns, parsed.ino, parsed.dev) == (
        entry.mtime_ns, entry.atime_ns, entry.ctime_ns, entry.ino, entry.dev)
    assert parsed.type == ("h" if link is not None else entry.type)
    assert (parsed.link, parsed.target, parsed.rdev) == (link, entry.target, entry.rdev)
    assert parsed.user == (entry.uname or "") and parsed.group == (entry.gname or "")
    assert pack_xattrs(parsed.xattrs) == entry.xattrs
    assert parsed.blake3 == entry.blake3
    # chunk ids come with the pieces or, by row id, from *cids*; a later hard link has none
    by_row = [(0, CID, 4), (8192, CID2, 5)] if entry.path == b"/by-row" else []
    assert parsed.chunks == (pieces if pieces is not None else by_row)


@pytest.mark.parametrize("path", ODD_NAMES)
@pytest.mark.parametrize("raw", [True, False])
def test_a_manifest_line_is_what_the_encoder_makes_of_its_record(path: bytes, raw: bool) -> None:
    for files in ((), ((path, 0),), ((path, 5), (b"/b", 2**62))):
        entry = ChunkEntry(os.urandom(32), 2**40, 3, 7, raw, "durafs/data/00000001.zst", 512,
                           9, files)
        assert entry.to_line() == dumps(entry.to_record()) + b"\n"
        assert ChunkEntry.from_record(json.loads(entry.to_line())) == entry
