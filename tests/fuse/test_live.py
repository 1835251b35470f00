# SPDX-License-Identifier: GPL-3.0-or-later
"""A mount's life: backups while mounted, umount, SIGTERM, crashes, errors reported."""

from __future__ import annotations

import errno
import hashlib
import os
import random
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from durafs.fs.mount import READAHEAD_KIB, mount_device
from tests.fs.catalogs import make_catalog
from tests.support.oddtree import world_dir

from .mounting import (
    durafs,
    durafs_command,
    force_unmount,
    is_mounted,
    mounted,
    server_pid,
    wait_until,
)

pytestmark = pytest.mark.fuse


def _catalog(tmp: Path) -> tuple[Path, Path]:
    """A catalog in tmp/home with one checkpoint of tmp/src; returns (home, source)."""
    source = tmp / "src"
    source.mkdir()
    (source / "big").write_bytes(random.Random(1).randbytes(6 * 1024 * 1024))
    (source / "hello").write_text("hello\n")
    cat = make_catalog(tmp, source, encryption="none")  # in-process: quicker
    cat.backup()
    return cat.home, source


def _plan_dir(mnt: Path) -> Path:
    return mnt / "default"


def test_backup_while_mounted_shows_up_without_remount(tmp_path: Path) -> None:
    home, source = _catalog(tmp_path)
    with mounted(home, tmp_path / "mnt") as mnt:
        before = sorted(os.listdir(_plan_dir(mnt)))
        assert len(before) == 2  # one checkpoint and latest
        big = mnt / "default" / "latest" / str(source).lstrip("/") / "big"
        expected = hashlib.sha256((source / "big").read_bytes()).hexdigest()
        digests: list[str] = []

        def keep_reading() -> None:  # reads go on while the backup writes the index
            for _ in range(3):
                digests.append(hashlib.sha256(big.read_bytes()).hexdigest())

        reader = threading.Thread(target=keep_reading)
        reader.start()
        (source / "new-file").write_text("made while mounted\n")
        durafs(home, "backup", source, "--pool", "p")
        reader.join(timeout=60)
        assert digests == [expected] * 3
        wait_until(lambda: len(os.listdir(_plan_dir(mnt))) == 3, 3,
                   "the new checkpoint in the plan directory")
        names = sorted(n for n in os.listdir(_plan_dir(mnt)) if n != "latest")
        wait_until(lambda: os.readlink(_plan_dir(mnt) / "latest") == names[-1], 3,
                   "latest to point to the new checkpoint")
        new = mnt / "default" / "latest" / str(source).lstrip("/") / "new-file"
        assert new.read_text() == "made while mounted\n"
        old = mnt / "default" / names[0] / str(source).lstrip("/")
        assert not (old / "new-file").exists()


def test_small_files_read_in_order_and_again(tmp_path: Path) -> None:
    """Read in backup order, small files come from volume runs and reach the kernel's page
    cache at open (no read request); the bytes must be right both times."""
    source = tmp_path / "src"
    rng = random.Random(3)
    contents = {f"d{i % 3}/f{i:04d}": rng.randbytes(rng.randrange(0, 9000)) for i in range(400)}
    for rel, data in contents.items():
        (source / rel).parent.mkdir(parents=True, exist_ok=True)
        (source / rel).write_bytes(data)
    cat = make_catalog(tmp_path, source)  # encrypted: runs decrypt a range at a time
    cat.backup()
    with mounted(cat.home, tmp_path / "mnt") as mnt:
        root = mnt / "default" / "latest" / str(source).lstrip("/")
        for order in (sorted(contents), sorted(contents, reverse=True)):
            for rel in order:
                assert (root / rel).read_bytes() == contents[rel], rel


def test_kernel_readahead_is_raised(tmp_path: Path) -> None:
    home, _ = _catalog(tmp_path)
    with mounted(home, tmp_path / "mnt") as mnt:
        st = os.stat(mnt)
        device = f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}"
        assert mount_device(str(mnt.resolve())) == device
        setting = Path(f"/sys/class/bdi/{device}/read_ahead_kb")
        wait_until(lambda: setting.read_text().strip() == str(READAHEAD_KIB), 5,
                   f"{setting} to become {READAHEAD_KIB}")


def test_umount_stops_the_server(tmp_path: Path) -> None:
    home, _ = _catalog(tmp_path)
    mnt = tmp_path / "mnt"
    with mounted(home, mnt):
        pid = server_pid(home, mnt)
        assert os.listdir(mnt) == ["default"]
        durafs(home, "umount", mnt)
        assert not is_mounted(mnt)
        # umount returns once the server is gone
        assert not os.path.exists(f"/proc/{pid}") or _zombie(pid)
        assert list((home / "mounts").glob("*.json")) == []
    result = durafs(home, "umount", mnt, check=False)
    assert result.returncode == 2 and "not mounted" in result.stderr


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] == "Z"
    except OSError:
        return True


