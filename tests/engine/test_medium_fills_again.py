"""A volume moving off a medium that filled under it (poolwriter.MovingSink) goes to a
medium an earlier run marked full, once that medium has room again, as new volumes do."""

from __future__ import annotations

from pathlib import Path

from tests.engine.cli import durafs
from tests.engine.test_medium_fills import (
    _random_tree,
    _temp_files,
    _volumes,
    backup_filled_mid_volume,
    restores_whole,
)
from tests.support.oddtree import fill, tmpfs


def test_a_volume_moves_on_to_a_medium_marked_full_that_has_room_again(
    tmp_path: Path
) -> None:
    source = tmp_path / "src"
    _random_tree(source, 4)
    with tmpfs(tmp_path / "a", size="64m") as a, tmpfs(tmp_path / "b", size="128m") as b:
        first, second = a / "pool", b / "pool"
        assert durafs("init", "--encryption", "none").code == 0
        assert durafs("pool", "add", "p", "--kind", "dir", "--path", first).code == 0
        assert durafs("media", "add", "p", "--path", second).code == 0
        # a run that found the second disk full (the first one unplugged) marks it so
        first.rename(a / "unplugged")
        fill(b / "filler")
        run = durafs("backup", source, "--pool", "p", "--media-timeout", "0")
        assert run.code == 3, run.err
        assert [m["state"] for m in durafs("media", "list", "--json").json()] == [
            "active", "full"]
        (a / "unplugged").rename(first)
        (b / "filler").unlink()  # its room is back
        run, filled = backup_filled_mid_volume(first, a / "filler", source, "--pool", "p")
        assert filled
        assert run.code == 0, run.err
        assert "went on on medium P-002" in run.err, run.err
        assert [m["state"] for m in durafs("media", "list", "--json").json()] == [
            "full", "active"]
        assert _volumes(first) == [] and _temp_files(first, second) == []
        restores_whole(source, tmp_path / "out")
