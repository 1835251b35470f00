"""Small files in packs (docs/FORMAT.md §2.2), end to end: backup, restore, verify,
recover and dedup, with real volumes on a directory medium."""

from __future__ import annotations

import io
import os
import random
import shutil
from pathlib import Path

from durafs.engine.home import Home
from durafs.engine.recover import CopyChecker
from durafs.format.frames import ChunkCodec
from durafs.format.header import ChunkEntry
from durafs.format.reader import VolumeReader
from durafs.format.writer import VolumeWriter, new_header
from durafs.index.catalog import open_catalog
from durafs.index.rows import NewChunk
from tests.engine.cli import checkpoint_names, durafs, setup_catalog
from tests.support.oddtree import compare_trees

ID_KEY = bytes(range(32))
WORDS = [b"def ", b"return ", b"self.", b"import ", b"value", b"(x)", b"\n    ", b"# why\n"]


def small_tree(root: Path, count: int, seed: int = 1, prefix: str = "f") -> None:
    rng = random.Random(seed)
    for i in range(count):
        sub = root / f"d{i % 7}"
        sub.mkdir(parents=True, exist_ok=True)
        text = b"".join(rng.choices(WORDS, k=rng.randrange(50, 1500)))
        (sub / f"{prefix}{i:04d}.py").write_bytes(text)


def data_volumes(pool: Path) -> dict[Path, list[ChunkEntry]]:
    """The chunk lines of every data volume on *pool* (a catalog in mode none), by file."""
    return dict(zip(data_files(pool), data_manifests(pool), strict=True))


def data_files(pool: Path) -> list[Path]:
    return [p for p in sorted((pool / "volumes").iterdir()) if "-data-" in p.name]


def data_manifests(pool: Path) -> list[list[ChunkEntry]]:
    """The chunk lines of every data volume on *pool* (a catalog in mode none)."""
    out = []
    for path in sorted((pool / "volumes").iterdir()):
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            reader = VolumeReader(lambda o, n, f=f: os.pread(f.fileno(), n, o), size=size)
            if reader.header.kind == "data":
                out.append(reader.read_manifest().chunks)
    return out


def test_small_files_go_in_packs_and_come_back(tmp_path: Path) -> None:
    source = tmp_path / "src"
    small_tree(source, 400)
    (source / "big.bin").write_bytes(os.urandom(300_000))  # a frame of its own
    pool = setup_catalog(tmp_path, encryption="none")
    run = durafs("backup", source, "--pool", "p", "--json")
    assert run.code == 0, run.err
    chunks = [c for m in data_manifests(pool) for c in m]
    assert len(chunks) == 401
    frames = {c.offset for c in chunks}
    assert len(frames) < 401 / 10  # most chunks share a frame
    assert sum(c.frame_pos > 0 for c in chunks) > 300
    assert all(len(c.files) == 1 for c in chunks)  # each listed for its file
    out = tmp_path / "out"
    assert durafs("restore", f"default/latest{source}", out).code == 0
    assert compare_trees(source, out) == []
    assert durafs("verify", "--read-data").code == 0


def test_copies_of_stored_files_next_to_new_ones_are_not_packed_again(
        tmp_path: Path) -> None:
    """A batch's small chunks the pool has already are left out of its pack (a pack is
    stored whole): only the new ones are stored."""
    source = tmp_path / "src"
    small_tree(source, 50)
    pool = setup_catalog(tmp_path, encryption="none")
    assert durafs("backup", source, "--pool", "p").code == 0
    # copies of stored files, next to new ones: read in one batch
    for i, old in enumerate(sorted((source / "d0").iterdir())):
        shutil.copy(old, source / "d0" / f"copy{i}.py")
    small_tree(source / "d0", 5, seed=9, prefix="new")
    stats = durafs("backup", source, "--pool", "p", "--json").json()["stats"]
    assert stats["chunks_new"] == 5
    second = data_manifests(pool)[-1]
    assert len(second) == 5 and all(c.files for c in second)
    assert len({c.offset for c in second}) == 1  # one pack
    for name in checkpoint_names():
        out = tmp_path / f"out-{name}"
        assert durafs("restore", f"default/{name}{source}", out).code == 0
    assert compare_trees(source, tmp_path / f"out-{checkpoint_names()[-1]}") == []
    assert durafs("verify", "--read-data").code == 0


