"""Restore by a user without root of a checkpoint root made: what cannot be given (an
owner, a privileged xattr) is named with its reason, and the rest is restored."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path

from tests.engine.cli import durafs
from tests.engine.test_restore import _restore_as_nobody
from tests.support.nobody import as_nobody
from tests.support.oddtree import require_root, world_dir

NOBODY = 65534


def _backed_up_by_root(world: Path, make: dict[str, tuple[int, int, int]]) -> Path:
    """world/src holding a file per name of *make* (owner uid, gid and mode), each with a
    ``trusted.`` and a ``user.`` xattr, backed up by root into world/home, pool world/pool
    (both given to nobody afterwards): the source."""
    source = world / "src"
    source.mkdir()
    for name, (uid, gid, mode) in make.items():
        path = source / name
        path.write_bytes(b"%s's data\n" % name.encode())
        os.setxattr(path, "user.note", b"kept")
        os.setxattr(path, "trusted.note", b"root's")
        os.chown(path, uid, gid)
        path.chmod(mode)
    os.chown(source, NOBODY, NOBODY)
    home = world / "home"
    assert durafs("--home", home, "init", "--encryption", "none").code == 0
    assert durafs("--home", home, "pool", "add", "p", "--kind", "dir", "--path",
                  world / "pool").code == 0
    assert durafs("--home", home, "backup", source, "--pool", "p").code == 0
    subprocess.run(["chown", "-R", f"{NOBODY}:{NOBODY}", home, world / "pool"], check=True)
    return source


def test_owners_and_xattrs_a_user_cannot_give_are_named_not_dropped(tmp_path: Path) -> None:
    require_root("switching to another user (root may give any owner)")
    with world_dir() as world:
        source = _backed_up_by_root(world, {"theirs": (1234, 2345, 0o644),
                                            "mine": (NOBODY, NOBODY, 0o644)})
        out = world / "out"
        code, err = _restore_as_nobody("--home", world / "home", "restore",
                                       f"default/latest{source}", out)
        # everything that can be restored is: the data, the user xattr
        for name in ("theirs", "mine"):
            assert (out / name).read_bytes() == b"%s's data\n" % name.encode()
            assert os.getxattr(out / name, "user.note") == b"kept"
        # what cannot is named, once per path, with why: exit 1, not a silent 0
        assert code == 1, err
        named = {line.split(": ", 2)[1]: line for line in err.splitlines()}
        assert sorted(named) == [str(out / "mine"), str(out / "theirs")], err
        assert "user 1234 and group 2345 not given" in named[str(out / "theirs")]
        assert "trusted.note: not set (only root may" in named[str(out / "theirs")]
        assert "not given" not in named[str(out / "mine")]
        assert "trusted.note: not set" in named[str(out / "mine")]
        # the data is all there: both files count as restored, the problems besides
        again = world / "again"
        code, report = as_nobody(lambda: _json_restore("--home", world / "home", "restore",
                                                       f"default/latest{source}", again))
        assert code == 1 and report["files"] == 2 and len(report["problems"]) == 2, report


def _json_restore(*args: str | os.PathLike[str]) -> tuple[int, dict[str, object]]:
    run = durafs(*args, "--json")
    return run.code, json.loads(run.out)


def test_set_id_bits_are_left_off_a_program_whose_owner_was_not_given(tmp_path: Path) -> None:
    # root's set-user-ID program restored by a user as theirs would run as that user for
    # whoever starts it; one the user owns keeps its bits
    require_root("switching to another user (root may give any owner)")
    with world_dir() as world:
        source = _backed_up_by_root(world, {"roots": (0, 0, 0o6755),
                                            "mine": (NOBODY, NOBODY, 0o6755),
                                            "group": (NOBODY, 0, 0o6755)})
        out = world / "out"
        code, err = _restore_as_nobody("--home", world / "home", "restore",
                                       f"default/latest{source}", out)
        assert code == 1, err
        modes = {name: stat.S_IMODE(os.stat(out / name).st_mode)
                 for name in ("roots", "mine", "group")}
        assert modes == {"roots": 0o755, "mine": 0o6755, "group": 0o4755}
        assert "set-user-ID and set-group-ID left off" in err
        assert "group 0 not given (only root may give a file to another user, or to a group "\
               "it is not in); set-group-ID left off" in err
