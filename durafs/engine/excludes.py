"""Exclude rules in the style of .gitignore, matched against paths relative to a source root.

Supported (as gitignore(5) describes them):

- blank lines and lines starting with ``#`` are ignored; trailing unescaped spaces are dropped;
- ``*`` matches anything but ``/``, ``?`` one character but ``/``, ``[...]`` a set (``[!...]``
  or ``[^...]`` its complement, ranges, ``[:alpha:]``-style classes); sets never match ``/``;
- ``**`` as a whole segment: ``**/x`` matches ``x`` at any depth, ``a/**/b`` zero or more
  directories between, ``a/**`` everything inside ``a`` (not ``a`` itself); elsewhere it is ``*``;
- a pattern with a ``/`` at its start or in its middle is anchored to the source root; one
  without matches the name at any depth;
- a trailing ``/`` makes the pattern match directories only;
- ``!`` negates: a later matching pattern wins over earlier ones; a path inside an excluded
  directory stays excluded (the directory is not walked at all, as in git);
- ``\\`` escapes the next character (``\\#``, ``\\!``, ``\\*``, ``\\ `` …).

Patterns are ``str`` and are turned into bytes with ``os.fsencode`` (surrogateescape), so a
pattern can name any byte sequence a file name can hold. Each pattern is compiled once into a
bytes regex; one that cannot be (a set with a reversed range, ``[z-a]``) is an
`ExcludePatternError` when the matcher is made, never a failure later in a walk.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Iterable
from dataclasses import dataclass

from durafs.errors import UsageError

_CLASSES = {
    b"alnum": b"a-zA-Z0-9", b"alpha": b"a-zA-Z", b"blank": b" \\t", b"digit": b"0-9",
    b"lower": b"a-z", b"upper": b"A-Z", b"space": b" \\t\\n\\r\\f\\v", b"xdigit": b"0-9a-fA-F",
    b"punct": re.escape(b"!\"#$%&'()*+,-.:;<=>?@[\\]^_`{|}~"),
}


class ExcludePatternError(UsageError):
    """An exclude pattern that cannot be matched (a set with a reversed range, ``[z-a]``)."""

    def __init__(self, pattern: str, reason: str) -> None:
        super().__init__(f"exclude pattern '{pattern}': {reason}")
        self.pattern = pattern
        self.reason = reason


class _BadSet(Exception):
    """A ``[...]`` set that is no regex set; `_compile` names the pattern it is in."""


def check_patterns(patterns: Iterable[str]) -> None:
    """Raise `ExcludePatternError` for the first of *patterns* that cannot be matched: for
    a caller that wants a bad pattern refused before it starts any work."""
    ExcludeMatcher(patterns)


@dataclass(frozen=True, slots=True)
class _Rule:
    regex: re.Pattern[bytes]
    negated: bool
    dir_only: bool


class ExcludeMatcher:
    """Decides whether a path below *root* is excluded by gitignore-style *patterns*.

    Invariant: the decision for a path depends only on the patterns and on the path relative
    to *root*; the file system is never consulted (the caller says whether it is a directory).
    """

    def __init__(self, patterns: Iterable[str], root: bytes = b"/") -> None:
        self.root = _strip_slash(os.fsencode(root))
        self._rules = [r for r in (_compile(p) for p in patterns) if r is not None]

    def __bool__(self) -> bool:
        return bool(self._rules)

    def matches(self, path: bytes, is_dir: bool, *, parents_checked: bool = False) -> bool:
        """True if *path* is excluded.

        *path* is relative to the root (``b"a/b"``), or absolute and inside the root. Unless
        *parents_checked* (the caller already knows no parent directory is excluded, as a
        walker that prunes excluded directories does), a path inside an excluded directory is
        excluded too. The root itself is never excluded.
        """
        rel = self._relative(path)
        if not rel:
            return False
        if not parents_checked:
            parts = rel.split(b"/")
            for depth in range(1, len(parts)):
                if self._decide(b"/".join(parts[:depth]), True):
                    return True
        return self._decide(rel, is_dir)

    def _decide(self, rel: bytes, is_dir: bool) -> bool:
        # The last matching rule decides, so look from the end.
        for rule in reversed(self._rules):
            if rule.dir_only and not is_dir:
                continue
            if rule.regex.match(rel):
                return not rule.negated
        return False

    def _relative(self, path: bytes) -> bytes:
        if not path.startswith(b"/"):
            return _strip_slash(path)
        if self.root == b"/":
            return _strip_slash(path[1:])
        if path == self.root:
            return b""
        if not path.startswith(self.root + b"/"):
            raise ValueError(f"{path!r} is not inside the source root {self.root!r}")
        return _strip_slash(path[len(self.root) + 1 :])


def _strip_slash(path: bytes) -> bytes:
    stripped = path.rstrip(b"/")
    return stripped if stripped or not path else b"/"


def _compile(pattern: str) -> _Rule | None:
    """One pattern line as a rule; None for blank lines and comments."""
    line = _trim_trailing_spaces(os.fsencode(pattern).rstrip(b"\r\n"))
    if not line or line.startswith(b"#"):
        return None
    negated = line.startswith(b"!")
    if negated:
        line = line[1:]
    dir_only = line.endswith(b"/") and not line.endswith(b"\\/")
    line = line.rstrip(b"/") if dir_only else line
    anchored = b"/" in line
    line = line.lstrip(b"/")
    if not line:
        return None
    try:
        body = _translate_path(line)
    except _BadSet as exc:
        raise ExcludePatternError(pattern, str(exc)) from None
    prefix = b"" if anchored else b"(?:.*/)?"
    return _Rule(re.compile(prefix + body + rb"\Z", re.DOTALL), negated, dir_only)


def _trim_trailing_spaces(line: bytes) -> bytes:
    # Trailing spaces are dropped unless escaped with a backslash ("a\ " keeps one space).
    while line.endswith(b" ") and not _escaped_at(line, len(line) - 1):
        line = line[:-1]
    return line


def _escaped_at(line: bytes, index: int) -> bool:
    backslashes = 0
    while index - backslashes - 1 >= 0 and line[index - backslashes - 1] == ord("\\"):
        backslashes += 1
    return backslashes % 2 == 1


def _translate_path(line: bytes) -> bytes:
    """The regex for a slash-separated pattern, with ``**`` segments handled."""
    segments = line.split(b"/")
    out: list[bytes] = []
    for index, segment in enumerate(segments):
        last = index == len(segments) - 1
        if segment == b"**":
            # Whole-segment **: any number of directories, or (at the end) everything inside.
            out.append(b".*" if last else b"(?:[^/]*/)*")
        else:
            out.append(_translate_segment(segment) + (b"" if last else b"/"))
    return b"".join(out)


def _translate_segment(segment: bytes) -> bytes:
    """The regex for one path segment: * ? [...] and backslash escapes."""
    out: list[bytes] = []
    i = 0
    while i < len(segment):
        char = segment[i : i + 1]
        if char == b"\\" and i + 1 < len(segment):
            out.append(re.escape(segment[i + 1 : i + 2]))
            i += 2
        elif char == b"*":
            while segment[i : i + 1] == b"*":
                i += 1
            out.append(b"[^/]*")
        elif char == b"?":
            out.append(b"[^/]")
            i += 1
        elif char == b"[":
            regex, i = _translate_set(segment, i)
            out.append(regex)
        else:
            out.append(re.escape(char))
            i += 1
    return b"".join(out)


def _translate_set(segment: bytes, start: int) -> tuple[bytes, int]:
    """A ``[...]`` set starting at *start*: (its regex, index after it).

    An unterminated ``[`` is a literal bracket, as in fnmatch.
    """
    i = start + 1
    negated = segment[i : i + 1] in (b"!", b"^")
    if negated:
        i += 1
    items: list[bytes] = []
    texts: list[bytes] = []  # what each item is in the pattern, to name a bad range by
    first = True
    while i < len(segment):
        char = segment[i : i + 1]
        if char == b"]" and not first:
            return _set_regex(items, texts, negated), i + 1
        first = False
        texts.append(segment[i : i + 1])
        if char == b"[" and segment[i + 1 : i + 2] == b":":
            end = segment.find(b":]", i + 2)
            name = segment[i + 2 : end] if end >= 0 else b""
            if name in _CLASSES:
                items.append(_CLASSES[name])
                texts[-1] = segment[i : end + 2]
                i = end + 2
                continue
        escaped = char == b"\\" and i + 1 < len(segment)
        if escaped:
            i += 1
            char = segment[i : i + 1]
            texts[-1] = segment[i - 1 : i + 1]
        if char == b"-" and not escaped and items and segment[i + 1 : i + 2] not in (b"]", b""):
            items.append(b"-")
        else:
            items.append(_set_char(char))
        i += 1
    return re.escape(b"["), start + 1


def _set_regex(items: list[bytes], texts: list[bytes], negated: bool) -> bytes:
    """The regex for a set of *items* (written as *texts* in the pattern).

    Ranges reach the regex as written, so a set that compiles matches what it always did;
    one that does not (a range from a higher byte to a lower one: ``[z-a]``, or
    ``[a-[:digit:]]``, which ends at ``0``) is refused here, by the range as the pattern
    writes it, rather than by ``re`` in the middle of a walk.
    """
    body = b"".join(items)
    regex = b"[^/" + body + b"]" if negated else b"(?!/)[" + body + b"]"
    try:
        with warnings.catch_warnings():
            # a FutureWarning ("possible set difference") is for _compile to give, once
            warnings.simplefilter("ignore", FutureWarning)
            re.compile(regex)
    except re.error as exc:
        if exc.pos is None or not exc.msg.startswith("bad character range"):
            raise _BadSet(exc.msg) from None
        # re names the range by its regex bytes (a-0 for a-[:digit:]): find the items it
        # starts at (the range's start, the "-", its end) to name it as written
        offset, start = exc.pos - (len(regex) - len(body) - 1), 0
        for index, item in enumerate(items):
            start += len(item)
            if offset < start:
                raise _BadSet(f"bad character range {_written(texts, index)}") from None
        raise _BadSet(exc.msg) from None
    return regex


def _written(texts: list[bytes], index: int) -> str:
    """The range starting at item *index* as the pattern writes it. Sets work on bytes, so
    a range may start or end inside a multibyte character (\\xa9 of é): the whole
    character is named."""
    begin, end = index, min(index + 3, len(texts))
    while begin > 0 and _continues(texts[begin]):
        begin -= 1
    while end < len(texts) and _continues(texts[end]):
        end += 1
    return os.fsdecode(b"".join(texts[begin:end]))


def _continues(text: bytes) -> bool:
    # a UTF-8 continuation byte, written alone (not escaped: an escape is two bytes)
    return len(text) == 1 and 0x80 <= text[0] <= 0xBF


def _set_char(char: bytes) -> bytes:
    # Inside a regex set only \ ] [ ^ - are special; escape those, keep the rest as they are.
    return b"\\" + char if char in (b"\\", b"]", b"[", b"^", b"-") else char
