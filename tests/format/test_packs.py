"""Packs (docs/FORMAT.md §2.2): several small chunks in one frame, announced by a skippable
frame; and volumes of format 1, written before packs, read as they were."""

from __future__ import annotations

import io
import os
import random
import shutil
import subprocess
import uuid
from dataclasses import replace
from pathlib import Path

import pytest

from durafs.errors import FormatError, IntegrityError
from durafs.format.frames import (
    PACK_MAGIC,
    ChunkCodec,
    StoredChunk,
    pack_table,
    parse_pack_table,
)
from durafs.format.header import Manifest
from durafs.format.reader import VolumeReader
from durafs.format.scanner import ScanDamage, ScannedChunk, scan_volume
from durafs.format.writer import VolumeWriter, new_header
from tests.format.volumes import CATALOG, ID_KEY, MODES, Written, identities, recipients

DATA = Path(__file__).parent / "data"


def texts(n: int, seed: int = 1) -> list[bytes]:
    """*n* small text files sharing a vocabulary, as source trees do."""
    rng = random.Random(seed)
    words = [b"def ", b"return ", b"self.", b"import ", b"value", b"(x)", b"\n    ", b"# why\n"]
    return [b"".join(rng.choice(words) for _ in range(rng.randrange(20, 400)))
            for _ in range(n)]


def write(mode: str, items: list[StoredChunk], *, member_target: int = 1 << 20) -> Written:
    out = io.BytesIO()
    header = new_header(CATALOG, uuid.uuid4().hex, "data", "pool", mode, ID_KEY)
    writer = VolumeWriter(out, header, recipients(mode), member_target=member_target)
    placed = []
    for i, stored in enumerate(items):
        offset = writer.add_chunk(stored, [(f"/src/file{i}".encode(), 0)])
        placed.append((offset, stored, b""))
    writer.finish()
    return Written(out.getvalue(), placed)


def test_a_pack_is_smaller_than_its_chunks_alone_and_each_decodes() -> None:
    codec = ChunkCodec(ID_KEY)
    chunks = texts(40)
    packed = codec.encode_pack(chunks)
    alone = sum(len(codec.encode(c).frame) for c in chunks)
    assert len(packed[0].frame) < 0.8 * alone
    assert {id(s.frame) for s in packed} == {id(packed[0].frame)}  # one frame, shared
    assert [s.fpos for s in packed] == [sum(map(len, chunks[:i])) for i in range(len(chunks))]
    for data, stored in zip(chunks, packed, strict=True):
        assert stored.id == codec.chunk_id(data)
        assert codec.decode(stored.frame, stored.size, stored.id, "t", stored.fpos) == data
    table = packed[0].pack.table if packed[0].pack else b""
    assert parse_pack_table(table, 0) == ([len(c) for c in chunks], len(table))


def test_random_chunks_make_a_raw_pack() -> None:
    codec = ChunkCodec(ID_KEY)
    chunks = [os.urandom(3000) for _ in range(5)]
    packed = codec.encode_pack(chunks)
    assert packed[0].raw and len(packed[0].frame) < sum(map(len, chunks)) + 64
    assert codec.decode(packed[3].frame, 3000, packed[3].id, "t", packed[3].fpos) == chunks[3]


def test_a_piece_asked_at_the_wrong_place_is_refused() -> None:
    codec = ChunkCodec(ID_KEY)
    chunks = texts(3)
    packed = codec.encode_pack(chunks)
    first, second = packed[0], packed[1]
    with pytest.raises(IntegrityError, match="does not match its chunk id"):
        codec.decode(second.frame, second.size, second.id, "t", first.fpos)
    with pytest.raises(IntegrityError, match="does not match its chunk id"):
        codec.decode(second.frame, second.size, second.id, "t", 1 << 30)  # past its end
    with pytest.raises(IntegrityError, match="does not match its chunk id"):
        codec.decode(second.frame, second.size, second.id, "t")  # as if a frame of its own


def test_a_pack_that_fails_to_decompress_spoils_no_other() -> None:
    """The codec keeps the pack it decoded last: a damaged one read in between (a mount
    reading one file after another) must not leave the sound one's pieces unreadable."""
    codec = ChunkCodec(ID_KEY)
    sound = codec.encode_pack(texts(3, seed=6))
    other = codec.encode_pack(texts(3, seed=7))
    assert not sound[0].raw and not other[0].raw
    assert codec.decode(sound[0].frame, sound[0].size, sound[0].id, "t") == texts(3, seed=6)[0]
    cut = other[1].frame[:-20]  # its header (and content size) whole, its blocks not
    with pytest.raises(IntegrityError, match="stored frame is damaged"):
        codec.decode(cut, other[1].size, other[1].id, "t", other[1].fpos)
    s = sound[1]
    assert codec.decode(s.frame, s.size, s.id, "t", s.fpos) == texts(3, seed=6)[1]


