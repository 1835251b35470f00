"""scan and the exclude patterns: order, types, excludes, mounts, bad input, speed."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import socket
import stat
import subprocess
import threading
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pytest

from durafs.engine.excludes import ExcludeMatcher, ExcludePatternError
from durafs.engine.scan import (
    CHANGED,
    DANGLING,
    DIRECTORY_LOOP,
    MAX_OPEN_DIRS,
    SYMLINK_LOOP,
    VANISHED,
    ScanItem,
    ScanProblem,
    normalize_sources,
    scan,
)
from tests.support.nobody import as_nobody
from tests.support.oddtree import (
    BAD_UTF8_NAME,
    BIG_XATTR,
    LONG_NAME,
    NEWLINE_NAME,
    NON_UTF8_TARGET,
    make_odd_tree,
    make_small_tree,
    require_root,
    tmpfs,
    world_dir,
)
from tests.support.straced import (
    child_env,
    let_go,
    python_command,
    require_strace,
    strace_command,
    wait_in_log,
)


def _b(path: Path) -> bytes:
    return os.fsencode(path)


def _items(results: list[ScanItem | ScanProblem]) -> list[ScanItem]:
    return [r for r in results if isinstance(r, ScanItem)]


def _problems(results: list[ScanItem | ScanProblem]) -> list[tuple[bytes, str]]:
    return [(r.path, r.reason) for r in results if isinstance(r, ScanProblem)]


def _below(results: list[ScanItem | ScanProblem], root: Path) -> list[bytes]:
    """The relative paths of the items inside *root*, in scan order."""
    prefix = _b(root) + b"/"
    return [i.path[len(prefix) :] for i in _items(results) if i.path.startswith(prefix)]


# -- exclude patterns ------------------------------------------------------------------------


def _m(*patterns: str) -> ExcludeMatcher:
    return ExcludeMatcher(list(patterns), b"/src")


def test_excludes_star_question_and_sets() -> None:
    m = _m("*.tmp", "?.o", "[abc]x", "[!0-9]y", "z[^a]", "[]]b", "[[:digit:]]d", "u[a-c-]")
    assert m.matches(b"a.tmp", False) and m.matches(b"deep/down/b.tmp", False)
    assert not m.matches(b"a.tmpx", False)
    assert m.matches(b"x.o", False) and not m.matches(b"xy.o", False)
    assert m.matches(b"bx", False) and not m.matches(b"dx", False)
    assert m.matches(b"ay", False) and not m.matches(b"5y", False)
    assert m.matches(b"zb", False) and not m.matches(b"za", False)
    assert m.matches(b"]b", False) and m.matches(b"7d", False) and not m.matches(b"ad", False)
    assert m.matches(b"u-", False) and m.matches(b"ub", False) and not m.matches(b"ud", False)
    assert not _m("a*b").matches(b"a/b", False)  # * never crosses a slash
    assert not _m("a?b").matches(b"a/b", False)
    assert not _m("a[+-0]b").matches(b"a/b", False)  # nor does a set, even via a range
    assert _m("[ab").matches(b"[ab", False)  # an unterminated [ is a literal bracket


def test_excludes_double_star() -> None:
    lead = _m("**/cache")
    assert lead.matches(b"cache", True) and lead.matches(b"a/b/cache", True)
    middle = _m("a/**/b")
    assert middle.matches(b"a/b", False) and middle.matches(b"a/x/y/b", False)
    assert not middle.matches(b"x/a/b", False)
    trail = _m("logs/**")
    assert trail.matches(b"logs/x", False) and trail.matches(b"logs/x/y", False)
    assert not trail.matches(b"logs", True)
    assert _m("**").matches(b"anything/at/all", False)
    assert _m("a**b").matches(b"axxb", False) and not _m("a**b").matches(b"ax/xb", False)


def test_excludes_anchoring_and_directories() -> None:
    anchored = _m("/top")
    assert anchored.matches(b"top", False) and not anchored.matches(b"sub/top", False)
    middle = _m("doc/frotz")  # a slash in the middle anchors too
    assert middle.matches(b"doc/frotz", False) and not middle.matches(b"a/doc/frotz", False)
    anywhere = _m("frotz")
    assert anywhere.matches(b"frotz", False) and anywhere.matches(b"a/b/frotz", True)
    dirs = _m("build/")
    assert dirs.matches(b"build", True) and dirs.matches(b"x/build", True)
    assert not dirs.matches(b"build", False)
    assert dirs.matches(b"build/out.o", False)  # inside an excluded directory
    assert dirs.matches(b"x/build/y/z", False)
    assert not dirs.matches(b"build/out.o", False, parents_checked=True)
    assert _m("/abs/").matches(b"/src/abs", True)  # absolute paths are taken from the root
    assert not _m("*").matches(b"/src", True)  # the root itself is never excluded
    with pytest.raises(ValueError):
        _m("x").matches(b"/elsewhere/x", False)


def test_excludes_negation_comments_escapes() -> None:
    m = _m("# a comment", "", "   ", "*.log", "!keep.log", "\\#hash", "\\!bang", "sp\\ ", "a\\*")
    assert m.matches(b"x.log", False) and not m.matches(b"keep.log", False)
    assert m.matches(b"#hash", False) and m.matches(b"!bang", False)
    assert not m.matches(b"# a comment", False)
    assert m.matches(b"sp ", False) and not m.matches(b"sp", False)
    assert m.matches(b"a*", False) and not m.matches(b"ab", False)
    later = _m("!keep.log", "*.log")  # the last matching pattern wins
    assert later.matches(b"keep.log", False)
    trailing = _m("name   ")  # unescaped trailing spaces are dropped
    assert trailing.matches(b"name", False)
    reinclude = _m("dir/", "!dir/file")  # git cannot re-include inside an excluded dir
    assert reinclude.matches(b"dir/file", False)
    assert not _m()  # no rules: falsy, so the scanner skips matching entirely


def test_excludes_bytes_names() -> None:
    m = ExcludeMatcher([os.fsdecode(b"bad-\xff*"), "*\n*"], b"/")
    assert m.matches(b"bad-\xff\xfe", False)
    assert m.matches(b"new\nline", False)
    assert not m.matches(b"bad-x", False)


@pytest.mark.parametrize(("pattern", "reason"), [
    ("[z-a]", "bad character range z-a"),
    ("x/[!b-a]", "bad character range b-a"),
    ("[a-[:digit:]]", "bad character range a-[:digit:]"),  # a-0: the class's first byte
    ("[[:punct:]-a]", "bad character range [:punct:]-a"),  # ~-a: the class's last byte
    ("[\\z-a]", "bad character range \\z-a"),
    ("[a--]", "bad character range a--"),
    ("[\u00e9-a]", "bad character range \u00e9-a"),  # bytes \xa9-a: named as written
])
def test_excludes_a_set_with_a_reversed_range_is_refused(pattern: str, reason: str) -> None:
    with pytest.raises(ExcludePatternError) as caught:
        _m("*.tmp", pattern)
    assert (caught.value.pattern, caught.value.reason) == (pattern, reason)
    assert str(caught.value) == f"exclude pattern '{pattern}': {reason}"


def test_excludes_sets_with_dashes_that_compile_match_as_before() -> None:
    # ranges reach the regex as written: a "-" after a range or a class is a dash
    after_class = _m("[[:digit:]-z]")
    assert all(after_class.matches(n, False) for n in (b"5", b"-", b"z"))
    assert not after_class.matches(b"y", False)
    into_class = _m("[0-[:alpha:]]")  # 0-a, then "-", "z" and A-Z
    assert all(into_class.matches(n, False) for n in (b"0", b"=", b"a", b"-", b"z", b"Q"))
    assert not into_class.matches(b"b", False)
    assert _m("[a-a]").matches(b"a", False) and not _m("[!a-c]").matches(b"b", False)


# -- walk order and what an item holds --------------------------------------------------------


def _expected_order(root: bytes) -> list[bytes]:
    out: list[bytes] = []
    for name in sorted(os.listdir(root)):
        path = root + b"/" + name
        out.append(path)
        if stat.S_ISDIR(os.lstat(path).st_mode):
            out.extend(_expected_order(path))
    return out


def test_walk_order_ancestors_then_depth_first_by_bytes(tmp_path: Path) -> None:
    src = tmp_path / "src"
    for rel in ("a/z", "a/b", "B", "a b", "a.b", "\udcff", "a/b/c"):
        (src / rel).mkdir(parents=True)
    for rel in ("a/z/f", "a/b/c/f", "a/b/e", "a/1", "Z", "a-"):
        (src / rel).write_bytes(b"x")
    results = list(scan([src]))
    assert _problems(results) == []
    paths = [i.path for i in _items(results)]
    s = _b(src)
    ancestors = [b"/"] + [s[: i] for i in range(1, len(s)) if s[i : i + 1] == b"/"]
    assert paths == [*ancestors, s, *_expected_order(s)]
    assert paths[-1] == s + b"/\xff"  # bytes order: 0xff after every ASCII name
    assert all(i.type == "d" for i in _items(results)[: len(ancestors) + 1])


def test_item_fields(tmp_path: Path) -> None:
    make_small_tree(tmp_path)
    (tmp_path / "sub" / "data.bin").chmod(0o4755)
    os.setxattr(tmp_path / "hello.txt", b"user.note", b"\x00\xff")
    sock = socket.socket(socket.AF_UNIX)
    try:
        sock.bind(str(tmp_path / "sock"))
        by_path = {i.path: i for i in _items(list(scan([tmp_path])))}
    finally:
        sock.close()
    root = _b(tmp_path)
    hello = by_path[root + b"/hello.txt"]
    assert hello.type == "f" and hello.xattrs == {b"user.note": b"\x00\xff"}
    assert hello.hardlink_key == (hello.st.st_dev, hello.st.st_ino)
    assert by_path[root + b"/sub/hello-again"].hardlink_key == hello.hardlink_key
    assert by_path[root + b"/sub/data.bin"].hardlink_key is None
    link = by_path[root + b"/sub/link"]
    assert link.type == "l" and link.target == b"../hello.txt" and link.hardlink_key is None
    assert by_path[root + b"/sock"].type == "s"
    assert hello.user == pwd.getpwuid(os.geteuid()).pw_name
    entry = by_path[root + b"/sub/data.bin"].to_entry()
    assert entry.mode == 0o4755 and entry.type == "f" and entry.size == 10_000


def test_odd_tree_scans_faithfully(tmp_path: Path) -> None:
    require_root("the odd tree has devices and foreign owners")
    with tmpfs(tmp_path / "odd") as root:
        make_odd_tree(root)
        results = list(scan([root]))
    assert _problems(results) == []
    prefix = _b(root) + b"/"
    by_rel = {i.path[len(prefix) :]: i for i in _items(results) if i.path.startswith(prefix)}
    assert by_rel[b"names/" + NEWLINE_NAME].type == "f"
    assert by_rel[b"names/" + BAD_UTF8_NAME].type == "f"
    assert by_rel[b"names/" + LONG_NAME].type == "f"
    assert by_rel[b"links/non-utf8"].target == NON_UTF8_TARGET
    assert [by_rel[b"special/" + n].type for n in (b"fifo", b"null", b"loop200")] == [
        "p", "c", "b"]
    assert len(by_rel[b"xattrs/big"].xattrs[b"user.big"]) == BIG_XATTR
    assert b"system.posix_acl_access" in by_rel[b"acl/file"].xattrs
    assert b"system.posix_acl_default" in by_rel[b"acl/inherit"].xattrs
    foreign = by_rel[b"files/foreign"]
    assert (foreign.st.st_uid, foreign.user) == (12345, "")
    keys = {by_rel[p].hardlink_key for p in (b"hard/a/one", b"hard/b/two", b"hard/three")}
    assert len(keys) == 1 and None not in keys
    assert max(len(p) for p in by_rel) > 1024


def test_fifo_is_never_opened(tmp_path: Path) -> None:
    # Opening a FIFO without a writer blocks forever: the scan must finish regardless.
    os.mkfifo(tmp_path / "fifo")
    os.mkfifo(tmp_path / "fifo-source")
    done: list[list[ScanItem | ScanProblem]] = []
    worker = threading.Thread(
        target=lambda: done.append(list(scan([tmp_path, tmp_path / "fifo-source"]))),
        daemon=True,
    )
    worker.start()
    worker.join(20)
    assert done, "scan blocked on a FIFO"
    types = {i.path: i.type for i in _items(done[0])}
    assert types[_b(tmp_path / "fifo")] == "p"
    assert types[_b(tmp_path / "fifo-source")] == "p"


# -- excludes and overlapping sources in a walk ------------------------------------------------


def test_scan_applies_excludes_relative_to_each_source(tmp_path: Path) -> None:
    for rel in ("one/cache/x", "one/keep/a.tmp", "one/keep/b.tmp", "one/top.txt",
                "one/keep/top.txt", "two/cache/y", "two/z.tmp"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    excludes = ["cache/", "*.tmp", "!b.tmp", "/top.txt"]
    results = list(scan([tmp_path / "one", tmp_path / "two"], excludes=excludes))
    assert _below(results, tmp_path) == [
        b"one", b"one/keep", b"one/keep/b.tmp", b"one/keep/top.txt", b"two"]


def test_overlapping_sources_are_walked_once(tmp_path: Path) -> None:
    make_small_tree(tmp_path / "t")
    sources = [tmp_path / "t", tmp_path / "t" / "sub", f"{tmp_path}/t/sub/../", f"{tmp_path}/t/"]
    assert normalize_sources(sources) == [_b(tmp_path / "t"), _b(tmp_path / "t" / "sub")]
    once = [i.path for i in _items(list(scan([tmp_path / "t"])))]
    assert [i.path for i in _items(list(scan(sources)))] == once
    # Two sibling sources share their ancestors: those come once.
    both = [i.path for i in _items(list(scan([tmp_path / "t" / "sub", tmp_path / "t" / "empty"])))]
    assert len(both) == len(set(both))


def test_nested_source_excluded_in_the_outer_is_walked_on_its_own(tmp_path: Path) -> None:
    make_small_tree(tmp_path / "t")
    results = list(scan([tmp_path / "t", tmp_path / "t" / "sub"], excludes=["sub"]))
    paths = [i.path for i in _items(results)]
    assert len(paths) == len(set(paths))
    assert _b(tmp_path / "t" / "sub" / "deeper" / "zero") in paths
    sub = _b(tmp_path / "t" / "sub")
    assert paths.index(sub) < paths.index(sub + b"/link")


def test_sources_named_through_a_symlink_inside_another_are_walked_once(tmp_path: Path) -> None:
    """A source named through a symlink met by an outer source's walk (the link itself,
    or a directory below it) is walked under the name given; the outer walk records the
    link as that directory, never the same path twice."""
    top = tmp_path / "t"
    (top / "real" / "sub").mkdir(parents=True)
    (top / "real" / "f").write_bytes(b"f")
    (top / "real" / "sub" / "g").write_bytes(b"g")
    (top / "lnk").symlink_to("real")
    # (sources, paths below t that must be there, that must not, what t/lnk is)
    for sources, wanted, unwanted, link_type in [
        ([top, top / "lnk"], [b"lnk/f", b"lnk/sub/g"], [], "d"),
        ([top, top / "lnk" / "sub"], [b"lnk/sub/g"], [b"lnk/f"], "d"),
        ([top, top / "real" / "f"], [b"real/f"], [b"lnk/f"], "l"),
    ]:
        results = list(scan(sources))
        paths = [i.path for i in _items(results)]
        assert len(paths) == len(set(paths)), sources
        assert _problems(results) == []
        below = _below(results, top)
        assert all(w in below for w in wanted) and not any(u in below for u in unwanted)
        assert {i.path: i.type for i in _items(results)}[_b(top / "lnk")] == link_type


def test_a_loop_through_a_followed_symlink_is_called_one(tmp_path: Path) -> None:
    (tmp_path / "real" / "sub").mkdir(parents=True)
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "lsub").symlink_to("../real/sub")
    (tmp_path / "real" / "sub" / "up").symlink_to("..")
    results = list(scan([tmp_path], follow_symlinks=True))
    problems = dict(_problems(results))
    # a/lsub/up/sub is a plain directory, but the way back to it went through links
    assert problems[_b(tmp_path / "a" / "lsub" / "up" / "sub")] == SYMLINK_LOOP
    assert set(problems.values()) == {SYMLINK_LOOP}


def test_missing_source_is_a_problem(tmp_path: Path) -> None:
    results = list(scan([tmp_path / "nope", tmp_path]))
    assert (_b(tmp_path / "nope"), "no such file or directory") in _problems(results)
    results = list(scan([tmp_path / "nope" / "deeper"]))
    assert _problems(results) == [(_b(tmp_path / "nope"), "no such file or directory")]
    assert _b(tmp_path) in [i.path for i in _items(results)]


# -- mounts ------------------------------------------------------------------------------------


def test_one_file_system(tmp_path: Path) -> None:
    require_root("mounting a tmpfs inside the tree")
    (tmp_path / "src" / "here").mkdir(parents=True)
    with tmpfs(tmp_path / "src" / "mnt") as mnt:
        (mnt / "inner").mkdir()
        (mnt / "inner" / "file").write_bytes(b"on the tmpfs")
        src = tmp_path / "src"
        crossing = _below(list(scan([src])), src)
        staying = _below(list(scan([src], one_file_system=True)), src)
        both = list(scan([src, mnt], one_file_system=True))
    assert crossing == [b"here", b"mnt", b"mnt/inner", b"mnt/inner/file"]
    assert staying == [b"here", b"mnt"]  # the mount point itself, empty
    # Listing the mount as a source of its own walks it, without repeating the mount point.
    assert _below(both, src) == [b"here", b"mnt", b"mnt/inner", b"mnt/inner/file"]


def test_bind_mount_loop_is_reported(tmp_path: Path) -> None:
    require_root("bind mounts")
    (tmp_path / "src" / "dir" / "bind").mkdir(parents=True)
    (tmp_path / "src" / "file").write_bytes(b"x")
    subprocess.run(["mount", "--bind", str(tmp_path / "src"), str(tmp_path / "src/dir/bind")],
                   check=True)
    try:
        results = list(scan([tmp_path / "src"]))
    finally:
        subprocess.run(["umount", str(tmp_path / "src/dir/bind")], check=True)
    assert _problems(results) == [(_b(tmp_path / "src/dir/bind"), DIRECTORY_LOOP)]


# -- bad input: unreadable, vanishing, loops, long paths ----------------------------------------


def _scan_as_nobody(source: Path) -> list[tuple[str, str, str]]:
    """Scan as nobody; (kind, path, type-or-reason) per result."""
    rows = as_nobody(lambda: [
        ("item", os.fsdecode(r.path), r.type) if isinstance(r, ScanItem)
        else ("problem", os.fsdecode(r.path), r.reason) for r in scan([source])])
    return [tuple(row) for row in rows]


def test_unreadable_directory_and_file_as_an_unprivileged_user() -> None:
    require_root("switching to another user (as root nothing is unreadable)")
    with world_dir() as base:
        (base / "locked").mkdir()
        (base / "locked" / "hidden").write_bytes(b"x")
        (base / "locked").chmod(0o000)
        (base / "secret").write_bytes(b"x")
        (base / "secret").chmod(0o000)
        (base / "sub").mkdir(mode=0o755)
        (base / "sub" / "after").write_bytes(b"x")
        (base / "sub" / "after").chmod(0o644)
        rows = _scan_as_nobody(base)
    b = str(base)
    below = [row for row in rows if row[1].startswith(b + "/")]
    assert below == [
        ("item", f"{b}/locked", "d"),
        ("problem", f"{b}/locked", "permission denied (contents not backed up)"),
        ("problem", f"{b}/secret", "permission denied"),
        ("item", f"{b}/sub", "d"),
        ("item", f"{b}/sub/after", "f"),
    ]


def test_file_deleted_between_listing_and_lstat(tmp_path: Path) -> None:
    for name in ("a", "b", "c"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "inside").write_bytes(b"x")
    results: list[ScanItem | ScanProblem] = []
    for result in scan([tmp_path]):
        results.append(result)
        if result.path == _b(tmp_path / "a"):  # the directory is listed already: delete now
            (tmp_path / "b").unlink()
            shutil.rmtree(tmp_path / "d")
    assert _problems(results) == [(_b(tmp_path / "b"), VANISHED), (_b(tmp_path / "d"), VANISHED)]
    assert _below(results, tmp_path) == [b"a", b"c"]


def test_files_deleted_by_another_thread_during_the_scan(tmp_path: Path) -> None:
    names = [f"f{i:05d}" for i in range(3000)]
    for name in names:
        (tmp_path / name).write_bytes(b"")
    started = threading.Event()

    def delete() -> None:
        started.wait()
        for name in reversed(names):
            (tmp_path / name).unlink()

    deleter = threading.Thread(target=delete)
    deleter.start()
    results = []
    for result in scan([tmp_path]):
        results.append(result)
        if result.path == _b(tmp_path):  # yielded once listed: every name is in the listing
            started.set()
    deleter.join()
    found = _below(results, tmp_path)
    vanished = [p for p, reason in _problems(results) if reason == VANISHED]
    print(f"\n{len(found)} seen, {len(vanished)} vanished")
    # Every name was either seen or reported, never both, never silently lost.
    assert sorted(found + [p[len(_b(tmp_path)) + 1 :] for p in vanished]) == [
        n.encode() for n in names]
    assert {reason for _, reason in _problems(results)} <= {VANISHED}


def test_directory_replaced_by_a_symlink_is_not_followed(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"")
    (tmp_path / "d").mkdir()
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "not-in-d").write_bytes(b"")
    results = []
    for result in scan([tmp_path]):
        results.append(result)
        if result.path == _b(tmp_path / "a"):
            (tmp_path / "d").rmdir()
            (tmp_path / "d").symlink_to(tmp_path / "elsewhere")
    # d was listed as a directory; it is a symlink by the time it is examined: no escape.
    assert not any(r.path.startswith(_b(tmp_path / "d") + b"/") for r in results)
    assert [i.type for i in _items(results) if i.path == _b(tmp_path / "d")] == ["l"]


#: A scan in a child process, printing its problems as JSON [[path, reason], …].
SCAN_PROBLEMS = """
import json, os, sys
from durafs.engine.scan import ScanProblem, scan
print(json.dumps([[os.fsdecode(r.path), r.reason] for r in scan([sys.argv[1]])
                  if isinstance(r, ScanProblem)]))
