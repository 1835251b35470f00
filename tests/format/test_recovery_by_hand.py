"""Recovery by hand: docs/FORMAT.md §9, run exactly as written, with no durafs imported.

The first test writes a tree into several key-encrypted volumes on a directory medium using
only durafs.format (a file deliberately split across two volumes); the second makes a chain
of checkpoints with the real `durafs backup` (a full catalog volume, then deltas with a
deletion, a change, a chmod, a renamed directory and hard links). Both then run the shell
blocks and the Python program from FORMAT.md — with the real age, tar, zstd and dd and a
Python started in isolated mode without site-packages — and compare every file.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import stat
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from durafs.format import age
from durafs.format.catalog import CheckpointRecord, TreeEntry, write_catalog
from durafs.format.chunker import Chunker
from durafs.format.frames import ChunkCodec
from durafs.format.keys import CatalogKeys
from durafs.format.writer import VolumeWriter, new_header
from tests.engine.cli import checkpoint_names, durafs, setup_catalog
from tests.engine.test_packs import long_paths_split_a_pack
from tests.support.oddtree import compare_trees as compare_all

FORMAT_MD = Path(__file__).resolve().parents[2] / "docs" / "FORMAT.md"
TOOLS = ("age", "tar", "zstd", "dd")


def doc_blocks(lang: str) -> list[str]:
    text = FORMAT_MD.read_text()
    section = text[text.index("## 9. Recovering by hand") :]
    return re.findall(rf"```{lang}\n(.*?)```", section, re.S)


def make_source(root: Path) -> None:
    rng = __import__("random").Random(7)
    (root / "docs").mkdir(parents=True)
    (root / "docs" / "notes.txt").write_text("hello\n" * 1000)
    (root / "docs" / "empty").write_bytes(b"")
    (root / "big.bin").write_bytes(rng.randbytes(3 * 1024 * 1024 + 123))
    (root / os.fsdecode(b"caf\xe9 \xff.txt")).write_bytes(b"latin-1 name")
    (root / "empty-dir").mkdir()
    (root / "link").symlink_to("docs/notes.txt")
    os.chmod(root / "docs" / "notes.txt", 0o640)
    os.utime(root / "big.bin", ns=(1_000_000_000, 1_234_567_891))


def entry_for(path: Path, name: bytes, st: os.stat_result) -> TreeEntry:
    kind = "d" if stat.S_ISDIR(st.st_mode) else "l" if stat.S_ISLNK(st.st_mode) else "f"
    target = os.readlink(os.fsencode(path)) if kind == "l" else None
    return TreeEntry(
        path=name, type=kind, mode=stat.S_IMODE(st.st_mode), uid=st.st_uid, gid=st.st_gid,
        mtime_ns=st.st_mtime_ns, atime_ns=st.st_atime_ns, ctime_ns=st.st_ctime_ns,
        size=st.st_size if kind == "f" else 0, target=target,
    )


class MiniBackup:
    """The smallest writer that fills volumes of a size limit on a directory medium."""

    def __init__(self, medium: Path, keys: CatalogKeys, volume_limit: int) -> None:
        self.medium, self.keys, self.limit = medium, keys, volume_limit
        self.codec = ChunkCodec(keys.id_key)
        self.seq = 0
        self.volumes: list[Path] = []
        self.writer: VolumeWriter | None = None
        self.out: io.BufferedWriter | None = None
        self.filled = False

    def _open(self, kind: str) -> VolumeWriter:
        self.seq += 1
        self.filled = False
        vid = uuid.uuid4().hex
        path = self.medium / "volumes" / f"{self.seq:06d}-{kind}-{vid}.tar.age"
        self.volumes.append(path)
        self.out = open(path, "wb")  # noqa: SIM115 - closed in _close
        header = new_header(self.keys.catalog_id, vid, kind, "pool", "key", self.keys.id_key)
        self.writer = VolumeWriter(self.out, header, self.keys.recipients, member_target=256_000)
        return self.writer

    def _close(self) -> None:
        if self.writer is not None and self.out is not None:
            self.writer.finish()
            self.out.close()
        self.writer = None

    def add_file(self, path: Path, name: bytes) -> list[tuple[int, bytes, int]]:
        chunks, offset = [], 0
        for piece in Chunker(self.keys.id_key).cut_buffer(path.read_bytes()):
            stored = self.codec.encode(piece)
            writer = self.writer or self._open("data")
            # a chunk larger than the limit still goes into a fresh volume: never rotate
            # away from a volume without chunks (an empty data volume helps no test)
            if writer.size + len(stored.frame) > self.limit and self.filled:
                self._close()
                writer = self._open("data")
            writer.add_chunk(stored, [(name, offset)])
            self.filled = True
            chunks.append((offset, stored.id, stored.size))
            offset += stored.size
        return chunks

    def run(self, source: Path) -> None:
        entries = []
        for dirpath, dirnames, filenames in os.walk(os.fsencode(source)):
            dirnames.sort()
            for name in [b"", *sorted(dirnames), *sorted(filenames)]:
                path = Path(os.fsdecode(os.path.join(dirpath, name))) if name else Path(
                    os.fsdecode(dirpath))
                if not name and dirpath != os.fsencode(source):
                    continue
                if name in dirnames:
                    st = os.lstat(path)
                    entries.append(entry_for(path, os.fsencode(path), st))
                    continue
                st = os.lstat(path)
                entry = entry_for(path, os.fsencode(path), st)
                if entry.type == "f":
                    entry.chunks = self.add_file(path, os.fsencode(path))
                entries.append(entry)
        self._close()
        writer = self._open("catalog")
        record = CheckpointRecord("default", "2026-11-21T000000Z", 1, 2, [os.fsencode(source)])
        write_catalog(writer, record, entries)
        self._close()


def compare_trees(src: Path, out: Path) -> None:
    src_b, out_b = os.fsencode(src), os.fsencode(out) + os.fsencode(src)
    for dirpath, dirnames, filenames in os.walk(src_b):
        for name in dirnames + filenames:
            a = os.path.join(dirpath, name)
            b = out_b + a[len(src_b) :]
            sa, sb = os.lstat(a), os.lstat(b)
            assert stat.S_IFMT(sa.st_mode) == stat.S_IFMT(sb.st_mode), a
            assert stat.S_IMODE(sa.st_mode) == stat.S_IMODE(sb.st_mode) or stat.S_ISLNK(
                sa.st_mode), a
            assert sa.st_mtime_ns == sb.st_mtime_ns, a
            if stat.S_ISREG(sa.st_mode):
                with open(a, "rb") as fa, open(b, "rb") as fb:
                    assert fa.read() == fb.read(), a
            if stat.S_ISLNK(sa.st_mode):
                assert os.readlink(a) == os.readlink(b)


def unpack_by_hand(medium: Path, work: Path) -> Path:
    """Run §9.1 and §9.2 into *work* (identity.txt in it is moved out first, a key is not
    kept with the volumes) and save §9.3's program."""
    missing = [t for t in TOOLS if shutil.which(t) is None]
    assert not missing, f"install {missing} (scripts/setup.sh does): the test needs the real tools"
    shell_dir, _tape, unpack = doc_blocks("sh")
    assert work.name == "work"  # the block makes it and goes there, as a person would
    identity = work.parent / "keys" / "identity.txt"  # kept elsewhere, as a person would
    identity.parent.mkdir()
    (work / "identity.txt").rename(identity)
    env = {"PATH": os.environ["PATH"], "MEDIUM": str(medium), "LC_ALL": "C",
           "IDENTITY": str(identity)}
    script = "\n".join(line for line in shell_dir.split("\n")  # the two set by hand
                       if not line.startswith(("MEDIUM=", "IDENTITY=")))
    subprocess.run(["bash", "-euc", script + unpack], cwd=work.parent, env=env, check=True)
    program = work / "recover.py"
    program.write_text(doc_blocks("python")[0])
    return program


