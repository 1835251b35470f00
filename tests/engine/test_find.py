"""`durafs find`: what its patterns match, compared with the names backed up."""

from __future__ import annotations

import os
from pathlib import Path

from tests.engine.cli import durafs, setup_catalog


def _backed_up(tmp: Path, names: list[bytes]) -> Path:
    """A source tmp/src holding a file for each of *names*, backed up once."""
    source = tmp / "src"
    source.mkdir()
    for name in names:
        (source / os.fsdecode(name)).write_bytes(name)
    setup_catalog(tmp)
    run = durafs("backup", source, "--pool", "p")
    assert run.code == 0, run.err
    return source


def _found(source: Path, pattern: str) -> set[bytes]:
    """The names in *source* that `durafs find PATTERN --json` gives."""
    run = durafs("find", pattern, "--json")
    assert run.code == 0, run.err
    prefix = os.fsencode(source) + b"/"
    paths = {bytes.fromhex(h["path_hex"]) if "path_hex" in h else os.fsencode(h["path"])
             for h in run.json()}
    return {p.removeprefix(prefix) for p in paths if p.startswith(prefix)}


def test_a_byte_that_is_not_utf8_matches_only_itself(tmp_path: Path) -> None:
    # the index holds each such byte as U+FFFD: a\xff, a\xfe and a real "a\ufffd" are
    # the same text there, and a search for one must not give the others
    real = "a\ufffd".encode()
    source = _backed_up(tmp_path, [b"a\xff", b"a\xfe", real, b"xa\xffy", b"a\xff\xfe"])
    assert _found(source, os.fsdecode(b"a\xff")) == {b"a\xff", b"xa\xffy", b"a\xff\xfe"}
    assert _found(source, os.fsdecode(b"a\xfe")) == {b"a\xfe"}
    assert _found(source, "a\ufffd") == {real}
    assert _found(source, os.fsdecode(b"a\xff?")) == {b"a\xff\xfe"}
    assert _found(source, os.fsdecode(b"*\xff")) == {b"a\xff"}
    assert _found(source, "a?") == {b"a\xff", b"a\xfe", real}
