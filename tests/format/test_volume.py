"""Volumes: round trips in every encryption mode, random access, scanning, damage."""

from __future__ import annotations

import io
import os
import random
import shutil
import subprocess
import uuid

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from durafs.errors import (
    DurafsError,
    ForeignCatalogError,
    IntegrityError,
    NoIdentityError,
    UnsupportedVersionError,
)
from durafs.format import age, tarfmt
from durafs.format.chunker import SMALL_FILE_MAX, Chunker
from durafs.format.frames import ChunkCodec
from durafs.format.header import Manifest, VolumeHeader, dumps
from durafs.format.reader import VolumeReader
from durafs.format.scanner import ScanDamage, ScannedChunk, scan_volume
from durafs.format.writer import VolumeWriter
from tests.format.volumes import CATALOG, ID_KEY, MODES, identities, write_volume

SIZES = [0, 1, 511, 512, 513, 65535, 65536, 65537, 3 * 65536 + 7]


def payload(size: int, rng: random.Random, compressible: bool) -> bytes:
    if compressible:
        words = [b"alpha ", b"beta ", b"gamma\n", b"delta "]
        out = b"".join(rng.choice(words) for _ in range(size // 5 + 1))
        return out[:size]
    return rng.randbytes(size)


payloads_strategy = st.lists(
    st.tuples(st.sampled_from(SIZES) | st.integers(0, 300_000), st.booleans(), st.integers()),
    min_size=0,
    max_size=12,
)


@pytest.mark.parametrize("mode", MODES)
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(specs=payloads_strategy)
def test_round_trip_every_chunk_by_offset(mode: str, specs: list[tuple[int, bool, int]]) -> None:
    payloads = [payload(n, random.Random(seed), comp) for n, comp, seed in specs]
    vol = write_volume(mode, payloads)
    reader = VolumeReader(vol.read_at, identities=identities(mode), size=len(vol.data))
    for offset, stored, data in vol.chunks:
        assert reader.read_chunk(offset, len(stored.frame), stored.size, stored.id) == data
    manifest = reader.read_manifest()
    assert [c.offset for c in manifest.chunks] == [c[0] for c in vol.chunks]
    assert [c.files for c in manifest.chunks] == [
        ((f"/src/file{i}".encode(), 0),) for i in range(len(payloads))
    ]
    events = list(scan_volume(vol.read_at, identities=identities(mode), size=len(vol.data)))
    assert not [e for e in events if isinstance(e, ScanDamage)]
    assert [e.id for e in events if isinstance(e, ScannedChunk)] == [c[1].id for c in vol.chunks]
    assert isinstance(events[-1], Manifest)


@pytest.mark.parametrize("tar", ["tar", "bsdtar"])
@pytest.mark.parametrize("mode", MODES)
def test_plain_volume_is_a_tar_that_tar_lists(
    mode: str, tar: str, tmp_path: os.PathLike[str]
) -> None:
    vol = write_volume(mode, [b"x" * 100, os.urandom(70_000)])
    reader = VolumeReader(vol.read_at, identities=identities(mode), size=len(vol.data))
    plain = reader.read(0, reader.plain_size or 0)
    path = os.path.join(tmp_path, "v.tar")
    with open(path, "wb") as f:
        f.write(plain)
    assert shutil.which(tar), f"{tar} is missing: scripts/setup.sh installs it"
    names = subprocess.run([tar, "-tf", path], capture_output=True, text=True,
                           check=True).stdout.split()
    assert names[0] == "durafs/volume.json"
    assert names[-2:] == ["durafs/manifest.jsonl.zst", "durafs/seal.json"]
    assert any(n.startswith("durafs/data/") for n in names)


def test_non_utf8_paths_round_trip_in_manifest() -> None:
    odd = b"/src/caf\xe9\nnew\xff"
    out = io.BytesIO()
    header = VolumeHeader(CATALOG, "v", "data", "p", 0, "none", ID_KEY)
    writer = VolumeWriter(out, header)
    from durafs.format.frames import ChunkCodec

    writer.add_chunk(ChunkCodec(ID_KEY).encode(b"hi"), [(odd, 7)])
    writer.finish()
    data = out.getvalue()
    manifest = VolumeReader(lambda o, n: data[o : o + n], size=len(data)).read_manifest()
    assert manifest.chunks[0].files == ((odd, 7),)


@pytest.mark.parametrize("size", [0, 1, SMALL_FILE_MAX, SMALL_FILE_MAX + 1, 9 * 1024 * 1024 + 3])
def test_chunker_covers_the_file_exactly(size: int) -> None:
    data = random.Random(size).randbytes(size)
    chunks = [bytes(c) for c in Chunker(ID_KEY).cut_buffer(data)]
    assert b"".join(chunks) == data
    if size <= SMALL_FILE_MAX:
        assert len(chunks) == 1
    streamed = [bytes(c) for c in Chunker(ID_KEY).cut_stream(io.BytesIO(data))]
    assert streamed == chunks or size <= SMALL_FILE_MAX


def test_insertion_in_a_large_file_restores_only_nearby_chunks() -> None:
    rng = random.Random(5)
    data = rng.randbytes(32 * 1024 * 1024)
    edited = data[:10_000_000] + b"inserted!" + data[10_000_000:]
    chunker = Chunker(ID_KEY)
    before = {bytes(c) for c in chunker.cut_buffer(data)}
    after = [bytes(c) for c in chunker.cut_buffer(edited)]
    new = [c for c in after if c not in before]
    assert len(after) >= 16
    assert len(new) <= 2, f"{len(new)} of {len(after)} chunks changed"


# -- damage ------------------------------------------------------------------------------


def scan_outcome(data: bytes, mode: str) -> str:
    """'ok' if a scan found nothing wrong, else 'damage' (an error or a ScanDamage)."""
    try:
        events = list(
            scan_volume(lambda o, n: data[o : o + n], identities=identities(mode), size=len(data))
        )
    except DurafsError:
        return "damage"
    return "damage" if any(isinstance(e, ScanDamage) for e in events) else "ok"


def flip_positions(size: int, header_len: int) -> list[int]:
    """Every byte of the first and last 3 KiB, and a dense sample of everything between."""
    dense = set(range(min(size, 3072 + header_len))) | set(range(max(0, size - 3072), size))
    return sorted(dense | set(range(0, size, 61)))


@pytest.mark.parametrize("mode", ["key", "none"])
def test_any_flipped_byte_is_detected(mode: str) -> None:
    vol = write_volume(mode, [b"small file\n" * 20, os.urandom(70_000), b"z" * 3000])
    assert scan_outcome(vol.data, mode) == "ok"
    missed = []
    for pos in flip_positions(len(vol.data), 300):
        damaged = bytearray(vol.data)
        damaged[pos] ^= 0x01
        if scan_outcome(bytes(damaged), mode) != "damage":
            missed.append(pos)
    assert not missed, f"undetected flips at {missed[:20]}"


def test_a_changed_byte_of_the_seal_is_detected_even_if_the_json_still_parses() -> None:
    """The seal's JSON is padded with spaces (FORMAT §3.3): a tab, newline or carriage
    return in their place still parses as JSON, but it is damage all the same."""
    vol = write_volume("none", [b"small file\n" * 20])
    seal = len(vol.data) - 1536  # its 512 bytes of data (§3.3)
    missed = []
    for pos in range(seal, seal + 512):
        for value in b"\t\n\r ":
            if vol.data[pos] == value:
                continue
            damaged = bytearray(vol.data)
            damaged[pos] = value
            if scan_outcome(bytes(damaged), "none") != "damage":
                missed.append((pos - seal, value))
    assert not missed, f"undetected changes at {missed[:20]}"


@pytest.mark.parametrize("mode", ["key", "none"])
def test_flipped_chunk_names_the_volume_and_chunk(mode: str) -> None:
    vol = write_volume(mode, [b"a" * 5000, os.urandom(100_000), os.urandom(200_000)])
    offset, stored, _ = vol.chunks[2]
    plain_pos = offset + len(stored.frame) // 2
    damaged = bytearray(vol.data)
    if mode == "none":
        damaged[plain_pos] ^= 0xFF
    else:
        # Ciphertext position of that plaintext byte: header, 16-byte nonce, 64 KiB chunks.
        chunk = plain_pos // 65536
        damaged[reader_header_len(vol) + 16 + chunk * 65552 + plain_pos % 65536] ^= 0xFF
    bad = VolumeReader(
        lambda o, n: bytes(damaged[o : o + n]), identities=identities(mode),
        size=len(damaged), name="vol-7.tar",
    )
    with pytest.raises(IntegrityError) as info:
        bad.read_chunk(offset, len(stored.frame), stored.size, stored.id)
    assert "vol-7.tar" in str(info.value)
    assert stored.id.hex()[:16] in str(info.value)
    # the other chunk is still readable
    first_off, first, first_data = vol.chunks[0]
    assert bad.read_chunk(first_off, len(first.frame), first.size, first.id) == first_data


def reader_header_len(vol: object) -> int:
    data = vol.data  # type: ignore[attr-defined]
    return data.index(b"\n---") + data[data.index(b"\n---") + 1 :].index(b"\n") + 2


@pytest.mark.parametrize("mode", ["key", "none"])
def test_truncation_is_detected_and_scanner_keeps_what_came_before(mode: str) -> None:
    vol = write_volume(mode, [os.urandom(40_000) for _ in range(6)], member_target=50_000)
    all_ids = [c[1].id for c in vol.chunks]
    for cut in sorted({*range(0, len(vol.data), 997), len(vol.data) - 1, len(vol.data) - 700}):
        data = vol.data[:cut]
        try:
            events = list(
                scan_volume(lambda o, n, d=data: d[o : o + n], identities=identities(mode))
            )
        except DurafsError:
            continue  # nothing readable at all (cut inside the header)
        assert isinstance(events[-1], ScanDamage), f"cut at {cut} not detected"
        seen = [e.id for e in events if isinstance(e, ScannedChunk)]
        assert seen == all_ids[: len(seen)]
    # a late cut still yields every chunk before it (encrypted: every chunk before the
    # last 64 KiB age STREAM chunk, which the cut leaves unauthenticated)
    plain_size = VolumeReader(vol.read_at, identities=identities(mode), size=len(vol.data))
    readable_end = (plain_size.plain_size or 0) - (600 if mode == "none" else 65536 + 600)
    data = vol.data[: len(vol.data) - 600]
    events = list(scan_volume(lambda o, n: data[o : o + n], identities=identities(mode)))
    seen = [e.id for e in events if isinstance(e, ScannedChunk)]
    expected = [c[1].id for c in vol.chunks if c[0] + len(c[1].frame) < readable_end]
    assert len(expected) >= 4
    assert seen[: len(expected)] == expected


# -- wrong keys, versions, catalogs ----------------------------------------------------------


def test_wrong_key_is_a_clear_error() -> None:
    vol = write_volume("key", [b"secret"])
    with pytest.raises(NoIdentityError):
        VolumeReader(vol.read_at, identities=[age.X25519Identity.generate()])


def test_wrong_passphrase_is_a_clear_error() -> None:
    vol = write_volume("password", [b"secret"])
    with pytest.raises(NoIdentityError, match="passphrase"):
        VolumeReader(vol.read_at, identities=[age.ScryptIdentity(b"wrong")])


def test_encrypted_volume_without_key_is_a_clear_error() -> None:
    vol = write_volume("key", [b"secret"])
    with pytest.raises(NoIdentityError, match="encrypted"):
        VolumeReader(vol.read_at)


def test_unknown_format_version_is_refused() -> None:
    body = dumps({"magic": "durafs-volume", "format": 3, "kind": "data"})
    data = tarfmt.member_header("durafs/volume.json", len(body), 0) + body
    data += bytes(tarfmt.padding(len(body))) + tarfmt.END_OF_ARCHIVE
    with pytest.raises(UnsupportedVersionError, match="version 3"):
        VolumeReader(lambda o, n: data[o : o + n])


def test_volume_from_another_catalog_is_refused() -> None:
    vol = write_volume("key", [b"data"])
    with pytest.raises(ForeignCatalogError, match=CATALOG):
        VolumeReader(vol.read_at, identities=identities("key"), catalog_id=str(uuid.uuid4()))


class _FailingSink:
    """A medium that fills up after *room* bytes."""

    def __init__(self, room: int) -> None:
        self.room = room
        self.data = bytearray()

    def write(self, data: bytes) -> None:
        if len(self.data) + len(data) > self.room:
            raise OSError(28, "No space left on device")
        self.data += data


@pytest.mark.parametrize("mode", ["key", "none"])
def test_a_write_failing_on_the_volume_thread_reaches_the_caller(mode: str) -> None:
    """Members are written on the volume's own thread: a failure there must still stop
    the volume (raised by a later add_chunk or by finish), never be lost."""
    header = VolumeHeader(CATALOG, uuid.uuid4().hex, "data", "pool", 0, mode, ID_KEY)
    sink = _FailingSink(room=300_000)
    recipients = [identities("key")[0].recipient()] if mode == "key" else []
    writer = VolumeWriter(sink, header, recipients, member_target=64 * 1024)
    codec = ChunkCodec(ID_KEY)
    with pytest.raises(OSError, match="No space left"):
        for i in range(40):
            writer.add_chunk(codec.encode(os.urandom(50_000)), [(b"/f", i)])
        writer.finish()
    assert len(sink.data) <= 300_000


@pytest.mark.parametrize("names", ["plain", "odd"])
def test_finish_adds_no_more_than_the_reserve(names: str) -> None:
    # A pool writer commits a volume while `size + reserve` fits its medium: finish must
    # never write more, however many records the manifest holds and however their paths
    # escape (random bytes do not compress either).
    rng = random.Random(11)
    out = io.BytesIO()
    header = VolumeHeader(CATALOG, "v", "data", "p", 0, "none", ID_KEY)
    writer = VolumeWriter(out, header)
    codec = ChunkCodec(ID_KEY)
    for i in range(3000):
        name = rng.randbytes(200) if names == "odd" else b"/src/dir/file%06d" % i
        writer.add_chunk(codec.encode(b"%d" % i), [(name, 0), (name + b"2", 4096)])
    writer._sync()  # every member written: what follows is finish's own
    before, reserve = out.tell(), writer.reserve
    writer.finish()
    assert 0 < out.tell() - before <= reserve