def test_a_small_file_many_times_in_one_run_is_stored_once(tmp_path: Path) -> None:
    """Copies of one small file, in one batch and across many, are stored once: each
    batch's pack leaves out what an earlier batch packs or the run stored. (Two batches
    read at once may both pack it before either claims it: then one copy more.)"""
    source = tmp_path / "src"
    rng = random.Random(3)
    same = rng.randbytes(8000)
    for i in range(1000):
        sub = source / f"d{i // 40:02d}"
        sub.mkdir(parents=True, exist_ok=True)
        (sub / f"f{i:04d}").write_bytes(same if i % 20 == 0 else rng.randbytes(1000))
    (source / "d00" / "again").write_bytes(same)  # twice in one batch
    pool = setup_catalog(tmp_path, encryption="none")
    run = durafs("backup", source, "--pool", "p", "--json")
    assert run.code == 0, run.err
    assert run.json()["stats"]["chunks_new"] == 951
    listed = [c for chunks in data_manifests(pool) for c in chunks]
    assert len({c.id for c in listed}) == 951
    # the two batches the workers read first may both pack it: one copy at most
    assert len(listed) <= 952
    assert sum(len(c.files) for c in listed) == 951
    out = tmp_path / "out"
    assert durafs("restore", f"default/latest{source}", out).code == 0
    assert compare_trees(source, out) == []
    assert durafs("verify", "--read-data").code == 0


