# SPDX-License-Identifier: GPL-3.0-or-later
"""`durafs find`'s patterns: a glob over a whole name (``*.jpg``), or a substring.

A pattern is matched twice. SQLite's GLOB over ``path_names`` (names as text, see
`durafs.index.rows.name_text`) finds candidates through the trigram index; there every
byte that is not UTF-8 is U+FFFD, so that ``caf\\xe9`` and ``caf\\xff`` (and ``café``
written with a real U+FFFD) are the same text. A candidate whose text holds U+FFFD is
therefore matched again, by a regex over the name itself as ``os.fsdecode`` gives it
(each such byte a lone surrogate, which is what a user typing the name passes), so that
such a byte in a pattern matches only itself.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from durafs.errors import UsageError
from durafs.index.rows import name_text

#: What stands for a byte that is not UTF-8 in the indexed text.
REPLACED = "\ufffd"
#: How such a byte comes in a pattern (os.fsdecode's lone surrogates).
_SURROGATE = re.compile("[\udc80-\udcff]")


class PatternError(UsageError):
    """A find pattern that cannot match: one with a ``/``, or a set with a reversed range
    (``[z-a]``)."""

    def __init__(self, pattern: str, reason: str) -> None:
        super().__init__(f"find pattern '{pattern}': {reason}")
        self.pattern = pattern
        self.reason = reason


@dataclass(frozen=True, slots=True)
class NamePattern:
    """A find pattern as SQLite's GLOB takes it and as a regex over a name."""

    #: for ``path_names.name GLOB``: a superset of the names that match
    glob: str
    #: over ``os.fsdecode(name)``: exactly the names that match
    regex: re.Pattern[str]

    def matches(self, name: bytes, text: str) -> bool:
        """Whether path component *name*, indexed as *text* and found by `glob`, matches:
        only a name whose text holds U+FFFD can be a candidate that does not."""
        return REPLACED not in text or self.regex.fullmatch(os.fsdecode(name)) is not None


def name_pattern(pattern: str) -> NamePattern:
    """*pattern* as typed: with ``*``, ``?`` or a ``[...]`` set (``[!...]`` or ``[^...]``
    its complement), a glob over the whole name; without, a substring. Its lone
    surrogates are bytes of a name not UTF-8. Raises `PatternError`."""
    if "/" in pattern:  # it would match nothing, and be taken for a path not backed up
        raise PatternError(pattern, "a name holds no '/' (find matches names, not paths; "
                           "see a directory with durafs ls)")
    globs: list[str] = []
    regexes: list[str] = []
    is_glob = False
    i = 0
    while i < len(pattern):
        glob, regex, i, wild = _piece(pattern, i)
        globs.append(glob)
        regexes.append(regex)
        is_glob = is_glob or wild
    if not is_glob:  # a substring
        globs, regexes = ["*", *globs, "*"], [".*", *regexes, ".*"]
    # the glob's text as names are indexed: a byte that is not UTF-8 as U+FFFD
    return NamePattern(name_text(os.fsencode("".join(globs))),
                       re.compile("".join(regexes), re.DOTALL))


def _piece(pattern: str, i: int) -> tuple[str, str, int, bool]:
    """The piece of *pattern* at *i*: (its glob, its regex, the index after it, whether
    it is a wildcard or a set). An unterminated ``[`` is itself, as in a shell."""
    char = pattern[i]
    if char == "*":
        return "*", ".*", i + 1, True
    if char == "?":
        return "?", ".", i + 1, True
    if char == "[":
        negated = pattern[i + 1 : i + 2] in ("!", "^")
        start = i + 1 + negated
        end = pattern.find("]", start + 1)  # a "]" first in a set is one of its characters
        if end >= 0:
            body = pattern[start:end]
            glob = f"[{'^' if negated else ''}{body}]"  # SQLite's GLOB negates with ^ only
            if negated and _SURROGATE.search(body):
                # in the index every byte not UTF-8 is U+FFFD: the set would refuse them all
                glob = "?"
            return glob, _set_regex(pattern, body, negated), end + 1, True
        return "[[]", re.escape(char), i + 1, False
    return char, re.escape(char), i + 1, False


def _set_regex(pattern: str, body: str, negated: bool) -> str:
    """The regex for the set of characters *body* (of *pattern*), read as SQLite's GLOB
    reads it: ``a-z`` is a range; a ``-`` first, last, right after a range or after the
    ``]`` that begins a set is itself. A range that holds nothing (``z-a``) is refused,
    not left to match nothing."""
    out = []
    i = 0
    while i < len(body):
        starts_range = body[i + 1 : i + 2] == "-" and i + 2 < len(body)
        if starts_range and (i > 0 or body[0] != "]"):  # as SQLite: "]" first is no start
            low, high = body[i], body[i + 2]
            if low > high:
                raise PatternError(pattern, f"the range {low}-{high} holds no character")
            out.append(f"{re.escape(low)}-{re.escape(high)}")
            i += 3
        else:
            out.append(re.escape(body[i]))
            i += 1
    return f"[{'^' if negated else ''}{''.join(out)}]"
