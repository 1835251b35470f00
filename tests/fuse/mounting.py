# SPDX-License-Identifier: GPL-3.0-or-later
"""Mounting through the real `durafs` command in a child process, and cleaning up."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

MOUNT_TIMEOUT = 30.0


def fuse_skip_reason() -> str | None:
    """Why real mounts cannot be tested here, or None."""
    if os.geteuid() != 0:
        return "needs root (mounts, devices, files of other owners, setpriv)"
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse is missing"
    if shutil.which("fusermount3") is None:
        return "fusermount3 is not installed (apt-get install fuse3)"
    try:
        os.close(os.open("/dev/fuse", os.O_RDWR))
    except OSError as exc:
        return f"/dev/fuse cannot be opened: {exc}"
    return None


def durafs_command(home: Path, *args: str | os.PathLike[str]) -> list[str]:
    return [sys.executable, "-m", "durafs.cli.main", "--home", str(home), *map(os.fspath, args)]


def durafs(home: Path, *args: str | os.PathLike[str], timeout: float = 60,
           check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run `durafs --home HOME ARGS…` as a child process; *check*: fail the test on rc != 0."""
    result = subprocess.run(durafs_command(home, *args), capture_output=True, text=True,
                            timeout=timeout, check=False)
    if check:
        assert result.returncode == 0, f"durafs {args}: {result.returncode}\n{result.stderr}"
    return result


def is_mounted(path: Path) -> bool:
    try:
        os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ENOTCONN:
            return True  # stale, but still a mount
        raise
    return os.path.ismount(path)


def server_pid(home: Path, mountpoint: Path) -> int:
    """The pid of the process serving *mountpoint* (from its mount record)."""
    for record in (home / "mounts").glob("*.json"):
        data = json.loads(record.read_text())
        if data["mountpoint"] == os.path.abspath(mountpoint):
            return int(data["pid"])
    raise AssertionError(f"no mount record for {mountpoint}")


def force_unmount(path: Path) -> None:
    """Best effort, for cleanup after a failure."""
    for command in (["fusermount3", "-u", "-z", str(path)], ["umount", "-l", str(path)]):
        if not is_mounted(path):
            return
        subprocess.run(command, capture_output=True, check=False)


@contextmanager
def mounted(home: Path, mountpoint: Path, *options: str) -> Iterator[Path]:
    """`durafs mount MOUNTPOINT OPTIONS…` in the background; unmounted afterwards."""
    mountpoint.mkdir(parents=True, exist_ok=True)
    durafs(home, "mount", mountpoint, *options, timeout=MOUNT_TIMEOUT)
    # the command returns only once the mount works: no polling needed
    assert os.path.ismount(mountpoint)
    try:
        yield mountpoint
    finally:
        if is_mounted(mountpoint):
            result = durafs(home, "umount", mountpoint, check=False)
            if result.returncode != 0:
                force_unmount(mountpoint)


def wait_until(condition: object, timeout: float, what: str, interval: float = 0.05) -> None:
    """Poll *condition* (a callable) until true; fail with *what* after *timeout* s."""
    assert callable(condition)
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)
