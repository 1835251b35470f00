"""An interrupted unprivileged restore gives the directories it opened to their owner
their modes back (engine/restore.py `_put_modes_back`): the very directories it opened,
even when a path leads elsewhere by then."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

from tests.engine.cli import durafs
from tests.support.oddtree import require_root, world_dir


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path, follow_symlinks=False).st_mode)


def test_target_gets_its_mode_back_through_the_directory_held_not_its_path(
    tmp_path: Path,
) -> None:
    """TARGET (mode 0500, opened to u+wx) is renamed while the restore waits for an offline
    medium, and a directory of the same user takes its path. The interrupted restore
    gives the mode back to TARGET, the directory it opened, as it gives TARGET its
    metadata through the descriptor held since it began; the newcomer is not touched."""
    require_root("switching to another user (root may write in any directory)")
    with world_dir() as world:
        home, source, out = world / "home", world / "src", world / "out"
        (source / "ro").mkdir(parents=True)
        (source / "ro" / "file").write_bytes(b"in a read-only directory\n")
        (source / "ro").chmod(0o555)
        subprocess.run(["chown", "-R", "65534:65534", source], check=True)
        assert durafs("--home", home, "init", "--encryption", "none").code == 0
        assert durafs("--home", home, "pool", "add", "p", "--kind", "dir", "--path",
                      world / "pool").code == 0
        assert durafs("--home", home, "backup", source, "--pool", "p").code == 0
        assert durafs("--home", home, "restore", f"default/latest{source}", out).code == 0
        subprocess.run(["chown", "-R", "65534:65534", home, world / "pool", out], check=True)
        out.chmod(0o500)
        (world / "pool").rename(world / "unplugged")  # the restore waits for it
        command = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--",
                   sys.executable, "-m", "durafs.cli.main", "--home", os.fspath(home),
                   "restore", "--overwrite", f"default/latest{source}", os.fspath(out)]
        with subprocess.Popen(command, stderr=subprocess.PIPE) as proc:
            assert proc.stderr is not None
            line = proc.stderr.readline()
            assert b"waiting for medium P-001" in line, line
            assert _mode(out) == 0o700  # opened to its owner
            moved = world / "moved"
            out.rename(moved)
            out.mkdir(0o750)
            out.chmod(0o750)
            os.chown(out, 65534, 65534)
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(10)
            finally:
                proc.kill()
            err = proc.stderr.read().decode()
        assert proc.returncode == 128 + signal.SIGINT, err
        assert _mode(out) == 0o750, err  # not the directory the restore opened
        assert _mode(moved) == 0o500, err  # the one it opened has its mode back
        assert _mode(moved / "ro") == 0o555, err