@pytest.mark.parametrize("table", [
    PACK_MAGIC + (5).to_bytes(4, "little") + b"\x01" + (9).to_bytes(4, "little"),  # one chunk
    PACK_MAGIC + (9).to_bytes(4, "little") + b"\x02" + bytes(4),  # cut short
    PACK_MAGIC + (13).to_bytes(4, "little") + b"\x02" + bytes(8),  # length disagrees
])
def test_a_damaged_pack_table_is_refused(table: bytes) -> None:
    with pytest.raises(FormatError, match="pack table"):
        parse_pack_table(table, 0)


def test_no_table_where_there_is_none() -> None:
    assert parse_pack_table(b"\x28\xb5\x2f\xfd" + bytes(8), 0) is None
    assert parse_pack_table(pack_table([1, 2]), 0) == ([1, 2], 8 + 1 + 8)


@pytest.mark.parametrize("mode", MODES)
def test_a_volume_with_packs_lists_reads_and_scans_every_chunk(mode: str) -> None:
    codec = ChunkCodec(ID_KEY)
    first, second = texts(30, seed=2), texts(7, seed=3)
    items = [codec.encode(os.urandom(5000)), *codec.encode_pack(first),
             codec.encode(b"alone" * 999), *codec.encode_pack(second)]
    vol = write(mode, items, member_target=8 * 1024)  # packs fall into several members
    reader = VolumeReader(vol.read_at, identities=identities(mode), size=len(vol.data))
    manifest = reader.read_manifest()
    datas = [None, *first, None, *second]
    assert [(c.id, c.offset, c.frame_pos) for c in manifest.chunks] == [
        (s.id, off, s.fpos) for off, s, _ in vol.chunks]
    for entry, data in zip(manifest.chunks, datas, strict=True):
        got = reader.read_chunk(entry.offset, entry.length, entry.size, entry.id,
                                entry.frame_pos)
        assert data is None or got == data
    events = list(scan_volume(vol.read_at, identities=identities(mode), size=len(vol.data)))
    assert not [e for e in events if isinstance(e, ScanDamage)]
    scanned = [(e.id, e.offset, e.fpos) for e in events if isinstance(e, ScannedChunk)]
    assert scanned == [(c.id, c.offset, c.frame_pos) for c in manifest.chunks]
    assert isinstance(events[-1], Manifest)


def test_a_pack_added_in_part_lists_all_its_chunks() -> None:
    """The chunks of a pack the pool already had are listed without files: they are in
    the frame, and the scanner finds them there."""
    codec = ChunkCodec(ID_KEY)
    packed = codec.encode_pack(texts(4))
    out = io.BytesIO()
    writer = VolumeWriter(out, new_header(CATALOG, "v", "data", "pool", "none", ID_KEY))
    offsets = {writer.add_chunk(packed[i], [(b"/f%d" % i, 0)]) for i in (1, 3)}
    writer.finish()
    data = out.getvalue()
    manifest = VolumeReader(lambda o, n: data[o : o + n], size=len(data)).read_manifest()
    assert [c.id for c in manifest.chunks] == [s.id for s in packed]
    assert [c.files for c in manifest.chunks] == [(), ((b"/f1", 0),), (), ((b"/f3", 0),)]
    assert offsets == {manifest.chunks[0].offset}
    events = list(scan_volume(lambda o, n: data[o : o + n], size=len(data)))
    assert not [e for e in events if isinstance(e, ScanDamage)]


def extract(data: bytes, tmp_path: Path) -> Path:
    tar = tmp_path / "v.tar"
    tar.write_bytes(data)
    out = tmp_path / "x"
    out.mkdir()
    subprocess.run(["tar", "-xf", str(tar), "-C", str(out)], check=True)
    return out


def test_zstd_decompresses_a_member_with_packs_to_the_chunks_back_to_back(
        tmp_path: Path) -> None:
    assert shutil.which("zstd"), "zstd is missing: scripts/setup.sh installs it"
    codec = ChunkCodec(ID_KEY)
    first = texts(5, seed=4)
    items = [*codec.encode_pack(first), codec.encode(b"between" * 100),
             *codec.encode_pack([b"x" * 10, b"y" * 20])]
    vol = write("none", items)
    members = sorted((extract(vol.data, tmp_path) / "durafs" / "data").iterdir())
    assert len(members) == 1
    plain = subprocess.run(["zstd", "-dc", str(members[0])], capture_output=True,
                           check=True).stdout
    assert plain == b"".join(first) + b"between" * 100 + b"x" * 10 + b"y" * 20
    reader = VolumeReader(vol.read_at, size=len(vol.data))
    for entry in reader.read_manifest().chunks:  # mpos finds each, as §9 reads them
        got = plain[entry.member_pos : entry.member_pos + entry.size]
        assert codec.chunk_id(got) == entry.id


