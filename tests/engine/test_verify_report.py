"""What `durafs verify` tells about damage: every hurt path named, safely printed."""

from __future__ import annotations

import os
from pathlib import Path

from tests.engine.cli import durafs


def _files(source: Path, count: int, size: int) -> None:
    source.mkdir()
    for i in range(count):  # incompressible: one chunk each
        (source / f"f{i}").write_bytes(os.urandom(size))


def test_a_damage_reason_naming_a_medium_path_cannot_forge_lines(tmp_path: Path) -> None:
    """The reason of a damaged chunk can name the medium's path, which the user chose and
    may hold a newline or an ESC: printed as it is, it would forge a line of the report
    (README: no name can recolour a terminal or forge a line)."""
    source = tmp_path / "src"
    _files(source, 1, 1000)
    assert durafs("init", "--encryption", "none").code == 0
    pool = tmp_path / "po\nDAMAGE: forged\x1b[31m"
    assert durafs("pool", "add", "p", "--kind", "dir", "--path", pool).code == 0
    assert durafs("backup", source, "--pool", "p").code == 0
    for volume in (pool / "volumes").glob("*-data-*"):
        volume.unlink()
    run = durafs("verify", "--read-data")
    assert run.code == 1
    assert "\x1b" not in run.out
    assert not any(line.startswith("DAMAGE: forged") for line in run.out.splitlines())
    assert "po\\nDAMAGE: forged\\x1b[31m" in run.out
