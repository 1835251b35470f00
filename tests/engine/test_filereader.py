"""filereader: the sparse reader hashes holes as the zeros they read as, without reading
or allocating them, and hands on only the data regions' chunks."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import blake3
import pytest

from durafs.engine.filereader import SparseReader, open_source_file
from durafs.engine.fsmeta import write_sparse
from durafs.format.chunker import Chunker

MiB = 1024 * 1024


def _sparse_file(path: Path, pieces: list[tuple[int, bytes]], size: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        write_sparse(fd, pieces, size)
    finally:
        os.close(fd)


def _read(path: Path) -> tuple[bytes, list[tuple[int, bytes]]]:
    submitted: list[tuple[int, bytes]] = []
    reader = SparseReader(Chunker(bytes(32)), follow_symlinks=False)
    digest, _, _ = reader.read_once(
        os.fsencode(path), os.stat(path), lambda piece, offset: submitted.append(
            (offset, bytes(piece)))
    )
    return digest, submitted


def test_holes_are_hashed_as_zeros_and_not_submitted(tmp_path: Path) -> None:
    # holes that are not whole MiB, before, between and after the data
    pieces = [(3 * MiB + 4096, os.urandom(5000)), (9 * MiB + 8192, b"tail data" * 1000)]
    size = 13 * MiB + 17
    path = tmp_path / "sparse"
    _sparse_file(path, pieces, size)
    if os.stat(path).st_blocks * 512 >= size:
        raise AssertionError("the test's file system does not keep holes")
    digest, submitted = _read(path)
    assert digest == blake3.blake3(path.read_bytes()).digest()
    covered = b"".join(data for _, data in submitted)
    assert len(covered) < MiB  # only the data regions were read, not the holes
    for offset, data in submitted:
        assert path.read_bytes()[offset : offset + len(data)] == data


def test_a_hole_is_hashed_in_bounded_memory(tmp_path: Path) -> None:
    """A 2 GiB hole hashed by a process allowed 1 GiB of address space: holes are hashed
    piece by piece (a hole may be terabytes), never from one buffer of zeros."""
    size = 2048 * MiB
    path = tmp_path / "huge"
    _sparse_file(path, [(0, b"start")], size)
    hasher = blake3.blake3(b"start")
    zeros = bytes(MiB)
    for _ in range(size // MiB - 1):
        hasher.update(zeros)
    hasher.update(zeros[: MiB - 5])
    script = f"""
import os, resource, sys
resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
from durafs.engine.fsmeta import write_sparse
from durafs.engine.filereader import SparseReader, open_source_file
from durafs.format.chunker import Chunker
path = {os.fsencode(path)!r}
got = []
digest, _, _ = SparseReader(Chunker(bytes(32)), follow_symlinks=False).read_once(
    path, os.stat(path), lambda piece, offset: got.append((offset, bytes(piece))))
# the data region is the block holding it: "start", then zeros to the block's end
assert [(o, len(d)) for o, d in got] == [(0, 4096)], [(o, len(d)) for o, d in got]
assert got[0][1] == b"start".ljust(4096, bytes(1))
sys.stdout.write(digest.hex())
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout == hasher.hexdigest()


def test_only_a_regular_file_of_the_owner_the_walk_saw_is_opened(tmp_path: Path) -> None:
    path = tmp_path / "victim"
    path.write_text("seen by the walk")
    seen = os.lstat(path)
    saved_over = tmp_path / "new"
    saved_over.write_text("saved by an editor")
    os.rename(saved_over, path)  # a new inode, same owner: read
    fd = open_source_file(os.fsencode(path), seen, follow=False)
    assert os.read(fd, 100) == b"saved by an editor"
    assert os.get_blocking(fd)
    os.close(fd)
    path.unlink()
    os.mkfifo(path)  # its open would block forever
    with pytest.raises(OSError) as raised:
        open_source_file(os.fsencode(path), seen, follow=False)
    assert raised.value.errno == errno.ESTALE
    if os.geteuid() == 0:  # someone else's file where ours was (a swapped directory)
        path.unlink()
        path.write_text("not yours")
        os.chown(path, 65534, 65534)
        with pytest.raises(OSError, match="replaced by another object"):
            open_source_file(os.fsencode(path), seen, follow=False)
