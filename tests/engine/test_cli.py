"""The command-line contract: exit codes, one-line errors, hooks, dry runs, listings."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from durafs.cli.output import Progress
from durafs.engine.home import Home
from tests.engine.cli import (
    checkpoint_names,
    durafs,
    durafs_process,
    on_a_terminal,
    one_file_backed_up,
    setup_catalog,
)


def test_usage_errors_exit_2_with_one_line(tmp_path: Path) -> None:
    run = durafs("backup", tmp_path, "--pool", "p")
    assert run.code == 2 and "durafs init" in run.err and len(run.err.splitlines()) == 1
    setup_catalog(tmp_path)
    run = durafs("init")
    assert run.code == 2 and "already holds" in run.err
    run = durafs("backup", tmp_path / "missing", "--pool", "p")
    assert run.code == 2 and "missing: no such file or directory" in run.err
    run = durafs("backup", tmp_path, "--pool", "nope")
    assert run.code == 2 and "no pool named 'nope'" in run.err
    run = durafs("pool", "add", "q", "--kind", "dir", "--path", tmp_path / "x",
                 "--volume-size", "lots")
    assert run.code == 2 and "not a size" in run.err
    run = durafs("restore", "default/nosuch", tmp_path / "out")
    assert run.code == 2 and "no checkpoint" in run.err
    assert durafs("frobnicate").code == 2
    for command in ("checkpoints", "find"):
        run = durafs(command, *(["x"] if command == "find" else []), "--plan", "typo")
        assert run.code == 2 and "no plan named 'typo'" in run.err
    run = durafs("verify", "--read-data-subset", "150")
    assert run.code == 2 and "'150' is not a percentage" in run.err
    run = durafs("key", "export-identity", tmp_path / "id")
    assert run.code == 0  # a 'key' catalog


def test_dry_run_stores_nothing(tmp_path: Path) -> None:
    source = tmp_path / "src"
    source.mkdir()
    (source / "a").write_text("a" * 1000)
    pool = setup_catalog(tmp_path)
    run = durafs("backup", source, "--pool", "p", "--dry-run", "--json")
    assert run.code == 0
    report = run.json()
    assert report["checkpoint"] is None and report["stats"]["changed_files"] == 1
    assert checkpoint_names() == []
    assert list((pool / "volumes").iterdir()) == []
    # not even the plan it looked at is left behind (a mount would show it)
    assert [p.name for p in Home().catalog(readonly=True).plans()] == []
    # neither runs hooks nor keeps the ones given with it
    log = tmp_path / "hooks"
    run = durafs("backup", source, "--pool", "p", "--dry-run", "--pre-hook", f"echo pre >> {log}")
    assert run.code == 0 and not log.exists()
    assert durafs("backup", source, "--pool", "p").code == 0
    assert not log.exists()


def test_a_dry_run_says_what_it_would_read_not_that_nothing_is_new(tmp_path: Path) -> None:
    """A dry run reads no file, so it cannot know how much new data a backup would store;
    it said `0 B new data` of a first backup, which stores everything."""
    source = tmp_path / "src"
    source.mkdir()
    (source / "a").write_bytes(os.urandom(3000))
    (source / "b").write_bytes(os.urandom(1000))
    setup_catalog(tmp_path)
    run = durafs("backup", source, "--pool", "p", "--dry-run")
    assert run.code == 0 and "0 B new data" not in run.out
    assert run.out.startswith("would back up 2 files, 3.9 KiB; 2 new or changed, 3.9 KiB to read")
    report = durafs("backup", source, "--pool", "p", "--dry-run", "--json").json()
    assert report["dry_run"] is True and report["checkpoint"] is None
    assert report["stats"]["bytes_to_read"] == 4000 and "bytes_new" not in report["stats"]
    report = durafs("backup", source, "--pool", "p", "--json").json()
    assert report["dry_run"] is False and report["stats"]["bytes_new"] == 4000
    (source / "b").write_bytes(os.urandom(500))
    run = durafs("backup", source, "--pool", "p", "--dry-run")
    assert "1 new or changed, 500 B to read" in run.out


def test_hooks_run_around_the_backup_and_failures_are_reported(tmp_path: Path) -> None:
    source = tmp_path / "src"
    source.mkdir()
    log = tmp_path / "log"
    setup_catalog(tmp_path)
    run = durafs("backup", source, "--pool", "p", "--pre-hook", f"echo pre >> {log}",
                 "--post-hook", f"echo post >> {log}")
    assert run.code == 0, run.err
    assert durafs("backup", source, "--pool", "p").code == 0  # hooks are kept in the plan
    assert log.read_text() == "pre\npost\npre\npost\n"
    run = durafs("backup", source, "--pool", "p", "--post-hook", "exit 4")
    assert run.code == 1 and "post-backup hook `exit 4` failed (exit 4)" in run.err
    before = checkpoint_names()
    run = durafs("backup", source, "--pool", "p", "--pre-hook", "false")
    assert run.code == 2 and "pre-backup hook" in run.err
    assert checkpoint_names() == before


def test_a_hook_that_writes_bytes_not_utf8_is_reported_not_a_traceback(tmp_path: Path) -> None:
    source = tmp_path / "src"
    source.mkdir()
    setup_catalog(tmp_path)
    # a hook's output is whatever its commands write: a binary dump, a Latin-1 message
    run = durafs("backup", source, "--pool", "p", "--pre-hook", r"printf 'caf\351\n'",
                 "--post-hook", r"printf 'd\377\n' >&2; exit 5")
    assert run.code == 1, run.err
    assert "post-backup hook" in run.err and "failed (exit 5): d" in run.err
    assert len(checkpoint_names()) == 1
    run = durafs("backup", source, "--pool", "p", "--pre-hook", r"printf 'bad\377' >&2; false")
    assert run.code == 2 and "pre-backup hook" in run.err and "failed (exit 1): bad" in run.err
    assert len(checkpoint_names()) == 1


def test_an_exclude_pattern_that_cannot_match_is_refused_before_the_backup(
    tmp_path: Path,
) -> None:
    source = tmp_path / "src"
    source.mkdir()
    for name in ("f", "g", "z"):
        (source / name).write_text(name)
    log = tmp_path / "log"
    setup_catalog(tmp_path)
    assert durafs("backup", source, "--pool", "p", "--pre-hook", f"echo pre >> {log}").code == 0
    before = checkpoint_names()
    for pattern, message in (
        ("[z-a]", "--exclude '[z-a]': bad character range z-a"),
        ("[a-[:digit:]]", "--exclude '[a-[:digit:]]': bad character range a-[:digit:]"),  # a-0
        # the message is escaped as every message is: a backslash is doubled
        ("logs/[!\\z-a]*", "--exclude 'logs/[!\\\\z-a]*': bad character range \\\\z-a"),
    ):
        for plan in ("default", "new"):
            run = durafs("backup", source, "--pool", "p", "--plan", plan, "--exclude", "*.tmp",
                         "--exclude", pattern)
            assert (run.code, run.out, run.err) == (2, "", f"durafs: {message}\n"), pattern
    with Home().plan_lock("default"):  # a busy plan does not hide the typo
        run = durafs("backup", source, "--pool", "p", "--exclude", "[z-a]")
        assert run.code == 2 and "bad character range z-a" in run.err
    # no checkpoint, no plan, no hook run
    assert checkpoint_names() == before
    assert [p.name for p in Home().catalog(readonly=True).plans()] == ["default"]
    assert log.read_text() == "pre\n"
    # sets whose ranges go up work as before ([[:digit:]-z] is 0-9, "-" and z)
    run = durafs("backup", source, "--pool", "p", "--exclude", "[a-f]", "--exclude",
                 "[[:digit:]-z]")
    assert run.code == 0, run.err
    assert [e["name"] for e in durafs("ls", f"default/latest{source}", "--json").json()] == ["g"]


def test_a_refused_backup_keeps_neither_its_hooks_nor_a_new_plan(tmp_path: Path) -> None:
    source = tmp_path / "src"
    source.mkdir()
    log = tmp_path / "log"
    setup_catalog(tmp_path)
    run = durafs("backup", source, "--pool", "typo", "--plan", "new", "--pre-hook",
                 f"echo refused >> {log}")
    assert run.code == 2 and "no pool named 'typo'" in run.err
    assert [p.name for p in Home().catalog(readonly=True).plans()] == []
    with Home().plan_lock("default"):  # as a running backup holds it
        run = durafs("backup", source, "--pool", "p", "--post-hook", f"echo refused >> {log}")
        assert run.code == 3 and "another backup of plan default is running" in run.err
    assert durafs("backup", source, "--pool", "p").code == 0
    assert durafs("backup", source, "--pool", "p", "--plan", "new").code == 0
    assert not log.exists()


def _gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL],
                         ids=["INT", "TERM", "KILL"])
def test_an_interrupted_backup_ends_its_hook_and_what_the_hook_started(
    tmp_path: Path, signum: signal.Signals
) -> None:
    """A signal sent to durafs alone (`kill PID`, a supervisor, `timeout`) while a hook
    runs ends the hook's commands too: none goes on working after durafs has said it
    was interrupted, nor after durafs was killed (kill -9, the OOM killer)."""
    source = tmp_path / "src"
    source.mkdir()
    (source / "f").write_text("x")
    setup_catalog(tmp_path)
    pids = tmp_path / "pids"
    hook = f"sleep 600 & echo $! > {pids}.tmp && mv {pids}.tmp {pids}; wait"
    with durafs_process("backup", source, "--pool", "p", "--pre-hook", hook,
                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) as proc:
        deadline = time.monotonic() + 30
        while not pids.exists():
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.01)
        started = int(pids.read_text())
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == (-signum if signum == signal.SIGKILL else 128 + signum), err
    deadline = time.monotonic() + 10
    while not _gone(started) and time.monotonic() < deadline:
        time.sleep(0.01)
    if left := not _gone(started):
        os.kill(started, signal.SIGKILL)
    assert not left, "the hook's command still runs"
    assert checkpoint_names() == []
    assert durafs("backup", source, "--pool", "p", "--pre-hook", "true").code == 0
    assert len(checkpoint_names()) == 1


def test_a_hook_that_reads_its_input_gets_none(tmp_path: Path) -> None:
    """A hook asking a question (`apt-get install`, a script's `read`) gets end of file:
    its prompt is captured, so nobody would see it, and the backup would wait for an
    answer for ever."""
    source = tmp_path / "src"
    source.mkdir()
    setup_catalog(tmp_path)
    answer = tmp_path / "answer"
    # stdin a pipe nobody writes to or closes, as a terminal nobody types into
    with durafs_process("backup", source, "--pool", "p", "--pre-hook", f"cat > {answer}",
                        stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                        stderr=subprocess.PIPE) as proc:
        try:
            assert proc.stderr is not None
            proc.wait(30)
        finally:
            proc.kill()
        err = proc.stderr.read().decode()
    assert proc.returncode == 0, err
    assert answer.read_text() == ""
    assert len(checkpoint_names()) == 1


def test_listings_and_keys(tmp_path: Path) -> None:
    setup_catalog(tmp_path, location="shelf 2")
    pools = durafs("pool", "list", "--json").json()
    assert pools == [{"name": "p", "kind": "dir", "volume_size": 1 << 30, "media": 1}]
    media = durafs("media", "list", "--json").json()
    assert media[0]["label"] == "P-001" and media[0]["online"] is True
    assert media[0]["location"] == "shelf 2"
    table = durafs("media", "list").out
    assert "P-001" in table and "shelf 2" in table
    # what durafs's files take now, not what the index last recorded: a volume deleted
    # by hand (or a temporary file a killed backup left) shows at once
    source = tmp_path / "src"
    source.mkdir()
    (source / "f").write_bytes(os.urandom(300_000))
    assert durafs("backup", source, "--pool", "p").code == 0
    pool = Path(media[0]["path"])
    on_disk = sum(f.stat().st_size for f in pool.rglob("*") if f.is_file())
    assert durafs("media", "list", "--json").json()[0]["used"] == on_disk
    [data] = pool.glob("volumes/*-data-*")
    gone = data.stat().st_size
    data.unlink()
    assert durafs("media", "list", "--json").json()[0]["used"] == on_disk - gone
    recipient = durafs("key", "recipient").out.strip()
    assert recipient.startswith("age1")
    identity = tmp_path / "id.txt"
    assert durafs("key", "export-identity", identity).code == 0
    assert os.stat(identity).st_mode & 0o777 == 0o600
    assert f"public key: {recipient}" in identity.read_text()


def test_wrong_identity_on_recover_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, pool = one_file_backed_up(tmp_path)
    shutil.rmtree(Home().path)
    other = tmp_path / "other"
    monkeypatch.setenv("DURAFS_HOME", os.fspath(other))
    assert durafs("init").code == 0
    wrong = tmp_path / "wrong.txt"
    assert durafs("key", "export-identity", wrong).code == 0
    monkeypatch.setenv("DURAFS_HOME", os.fspath(tmp_path / "fresh"))
    run = durafs("recover", "--path", pool, "--identity", wrong)
    assert run.code == 2  # a configuration error: another key is needed
    assert "no identity" in run.err.lower() and "Traceback" not in run.err
    assert os.fspath(wrong) in run.err and os.fspath(pool) in run.err
    missing = durafs("recover", "--path", pool, "--identity", tmp_path / "nowhere.txt")
    assert missing.code == 2 and "nowhere.txt" in missing.err, missing
    monkeypatch.setenv("DURAFS_PASSPHRASE", "not the key")
    run = durafs("recover", "--path", pool)
    assert run.code == 2 and "the passphrase given does not open" in run.err, run


def test_recover_of_encrypted_media_without_a_key_says_what_to_give(tmp_path: Path) -> None:
    _, pool = one_file_backed_up(tmp_path)
    shutil.rmtree(Home().path)
    # not on a terminal, so not asked for a passphrase
    with durafs_process("recover", "--path", pool, stdin=subprocess.DEVNULL,
                        stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
        _, err = proc.communicate()
    assert proc.returncode == 2, err
    assert b"--identity FILE" in err and b"DURAFS_PASSPHRASE" in err
    assert not Home().path.exists()


@pytest.mark.parametrize("protect", [False, True])
def test_recover_with_an_exported_identity(
    tmp_path: Path, protect: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DURAFS_IDENTITY_PASSPHRASE", "identity secret")
    _, pool = one_file_backed_up(tmp_path)
    identity = tmp_path / "id.age"
    args = ["--protect"] if protect else []
    assert durafs("key", "export-identity", identity, *args).code == 0
    assert identity.read_bytes().startswith(b"age-encryption.org/v1") == protect
    shutil.rmtree(Home().path)
    run = durafs("recover", "--path", pool, "--identity", identity)
    assert run.code == 0, run.err
    assert len(checkpoint_names()) == 1


def test_the_command_exits_quickly_with_all_its_output(tmp_path: Path) -> None:
    """The `durafs` process skips the interpreter's teardown after success: its output
    must still arrive whole and the catalog be complete; a reader that goes away early
    gets exit status 3 and no traceback."""
    source = tmp_path / "src"
    source.mkdir()
    for i in range(1000):
        (source / f"{i:04d}-{'n' * 80}").write_text(f"file {i}\n")
    setup_catalog(tmp_path)
    command = [sys.executable, "-m", "durafs.cli.main"]
    # buffered output, as a user has it: the last block is written only by a flush
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    backup = subprocess.run([*command, "backup", os.fspath(source), "--pool", "p", "--json"],
                            capture_output=True, text=True, env=env)
    assert backup.returncode == 0, backup.stderr
    assert json.loads(backup.stdout)["stats"]["files"] == 1000
    ls = [*command, "ls", f"default/latest{source}", "--json"]
    listing = subprocess.run(ls, capture_output=True, text=True, env=env)
    assert listing.returncode == 0 and len(json.loads(listing.stdout)) == 1000
    assert durafs("checkpoints", "--json").json()[0]["files"] == 1000
    # twice a pipe's buffer: the writer must still be writing when the reader leaves
    assert len(listing.stdout) > 2 * 65536
    reader = subprocess.Popen(ls, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    assert reader.stdout is not None and reader.stderr is not None
    reader.stdout.read(10)
    reader.stdout.close()
    err = reader.stderr.read().decode()
    assert reader.wait() == 3
    assert "Traceback" not in err and "Exception ignored" not in err, err


def test_a_second_backup_of_a_plan_is_refused_while_one_runs(tmp_path: Path) -> None:
    source = tmp_path / "src"
    source.mkdir()
    (source / "a").write_text("a")
    setup_catalog(tmp_path)
    with Home().plan_lock("default"):  # as a running backup holds it
        run = durafs("backup", source, "--pool", "p")
        assert run.code == 3
        assert f"another backup of plan default is running (pid {os.getpid()})" in run.err
        assert durafs("backup", source, "--pool", "p", "--plan", "other").code == 0
    assert checkpoint_names() == []
    assert durafs("backup", source, "--pool", "p").code == 0


def test_a_reader_that_stops_early_gets_no_error_message(tmp_path: Path) -> None:
    source = tmp_path / "src"
    source.mkdir()
    for i in range(3000):  # more than a pipe holds
        (source / f"file{i:04d}").write_text("x")
    setup_catalog(tmp_path)
    assert durafs("backup", source, "--pool", "p").code == 0
    command = [sys.executable, "-m", "durafs.cli.main", "ls", f"default/latest{source}"]
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        proc.stdout.readline()
        proc.stdout.close()  # as `| head -1` does
        err = proc.stderr.read()
    assert proc.returncode == 3 and err == b""


def test_a_single_file_can_be_a_source(tmp_path: Path) -> None:
    source = tmp_path / "src"
    source.mkdir()
    (source / "one").write_text("hello\n")
    (source / "other").write_text("not backed up\n")
    (source / "link").symlink_to("one")
    setup_catalog(tmp_path)
    assert durafs("backup", source / "one", "--pool", "p").code == 0
    names = [e["name"] for e in durafs("ls", f"default/latest{source}", "--json").json()]
    assert names == ["one"]
    out = tmp_path / "out"
    assert durafs("restore", f"default/latest{source}/one", out).code == 0
    assert (out / "one").read_text() == "hello\n"
    run = durafs("backup", source / "link", "--pool", "p")
    assert run.code == 2 and "a symlink to something not a directory" in run.err
    run = durafs("backup", source / "missing", "--pool", "p")
    assert run.code == 2 and f"{source / 'missing'}: no such file or directory" in run.err


def test_a_source_that_exists_is_not_called_missing(tmp_path: Path) -> None:
    # Past PATH_MAX lstat fails with ENAMETOOLONG, but the scan reaches any length: only
    # a source that is not there is a usage error.
    path, fd = os.fsencode(tmp_path), os.open(tmp_path, os.O_PATH | os.O_DIRECTORY)
    while len(path) <= 4200:
        name = b"n" * 200
        os.mkdir(name, dir_fd=fd)
        new = os.open(name, os.O_PATH | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd, path = new, path + b"/" + name
    leaf = os.open(b"leaf", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
    os.write(leaf, b"far down")
    os.close(leaf)
    os.close(fd)
    setup_catalog(tmp_path)
    run = durafs("backup", os.fsdecode(path), "--pool", "p")
    assert run.code == 0, run.err
    names = [e["name"] for e in durafs("ls", f"default/latest{os.fsdecode(path)}",
                                       "--json").json()]
    assert names == ["leaf"]


def test_durafs_own_data_inside_a_source_is_left_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = tmp_path / "src"
    (source / "docs").mkdir(parents=True)
    (source / "docs" / "a").write_text("a" * 5000)
    monkeypatch.setenv("DURAFS_HOME", str(source / "catalog"))
    assert durafs("init", "--encryption", "key", "--work-factor", "12").code == 0
    assert durafs("pool", "add", "p", "--kind", "dir", "--path", source / "pool").code == 0
    assert durafs("pool", "add", "q", "--kind", "dir", "--path", source / "other").code == 0
    run = durafs("backup", source, "--pool", "p")
    assert run.code == 0, run.err
    assert f"{source / 'catalog'}: durafs's catalog directory: contents not backed up" in run.err
    assert f"{source / 'pool'}: medium " in run.err and "of this pool: contents" in run.err
    assert f"{source / 'other'}: medium " in run.err and "of pool q: contents" in run.err
    # the second run meets the volumes the first one wrote: it reads and stores nothing
    report = durafs("backup", source, "--pool", "p", "--json").json()
    assert sorted(n["path"] for n in report["notes"]) == [
        str(source / "catalog"), str(source / "other"), str(source / "pool")]
    assert report["problems"] == [] and report["stats"].get("changed_files", 0) == 0
    assert report["stats"]["unchanged_files"] == 1
    listing = durafs("ls", f"default/latest{source}", "--json").json()
    assert sorted(e["name"] for e in listing) == ["catalog", "docs", "other", "pool"]
    assert durafs("ls", f"default/latest{source}/pool", "--json").json() == []
    # a source that is, or is inside, durafs's own data is refused by name; the rest goes on
    inside = source / "catalog" / "keys"
    run = durafs("backup", inside, source / "pool", source / "docs", "--pool", "p", "--json")
    assert run.code == 1
    problems = dict((p["path"], p["reason"]) for p in run.json()["problems"])
    assert problems.keys() == {str(inside), str(source / "pool")}
    assert problems[str(inside)] == "in durafs's catalog directory, which is never backed up"
    assert re.fullmatch(r"in medium \S+ of this pool, which is never backed up",
                        problems[str(source / "pool")])
    names = [e["name"] for e in durafs("ls", f"default/latest{source}", "--json").json()]
    assert names == ["docs"]


def test_a_backup_of_durafs_own_data_alone_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DURAFS_HOME", str(tmp_path / "catalog"))
    pool = setup_catalog(tmp_path)
    (tmp_path / "to-pool").symlink_to(pool)
    for sources in ([tmp_path / "catalog"], [pool], [tmp_path / "to-pool", tmp_path / "catalog"]):
        run = durafs("backup", *sources, "--pool", "p")
        assert run.code == 2, run.err
        assert run.err.startswith("durafs: nothing to back up: ")
        assert "which is never backed up" in run.err and "Traceback" not in run.err
    assert durafs("checkpoints", "--json").json() == []


def test_dot_dot_after_a_symlink_means_what_the_kernel_makes_of_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    setup_catalog(tmp_path)
    src = tmp_path / "src"
    (src / "a").mkdir(parents=True)
    (src / "real" / "sub").mkdir(parents=True)
    (src / "real" / "wanted").write_text("w")
    (src / "a" / "other").write_text("o")
    (src / "a" / "lsub").symlink_to("../real/sub")
    monkeypatch.chdir(src)
    run = durafs("backup", "a/lsub/..", "--pool", "p")
    assert run.code == 0, run.err
    found = {h["path"] for h in durafs("find", "", "--json").json()}
    assert str(src / "real" / "wanted") in found
    assert not any(p.startswith(str(src / "a")) for p in found)


def test_an_empty_source_or_target_is_refused_not_taken_for_the_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source, _ = one_file_backed_up(tmp_path)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    before = os.stat(cwd)
    run = durafs("restore", f"default/latest{source}", "")
    assert run.code == 2 and "TARGET is empty" in run.err
    run = durafs("backup", "", "--pool", "p")
    assert run.code == 2 and "a source path is empty" in run.err
    after = os.stat(cwd)
    assert list(cwd.iterdir()) == []
    assert (after.st_mode, after.st_mtime_ns) == (before.st_mode, before.st_mtime_ns)
    assert len(durafs("checkpoints", "--json").json()) == 1


def test_pool_and_media_settings_can_be_changed(tmp_path: Path) -> None:
    """What the media do not record (a recover gives defaults) can be set again, and a
    disk's place changes as it moves between shelves."""
    setup_catalog(tmp_path)
    assert durafs("pool", "set", "p", "--volume-size", "256M").code == 0
    assert durafs("pool", "list", "--json").json()[0]["volume_size"] == 256 << 20
    assert durafs("media", "set", "P-001", "--capacity", "10M", "--location", "shelf 2").code == 0
    (medium,) = durafs("media", "list", "--json").json()
    assert (medium["capacity"], medium["location"]) == (10 << 20, "shelf 2")
    assert durafs("media", "set", "P-001", "--capacity", "none").code == 0
    (medium,) = durafs("media", "list", "--json").json()
    assert (medium["capacity"], medium["location"]) == (None, "shelf 2")
    for args, message in [
        (("media", "set", "NOPE", "--location", "x"), "no medium labelled 'NOPE'"),
        (("media", "set", "P-001"), "nothing to change"),
        (("pool", "set", "q", "--volume-size", "1G"), "no pool named 'q'"),
        (("pool", "set", "p", "--volume-size", "0"), "less than a byte"),
    ]:
        run = durafs(*args)
        assert run.code == 2 and message in run.err, (args, run.err)


def test_an_unencrypted_catalog_has_no_identity_to_export(tmp_path: Path) -> None:
    setup_catalog(tmp_path, encryption="none")
    run = durafs("key", "export-identity", tmp_path / "id")
    assert run.code == 2 and "encryption is 'none': it has no age identity" in run.err
    assert not (tmp_path / "id").exists()


def test_every_command_without_a_catalog_is_a_usage_error(tmp_path: Path) -> None:
    home = Home().path
    for args in (["pool", "list"], ["media", "list", "--json"], ["checkpoints"],
                 ["ls", "default/latest"], ["find", "x"], ["key", "recipient"],
                 ["media", "add", "p", "--path", tmp_path / "m"], ["requests"]):
        run = durafs(*args)
        assert run.code == 2, (args, run.err)
        assert run.err == f"durafs: no durafs catalog in {home}: run `durafs init` first\n"
        assert run.out == ""
    home.mkdir(parents=True)  # an empty directory is not a catalog either, and stays empty
    assert durafs("media", "add", "p", "--path", tmp_path / "m").code == 2
    assert list(home.iterdir()) == []


def test_a_pool_whose_first_medium_fails_is_not_added(tmp_path: Path) -> None:
    setup_catalog(tmp_path)
    not_a_directory = tmp_path / "file"
    not_a_directory.write_text("x")
    run = durafs("pool", "add", "q", "--kind", "dir", "--path", not_a_directory)
    # a path that cannot be a medium is the user's to change: a configuration error
    assert run.code == 2 and f"{not_a_directory} is not a directory" in run.err
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "photos").mkdir()
    run = durafs("pool", "add", "q", "--kind", "dir", "--path", busy)
    assert run.code == 2 and f"{busy} is not empty and holds no durafs medium" in run.err
    run = durafs("media", "add", "p", "--path", tmp_path / "pool")
    assert run.code == 2 and "already holds durafs medium P-001" in run.err, run.err
    run = durafs("media", "add", "p", "--path", tmp_path / "absent" / "mount")
    assert run.code == 2 and "cannot create directory medium" in run.err, run.err
    assert [p["name"] for p in durafs("pool", "list", "--json").json()] == ["p"]
    run = durafs("pool", "add", "q", "--kind", "dir", "--path", tmp_path / "q")
    assert run.code == 0, run.err
    assert [(m["pool"], m["label"]) for m in durafs("media", "list", "--json").json()] == [
        ("p", "P-001"), ("q", "Q-001")]


