"""A plan's hooks from the outside: what they are given, how their ends are reported, and
that a backup whose pre-hook ran always runs its post-hook."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.engine.cli import checkpoint_names, durafs, durafs_process, setup_catalog


def _source(tmp_path: Path) -> Path:
    source = tmp_path / "src"
    source.mkdir()
    (source / "f").write_text("x")
    return source


def test_a_hook_gets_no_passphrase(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The passphrase opens every volume of the catalog: a hook's commands (a dump tool,
    a notifier sending its environment on) must not see it. DURAFS_HOME they may."""
    monkeypatch.setenv("DURAFS_PASSPHRASE", "the secret")
    monkeypatch.setenv("DURAFS_IDENTITY_PASSPHRASE", "another secret")
    setup_catalog(tmp_path, "password")
    source = tmp_path / "src"
    source.mkdir()
    seen = tmp_path / "env"
    run = durafs("backup", source, "--pool", "p", "--pre-hook", f"env > {seen}.pre",
                 "--post-hook", f"env > {seen}.post")
    assert run.code == 0, run.err
    for when in ("pre", "post"):
        env = Path(f"{seen}.{when}").read_text()
        assert "secret" not in env and "DURAFS_HOME=" in env


def test_a_hook_that_writes_a_lot_costs_no_memory_and_is_quoted_by_its_end(
    tmp_path: Path,
) -> None:
    """A hook may write a dump to stdout by mistake, or a verbose tool's log to stderr:
    durafs held all of it in memory (1.3 GB for 400 MB), and quoted all of stderr in the
    failure message. stdout is dropped; of stderr the end, where the reason is."""
    source = _source(tmp_path)
    setup_catalog(tmp_path)
    noise = "yes | head -c 256M"
    hook = f"{noise}; {noise} >&2; echo the reason >&2; exit 7"
    with durafs_process("backup", source, "--pool", "p", "--pre-hook", hook,
                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) as proc:
        assert proc.stderr is not None
        peak = _PeakMemory(proc.pid)
        message = proc.stderr.read().decode()
        proc.wait()
    assert proc.returncode == 2, message
    assert "failed (exit 7): …y" in message and message.endswith("y\\ny\\nthe reason\n")
    assert len(message) < 8192
    assert 0 < peak.kib() < 200 * 1024, peak.kib()
    assert checkpoint_names() == []


class _PeakMemory:
    """The peak resident size of process *pid* (VmHWM), watched until it ends. Not
    wait4's ru_maxrss: a child forked from this (large) test process is charged with its
    size at the fork (Linux keeps the larger across exec)."""

    def __init__(self, pid: int) -> None:
        self._path = f"/proc/{pid}/status"
        self._kib = 0
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while True:
            try:
                with open(self._path) as f:
                    status = f.read()
            except OSError:
                return
            hwm = [line.split()[1] for line in status.splitlines() if line.startswith("VmHWM")]
            if not hwm:  # a zombie: its memory is gone, its peak read already
                return
            self._kib = max(self._kib, int(hwm[0]))
            time.sleep(0.005)

    def kib(self) -> int:
        self._thread.join()
        return self._kib


def _backup_within(seconds: float, *args: str | os.PathLike[str]) -> tuple[int, str]:
    """`durafs backup ARGS…` as a child process that must end within *seconds*: its exit
    status and stderr."""
    with durafs_process("backup", *args, stdout=subprocess.DEVNULL,
                        stderr=subprocess.PIPE) as proc:
        try:
            _, err = proc.communicate(timeout=seconds)
        finally:
            proc.kill()
    return proc.returncode, err.decode()


def test_what_a_hook_leaves_running_does_not_hold_the_backup(tmp_path: Path) -> None:
    """A hook is over when its shell is: one that starts a command in the background
    (`sleep 600 &`, a service) held the backup until that command ended, since it kept
    the hook's stderr open."""
    source = _source(tmp_path)
    setup_catalog(tmp_path)
    pid_file = tmp_path / "pid"
    leave = f"sleep 600 & echo $! > {pid_file}"
    try:
        for pre, post in ((leave, ""), ("", leave)):  # one at a time: each is kept
            code, err = _backup_within(30, source, "--pool", "p", "--pre-hook", pre,
                                       "--post-hook", post)
            os.kill(int(pid_file.read_text()), signal.SIGKILL)
            assert code == 0, err
        # a failing one is quoted by what it wrote before it ended
        code, err = _backup_within(30, source, "--pool", "p", "--post-hook",
                                   f"{leave}; echo why >&2; exit 3")
    finally:
        os.kill(int(pid_file.read_text()), signal.SIGKILL)
    assert code == 1 and "post-backup hook" in err and "(exit 3): why" in err
    assert len(checkpoint_names()) == 3


