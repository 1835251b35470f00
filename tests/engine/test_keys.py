"""Keys and secrets end to end: passphrases however they come, the files that hold keys,
and no secret where it does not belong (error messages, other processes)."""

from __future__ import annotations

import os
import pty
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from durafs.engine.home import Home
from tests.engine.cli import durafs
from tests.support.oddtree import fill, tmpfs
from tests.support.straced import calls, child_env, python_command, require_strace, run_traced


def _typed(args: list[str], answers: list[bytes], env: dict[str, str] | None = None
           ) -> tuple[int, bytes]:
    """`durafs ARGS…` on a terminal of its own, typing each of *answers* at a prompt (a
    line ending in ':') and a newline after it: its exit status and what it showed."""
    pid, fd = pty.fork()
    if pid == 0:  # pragma: no cover - the child
        os.execve(sys.executable, [sys.executable, "-m", "durafs.cli.main", *args],
                  env if env is not None else dict(os.environ))
    shown = b""
    while True:
        try:
            data = os.read(fd, 4096)
        except OSError:  # EIO: the child is gone
            break
        if not data:
            break
        shown += data
        if answers and shown.rstrip().endswith(b":"):
            time.sleep(0.05)  # the terminal's echo is off once getpass reads
            os.write(fd, answers.pop(0))
            shown += b"<typed>"
    os.close(fd)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), shown


def test_a_passphrase_prompt_ended_or_not_utf8_is_a_usage_error(tmp_path: Path) -> None:
    code, shown = _typed(["init", "--encryption", "password"], [b"\x04"])  # Ctrl-D
    assert code == 2 and b"no passphrase given" in shown, shown
    assert b"Traceback" not in shown and not Home().path.exists()
    code, shown = _typed(["init", "--encryption", "password"], [b"ab\xffcd\r"])
    assert code == 2 and b"the passphrase typed is not UTF-8 text" in shown, shown
    assert b"Traceback" not in shown and b"0xff" not in shown and not Home().path.exists()
    code, shown = _typed(["init", "--encryption", "password", "--work-factor", "10"],
                         [b"p\xc3\xa4ss\r", b"p\xc3\xa4ss\r"])
    assert code == 0, shown


def _run(*args: str, env: dict[bytes, bytes]) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "durafs.cli.main", *args], env=env,
                          capture_output=True, check=False)


def _env(**secrets: bytes) -> dict[bytes, bytes]:
    return {**os.environb, **{k.encode(): v for k, v in secrets.items()}}


def test_a_passphrase_in_the_environment_that_is_not_utf8_is_no_traceback(
    tmp_path: Path,
) -> None:
    right = _env(DURAFS_PASSPHRASE=b"right")
    made = _run("init", "--encryption", "password", "--work-factor", "10", env=right)
    assert made.returncode == 0, made.stderr
    (tmp_path / "pool").mkdir()
    odd = _env(DURAFS_PASSPHRASE=b"ab\xffcd")
    run = _run("pool", "add", "p", "--kind", "dir", "--path", os.fspath(tmp_path / "pool"),
               env=odd)
    assert run.returncode == 2 and b"wrong passphrase" in run.stderr, run.stderr
    assert b"Traceback" not in run.stderr


def test_a_new_passphrase_is_one_age_can_be_given_on_a_terminal(tmp_path: Path) -> None:
    for bad, why in ((b"two\nlines", b"control characters"), (b"end\n", b"control characters"),
                     (b"ab\xffcd", b"UTF-8 text")):
        run = _run("init", "--encryption", "password", env=_env(DURAFS_PASSPHRASE=bad))
        assert run.returncode == 2 and why in run.stderr, (bad, run.stderr)
        assert b"DURAFS_PASSPHRASE" in run.stderr and not Home().path.exists()
    # Ctrl-V Ctrl-A: a control character typed (the terminal takes it literally)
    code, shown = _typed(["init", "--encryption", "password"], [b"a\x16\x01b\r"])
    assert code == 2 and b"control characters" in shown, shown
    assert _run("init", env=_env()).returncode == 0
    run = _run("key", "export-identity", os.fspath(tmp_path / "id"), "--protect",
               env=_env(DURAFS_IDENTITY_PASSPHRASE=b"tab\there"))
    assert run.returncode == 2 and b"DURAFS_IDENTITY_PASSPHRASE" in run.stderr, run.stderr
    assert not (tmp_path / "id").exists()
    # one typed in UTF-8 is fine, and reading takes the bytes as ever
    run = _run("key", "export-identity", os.fspath(tmp_path / "id"), "--protect",
               env=_env(DURAFS_IDENTITY_PASSPHRASE="pässwörd ✓".encode()))
    assert run.returncode == 0, run.stderr


