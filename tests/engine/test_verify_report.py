"""What `durafs verify` tells about damage: every hurt path named, safely printed."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from tests.engine.cli import checkpoint_names, durafs, setup_catalog


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


def _damage_volume(volume: Path, how: str) -> None:
    if how == "gone":
        volume.unlink()
    else:  # the mtime field of the first tar header (the volume header's): no chunk's
        with open(volume, "r+b") as f:
            f.seek(140)
            byte = f.read(1)
            f.seek(140)
            f.write(bytes([byte[0] ^ 1]))


@pytest.mark.parametrize("how", ["gone", "header"])
@pytest.mark.parametrize("read", [(), ("--read-data-subset", "1"), ("--read-data",)])
def test_a_volume_that_cannot_be_opened_names_every_path_it_hurts(
    tmp_path: Path, how: str, read: tuple[str, ...]
) -> None:
    """No chunk of a volume that cannot be opened can be restored: verify names them all,
    with their paths, though it reads no data (plain verify) or only a sample of it
    (--read-data-subset: it named the sampled chunks only, so most of the hurt files)."""
    source = tmp_path / "src"
    _files(source, 8, 20_000)
    pool = setup_catalog(tmp_path, encryption="none")
    assert durafs("backup", source, "--pool", "p").code == 0
    (volume,) = (pool / "volumes").glob("*-data-*")
    _damage_volume(volume, how)
    run = durafs("verify", *read, "--json")
    assert run.code == 1, run.out
    report = run.json()
    assert any(volume.name in line for line in report["structure"])
    assert sorted(p for d in report["damage"] for p in d["paths"]) == sorted(
        f"default/{checkpoint_names()[0]}{source}/f{i}" for i in range(8))
    out = tmp_path / "out"
    run = durafs("restore", f"default/latest{source}", out)
    assert run.code == 1 and all(f"f{i}" in run.err for i in range(8)), run.err


def test_a_chunk_in_many_files_names_a_few_in_text_and_all_in_json(tmp_path: Path) -> None:
    """One chunk deduplicated into thousands of files made thousands of lines per
    checkpoint; the text shows the first 20 and says how many more, --json has them all."""
    source = tmp_path / "src"
    source.mkdir()
    same = os.urandom(5000)
    for i in range(25):
        (source / f"copy{i:02d}").write_bytes(same)
    pool = setup_catalog(tmp_path, encryption="none")
    assert durafs("backup", source, "--pool", "p").code == 0
    for volume in (pool / "volumes").glob("*-data-*"):
        volume.unlink()
    run = durafs("verify", "--read-data")
    assert run.code == 1
    assert sum(line.startswith("  affects ") for line in run.out.splitlines()) == 20
    assert "  ... and 5 more (--json lists them all)" in run.out.splitlines()
    [damage] = durafs("verify", "--read-data", "--json").json()["damage"]
    assert len(damage["paths"]) == 25


def test_a_volume_file_the_index_does_not_record_is_named_not_damage(tmp_path: Path) -> None:
    """A volume a killed backup wrote, or one copied there by hand, was passed over
    without a word."""
    source = tmp_path / "src"
    _files(source, 2, 1000)
    pool = setup_catalog(tmp_path, encryption="none")
    assert durafs("backup", source, "--pool", "p").code == 0
    stray = pool / "volumes" / f"000099-data-{uuid.uuid4()}.tar"
    stray.write_bytes(b"not recorded")
    run = durafs("verify", "--json")
    assert run.code == 0, run.out
    assert run.json()["unknown_volumes"] == [f"P-001: {stray.name}"]
    run = durafs("verify")
    assert f"not in the index: P-001: {stray.name}" in run.out and run.code == 0
    assert stray.read_bytes() == b"not recorded"
