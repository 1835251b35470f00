"""The demo README.md names as the first command: it must run to its end."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_the_demo_runs_to_its_end_and_restores_the_first_checkpoint(tmp_path: Path) -> None:
    demo = tmp_path / "demo"
    run = subprocess.run(["bash", str(REPO / "scripts" / "demo.sh")], cwd=REPO,
                         env={**os.environ, "DEMO_DIR": str(demo)}, capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert f"demo done: everything is in {demo}" in run.stdout
    # the restored first checkpoint has what the second backup no longer has
    restored = demo / "restored" / "docs"
    assert (restored / "note-9.txt").exists() and not (demo / "source/docs/note-9.txt").exists()
    assert "changed" not in (restored / "note-7.txt").read_text()
    assert (demo / "restored" / "photos" / "big.raw").read_bytes() == \
        (demo / "source" / "photos" / "big.raw").read_bytes()
    assert "durafs/seal.json" in run.stdout  # the volume listed by age and tar alone
