"""`durafs recover --identity FILE` with an identity file that cannot be used: a
configuration error (exit 2) naming the file, as a missing or unreadable one is."""

from __future__ import annotations

import base64
import os
import shutil
from pathlib import Path

import pytest

from durafs.engine.home import Home
from tests.engine.cli import durafs, one_file_backed_up


def _lost_catalog(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """A backed-up pool whose catalog is gone, and its identity exported with a
    passphrase (`--protect`): (pool, identity file)."""
    _, pool = one_file_backed_up(tmp_path)
    identity = tmp_path / "identity.age"
    monkeypatch.setenv("DURAFS_IDENTITY_PASSPHRASE", "the right one")
    assert durafs("key", "export-identity", identity, "--protect").code == 0
    shutil.rmtree(Home().path)
    monkeypatch.setenv("DURAFS_HOME", os.fspath(tmp_path / "fresh"))
    return pool, identity


def test_a_protected_identity_file_with_the_wrong_passphrase_is_a_configuration_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pool, identity = _lost_catalog(tmp_path, monkeypatch)
    monkeypatch.setenv("DURAFS_IDENTITY_PASSPHRASE", "not the one")
    run = durafs("recover", "--path", pool, "--identity", identity)
    assert run.code == 2, run
    assert os.fspath(identity) in run.err and "passphrase" in run.err, run
    assert "Traceback" not in run.err
    assert not Home().path.exists()
    monkeypatch.setenv("DURAFS_IDENTITY_PASSPHRASE", "the right one")
    assert durafs("recover", "--path", pool, "--identity", identity).code == 0


def test_a_file_that_is_no_identity_file_is_a_configuration_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pool, _ = _lost_catalog(tmp_path, monkeypatch)
    notes = tmp_path / "notes.txt"
    notes.write_text("not a key\n")
    run = durafs("recover", "--path", pool, "--identity", notes)
    assert run.code == 2, run
    assert os.fspath(notes) in run.err and "AGE-SECRET-KEY-1" in run.err, run
    assert not Home().path.exists()


def test_a_key_that_does_not_open_the_media_names_them_as_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pool, _ = _lost_catalog(tmp_path, monkeypatch)
    monkeypatch.setenv("DURAFS_PASSPHRASE", "not the key")
    # every path must hold a medium (all are checked before any is opened): the same one
    (tmp_path / "second").symlink_to(pool)
    run = durafs("recover", "--path", pool, "--path", tmp_path / "second")
    assert run.code == 2, run
    # the paths as the user wrote them, not a Python list
    assert f"does not open the media at {pool}, {tmp_path / 'second'}" in run.err, run


def test_a_protected_identity_file_in_ascii_armor_opens_the_media(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`age -p -a` writes a protected identity in ASCII armor (PEM: base64 in lines of
    64 between BEGIN and END lines); it was refused as "not an AGE-SECRET-KEY-1 key"."""
    pool, identity = _lost_catalog(tmp_path, monkeypatch)
    body = base64.b64encode(identity.read_bytes()).decode()
    armored = tmp_path / "identity.age.asc"
    armored.write_text("-----BEGIN AGE ENCRYPTED FILE-----\n"
                       + "".join(body[i : i + 64] + "\n" for i in range(0, len(body), 64))
                       + "-----END AGE ENCRYPTED FILE-----\n")
    broken = tmp_path / "broken.asc"
    broken.write_text(armored.read_text().replace("-----END", "--END"))
    run = durafs("recover", "--path", pool, "--identity", broken)
    assert run.code == 2 and "armored age file" in run.err, run
    run = durafs("recover", "--path", pool, "--identity", armored)
    assert run.code == 0, run
    assert durafs("restore", "default/latest", tmp_path / "out").code == 0