def recover_by_hand(program: Path, work: Path, out: Path, *args: str) -> str:
    """Run §9.3's program in an isolated Python; returns what it said."""
    python = shutil.which("python3", path="/usr/bin:/bin") or sys.executable
    result = subprocess.run(
        [python, "-I", "-S", str(program), str(work), str(out), *args],
        capture_output=True, text=True, env={"PATH": os.environ["PATH"], "LC_ALL": "C"},
    )
    assert result.returncode == 0, result.stderr
    return result.stderr


def test_recover_a_directory_medium_by_hand(tmp_path: Path) -> None:
    source, medium, work, out = (tmp_path / d for d in ("src", "medium", "work", "out"))
    make_source(source)
    (medium / "volumes").mkdir(parents=True)
    identity = age.X25519Identity.generate()
    # a fixed id key: the chunker's cut points follow it, and with some keys big.bin is
    # one chunk, which no 2 MiB volume splits (the assertion below then failed by chance)
    keys = CatalogKeys(uuid.uuid4().hex, "key", bytes(range(32)), [identity.recipient()])
    (medium / keys.keys_file_name).write_bytes(keys.keys_file())
    backup = MiniBackup(medium, keys, volume_limit=2 * 1024 * 1024)
    backup.run(source)
    assert len(backup.volumes) >= 3  # big.bin cannot fit in one 2 MiB volume
    work.mkdir()
    (work / "identity.txt").write_bytes(age.write_identity_file(identity, None))

    program = unpack_by_hand(medium, work)
    recover_by_hand(program, work, out)
    compare_trees(source, out)
    holders = [m for m in work.glob("*-data-*/durafs/manifest.jsonl") if "big.bin" in m.read_text()]
    assert len(holders) >= 2, "big.bin should be split across volumes"

    # one chunk straight out of a decrypted volume with dd, as §9.2 shows
    manifest = next(work.glob("*-data-*/durafs/manifest.jsonl"))
    first = next(ln for ln in manifest.read_text().splitlines() if '"t":"chunk"' in ln)
    rec = __import__("json").loads(first)
    tar = manifest.parents[1].with_suffix(".tar")
    dd = subprocess.run(
        f"dd if={tar} iflag=skip_bytes,count_bytes skip={rec['off']} count={rec['len']} "
        "status=none | zstd -dq",
        shell=True, capture_output=True, check=True,
    )
    assert len(dd.stdout) == rec["size"]
    assert ChunkCodec(keys.id_key).chunk_id(dd.stdout).hex() == rec["id"]


