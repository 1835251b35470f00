"""A directory medium on a real, small ext4 file system that fills up (ENOSPC)."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from durafs.errors import MediumFullError

from .helpers import new_medium, read_all, temp_files, write_pieces

IMAGE_SIZE = 16 * 1024 * 1024


def _missing_for_loop_mount() -> str | None:
    """What this machine lacks to mount an ext4 image, or None."""
    if os.geteuid() != 0:
        return f"mounting a loop device needs root (running as uid {os.geteuid()})"
    for tool in ("mkfs.ext4", "mount", "umount"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    if not os.path.exists("/dev/loop-control"):
        return "/dev/loop-control is missing (no loop device support)"
    return None


@pytest.fixture
def small_ext4(tmp_path: Path) -> Iterator[Path]:
    """A freshly made 16 MiB ext4 file system, mounted; unmounted afterwards."""
    missing = _missing_for_loop_mount()
    if missing:
        pytest.skip(missing)
    image = tmp_path / "disk.img"
    mount_point = tmp_path / "mnt"
    mount_point.mkdir()
    with open(image, "wb") as f:
        f.truncate(IMAGE_SIZE)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True, capture_output=True)
    mounted = subprocess.run(
        ["mount", "-o", "loop", str(image), str(mount_point)], capture_output=True, text=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"mount -o loop failed: {mounted.stderr.strip()}")
    try:
        yield mount_point
    finally:
        if subprocess.run(["umount", str(mount_point)]).returncode != 0:
            subprocess.run(["umount", "-l", str(mount_point)], check=True)


def test_a_full_disk_raises_medium_full_and_keeps_earlier_volumes(small_ext4: Path) -> None:
    # the mount point itself is the medium, lost+found and all, like a fresh USB disk
    medium = new_medium(small_ext4, "HDD-LOOP")
    assert 0 < medium.free_bytes() < IMAGE_SIZE
    committed = []
    with pytest.raises(MediumFullError) as info:
        for i in range(100):
            data = os.urandom(3 * 1024 * 1024)
            with medium.create_volume("data", f"vol-{i}", True) as sink:
                write_pieces(sink, data, seed=i, largest=70_000)
                committed.append((sink.commit(), hashlib.sha256(data).digest()))
    message = str(info.value)
    assert "HDD-LOOP" in message and str(small_ext4) in message

    assert len(committed) >= 2
    assert temp_files(medium) == []
    assert medium.list_volumes() == [v for v, _ in committed]
    for volume, digest in committed:
        assert hashlib.sha256(read_all(medium, volume.name)).digest() == digest
    # the medium now says it has no room for another volume like the one that failed
    assert medium.free_bytes() < 3 * 1024 * 1024
    assert medium.cleanup_temp() == []


def test_a_sink_kept_when_the_disk_fills_carries_its_volume_to_another_medium(
    small_ext4: Path, tmp_path: Path
) -> None:
    full = new_medium(small_ext4, "HDD-LOOP")
    other = new_medium(tmp_path / "other", "HDD-002")
    data = os.urandom(3 * full.free_bytes() // 2)  # more than the disk has room for
    sink = full.create_volume("data", "moving", True)
    assert sink.keep_if_full()
    with pytest.raises(MediumFullError, match="HDD-LOOP"):
        write_pieces(sink, data, largest=300_000)
    assert sink.kept and temp_files(full) == [".tmp-moving"]
    accepted = sink.written
    assert 0 < accepted < len(data)

    moved = other.create_volume("data", "moving", True)
    sink.copy_to(moved)
    assert moved.written == accepted
    write_pieces(moved, data[accepted:], largest=300_000)  # the rest, as if never stopped
    stored = moved.commit()
    sink.abort()
    assert temp_files(full) == [] and full.list_volumes() == []
    assert read_all(other, stored.name) == data
