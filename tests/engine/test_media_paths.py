"""Where a directory medium may be: the paths `pool add`, `media add` and `recover` take,
and what `media list` says of what is found at a medium's place."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from durafs.format.chunker import SMALL_FILE_MAX
from tests.engine.cli import durafs, durafs_process, setup_catalog
from tests.support.oddtree import compare_trees


def test_an_empty_medium_path_is_refused_not_taken_for_the_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    setup_catalog(tmp_path)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)  # empty: it could become a medium
    for args in (("pool", "add", "q", "--kind", "dir", "--path", ""),
                 ("media", "add", "p", "--path", ""),
                 ("recover", "--path", "")):
        run = durafs(*args)
        assert run.code == 2 and "a medium's path is empty" in run.err, (args, run.err)
    assert list(cwd.iterdir()) == []
    assert [m["label"] for m in durafs("media", "list", "--json").json()] == ["P-001"]
    assert [p["name"] for p in durafs("pool", "list", "--json").json()] == ["p"]


def test_a_medium_inside_another_medium_or_the_catalog_is_refused(tmp_path: Path) -> None:
    pool = setup_catalog(tmp_path)
    home = Path(os.environ["DURAFS_HOME"])
    for path, message in [
        (pool / "sub", f"is inside medium P-001 ({pool})"),
        (pool / "volumes" / "sub", f"is inside medium P-001 ({pool})"),
        (tmp_path / "link" / "volumes" / "sub", f"is inside medium P-001 ({pool})"),
        (home / "media", "is inside durafs's catalog directory"),
        (home, "is inside durafs's catalog directory"),
    ]:
        (tmp_path / "link").unlink(missing_ok=True)
        (tmp_path / "link").symlink_to(pool)
        before = sorted(os.listdir(path.parent)) if path.parent.is_dir() else None
        for args in (("media", "add", "p", "--path", path),
                     ("pool", "add", "q", "--kind", "dir", "--path", path)):
            run = durafs(*args)
            assert run.code == 2 and message in run.err, (args, run.err)
        if before is not None:  # nothing made there
            assert sorted(os.listdir(path.parent)) == before
    assert [m["label"] for m in durafs("media", "list", "--json").json()] == ["P-001"]
    assert [p["name"] for p in durafs("pool", "list", "--json").json()] == ["p"]


def test_a_medium_may_take_the_place_of_an_offline_one(tmp_path: Path) -> None:
    """Disks taking turns at one mount point: the path of an offline medium, or one inside
    it, is free when that medium's directory is not there."""
    pool = setup_catalog(tmp_path)
    pool.rename(tmp_path / "shelf")  # the disk unplugged: its mount point is empty
    pool.mkdir()
    assert durafs("media", "add", "p", "--path", pool / "durafs").code == 0
    media = durafs("media", "list", "--json").json()
    assert [(m["label"], m["online"]) for m in media] == [("P-001", False), ("P-002", True)]
    # and another catalog's medium is a medium too: nothing goes inside it
    run = durafs("--home", tmp_path / "other", "init", "--encryption", "none")
    assert run.code == 0, run.err
    run = durafs("--home", tmp_path / "other", "pool", "add", "q", "--kind", "dir",
                 "--path", pool / "durafs" / "x")
    assert run.code == 2 and f"is inside medium P-002 ({pool / 'durafs'})" in run.err, run.err


def test_a_file_in_place_of_a_medium_is_named_as_such(tmp_path: Path) -> None:
    pool = setup_catalog(tmp_path, encryption="none")
    source = tmp_path / "src"
    source.mkdir()
    (source / "f").write_text("x")
    pool.rename(tmp_path / "moved")
    pool.write_text("not a disk")
    (medium,) = durafs("media", "list", "--json").json()
    assert not medium["online"]
    assert medium["reason"] == f"{pool} is not a directory"
    run = durafs("backup", source, "--pool", "p", "--media-timeout", "0")
    assert run.code == 3 and f"cannot be used: {pool} is not a directory" in run.err, run.err
    pool.unlink()  # gone, as a disk taken away: no more than offline
    (medium,) = durafs("media", "list", "--json").json()
    assert medium["reason"] == f"{pool} does not exist"
    pool.symlink_to(tmp_path / "unplugged")  # a link to a disk's mount: offline too
    (medium,) = durafs("media", "list", "--json").json()
    assert medium["reason"] == f"{pool} does not exist"


def test_an_empty_or_blank_pool_name_or_label_is_refused(tmp_path: Path) -> None:
    setup_catalog(tmp_path)
    for args in (("pool", "add", "", "--kind", "dir", "--path", tmp_path / "a"),
                 ("pool", "add", " ", "--kind", "dir", "--path", tmp_path / "a"),
                 ("pool", "add", "q", "--kind", "dir", "--path", tmp_path / "a",
                  "--label", ""),
                 ("media", "add", "p", "--path", tmp_path / "a", "--label", ""),
                 ("media", "add", "p", "--path", tmp_path / "a", "--label", "\t")):
        run = durafs(*args)
        assert run.code == 2 and "is not a name: it is empty or blank" in run.err, (
            args, run.err)
    assert not (tmp_path / "a").exists()
    assert [m["label"] for m in durafs("media", "list", "--json").json()] == ["P-001"]