def change_between_checkpoints(src: Path, step: int) -> None:
    if step == 1:
        (src / "docs" / "notes.txt").write_text("changed\n" * 10)
        (src / "docs" / "empty").unlink()
        os.chmod(src / "big.bin", 0o600)  # metadata only
        os.link(src / "docs" / "notes.txt", src / "notes-link")
        (src / "empty-dir").rename(src / "renamed-dir")
    else:
        (src / "docs" / "notes.txt").rename(src / "zz-moved.txt")  # the group's first file
        (src / "docs" / "new.txt").write_text("new\n")


def test_recover_a_chain_of_catalog_volumes_by_hand(tmp_path: Path) -> None:
    source, work, snaps = tmp_path / "data" / "src", tmp_path / "work", tmp_path / "snaps"
    make_source(source)
    medium = setup_catalog(tmp_path)
    snaps.mkdir()
    for step in range(3):
        if step:
            change_between_checkpoints(source, step)
        run = durafs("backup", source, "--pool", "p")
        assert run.code == 0, run.err
        subprocess.run(["cp", "-a", source, snaps / str(step)], check=True)
    work.mkdir()
    assert durafs("key", "export-identity", work / "identity.txt").code == 0

    program = unpack_by_hand(medium, work)
    depths = sorted(__import__("json").loads(p.read_text())["depth"]
                    for p in work.glob("*-catalog-*/durafs/catalog/checkpoint.json"))
    assert depths == [0, 1, 2]
    assert list(work.glob("*-catalog-*/durafs/catalog/deleted.jsonl"))
    for step, name in enumerate(checkpoint_names()):
        out = tmp_path / f"out-{step}"
        said = recover_by_hand(program, work, out, "--checkpoint", name)
        assert f"restoring default/{name}" in said
        assert compare_all(snaps / str(step), Path(os.fspath(out) + os.fspath(source))) == []


def test_recover_from_manifests_alone_with_a_chunk_listed_twice(tmp_path: Path) -> None:
    """With no catalog volume left, §9.3 restores what the manifests name. A pack lists
    every chunk in it; one stored again whole in the next volume (its volume filled while
    its chunks were added) lists the copies with `"files":[]`: that line must not hide
    the file the first one names."""
    source, medium = long_paths_split_a_pack(tmp_path, encryption="key")
    work, out = tmp_path / "work", tmp_path / "out"
    work.mkdir()
    assert durafs("key", "export-identity", work / "identity.txt").code == 0
    program = unpack_by_hand(medium, work)
    lines = [__import__("json").loads(line)
             for m in work.glob("*-data-*/durafs/manifest.jsonl")
             for line in m.read_text().splitlines() if '"t":"chunk"' in line]
    assert any(not rec["files"] for rec in lines)  # the copies, in the pack stored again
    named = {os.fsencode(path) for rec in lines for path, _ in rec["files"]}
    assert len(named) == 60
    for catalog_volume in work.glob("*-catalog-*/"):  # as if no catalog volume survived
        shutil.rmtree(catalog_volume)
    said = recover_by_hand(program, work, out)
    assert "restoring from data manifests only" in said
    for path in named:
        got = Path(os.fsdecode(os.fsencode(out) + path))
        assert got.read_bytes() == Path(os.fsdecode(path)).read_bytes(), path
    assert source.is_dir()


@pytest.mark.parametrize("tool", TOOLS)
def test_recovery_tools_are_installed(tool: str) -> None:
    assert shutil.which(tool), f"{tool} is missing: scripts/setup.sh installs it"