def test_hooks_are_not_given_the_passphrases(tmp_path: Path) -> None:
    secrets = _env(DURAFS_PASSPHRASE=b"catalog secret", DURAFS_IDENTITY_PASSPHRASE=b"id secret")
    assert _run("init", "--encryption", "password", "--work-factor", "10", env=secrets
                ).returncode == 0
    assert _run("pool", "add", "p", "--kind", "dir", "--path", os.fspath(tmp_path / "pool"),
                env=secrets).returncode == 0
    (tmp_path / "src").mkdir()
    seen = tmp_path / "seen"
    hook = f"env > {seen}.pre; cat /proc/$$/environ > {seen}.raw"
    run = _run("backup", os.fspath(tmp_path / "src"), "--pool", "p", "--pre-hook", hook,
               "--post-hook", f"env > {seen}.post", env=secrets)
    assert run.returncode == 0, run.stderr
    for what in ("pre", "post", "raw"):
        text = Path(f"{seen}.{what}").read_bytes()
        assert b"PATH=" in text and b"secret" not in text and b"PASSPHRASE" not in text, what


#: Runs ``python -c ARGV[1]`` with exactly the environment strings ARGV[2:], through the
#: C library's execve: an entry without "=" cannot be given through os.execve.
_EXEC_RAW = """
import ctypes, sys
argv = [sys.executable.encode(), b"-c", sys.argv[1].encode()]
env = [entry.encode() for entry in sys.argv[2:]]
def strings(items): return (ctypes.c_char_p * (len(items) + 1))(*items, None)
ctypes.CDLL(None).execve(argv[0], strings(argv), strings(env))
sys.exit("execve failed")
"""


def test_an_environment_entry_without_a_value_is_passed_over_when_secrets_are_forgotten(
) -> None:
    """execve takes any strings as the environment, a bare "DURAFS_PASSPHRASE" as well
    (Python leaves such an entry out of os.environ): `forget_secret_env` measured its
    value as -1 bytes and cleared memory from there on, where it was to clear only the
    passphrase of the entry beside it (a crash, if nothing worse)."""
    forget = ("from durafs.engine.home import forget_secret_env; forget_secret_env(); "
              "import sys; sys.stdout.buffer.write(open('/proc/self/environ', 'rb').read())")
    for entries in (["DURAFS_PASSPHRASE", "DURAFS_PASSPHRASE=the secret"],
                    ["DURAFS_PASSPHRASE=the secret", "DURAFS_PASSPHRASE"]):
        env = [f"PYTHONPATH={child_env()['PYTHONPATH']}", *entries, "OTHER=kept"]
        run = subprocess.run(python_command("-c", _EXEC_RAW, forget, *env),
                             capture_output=True, timeout=60, check=False)
        assert run.returncode == 0, (entries, run.returncode, run.stderr)
        assert b"the secret" not in run.stdout and b"OTHER=kept" in run.stdout, run.stdout


def _with_umask(umask: str, *args: str, env: dict[bytes, bytes]
                ) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["sh", "-c", f'umask {umask}; exec "$@"', "sh", sys.executable,
                           "-m", "durafs.cli.main", *args], env=env, capture_output=True,
                          check=False)


def _modes(root: Path) -> dict[str, int]:
    return {os.fspath(p.relative_to(root)): p.stat().st_mode & 0o777
            for p in (root, *root.rglob("*"))}


