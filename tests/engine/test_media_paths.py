"""Where a directory medium may be: the paths `pool add`, `media add` and `recover` take,
and what `media list` says of what is found at a medium's place."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.engine.cli import durafs, setup_catalog


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