def test_a_label_in_use_is_refused_before_the_medium_is_written(tmp_path: Path) -> None:
    setup_catalog(tmp_path)
    second = tmp_path / "second"
    run = durafs("media", "add", "p", "--path", second, "--label", "P-001")
    assert run.code == 2 and "label 'P-001' is taken" in run.err
    assert not second.exists()
    run = durafs("media", "add", "p", "--path", second)
    assert run.code == 0, run.err
    assert [m["label"] for m in durafs("media", "list", "--json").json()] == ["P-001", "P-002"]
    # a default label goes on to the next free one (pools 'p' and 'P' share the prefix)
    assert durafs("pool", "add", "P", "--kind", "dir", "--path", tmp_path / "third").code == 0
    assert [(m["pool"], m["label"]) for m in durafs("media", "list", "--json").json()] == [
        ("P", "P-003"), ("p", "P-001"), ("p", "P-002")]


def test_a_wrong_passphrase_is_refused_before_anything_is_done(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = tmp_path / "src"
    source.mkdir()
    (source / "f").write_text("x")
    monkeypatch.setenv("DURAFS_PASSPHRASE", "")
    run = durafs("init", "--encryption", "password")
    assert run.code == 2 and "DURAFS_PASSPHRASE is set but empty" in run.err
    assert not Home().path.exists()
    monkeypatch.setenv("DURAFS_PASSPHRASE", "right")
    setup_catalog(tmp_path, encryption="password")
    assert durafs("backup", source, "--pool", "p").code == 0
    (source / "g").write_text("y")
    monkeypatch.setenv("DURAFS_PASSPHRASE", "wrong")
    out, second = tmp_path / "out", tmp_path / "second"
    for args in (["backup", source, "--pool", "p"], ["restore", "default/latest", out],
                 ["verify", "--read-data"], ["media", "add", "p", "--path", second]):
        run = durafs(*args)
        assert run.code == 2, (args, run.err)
        assert run.err == ("durafs: wrong passphrase: it does not open this catalog's keys "
                           f"({Home().keys_dir / 'durafs-keys.age'})\n")
    assert len(checkpoint_names()) == 1 and not out.exists() and not second.exists()
    # what the right one wrote, the right one reads
    monkeypatch.setenv("DURAFS_PASSPHRASE", "right")
    assert durafs("verify", "--read-data").code == 0
    assert durafs("restore", "default/latest", out).code == 0


def test_backup_restore_and_verify_show_progress_on_a_terminal(tmp_path: Path) -> None:
    source = tmp_path / "src"
    source.mkdir()
    for i in range(20):
        (source / f"f{i:02d}").write_bytes(os.urandom(50_000))
    setup_catalog(tmp_path, encryption="none")
    code, shown = on_a_terminal("backup", source, "--pool", "p")
    assert code == 0
    assert "20 files" in shown and "/s" in shown
    assert "%" not in shown  # a first backup has no estimate of the whole
    # a later one takes the last checkpoint's size as the whole
    code, shown = on_a_terminal("backup", source, "--pool", "p")
    assert (code, "20 files" in shown, "[####################] 100%" in shown) == (0, True, True)
    code, shown = on_a_terminal("restore", f"default/latest{source}", tmp_path / "out")
    assert (code, "20 files" in shown, "100%" in shown) == (0, True, True)
    assert "976.6 KiB" in shown  # the bytes written, 20 x 50 000
    code, shown = on_a_terminal("verify", "--read-data")
    assert (code, "volumes" in shown, "100%" in shown) == (0, True, True)
    # without a terminal, nothing of it
    assert "%" not in durafs("verify").err


def test_progress_shows_a_bar_and_the_time_left() -> None:
    progress = Progress(1000)
    line = progress.line({"files": 3, "bytes": 250, "bytes_read": 500}, 2.0)
    assert line == "3 files  250 B  250 B/s  [#####...............]  25%  ETA 0:06"
    # a whole known only as a count (verify: volumes)
    line = Progress(what="volumes").line({"volumes": 1, "expected_count": 4}, 1.0)
    assert line.endswith("[#####...............]  25%  ETA 0:03")


def test_a_target_or_identity_file_that_cannot_be_written_is_a_usage_error(
    tmp_path: Path,
) -> None:
    source = tmp_path / "src"
    source.mkdir()
    (source / "a").write_text("a")
    setup_catalog(tmp_path)
    assert durafs("backup", source, "--pool", "p").code == 0
    run = durafs("restore", "default/latest", "/proc/nope/out")
    assert (run.code, run.err.strip()) == (2, "durafs: /proc/nope/out: cannot be made "
                                               "(No such file or directory)")
    (tmp_path / "id.txt").write_text("precious")
    run = durafs("key", "export-identity", tmp_path / "id.txt")
    assert (run.code, "exists already (not overwritten)" in run.err) == (2, True)
    assert (tmp_path / "id.txt").read_text() == "precious"


def test_names_shown_to_people_cannot_drive_the_terminal(tmp_path: Path) -> None:
    # a name may hold any byte but / and NUL: an ESC sequence, a newline, a backslash
    source = tmp_path / "src"
    source.mkdir()
    name = "esc\x1b[31mred\nline\\x"
    (source / name).write_text("x")
    setup_catalog(tmp_path)
    assert durafs("backup", source, "--pool", "p").code == 0
    escaped = "esc\\x1b[31mred\\nline\\\\x"
    listing = durafs("ls", f"default/latest{source}").out
    assert listing.rstrip("\n").endswith(" " + escaped) and listing.count("\n") == 1
    checkpoint = checkpoint_names()[0]
    assert durafs("find", "red").out == f"default/{checkpoint}{source}/{escaped}\n"
    # scripts get the name itself
    assert [e["name"] for e in durafs("ls", f"default/latest{source}", "--json").json()] == [name]
    run = durafs("backup", source / "gone\x1b]0;title\x07", "--pool", "p")
    assert run.code == 2
    assert "gone\\x1b]0;title\\x07: no such file" in run.err and "\x1b" not in run.err


def test_names_that_are_not_utf8_are_told_apart(tmp_path: Path) -> None:
    # a terminal shows every byte that is not UTF-8 as U+FFFD, and most JSON parsers turn
    # the lone surrogates os.fsdecode makes of them into U+FFFD too: the first four names
    # would read alike. Then a name that is the text of an escape, and U+0085 (a C1
    # control) beside the lone byte 0x85.
    names = {b"a\xff": "a\\xff", b"a\xfe": "a\\xfe", b"a\x80": "a\\x80",
             "a\ufffd".encode(): "a\ufffd", b"a\\xff": "a\\\\xff",
             "c\x85".encode(): "c\\xc2\\x85", b"c\x85": "c\\x85"}
    not_utf8 = {b"a\xff", b"a\xfe", b"a\x80", b"c\x85"}
    source = tmp_path / "src"
    source.mkdir()
    for index, name in enumerate(names):
        (source / os.fsdecode(name)).write_bytes(b"%d" % index)
    pool = setup_catalog(tmp_path)
    run = durafs("backup", source, "--pool", "p")
    assert run.code == 0, run.err
    listing = durafs("ls", f"default/latest{source}")
    assert listing.code == 0
    assert sorted(line.rsplit(" ", 1)[1] for line in listing.out.splitlines()) == sorted(
        names.values())
    checkpoint = checkpoint_names()[0]
    found = durafs("find", "[ac]?*").out.splitlines()
    assert sorted(found) == sorted(f"default/{checkpoint}{source}/{text}"
                                   for text in names.values())
    # --json: the name as before, and for a name not UTF-8 its bytes in hex beside it
    entries = durafs("ls", f"default/latest{source}", "--json").json()
    assert sorted(e["name"] for e in entries) == sorted(os.fsdecode(n) for n in names)
    assert {bytes.fromhex(e["name_hex"]) for e in entries if "name_hex" in e} == not_utf8
    assert all(bytes.fromhex(e["name_hex"]) == os.fsencode(e["name"])
               for e in entries if "name_hex" in e)
    by_name = {e["name"]: list(e) for e in entries}
    assert by_name[os.fsdecode(b"a\x80")][:3] == ["name", "name_hex", "type"]
    assert by_name["a\ufffd"][:2] == ["name", "type"]  # U+FFFD itself is UTF-8
    hits = [h for h in durafs("find", "[ac]?*", "--json").json()
            if h["path"].startswith(f"{source}/")]
    assert {bytes.fromhex(h["path_hex"]) for h in hits if "path_hex" in h} == {
        os.fsencode(source) + b"/" + n for n in not_utf8}
    assert sum("path_hex" not in h for h in hits) == 3
    # a backup's problems: a source inside a pool's medium is refused by name
    inside = pool / os.fsdecode(b"x\xff")
    inside.mkdir()
    run = durafs("backup", inside, source, "--pool", "p", "--json")
    assert run.code == 1 and "x\\xff: in medium" in run.err, run.err
    [problem] = run.json()["problems"]
    assert problem["path"] == os.fspath(inside)
    assert bytes.fromhex(problem["path_hex"]) == os.fsencode(inside)


def test_sizes_out_of_range_are_usage_errors_that_touch_no_directory(tmp_path: Path) -> None:
    setup_catalog(tmp_path)
    # a size of no bytes, or one too large to record, is refused by name before the
    # directory is made a medium (a marker left behind would make it refuse any later use)
    for option, size in (("--capacity", "0"), ("--capacity", "0.5"), ("--volume-size", "0M"),
                         ("--capacity", "99999999999999999999T"),
                         ("--volume-size", "99999999999999999999T")):
        where = tmp_path / f"q{option}{size}"
        for command in (("pool", "add", "q", "--kind", "dir"), ("media", "add", "p")):
            if command[0] == "media" and option == "--volume-size":
                continue
            run = durafs(*command, "--path", where, option, size)
            assert run.code == 2, (command, option, size, run.err)
            assert f"{size!r} is not a size" in run.err and len(run.err.splitlines()) == 1
            assert not where.exists()
    assert [p["name"] for p in durafs("pool", "list", "--json").json()] == ["p"]
    assert len(durafs("media", "list", "--json").json()) == 1
    # a capacity with no room for a volume could only ever be full
    for command in (("pool", "add", "q", "--kind", "dir"), ("media", "add", "p")):
        where = tmp_path / "tiny"
        run = durafs(*command, "--path", where, "--capacity", "1K")
        assert run.code == 2 and "'1K' is too small for a medium's capacity" in run.err, run.err
        assert "1152 KiB at least" in run.err and not where.exists()
    run = durafs("media", "set", "P-001", "--capacity", "1000K")
    assert run.code == 2 and "too small" in run.err, run.err
    run = durafs("pool", "add", "q", "--kind", "dir", "--path", tmp_path / "q",
                 "--volume-size", "10GiB", "--capacity", "1.5T")
    assert run.code == 0, run.err
    assert [p["volume_size"] for p in durafs("pool", "list", "--json").json()] == [1 << 30,
                                                                                  10 << 30]
    assert [m["capacity"] for m in durafs("media", "list", "--json").json()] == [None, 3 << 39]
    # the largest size there is, exactly (a float rounded it up past the limit)
    run = durafs("media", "add", "p", "--path", tmp_path / "huge", "--capacity",
                 str((1 << 63) - 1))
    assert run.code == 0, run.err
    [huge] = [m for m in durafs("media", "list", "--json").json()
              if m["path"] == str(tmp_path / "huge")]
    assert huge["capacity"] == (1 << 63) - 1


def test_the_least_capacity_taken_leaves_room_for_a_backup(tmp_path: Path) -> None:
    """A medium takes a new volume only with room for the smallest one and the slack kept
    free beside it, its own marker and keys file apart: a capacity of 1 MiB was accepted
    as "room for a volume", and the first backup found the medium full."""
    source = tmp_path / "src"
    source.mkdir()
    (source / "f").write_text("x")
    setup_catalog(tmp_path)
    for capacity in ("1M", "1151K", "1152K"):  # the first one taken is used
        run = durafs("pool", "add", "q", "--kind", "dir", "--path", tmp_path / "q",
                     "--capacity", capacity)
        if run.code == 0:
            break
        assert run.code == 2 and "1152 KiB at least" in run.err, run.err
    run = durafs("backup", source, "--pool", "q")
    assert run.code == 0, (capacity, run.err)


def test_names_that_are_not_utf8_are_usage_errors_not_tracebacks(tmp_path: Path) -> None:
    # the shell passes any bytes: the index keeps plans, pools, labels, locations and
    # medium paths as text, so a name not UTF-8 cannot be one of them
    source = tmp_path / "src"
    source.mkdir()
    setup_catalog(tmp_path)
    assert durafs("backup", source, "--pool", "p").code == 0
    bad = os.fsdecode(b"x\xff")
    medium = tmp_path / bad
    for args in (("pool", "add", bad, "--kind", "dir", "--path", tmp_path / "q"),
                 ("pool", "add", "q", "--kind", "dir", "--path", medium),
                 ("media", "add", "p", "--path", medium),
                 ("media", "add", bad, "--path", tmp_path / "q"),
                 ("media", "add", "p", "--path", tmp_path / "q", "--label", bad),
                 ("media", "add", "p", "--path", tmp_path / "q", "--location", bad),
                 ("backup", source, "--pool", "p", "--plan", bad),
                 ("backup", source, "--pool", bad),
                 ("checkpoints", "--plan", bad),
                 ("find", "src", "--plan", bad),
                 ("verify", "--pool", bad),
                 ("ls", f"{bad}/latest"),
                 ("ls", f"default/{bad}"),
                 ("restore", f"{bad}/latest", tmp_path / "out"),
                 ("recover", "--path", medium)):
        run = durafs(*args)
        assert run.code == 2, (args, run.err)
        # named with its byte escaped, as every name in what people read
        assert "x\\xff'" in run.err and "not UTF-8" in run.err, (args, run.err)
        assert len(run.err.splitlines()) == 1, (args, run.err)
    assert not medium.exists() and not (tmp_path / "q").exists()
    assert not (tmp_path / "out").exists()
    assert len(durafs("media", "list", "--json").json()) == 1
    assert [c["plan"] for c in durafs("checkpoints", "--json").json()] == ["default"]


def test_names_given_on_the_command_line_are_escaped_in_what_it_prints(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the README's promise covers every line of human output, not only listings: a plan,
    # pool, label or path echoed back must not recolour the terminal or forge a line
    odd = "e\x1b[31mred\nx"
    escaped = "e\\x1b[31mred\\nx"
    source = tmp_path / "src"
    source.mkdir()
    monkeypatch.setenv("DURAFS_HOME", str(tmp_path / f"home{odd}"))
    run = durafs("init", "--encryption", "key", "--work-factor", "12")
    assert run.code == 0 and f"home{escaped} " in run.out
    outputs = [run.out]
    for args in (("pool", "add", odd, "--kind", "dir", "--path", tmp_path / f"p{odd}",
                  "--label", f"L{odd}"),
                 ("media", "add", odd, "--path", tmp_path / f"m{odd}", "--label", f"M{odd}"),
                 ("backup", source, "--pool", odd, "--plan", odd),
                 ("key", "export-identity", tmp_path / f"id{odd}")):
        run = durafs(*args)
        assert run.code == 0, (args, run.err)
        assert escaped in run.out and len(run.out.splitlines()) == 1, (args, run.out)
        outputs.append(run.out)
    assert not any("\x1b" in out for out in outputs)
    assert (tmp_path / f"id{odd}").exists() and (tmp_path / f"m{odd}").is_dir()


def test_a_media_timeout_must_be_a_number_of_seconds(tmp_path: Path) -> None:
    source = tmp_path / "src"
    source.mkdir()
    setup_catalog(tmp_path)
    for bad in ("-1", "nan", "inf", "soon"):
        for command in (["backup", source, "--pool", "p"],
                        ["restore", "default/latest", tmp_path / "out"]):
            run = durafs(*command, "--media-timeout", bad)
            assert run.code == 2 and "not a number of seconds" in run.err, (command, bad, run)
    assert checkpoint_names() == []
    assert durafs("backup", source, "--pool", "p", "--media-timeout", "0").code == 0


def test_a_work_factor_out_of_range_is_refused_before_anything_is_made(tmp_path: Path) -> None:
    home = Home().path
    # above 22, neither durafs nor `age -d` would read what it wrote
    for bad in ("0", "23", "41", "-1", "high"):
        run = durafs("init", "--encryption", "password", "--work-factor", bad)
        assert run.code == 2 and "is not a work factor in 1..22" in run.err, (bad, run)
        assert not home.exists()