def test_sigterm_unmounts_a_foreground_mount(tmp_path: Path) -> None:
    home, _ = _catalog(tmp_path)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    server = subprocess.Popen(durafs_command(home, "mount", mnt, "--foreground"),
                              stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: os.path.ismount(mnt) or server.poll() is not None, 30, "the mount")
        assert server.poll() is None, server.communicate()[1]
        assert os.listdir(mnt) == ["default"]
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=10) == 0
        assert not is_mounted(mnt)
        assert server.stderr is not None and "mounted on" in server.stderr.read()
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
        force_unmount(mnt)


def test_a_stale_mount_is_cleaned_by_the_next_mount(tmp_path: Path) -> None:
    home, _ = _catalog(tmp_path)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    try:
        durafs(home, "mount", mnt)
        os.kill(server_pid(home, mnt), signal.SIGKILL)
        wait_until(lambda: _stat_errno(mnt) == errno.ENOTCONN, 5, "the mount to go stale")
        result = durafs(home, "mount", mnt)
        assert "stale" in result.stderr
        assert os.listdir(mnt) == ["default"]
        durafs(home, "umount", mnt)
        assert not is_mounted(mnt)
    finally:
        force_unmount(mnt)


def _stat_errno(path: Path) -> int:
    try:
        os.stat(path)
    except OSError as exc:
        return exc.errno or 0
    return 0


def test_mount_errors_are_reported_before_returning(tmp_path: Path) -> None:
    home, _ = _catalog(tmp_path)
    missing = durafs(home, "mount", tmp_path / "nowhere", check=False)
    assert missing.returncode == 2 and "no such directory" in missing.stderr
    bad = durafs(home, "mount", tmp_path, "--offline", "sometimes", check=False)
    assert bad.returncode == 2 and "--offline" in bad.stderr
    option = durafs(home, "mount", tmp_path, "-o", "rw", check=False)
    assert option.returncode == 2 and "rw" in option.stderr
    with mounted(home, tmp_path / "mnt") as mnt:
        again = durafs(home, "mount", mnt, check=False)
        assert again.returncode == 2 and "already a mount point" in again.stderr
    nohome = durafs(tmp_path / "no-catalog", "mount", tmp_path, check=False)
    assert nohome.returncode == 2 and "durafs init" in nohome.stderr


def test_other_users_stay_out_without_allow_other(tmp_path: Path) -> None:
    home, _ = _catalog(tmp_path)
    with world_dir() as shared, mounted(home, shared / "mnt") as mnt:
        result = subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup",
                                 "--clear-groups", "ls", str(mnt)],
                                capture_output=True, text=True, check=False)
        assert result.returncode != 0 and "Permission denied" in result.stderr
        assert os.listdir(mnt) == ["default"]  # the user who mounted it gets in


def test_umount_of_a_busy_mount_says_what_to_do(tmp_path: Path) -> None:
    home, source = _catalog(tmp_path)
    with mounted(home, tmp_path / "mnt") as mnt, \
            open(mnt / "default" / "latest" / str(source).lstrip("/") / "hello", "rb"):
        result = durafs(home, "umount", mnt, check=False)
        assert result.returncode == 3 and "fusermount3 -uz" in result.stderr
        assert os.path.ismount(mnt)


def test_umount_and_mount_leave_other_file_systems_alone(tmp_path: Path) -> None:
    home, _ = _catalog(tmp_path)
    other = tmp_path / "tmpfs"
    other.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "durafs-test", other], check=True)
    try:
        (other / "precious").write_text("keep\n")
        result = durafs(home, "umount", other, check=False)
        assert result.returncode == 2, result.stderr
        assert "a tmpfs mount, not a durafs one" in result.stderr
        assert (other / "precious").read_text() == "keep\n"
    finally:
        subprocess.run(["umount", other], check=False)


def test_a_mount_point_named_through_a_symlink_is_the_same_mount(tmp_path: Path) -> None:
    home, _ = _catalog(tmp_path)
    (tmp_path / "mnt").mkdir()
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "mnt")
    try:
        durafs(home, "mount", link)
        assert os.listdir(tmp_path / "mnt") == ["default"]
        again = durafs(home, "mount", tmp_path / "mnt", check=False)
        assert again.returncode == 2 and "already a mount point" in again.stderr
        durafs(home, "umount", link)
        assert not is_mounted(tmp_path / "mnt")
    finally:
        force_unmount(tmp_path / "mnt")


