"""An interrupted unprivileged restore gives the directories it opened to their owner
their modes back (engine/restore.py `_put_modes_back`): the very directories it opened,
even when a path leads elsewhere by then."""

from __future__ import annotations

import os
import signal
import stat
from pathlib import Path

from tests.engine.test_restore import (
    interrupted_while_waiting,
    nobody_restoring,
    read_only_dirs_restored,
)
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
        home, source, out, modes = read_only_dirs_restored(world)
        assert modes[out] == 0o500
        moved = world / "moved"

        def swapped() -> None:
            assert _mode(out) == 0o700  # opened to its owner
            out.rename(moved)
            out.mkdir(0o750)
            out.chmod(0o750)
            os.chown(out, 65534, 65534)

        with nobody_restoring(home, source, out) as proc:
            err = interrupted_while_waiting(proc, signal.SIGINT, meanwhile=swapped)
        assert proc.returncode == 128 + signal.SIGINT, err
        assert _mode(out) == 0o750, err  # not the directory the restore opened
        assert _mode(moved) == 0o500, err  # the one it opened has its mode back
        assert _mode(moved / "ro") == 0o555, err