def test_damage_in_a_pack_is_named_and_hurts_nothing_outside_it(tmp_path: Path) -> None:
    """A byte flipped in a pack's frame hurts the chunks whose bytes now differ (a
    compressed frame has no checksum: what decodes before the damage is still what its id
    says, and is used): verify names those files, all in the pack; restore reports them and
    brings every other file back whole."""
    source = tmp_path / "src"
    small_tree(source, 200)
    pool = setup_catalog(tmp_path, encryption="none")
    assert durafs("backup", source, "--pool", "p").code == 0
    victim = source / "d3" / "f0003.py"
    with open_catalog(Home().index_path, readonly=True) as catalog:
        plan = catalog.plan("default")
        checkpoint = catalog.checkpoint("default", "latest")
        assert plan is not None and checkpoint is not None
        found = catalog.resolve(plan.id, checkpoint.seq, os.fsencode(victim))
        assert found is not None
        chunk = catalog.file_chunks(found)[0].chunk
        volume = catalog.volume(chunk.volume_id)
        assert volume is not None and volume.name
    in_pack = {bytes(f[0]) for c in data_manifests(pool)[0] if c.offset == chunk.offset
               for f in c.files}
    assert len(in_pack) > 1
    with open(pool / "volumes" / volume.name, "r+b") as f:
        f.seek(chunk.offset + chunk.length // 2)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 0xFF]))
    run = durafs("verify", "--read-data", "--json")
    assert run.code == 1
    named = {("/" + p.split("/", 2)[2])[len(str(source)):]
             for d in run.json()["damage"] for p in d["paths"]}
    assert named and named <= {os.fsdecode(p)[len(str(source)):] for p in in_pack}
    out = tmp_path / "out"
    run = durafs("restore", f"default/latest{source}", out)
    assert run.code == 1
    for path in source.rglob("*.py"):
        name = os.fspath(path)[len(str(source)):]
        if name in named:
            assert name in run.err
        else:
            assert (out / path.relative_to(source)).read_bytes() == path.read_bytes()


def test_recover_brings_packed_chunks_back(tmp_path: Path) -> None:
    source = tmp_path / "src"
    small_tree(source, 300)
    pool = setup_catalog(tmp_path, encryption="key")
    assert durafs("backup", source, "--pool", "p").code == 0
    identity = tmp_path / "identity.txt"
    assert durafs("key", "export-identity", identity).code == 0
    shutil.rmtree(Home().path)
    run = durafs("recover", "--path", pool, "--identity", identity)
    assert run.code == 0, run.err
    out = tmp_path / "out"
    assert durafs("restore", f"default/latest{source}", out).code == 0
    assert compare_trees(source, out) == []
    assert durafs("verify", "--read-data").code == 0
    stats = durafs("backup", source, "--pool", "p", "--json").json()["stats"]
    assert stats.get("bytes_new", 0) == 0


def test_copies_of_chunks_are_checked_with_each_volume_opened_once(tmp_path: Path) -> None:
    """Recover checks the first copy of every chunk stored twice; packs make those
    common (each lists the chunks in it the pool had), so a volume is opened (with a
    passphrase: an scrypt) once for all of its copies, not once per copy."""
    codec = ChunkCodec(ID_KEY)
    packed = codec.encode_pack([b"one" * 100, b"two" * 100, b"three" * 100])
    path = tmp_path / "v.tar"
    with open(path, "wb") as out:
        writer = VolumeWriter(out, new_header("c", "v", "data", "p", "none", ID_KEY))
        offset = writer.add_chunk(packed[0], [(b"/a", 0)])
        writer.finish()
    opened: list[int] = []
    closed: list[int] = []

    class Handle:
        def __init__(self, volume_id: int) -> None:
            self.volume_id = volume_id
            self.file = open(path, "rb")  # noqa: SIM115

        def close(self) -> None:
            closed.append(self.volume_id)
            self.file.close()

    def open_reader(volume_id: int) -> tuple[Handle, VolumeReader]:
        if volume_id == 99:
            raise OSError("gone")
        opened.append(volume_id)
        handle = Handle(volume_id)
        fd = handle.file.fileno()
        return handle, VolumeReader(lambda o, n: os.pread(fd, n, o), size=path.stat().st_size)

    checker = CopyChecker(open_reader)
    chunks = [NewChunk(s.id, offset, len(s.frame), s.size, s.raw, s.fpos) for s in packed]
    wrong = NewChunk(packed[1].id, offset, len(packed[1].frame), packed[1].size, False, 0)
    for _ in range(50):
        assert all(checker.sound(1, c) for c in chunks)
        assert not checker.sound(1, wrong)
        assert not checker.sound(99, chunks[0])
    assert opened == [1]
    for volume_id in range(2, 2 + CopyChecker.KEEP):  # the oldest goes when more are open
        assert checker.sound(volume_id, chunks[2])
    assert closed == [1]
    checker.close()
    assert sorted(closed) == [1, *range(2, 2 + CopyChecker.KEEP)]


def long_paths_split_a_pack(tmp_path: Path, encryption: str = "none") -> tuple[Path, Path]:
    """A tree whose long paths make each chunk's manifest record big, so a 1 MiB volume
    fills while a pack's chunks are being added: the next volume holds the whole pack
    again. Backed up into pool `p` of a new catalog; returns (source, pool)."""
    deep = tmp_path / "src"
    for i in range(12):
        deep = deep / (f"{i:02d}" + "d" * 240)
    deep.mkdir(parents=True)
    rng = random.Random(7)
    for i in range(60):  # random: raw packs, whose other pieces stay readable
        (deep / f"{i:02d}{'f' * 200}").write_bytes(rng.randbytes(3000))
    pool = setup_catalog(tmp_path, encryption=encryption, volume_size="1M")
    run = durafs("backup", tmp_path / "src", "--pool", "p", "--json")
    assert run.code == 0, run.err
    return tmp_path / "src", pool


def test_damage_only_in_a_packs_copy_of_a_stored_chunk_is_named_unneeded(
        tmp_path: Path) -> None:
    """A pack stored again whole (a volume filled while its chunks were added) holds
    copies of chunks whose rows point at the first volume. Damage in such a copy hurts no
    checkpoint, but it is damage on the medium, which verify names; it used to say
    nothing."""
    source, pool = long_paths_split_a_pack(tmp_path)
    volume, chunks = list(data_volumes(pool).items())[1]
    copy = next(c for c in chunks if not c.files)
    assert copy.raw
    with open(volume, "r+b") as f:  # in the copy's piece of the raw frame
        f.seek(raw_frame_byte(copy, copy.frame_pos + 100))
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 0xFF]))
    run = durafs("verify", "--read-data", "--json")
    report = run.json()
    assert report["damage"] == []
    assert len(report["damage_unneeded"]) == 1
    assert copy.id.hex()[:16] in report["damage_unneeded"][0]
    out = tmp_path / "out"
    assert durafs("restore", f"default/latest{source}", out).code == 0
    assert compare_trees(source, out) == []