def test_no_mount_on_above_or_inside_durafs_own_data(tmp_path: Path) -> None:
    home, _ = _catalog(tmp_path)  # its pool's medium is tmp/pool
    medium = next(p for p in tmp_path.iterdir() if (p / "DURAFS-MEDIUM.json").exists())
    (medium / "volumes").mkdir(exist_ok=True)
    for where, says in [(home, "is durafs's catalog directory"),
                        (tmp_path, "holds durafs's catalog directory"),
                        (home / "mounts", "is inside durafs's catalog directory"),
                        (medium / "volumes", "is inside medium ")]:
        where.mkdir(exist_ok=True)
        result = durafs(home, "mount", where, check=False, timeout=20)
        assert result.returncode == 2 and says in result.stderr, (where, result.stderr)
        assert not is_mounted(where)


def test_umount_of_a_killed_mount_forgets_it(tmp_path: Path) -> None:
    home, _ = _catalog(tmp_path)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    try:
        durafs(home, "mount", mnt)
        os.kill(server_pid(home, mnt), signal.SIGKILL)
        wait_until(lambda: _stat_errno(mnt) == errno.ENOTCONN, 5, "the mount to go stale")
        durafs(home, "umount", mnt)
        assert not is_mounted(mnt)
        assert list((home / "mounts").glob("*.json")) == []
    finally:
        force_unmount(mnt)


def test_mounting_over_files_says_they_are_hidden(tmp_path: Path) -> None:
    home, _ = _catalog(tmp_path)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    (mnt / "mine").write_text("mine\n")
    try:
        result = durafs(home, "mount", mnt)
        assert f"{mnt} is not empty: what is in it stays hidden" in result.stderr
        assert os.listdir(mnt) == ["default"]
        durafs(home, "umount", mnt)
        assert (mnt / "mine").read_text() == "mine\n"
    finally:
        force_unmount(mnt)


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_the_device_is_polled_while_busy_and_never_while_idle(tmp_path: Path) -> None:
    source = tmp_path / "src"
    source.mkdir()
    for i in range(200):
        (source / f"f{i:03d}").write_text(f"{i}\n")
    cat = make_catalog(tmp_path, source, encryption="none")
    cat.backup()
    home, mnt = cat.home, tmp_path / "mnt"
    with mounted(home, mnt):
        pid = server_pid(home, mnt)
        checkpoint = sorted(p for p in os.listdir(mnt / "default") if p != "latest")[-1]
        listing = subprocess.run(["ls", "-lR", str(mnt / "default" / checkpoint)],
                                 capture_output=True, text=True, check=True).stdout
        assert "f199" in listing
        before = _cpu_seconds(pid)
        time.sleep(1.0)
        # an idle mount sleeps in epoll: polling would have used the second
        assert _cpu_seconds(pid) - before < 0.2
    log = (home / "logs" / "mount.log").read_text()
    match = re.search(r"requests taken by polling the device: (\d+); waits asleep: (\d+)", log)
    assert match, log
    assert int(match.group(1)) > 0  # ls's requests came within the spin


def test_a_mount_forgets_the_passphrase_of_its_environment(tmp_path: Path) -> None:
    """A mount lives on, and /proc/PID/environ shows its starting environment to anyone
    running as the same user (ptrace restrictions or not): the passphrase must not stay
    there. The files still read: the keys are in memory."""
    source = tmp_path / "src"
    source.mkdir()
    (source / "hello").write_text("hello\n")
    home, mnt = tmp_path / "home", tmp_path / "mnt"
    secret = f"correct horse {os.getpid()} battery staple"
    env = {**os.environ, "DURAFS_PASSPHRASE": secret, "DURAFS_BENIGN": "kept"}
    for args in (("init", "--encryption", "password", "--work-factor", "10"),
                 ("pool", "add", "p", "--kind", "dir", "--path", tmp_path / "pool"),
                 ("backup", source, "--pool", "p")):
        run = subprocess.run(durafs_command(home, *args), env=env, capture_output=True,
                             text=True, timeout=60, check=False)
        assert run.returncode == 0, (args, run.stderr)
    mnt.mkdir()
    try:
        run = subprocess.run(durafs_command(home, "mount", mnt), env=env, capture_output=True,
                             text=True, timeout=60, check=False)
        assert run.returncode == 0, run.stderr
        environ = Path(f"/proc/{server_pid(home, mnt)}/environ").read_bytes()
        assert secret.encode() not in environ
        assert b"DURAFS_BENIGN=kept" in environ  # the rest is left as it was
        inside = mnt / "default" / "latest" / str(source).lstrip("/") / "hello"
        assert inside.read_text() == "hello\n"
    finally:
        if is_mounted(mnt):
            durafs(home, "umount", mnt, check=False)
        force_unmount(mnt)
