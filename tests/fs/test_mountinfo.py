# SPDX-License-Identifier: GPL-3.0-or-later
"""Finding a mount's device in mountinfo (for its kernel readahead), without a mount."""

from __future__ import annotations

from pathlib import Path

from durafs.fs.mount import mount_device

MOUNTINFO = """\
22 1 253:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
42 22 0:39 / /mnt/back\\040ups ro,nosuid,nodev,relatime - fuse.durafs durafs:/h ro,user_id=0
43 22 0:40 / /mnt/other ro,relatime - fuse.durafs durafs:/h ro,user_id=0
44 42 0:41 / /mnt/back\\040ups ro,nosuid,nodev,relatime - fuse.durafs durafs:/h ro,user_id=0
"""


def test_mount_device_takes_the_newest_mount_on_the_path(tmp_path: Path) -> None:
    info = tmp_path / "mountinfo"
    info.write_text(MOUNTINFO)
    assert mount_device("/mnt/back ups", str(info)) == "0:41"  # mounted over 0:39
    assert mount_device("/mnt/other", str(info)) == "0:40"
    assert mount_device("/mnt/none", str(info)) is None