def test_packs_in_many_volumes_come_back(tmp_path: Path) -> None:
    """Small volumes: a pack goes where it fits whole (its frame is counted with its first
    chunk), each volume's packs are listed there. Restore, verify and recover find every
    chunk."""
    source = tmp_path / "src"
    rng = random.Random(5)
    for i in range(900):  # random: ~2.7 MB that compresses to nothing less
        sub = source / f"d{i % 5}"
        sub.mkdir(parents=True, exist_ok=True)
        (sub / f"r{i:04d}").write_bytes(rng.randbytes(rng.randrange(1000, 5000)))
    pool = setup_catalog(tmp_path, encryption="none", volume_size="1M")
    run = durafs("backup", source, "--pool", "p", "--json")
    assert run.code == 0, run.err
    assert run.json()["stats"]["chunks_new"] == 900
    volumes = data_volumes(pool)
    assert len(volumes) >= 3
    listed = [c for chunks in volumes.values() for c in chunks]
    assert sum(c.frame_pos > 0 for c in listed) > 600
    assert {c.id for c in listed if c.files} == {c.id for c in listed}
    assert sum(len(c.files) for c in listed) == 900
    restores_verifies_and_recovers(source, pool, tmp_path)


def restores_verifies_and_recovers(source: Path, pool: Path, tmp_path: Path) -> None:
    """The latest checkpoint of *source* restores whole, verifies, and does both again
    after the index is rebuilt from *pool* (a catalog in mode none)."""
    for attempt in ("out", "out-recovered"):
        out = tmp_path / attempt
        assert durafs("restore", f"default/latest{source}", out).code == 0
        assert compare_trees(source, out) == []
        assert durafs("verify", "--read-data").code == 0
        if attempt == "out":
            shutil.rmtree(Home().path)
            assert durafs("recover", "--path", pool).code == 0


def test_a_pack_cut_by_a_volume_boundary_is_stored_whole_again(tmp_path: Path) -> None:
    """The volume that fills while a pack's chunks are being added is committed, and the
    next volume holds the whole pack again, its chunks listed in both (with their files
    where they were added). Restore, verify and recover find every chunk."""
    source, pool = long_paths_split_a_pack(tmp_path)
    volumes = list(data_volumes(pool).values())
    assert len(volumes) >= 2
    first, second = ({c.id for c in v} for v in volumes[:2])
    assert first & second  # the pack in both
    with_files = [c.id for v in volumes for c in v if c.files]
    assert sorted(with_files) == sorted(set(with_files)) and len(with_files) == 60
    restores_verifies_and_recovers(source, pool, tmp_path)


def raw_frame_byte(entry: ChunkEntry, content_pos: int) -> int:
    """Where byte *content_pos* of the raw frame of *entry* is in its volume (a raw frame:
    a 13-byte header, then blocks of at most 128 KiB, each after a 3-byte block header)."""
    assert entry.raw
    return entry.offset + 13 + 3 * (content_pos // (128 * 1024) + 1) + content_pos


def test_recover_takes_a_sound_copy_in_the_same_volume(tmp_path: Path) -> None:
    """A chunk may be listed twice in one volume (two batches packing the same small file
    at once: each claims it before the other has). Recover keeps a sound later copy of a
    chunk whose first copy is damaged, one in the same volume as much as one in another.
    The volume is written again here with a second copy, as such a run leaves it."""
    source = tmp_path / "src"
    rng = random.Random(11)
    same = rng.randbytes(3000)  # random: raw frames
    (source / "a").mkdir(parents=True)
    (source / "a" / "same").write_bytes(same)
    for i in range(10):
        (source / "a" / f"r{i:03d}").write_bytes(rng.randbytes(3000))
    pool = setup_catalog(tmp_path, encryption="none")
    assert durafs("backup", source, "--pool", "p").code == 0
    [(volume, chunks)] = data_volumes(pool).items()
    data = volume.read_bytes()
    reader = VolumeReader(lambda o, n: data[o : o + n], size=len(data))
    codec = ChunkCodec(reader.header.id_key)
    out = io.BytesIO()
    writer = VolumeWriter(out, reader.header)
    for c in chunks:
        plain = reader.read_chunk(c.offset, c.length, c.size, c.id, c.frame_pos)
        writer.add_chunk(codec.encode(plain), c.files)
    writer.add_chunk(codec.encode(same), [])  # the second copy
    writer.finish()
    volume.write_bytes(out.getvalue())
    copies = [c for c in data_volumes(pool)[volume] if c.id == codec.chunk_id(same)]
    assert len(copies) == 2 and copies[0].raw
    with open(volume, "r+b") as f:
        f.seek(raw_frame_byte(copies[0], 100))
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 0xFF]))
    shutil.rmtree(Home().path)
    assert durafs("recover", "--path", pool).code == 0
    restored = tmp_path / "out"
    run = durafs("restore", f"default/latest{source}", restored)
    assert run.code == 0, run.err
    assert compare_trees(source, restored) == []
    assert durafs("verify", "--read-data").code == 0