"""


def test_changed_between_stat_and_open_is_reported(tmp_path: Path) -> None:
    """The scan runs under strace, which holds it as it opens d (after its lstat of d):
    meanwhile d is renamed away and another directory made in its place, a real race
    made wide, not a stand-in for os.open."""
    require_strace("holding the scan between its lstat and its open of a directory")
    (tmp_path / "d").mkdir()
    log = tmp_path / "strace.log"
    # -P d: only calls naming "d" itself (relative to their parent's descriptor); run from
    # / so that strace finds no other d to watch
    hold = ["-P", "d", "-e", "trace=openat", "-e", "inject=openat:delay_enter=60000000"]
    command = strace_command(log, hold, python_command("-c", SCAN_PROBLEMS, tmp_path))
    with subprocess.Popen(command, cwd="/", env=child_env(), stdout=subprocess.PIPE) as proc:
        try:
            wait_in_log(proc, log, b'"d", ')
            os.rename(tmp_path / "d", tmp_path / "old")
            os.mkdir(tmp_path / "d")
        finally:
            let_go(proc)
        out, _ = proc.communicate(timeout=60)
    assert [os.fspath(tmp_path / "d"), CHANGED] in json.loads(out)


def test_symlinks_followed_with_loops_and_dangling_links(tmp_path: Path) -> None:
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "file").write_bytes(b"data")
    (tmp_path / "dir" / "up").symlink_to("..")
    (tmp_path / "self").symlink_to("self")
    (tmp_path / "dangling").symlink_to("nowhere")
    (tmp_path / "tofile").symlink_to("dir/file")
    (tmp_path / "todir").symlink_to("dir")
    results = list(scan([tmp_path], follow_symlinks=True))
    root = _b(tmp_path)
    assert sorted(_problems(results)) == sorted([
        (root + b"/dir/up", SYMLINK_LOOP), (root + b"/self", SYMLINK_LOOP),
        (root + b"/dangling", DANGLING), (root + b"/todir/up", SYMLINK_LOOP),
    ])
    types = {i.path: i.type for i in _items(results)}
    assert types[root + b"/tofile"] == "f" and types[root + b"/todir"] == "d"
    assert types[root + b"/todir/file"] == "f"
    plain = {i.path: i.type for i in _items(list(scan([tmp_path])))}
    assert {plain[root + n] for n in (b"/self", b"/dangling", b"/tofile", b"/todir")} == {"l"}


def _long_tree(base: bytes, total: int) -> bytes:
    """Nested directories whose path passes *total* bytes, made with *at calls; returns it."""
    path, fd = base, os.open(base, os.O_PATH | os.O_DIRECTORY)
    level = 0
    try:
        while len(path) <= total:
            name = (b"%02d" % level) * 100 + b"\xff"
            os.mkdir(name, dir_fd=fd)
            new = os.open(name, os.O_PATH | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd, path, level = new, path + b"/" + name, level + 1
        file_fd = os.open(b"leaf", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
        os.write(file_fd, b"far down")
        os.close(file_fd)
        os.setxattr(b"/proc/self/fd/%d/leaf" % fd, b"user.deep", b"yes")
    finally:
        os.close(fd)
    return path + b"/leaf"


@pytest.mark.parametrize("total", [4000, 9000])
def test_paths_of_4_kib_and_beyond(tmp_path: Path, total: int) -> None:
    leaf = _long_tree(_b(tmp_path), total)
    results = list(scan([tmp_path]))
    assert _problems(results) == []
    item = _items(results)[-1]
    assert item.path == leaf and len(leaf) > total
    assert item.type == "f" and item.st.st_size == 8 and item.xattrs == {b"user.deep": b"yes"}


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture
def deep_base(tmp_path: Path) -> Iterator[Path]:
    """A directory for a chain base/d/d/…/d, removed iteratively afterwards: pytest's own
    recursive rmtree would hit Python's recursion limit on it (and fail other sessions)."""
    base = tmp_path / "deep"
    base.mkdir()
    yield base
    while (base / "d" / "d").is_dir():  # lift the chain one level at a time
        os.rename(base / "d" / "d", base / "lifted")
        shutil.rmtree(base / "d")
        os.rename(base / "lifted", base / "d")
    shutil.rmtree(base)


