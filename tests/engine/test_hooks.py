"""A plan's hooks from the outside: what they are given, how their ends are reported, and
that a backup whose pre-hook ran always runs its post-hook."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.engine.cli import durafs, setup_catalog


def test_a_hook_gets_no_passphrase(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The passphrase opens every volume of the catalog: a hook's commands (a dump tool,
    a notifier sending its environment on) must not see it. DURAFS_HOME they may."""
    monkeypatch.setenv("DURAFS_PASSPHRASE", "the secret")
    monkeypatch.setenv("DURAFS_IDENTITY_PASSPHRASE", "another secret")
    setup_catalog(tmp_path, "password")
    source = tmp_path / "src"
    source.mkdir()
    seen = tmp_path / "env"
    run = durafs("backup", source, "--pool", "p", "--pre-hook", f"env > {seen}.pre",
                 "--post-hook", f"env > {seen}.post")
    assert run.code == 0, run.err
    for when in ("pre", "post"):
        env = Path(f"{seen}.{when}").read_text()
        assert "secret" not in env and "DURAFS_HOME=" in env
