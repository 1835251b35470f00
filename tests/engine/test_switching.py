"""The backup's GIL switch interval is set for its run and restored after."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from durafs.engine.backup import Backup, BackupOptions
from durafs.engine.home import Home
from durafs.engine.switching import BACKUP_SWITCH_INTERVAL, switch_interval
from tests.engine.cli import setup_catalog


def test_the_interval_holds_inside_and_is_restored_after_even_on_error() -> None:
    before = sys.getswitchinterval()
    with pytest.raises(RuntimeError), switch_interval():
        assert sys.getswitchinterval() == pytest.approx(BACKUP_SWITCH_INTERVAL)
        raise RuntimeError("the backup failed")
    assert sys.getswitchinterval() == before


def test_a_backup_runs_with_it(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("x\n")
    setup_catalog(tmp_path, encryption="none")
    seen: list[float] = []
    home = Home()
    with home.catalog() as catalog:
        Backup(catalog, home.keys(read=False), BackupOptions([os.fsencode(src)], "p"),
               progress=lambda _: seen.append(sys.getswitchinterval())).run()
    assert seen and all(s == pytest.approx(BACKUP_SWITCH_INTERVAL) for s in seen)
    assert sys.getswitchinterval() != pytest.approx(BACKUP_SWITCH_INTERVAL)