def test_very_deep_tree_keeps_few_descriptors_open(deep_base: Path) -> None:
    depth = 2100  # "d/" * 2100: a 4 KiB+ path, far more levels than RLIMIT_NOFILE's 1024
    tmp_path = deep_base
    fd = os.open(tmp_path, os.O_PATH | os.O_DIRECTORY)
    try:
        for _ in range(depth):
            os.close(os.open(b"z", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd))
            os.mkdir(b"d", dir_fd=fd)
            new = os.open(b"d", os.O_PATH | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = new
    finally:
        os.close(fd)
    baseline, peak, results = _open_fds(), 0, []
    for count, result in enumerate(scan([tmp_path])):
        results.append(result)
        if count % 50 == 0:
            peak = max(peak, _open_fds())
    assert _problems(results) == []
    rel = _below(results, tmp_path)
    # "z" after "d" at every level: each parked directory was reopened to reach its "z".
    assert sum(1 for p in rel if p.endswith(b"z")) == depth
    assert max(len(i.path) for i in _items(results)) > 4096
    assert peak - baseline <= MAX_OPEN_DIRS + 4
    assert _open_fds() == baseline


def test_stopping_early_closes_every_descriptor(tmp_path: Path) -> None:
    (tmp_path / "a" / "b" / "c").mkdir(parents=True)
    (tmp_path / "a" / "b" / "c" / "f").write_bytes(b"")
    baseline = _open_fds()
    walk = scan([tmp_path])
    for result in walk:
        if result.path.endswith(b"/c"):
            break
    assert _open_fds() > baseline
    walk.close()  # type: ignore[attr-defined]
    assert _open_fds() == baseline


# -- speed and memory ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def twenty_thousand(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("twenty-thousand")
    for d in range(100):
        directory = os.fsencode(root / f"d{d:03d}")
        os.mkdir(directory)
        for f in range(200):
            os.close(os.open(directory + b"/f%03d" % f, os.O_WRONLY | os.O_CREAT, 0o644))
    yield root


def test_twenty_thousand_files_scan_fast(twenty_thousand: Path) -> None:
    list(scan([twenty_thousand]))  # warm the dentry cache, as a second backup would find it
    start = time.perf_counter()
    count = sum(1 for r in scan([twenty_thousand]) if isinstance(r, ScanItem))
    elapsed = time.perf_counter() - start
    print(f"\nscanned {count} items in {elapsed:.3f} s ({elapsed / count * 1e6:.1f} µs each)")
    assert count >= 20_100
    assert elapsed < 2.0  # ~0.2 s on a 2-core CI machine; generous for slow runners


def test_memory_stays_flat(twenty_thousand: Path) -> None:
    tracemalloc.start()
    try:
        count = sum(1 for _ in scan([twenty_thousand]))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count >= 20_100
    assert peak < 1_000_000  # a directory's names at a time, not 20 000 items