def test_a_hook_killed_by_a_signal_is_said_to_be(tmp_path: Path) -> None:
    """A hook ended by a signal (the OOM killer, a timeout) was reported as `exit -9`."""
    source = _source(tmp_path)
    setup_catalog(tmp_path)
    run = durafs("backup", source, "--pool", "p", "--pre-hook", "echo dying >&2; kill -9 $$")
    assert run.code == 2 and "failed (killed by SIGKILL): dying" in run.err
    run = durafs("backup", source, "--pool", "p", "--pre-hook", "", "--post-hook",
                 "kill -s TERM $$")
    assert run.code == 1 and "post-backup hook `kill -s TERM $$` failed (killed by SIGTERM)" \
        in run.err
    run = durafs("backup", source, "--pool", "p", "--post-hook", "kill -s RTMIN+1 $$")
    assert run.code == 1 and "failed (killed by signal 35)" in run.err
    assert len(checkpoint_names()) == 2


def test_the_post_hook_runs_after_a_backup_that_failed_or_was_interrupted(
    tmp_path: Path,
) -> None:
    """A pre-hook quiesces a database, stops a service: its post-hook must undo that
    however the backup ends. It ran only after a checkpoint, so a medium offline, a full
    disk, a Ctrl-C left the database quiesced. A post-hook failing then is named too."""
    source = _source(tmp_path)
    pool = setup_catalog(tmp_path)
    state = tmp_path / "state"
    pool.rename(tmp_path / "away")  # the pool's only medium is offline
    run = durafs("backup", source, "--pool", "p", "--media-timeout", "0.2",
                 "--pre-hook", f"echo quiesced >> {state}",
                 "--post-hook", f"echo resumed >> {state}; echo still busy >&2; exit 4")
    assert run.code == 3 and "offline" in run.err.splitlines()[-1], run.err
    assert "post-backup hook `echo resumed" in run.err and "(exit 4): still busy" in run.err
    assert state.read_text() == "quiesced\nresumed\n"
    # interrupted while it waits for the medium
    state.unlink()
    with durafs_process("backup", source, "--pool", "p", "--post-hook",
                        f"echo resumed >> {state}", stdout=subprocess.DEVNULL,
                        stderr=subprocess.PIPE) as proc:
        assert proc.stderr is not None
        assert "waiting for medium" in proc.stderr.readline().decode()
        assert state.read_text() == "quiesced\n"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert state.read_text() == "quiesced\nresumed\n"
    assert checkpoint_names() == []
    # a failing pre-hook is no backup begun: nothing to undo
    state.unlink()
    run = durafs("backup", source, "--pool", "p", "--pre-hook", f"echo half >> {state}; false")
    assert run.code == 2 and state.read_text() == "half\n"


def test_a_hook_runs_in_the_same_directory_wherever_the_backup_is_run_from(
    tmp_path: Path,
) -> None:
    """A hook is saved with the plan and run by later backups started elsewhere (cron,
    another shell): run in durafs's working directory, `./dump.sh` worked from the
    directory it was given in and failed (exit 2) from every other."""
    source = _source(tmp_path)
    setup_catalog(tmp_path)
    where = tmp_path / "where"
    for cwd in (source, tmp_path):
        with durafs_process("backup", source, "--pool", "p", "--pre-hook", f"pwd > {where}",
                            cwd=cwd, stdout=subprocess.DEVNULL) as proc:
            assert proc.wait(30) == 0
        assert where.read_text() == "/\n"


def test_a_source_the_pre_hook_makes_need_not_be_there_before_it(tmp_path: Path) -> None:
    """The usual setup: the pre-hook writes a database dump, the backup takes it. The dump
    not being there yet refused the first run (exit 2) before the hook could make it. A
    source still missing after the hook is named (exit 1); with no hook, a missing source
    is a typo (exit 2) as before."""
    setup_catalog(tmp_path)
    dump = tmp_path / "dump.sql"
    run = durafs("backup", dump, "--pool", "p", "--pre-hook", f"echo rows > {dump}")
    assert run.code == 0, run.err
    out = tmp_path / "out"
    assert durafs("restore", f"default/latest{dump}", out).code == 0
    assert (out / "dump.sql").read_text() == "rows\n"
    dump.unlink()
    run = durafs("backup", dump, "--pool", "p", "--pre-hook", "true")  # makes nothing
    assert run.code == 1 and f"{dump}: no such file or directory" in run.err.lower(), run.err
    run = durafs("backup", dump, "--pool", "p", "--pre-hook", "")  # no hook any more
    assert run.code == 2 and f"{dump}: no such file or directory" in run.err, run.err
