# SPDX-License-Identifier: GPL-3.0-or-later
"""Catalogs with real backups in them, for the FUSE tree's tests (model and mounts)."""

from __future__ import annotations

import contextlib
import io
import os
import random
from dataclasses import dataclass
from pathlib import Path

from durafs.cli.main import main
from tests.engine.cli import Run

MiB = 1 << 20
#: Where the sparse test file has data (offset, bytes); everything else is a hole.
SPARSE_SIZE = 32 * MiB
SPARSE_DATA = ((0, b"start" * 100), (8 * MiB, b"middle" * 2000))
LINK_NAMES = (b"hard/a", b"hard/b", b"hard/sub/c")
MANY = 7


@dataclass
class Catalog:
    """A catalog directory (``home``) with one directory pool ``p`` whose medium is at
    ``pool``; backups of ``source`` go to plan ``default``."""

    home: Path
    pool: Path
    source: Path

    def durafs(self, *args: str | os.PathLike[str]) -> Run:
        """`durafs --home HOME ARGS…` in this process."""
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(["--home", str(self.home), *map(os.fspath, args)])
        return Run(code, out.getvalue(), err.getvalue())

    def backup(self) -> str:
        """Back up the source; return the new checkpoint's name."""
        run = self.durafs("backup", self.source, "--pool", "p", "--json")
        assert run.code == 0, run.err
        return str(run.json()["checkpoint"])

    def checkpoints(self) -> list[str]:
        return [c["name"] for c in self.durafs("checkpoints", "--json").json()]

    @property
    def index(self) -> Path:
        return self.home / "index.sqlite"

    @property
    def source_in_tree(self) -> bytes:
        """The source's absolute path as it appears inside a checkpoint ("/" stripped)."""
        return os.fsencode(self.source).lstrip(b"/")


def make_catalog(tmp: Path, source: Path, encryption: str = "key") -> Catalog:
    """A new catalog in *tmp*/home with pool ``p`` at *tmp*/pool, to back up *source*."""
    cat = Catalog(tmp / "home", tmp / "pool", source)
    run = cat.durafs("init", "--encryption", encryption)
    assert run.code == 0, run.err
    run = cat.durafs("pool", "add", "p", "--kind", "dir", "--path", cat.pool)
    assert run.code == 0, run.err
    return cat


def make_model_tree(root: Path) -> dict[str, bytes]:
    """A small tree with what the model must get right; returns file contents by path.

    Files of several sizes (one over the 1 MiB single-chunk limit), three hard links,
    a sparse file, a symlink, a FIFO, user xattrs, a 0600 file and a directory of
    `MANY` entries (for paged listings). Needs no privileges.
    """
    rng = random.Random(5)
    contents = {
        "small": b"hello\n",
        "empty": b"",
        "big": rng.randbytes(6 * MiB + 12345),  # over a max chunk: 2+ chunks, read whole
        "private": b"secret\n",
        "hard/a": b"linked three times\n",
    }
    (root / "hard" / "sub").mkdir(parents=True)
    (root / "many").mkdir()
    for name, data in contents.items():
        (root / name).write_bytes(data)
    (root / "private").chmod(0o600)
    os.link(root / "hard/a", root / "hard/b")
    os.link(root / "hard/a", root / "hard/sub/c")
    for i in range(MANY):
        (root / "many" / f"entry-{i}").write_bytes(b"%d\n" % i)
    os.symlink("small", root / "link")
    os.mkfifo(root / "fifo")
    os.setxattr(root / "small", "user.colour", b"blue")
    os.setxattr(root / "small", "user.empty", b"")
    with open(root / "sparse", "wb") as f:
        for offset, data in SPARSE_DATA:
            f.seek(offset)
            f.write(data)
        f.truncate(SPARSE_SIZE)
    return contents


def sparse_content() -> bytes:
    data = bytearray(SPARSE_SIZE)
    for offset, piece in SPARSE_DATA:
        data[offset : offset + len(piece)] = piece
    return bytes(data)