def test_a_disk_mounted_elsewhere_is_told_where_it_is(tmp_path: Path) -> None:
    """A disk comes back at another place (an automounter's /media/…/LABEL1): `media set
    --path` says so, once the marker there shows it is that medium."""
    pool = setup_catalog(tmp_path, encryption="none")
    source = tmp_path / "src"
    source.mkdir()
    (source / "f").write_text("first")
    assert durafs("backup", source, "--pool", "p").code == 0
    moved = tmp_path / "elsewhere"
    pool.rename(moved)
    other = tmp_path / "other"
    assert durafs("media", "add", "p", "--path", other).code == 0
    empty = tmp_path / "empty"
    empty.mkdir()
    for path, reason in [(other, f"{other} holds medium P-002"),
                         (empty, f"{empty} has no DURAFS-MEDIUM.json"),
                         ("", "a medium's path is empty")]:
        run = durafs("media", "set", "P-001", "--path", path)
        assert run.code == 2 and reason in run.err, run.err
    assert durafs("media", "list", "--json").json()[0]["path"] == str(pool)
    run = durafs("media", "set", "P-001", "--path", moved)
    assert run.code == 0, run.err
    (medium, _) = durafs("media", "list", "--json").json()
    assert (medium["path"], medium["online"]) == (str(moved), True)
    out = tmp_path / "out"
    assert durafs("restore", f"default/latest{source}", out).code == 0
    assert (out / "f").read_text() == "first"
    assert durafs("verify").code == 0


def test_a_backup_waiting_in_vain_says_why_no_other_medium_took_the_volume(
    tmp_path: Path
) -> None:
    pool = setup_catalog(tmp_path, encryption="none")
    source = tmp_path / "src"
    source.mkdir()
    # the least capacity takes a volume, but not one of this file: 1 MiB is one chunk
    # (a file that size is never cut, so no chunker key can make a smaller first chunk
    # that fits), and with a new volume's own bytes and the margin kept free it needs more
    assert durafs("media", "set", "P-001", "--capacity", "1152K").code == 0
    (source / "f").write_bytes(os.urandom(SMALL_FILE_MAX))
    second = tmp_path / "second"
    assert durafs("media", "add", "p", "--path", second, "--location", "shelf 2").code == 0
    second.rename(tmp_path / "unplugged")
    run = durafs("backup", source, "--pool", "p", "--media-timeout", "0")
    assert run.code == 3
    assert (f"medium P-002 of pool p (last seen at {second}, kept at shelf 2) is offline"
            in run.err), run.err
    assert "(P-001 has " in run.err and " bytes free)" in run.err, run.err
    assert os.listdir(pool / "volumes") == []


def test_a_restore_waiting_for_a_medium_says_so_once(tmp_path: Path) -> None:
    """Both restore workers wait for the offline medium: the user is told once."""
    pool = setup_catalog(tmp_path, encryption="none", volume_size="1M")
    source = tmp_path / "src"
    source.mkdir()
    for i in range(8):
        (source / f"f{i}").write_bytes(os.urandom(1 << 20))
    assert durafs("backup", source, "--pool", "p").code == 0
    shelf = tmp_path / "shelf"
    pool.rename(shelf)
    out = tmp_path / "out"
    with durafs_process("restore", f"default/latest{source}", out, "--media-timeout", "60",
                        stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
        time.sleep(3)  # every worker is waiting by now
        shelf.rename(pool)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert err.decode().count("waiting for medium P-001") == 1, err
    assert compare_trees(source, out) == []


def test_a_restore_into_a_medium_or_the_catalog_is_refused(tmp_path: Path) -> None:
    # it would give the medium's directory the backup's owner, mode and ACLs (letting
    # others at the volumes), and mix the backup's files with durafs's own
    source = tmp_path / "src"
    source.mkdir()
    (source / "f").write_text("x")
    source.chmod(0o777)
    pool = setup_catalog(tmp_path)
    assert durafs("backup", source, "--pool", "p").code == 0
    home = Path(os.environ["DURAFS_HOME"])
    (tmp_path / "link").symlink_to(pool)
    for target, message in [
        (pool, f"is medium P-001 of pool p ({pool})"),
        (pool / "volumes" / "new", f"is inside medium P-001 of pool p ({pool})"),
        (tmp_path / "link", f"is medium P-001 of pool p ({pool})"),
        (home, "is durafs's catalog directory"),
        (home / "out", "is inside durafs's catalog directory"),
    ]:
        run = durafs("restore", f"default/latest{source}", target, "--overwrite")
        assert run.code == 2 and message in run.err, (target, run.err)
    assert not (home / "out").exists() and not (pool / "volumes" / "new").exists()
    assert not (pool / "f").exists() and os.stat(pool).st_mode & 0o777 == 0o755
    assert durafs("verify").code == 0
    # beside them, all is as ever
    assert durafs("restore", f"default/latest{source}", tmp_path / "out").code == 0


def test_a_backup_that_leaves_a_disk_short_of_a_volume_still_writes_its_catalog_there(
    tmp_path: Path
) -> None:
    """A medium with less room than a data volume needs takes no new data volume, but the
    checkpoint's catalog volume (a few KiB here) still fits: a backup whose data left the
    pool's only disk just short of that room used to store its data and then fail, "no
    medium with room left", its checkpoint missing from the media."""
    pool = setup_catalog(tmp_path, encryption="none")
    source = tmp_path / "src"
    source.mkdir()
    assert durafs("media", "set", "P-001", "--capacity", "1152K").code == 0
    (source / "f").write_bytes(os.urandom(80_000))  # leaves < 1 MiB + 64 KiB of room
    run = durafs("backup", source, "--pool", "p")
    assert run.code == 0, run.err
    kinds = sorted(name.split("-")[1] for name in os.listdir(pool / "volumes"))
    assert kinds == ["catalog", "data"]
    assert durafs("verify", "--read-data").code == 0
    (medium,) = durafs("media", "list", "--json").json()
    assert medium["state"] == "full"  # for data
    # more data needs another medium, and says so
    (source / "g").write_bytes(os.urandom(200_000))
    run = durafs("backup", source, "--pool", "p")
    assert run.code == 3 and "no medium with room" in run.err, run.err
