# SPDX-License-Identifier: GPL-3.0-or-later
"""A volume found gone from its online medium, seen through a real mount."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.fs.catalogs import make_catalog

from .mounting import durafs, mounted

pytestmark = pytest.mark.fuse


def _online(path: Path) -> str:
    return subprocess.run(["getfattr", "--only-values", "-n", "user.durafs.online", str(path)],
                          capture_output=True, text=True, check=True).stdout


def test_online_says_lost_for_a_file_whose_volume_verify_found_gone(tmp_path: Path) -> None:
    """`user.durafs.online` is a promise that an open will read: `yes` for a file whose
    volume file is gone from its (online) medium would send a user to cp a file that can
    only fail. After the next backup stores the data again, the old checkpoint's file
    reads from the new copy and is `yes` again."""
    source = tmp_path / "src"
    source.mkdir()
    (source / "a").write_bytes(b"a" * 300_000)
    cat = make_catalog(tmp_path, source, encryption="none")
    first = cat.backup()
    (data,) = (cat.pool / "volumes").glob("*-data-*")
    with mounted(cat.home, tmp_path / "mnt") as mnt:
        old = mnt / "default" / first / str(source).lstrip("/") / "a"
        assert _online(old) == "yes"
        data.unlink()
        run = durafs(cat.home, "verify", "--json", check=False)
        assert run.returncode == 1, run.stdout
        assert _online(old) == "lost"
        with pytest.raises(OSError):
            old.read_bytes()
        assert cat.backup() != first  # reads the unchanged file again: its chunks are lost
        assert _online(old) == "yes"
        assert old.read_bytes() == (source / "a").read_bytes()
