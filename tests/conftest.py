"""Shared test set-up: isolate every test from the user's environment."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(autouse=True)
def _isolated_env(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Tests must never read or write the real catalog (/var/lib/durafs or ~/.local/share).
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("DURAFS_HOME", str(home / "durafs"))
    monkeypatch.delenv("DURAFS_PASSPHRASE", raising=False)
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)


def is_root() -> bool:
    return os.geteuid() == 0
