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
    # and one outside a set: the index cannot tell a\xfe from a\xff either
    assert _found(source, os.fsdecode(b"a[!\xff]")) == {b"a\xfe", real}


def test_sets_are_read_as_a_shell_reads_them(tmp_path: Path) -> None:
    names = [b"a.jpg", b"b.jpg", b"!x", b"^y", b"br[a]cket", b"c-d", b"]z"]
    source = _backed_up(tmp_path, names)
    assert _found(source, "[ab].jpg") == {b"a.jpg", b"b.jpg"}
    # [!...] is the complement, as in a shell (and in --exclude); so is [^...]
    for negated in ("[!ab]*", "[^ab]*"):
        assert _found(source, negated) == {b"!x", b"^y", b"c-d", b"]z"}
    assert _found(source, "[!^]?") == {b"!x", b"]z"}
    assert _found(source, "[]]*") == {b"]z"}  # a "]" first is in the set
    assert _found(source, "c[-]d") == {b"c-d"}
    # an unterminated "[" is itself: a pattern with no other wildcard is a substring
    assert _found(source, "[") == {b"br[a]cket"}
    assert _found(source, "r[a") == {b"br[a]cket"}
    # a set that can match nothing is a mistake, said as such (not an empty answer)
    run = durafs("find", "[z-a]*")
    assert run.code == 2 and "find pattern '[z-a]*': the range z-a" in run.err
    assert len(run.err.splitlines()) == 1


def test_a_pattern_with_a_slash_is_refused_not_an_empty_answer(tmp_path: Path) -> None:
    # names hold no "/": "find sub/a.txt" found nothing, as if sub/a.txt was never backed up
    source = tmp_path / "src"
    (source / "sub").mkdir(parents=True)
    (source / "sub" / "a.txt").write_text("a")
    setup_catalog(tmp_path)
    assert durafs("backup", source, "--pool", "p").code == 0
    for pattern in ("sub/a.txt", "*/a.txt", "/"):
        run = durafs("find", pattern)
        assert run.code == 2 and f"find pattern '{pattern}': a name holds no '/'" in run.err
        assert run.out == "" and len(run.err.splitlines()) == 1
    assert durafs("find", "a.txt").out.endswith(f"{source}/sub/a.txt\n")


def test_find_json_is_one_array_whatever_the_number_of_hits(tmp_path: Path) -> None:
    source = _backed_up(tmp_path, [b"a1", b"a2", b"b"])
    assert durafs("find", "nothing", "--json").out == "[]\n"
    assert _found(source, "b") == {b"b"}
    assert _found(source, "a") == {b"a1", b"a2"}