def flip(data: bytes, offset: int) -> bytes:
    return data[:offset] + bytes([data[offset] ^ 0x40]) + data[offset + 1 :]


def test_damage_in_a_pack_hurts_its_chunks_and_no_other() -> None:
    codec = ChunkCodec(ID_KEY)
    packed = codec.encode_pack([os.urandom(2000) for _ in range(3)])  # raw: decodes anyway
    alone = codec.encode(b"sound" * 500)
    vol = write("none", [*packed, alone])
    reader = VolumeReader(vol.read_at, size=len(vol.data))
    entries = reader.read_manifest().chunks
    damaged = flip(vol.data, entries[1].offset + entries[1].length - 100)  # in the third
    reader = VolumeReader(lambda o, n: damaged[o : o + n], size=len(damaged))
    results = []
    for e in entries:
        try:
            reader.read_chunk(e.offset, e.length, e.size, e.id, e.frame_pos)
            results.append("ok")
        except IntegrityError:
            results.append("damaged")
    assert results == ["ok", "ok", "damaged", "ok"]
    events = list(scan_volume(lambda o, n: damaged[o : o + n], size=len(damaged)))
    frames = [e for e in events if isinstance(e, ScanDamage)]
    assert [(d.offset, d.frame) for d in frames] == [(entries[0].offset, True)]


def test_a_damaged_pack_table_stops_the_scan_at_its_member() -> None:
    codec = ChunkCodec(ID_KEY)
    packed = codec.encode_pack(texts(3, seed=5))
    vol = write("none", packed)
    entry = VolumeReader(vol.read_at, size=len(vol.data)).read_manifest().chunks[0]
    table_count = entry.offset - len(packed[0].pack.table if packed[0].pack else b"") + 8
    damaged = flip(vol.data, table_count)
    events = list(scan_volume(lambda o, n: damaged[o : o + n], size=len(damaged)))
    stops = [e for e in events if isinstance(e, ScanDamage) and not e.frame]
    assert len(stops) == 1 and "pack table" in stops[0].message
    assert stops[0].offset == entry.offset - entry.member_offset


def test_a_format_1_volume_still_reads() -> None:
    """Written by durafs before packs (616a99a): no `fpos`, version 1 everywhere."""
    data = (DATA / "volume-format1.tar").read_bytes()
    reader = VolumeReader(lambda o, n: data[o : o + n], size=len(data))
    entries = reader.read_manifest().chunks
    assert [e.frame_pos for e in entries] == [0, 0, 0]
    got = [reader.read_chunk(e.offset, e.length, e.size, e.id, e.frame_pos) for e in entries]
    assert got == [b"a small text file\n" * 20, b"another one, " * 50, bytes(range(256)) * 8]
    events = list(scan_volume(lambda o, n: data[o : o + n], size=len(data)))
    assert not [e for e in events if isinstance(e, ScanDamage)]
    assert len([e for e in events if isinstance(e, ScannedChunk)]) == 3


def test_a_manifest_and_seal_of_another_version_than_the_header_are_refused() -> None:
    """The three records of a volume carry one version (§8): a version 1 header over a
    version 2 manifest and seal is damage or a forgery, not a volume to read as either."""
    vol = write("none", [ChunkCodec(ID_KEY).encode(b"plain" * 100)])
    data = vol.data.replace(b'"format":2,"kind"', b'"format":1,"kind"', 1)
    assert data != vol.data
    reader = VolumeReader(lambda o, n: data[o : o + n], size=len(data))
    assert reader.header.format == 1
    with pytest.raises(FormatError, match="seal is format version 2, its volume header version 1"):
        reader.read_manifest()
    events = list(scan_volume(lambda o, n: data[o : o + n], size=len(data)))
    stops = [e for e in events if isinstance(e, ScanDamage)]
    assert len(stops) == 1 and "format version 2, its volume header version 1" in stops[0].message


def test_a_pack_in_a_format_1_volume_is_refused() -> None:
    codec = ChunkCodec(ID_KEY)
    out = io.BytesIO()
    header = replace(new_header(CATALOG, "v", "data", "pool", "none", ID_KEY), format=1)
    writer = VolumeWriter(out, header)
    for stored in codec.encode_pack(texts(3, seed=6)):
        writer.add_chunk(stored, [(b"/f", 0)])
    writer.finish()
    data = out.getvalue()
    reader = VolumeReader(lambda o, n: data[o : o + n], size=len(data))
    with pytest.raises(FormatError, match="format version 1 manifest lists chunks in packs"):
        reader.read_manifest()
    events = list(scan_volume(lambda o, n: data[o : o + n], size=len(data)))
    assert not [e for e in events if isinstance(e, ScannedChunk)]
    stops = [e for e in events if isinstance(e, ScanDamage)]
    assert len(stops) == 1 and "pack table in a format version 1 volume" in stops[0].message