def test_the_catalog_directory_is_its_owners_alone_under_any_umask(tmp_path: Path) -> None:
    home = Home().path
    for umask in ("000", "022"):
        run = _with_umask(umask, "init", env=_env())
        assert run.returncode == 0, run.stderr
        # nobody else may read the index (every name backed up) or swap config and keys
        modes = _modes(home)
        assert modes["."] == 0o700, modes
        assert modes["keys"] == 0o700 and modes["keys/identity.txt"] == 0o600, modes
        identity = tmp_path / f"id-{umask}"
        run = _with_umask(umask, "key", "export-identity", os.fspath(identity), env=_env())
        assert run.returncode == 0 and _modes(identity)["."] == 0o600, run.stderr
        if umask == "000":
            pool = tmp_path / "pool"
            assert _with_umask(umask, "pool", "add", "p", "--kind", "dir", "--path",
                               os.fspath(pool), env=_env()).returncode == 0
            assert _with_umask(umask, "backup", os.fspath(tmp_path), "--pool", "p",
                               env=_env()).returncode == 0
            shutil.rmtree(home)
            run = _with_umask(umask, "recover", "--path", os.fspath(pool), "--identity",
                              os.fspath(identity), env=_env())
            assert run.returncode == 0, run.stderr
            assert _modes(home)["."] == 0o700
            assert _with_umask(umask, "verify", env=_env()).returncode == 0
        shutil.rmtree(home)


def test_an_identity_file_is_written_whole_and_synced_or_not_at_all(tmp_path: Path) -> None:
    assert durafs("init").code == 0
    with tmpfs(tmp_path / "small", size="64k") as small:
        fill(small / "filler")
        run = durafs("key", "export-identity", small / "id.txt")
        assert run.code == 2, run
        assert run.err == (f"durafs: {small / 'id.txt'}: cannot be written "
                           "(No space left on device)\n")
        assert not (small / "id.txt").exists()  # no empty file that passes for the key
    # on the disk before durafs says it wrote it: it may be the only copy of the key
    require_strace("seeing the file synced")
    log, identity = tmp_path / "strace.log", tmp_path / "id.txt"
    run = run_traced(log, ["-e", "trace=fsync,fdatasync", "-P", os.fspath(identity)],
                     python_command("-m", "durafs.cli.main", "key", "export-identity", identity),
                     env=child_env())
    assert run.returncode == 0, run.stderr
    assert calls(log, "fsync") + calls(log, "fdatasync") >= 1, log.read_text()
    assert identity.read_text().count("AGE-SECRET-KEY-1") == 1


def test_a_new_catalogs_keys_are_synced_before_it_is_one(tmp_path: Path) -> None:
    # identity.txt is the only copy of the key until it is exported, and a backup writes
    # volumes only it opens: a power cut must not leave an empty file in its place
    require_strace("seeing the files synced")
    log, home = tmp_path / "strace.log", Home()
    run = run_traced(log, ["-y", "-e", "trace=fsync,fdatasync"],
                     python_command("-m", "durafs.cli.main", "init"), env=child_env())
    assert run.returncode == 0, run.stderr
    synced = re.findall(r"sync\(\d+<(.*)>\)", log.read_text())
    key_files = [os.fspath(home.keys_dir / n) for n in ("id-key", "identity.txt")]
    assert set(key_files) < set(synced), synced
    # then their directory, and last config.json and the catalog directory that holds it:
    # together they make it a catalog
    assert synced.index(os.fspath(home.keys_dir)) > max(map(synced.index, key_files)), synced
    assert synced[-1] == os.fspath(home.path), synced


def test_a_damaged_key_file_of_the_catalog_is_named_never_shown(tmp_path: Path) -> None:
    source = tmp_path / "src"
    source.mkdir()
    (source / "f").write_text("x")
    assert durafs("init").code == 0
    assert durafs("pool", "add", "p", "--kind", "dir", "--path", tmp_path / "pool").code == 0
    assert durafs("backup", source, "--pool", "p").code == 0
    backup = ["backup", os.fspath(source), "--pool", "p"]
    restore = ["restore", "default/latest", os.fspath(tmp_path / "out")]
    # what needs each file (a host may keep the recipient alone, and write only)
    needs = {"id-key": (backup, restore), "recipient.txt": (backup, ["key", "recipient"]),
             "identity.txt": (restore,)}
    for name, damage in (("id-key", "ab" * 31), ("id-key", "SECRETzz"), ("id-key", None),
                         ("recipient.txt", "age1SECRET"), ("identity.txt", "AGE-SECRET-KEY-1Q"),
                         ("identity.txt", "\udcff SECRET")):
        path = Home().keys_dir / name
        kept = path.read_bytes()
        if damage is None:
            path.unlink()
        else:
            path.write_bytes(damage.encode(errors="surrogateescape"))
        for args in needs[name]:
            run = _run(*args, env=_env())
            assert run.returncode == 3, (name, damage, args, run.stderr)
            assert run.stderr.startswith(f"durafs: {path}: ".encode()), (name, run.stderr)
            assert b"SECRET" not in run.stderr and b"Traceback" not in run.stderr
        path.write_bytes(kept)
    assert durafs("restore", "default/latest", tmp_path / "out").code == 0


def test_recover_of_media_of_two_catalogs_names_the_one_that_differs(tmp_path: Path) -> None:
    pools = []
    for name in ("one", "two"):
        home = tmp_path / name
        env = _env(DURAFS_HOME=os.fsencode(home))
        pools.append(tmp_path / f"{name}-pool")
        for args in (["init"], ["key", "export-identity", f"{home}.id"],
                     ["pool", "add", "p", "--kind", "dir", "--path", os.fspath(pools[-1])]):
            assert _run(*args, env=env).returncode == 0
    # the same label (P-001) on both: only the path tells them apart
    run = durafs("recover", "--path", pools[0], "--path", pools[1], "--identity",
                 tmp_path / "one.id")
    assert run.code == 2, run
    assert run.err.startswith(f"durafs: {pools[1]}: medium P-001 belongs to catalog "), run
    assert f"{pools[0]} to catalog" in run.err and not Home().path.exists(), run


def _backed_up_beside_another_catalog(tmp_path: Path) -> Path:
    """A catalog (the test's DURAFS_HOME) with one backup of a small source, which it
    returns, to pool *tmp_path*/pool; and another catalog in *tmp_path*/other."""
    source = tmp_path / "src"
    source.mkdir()
    (source / "f").write_text("x")
    assert _run("init", env=_env(DURAFS_HOME=os.fsencode(tmp_path / "other"))).returncode == 0
    assert durafs("init").code == 0
    assert durafs("pool", "add", "p", "--kind", "dir", "--path", tmp_path / "pool").code == 0
    assert durafs("backup", source, "--pool", "p").code == 0
    return source


def test_recover_keeps_the_key_that_opens_the_media_of_an_identity_file_of_several(
    tmp_path: Path,
) -> None:
    source = _backed_up_beside_another_catalog(tmp_path)
    assert _run("key", "export-identity", os.fspath(tmp_path / "other.id"),
                env=_env(DURAFS_HOME=os.fsencode(tmp_path / "other"))).returncode == 0
    assert durafs("key", "export-identity", tmp_path / "own.id").code == 0
    recipient = durafs("key", "recipient").out
    # a key ring: the other key first, as `age -i` takes it
    ring = tmp_path / "ring.txt"
    ring.write_bytes((tmp_path / "other.id").read_bytes() + (tmp_path / "own.id").read_bytes())
    shutil.rmtree(Home().path)
    run = durafs("recover", "--path", tmp_path / "pool", "--identity", ring)
    assert run.code == 0, run
    assert durafs("key", "recipient").out == recipient  # new volumes: to the same key
    assert durafs("restore", "default/latest", tmp_path / "out").code == 0
    assert durafs("backup", source, "--pool", "p").code == 0
    assert durafs("verify", "--read-data").code == 0


def test_an_identity_that_is_not_the_catalogs_is_refused_not_taken_for_damage(
    tmp_path: Path,
) -> None:
    _backed_up_beside_another_catalog(tmp_path)
    own = Home().keys_dir / "identity.txt"
    kept = own.read_bytes()
    own.write_bytes((tmp_path / "other" / "keys" / "identity.txt").read_bytes())
    for args in (["verify"], ["verify", "--read-data"], ["restore", "default/latest",
                                                         tmp_path / "out"]):
        run = durafs(*args)
        assert run.code == 2, (args, run)
        assert run.err.startswith(f"durafs: {own}: not this catalog's identity"), run
        assert "DAMAGE" not in run.out and "AGE-SECRET-KEY" not in run.err
    assert not (tmp_path / "out").exists()
    own.write_bytes(kept)
    assert durafs("verify", "--read-data").code == 0


def test_recover_reads_no_more_of_an_identity_file_than_one_can_be(tmp_path: Path) -> None:
    """`--identity /dev/zero` (or a volume given by mistake) was read whole into memory,
    without end for /dev/zero; a file larger than any identity is refused at once."""
    pool = tmp_path / "pool"
    pool.mkdir()
    run = durafs("recover", "--path", pool, "--identity", "/dev/zero")
    assert run.code == 2 and "/dev/zero: over 1048576 bytes" in run.err, run
