"""How the CLI talks to people and scripts: tables, JSON, progress lines, sizes."""

from __future__ import annotations

import json
import os
import re
import sys
import time
from collections.abc import Iterable, Sequence
from fractions import Fraction
from typing import Any

from durafs.errors import UsageError

_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(text: str) -> int:
    """'512M', '10G', '1.5T', '4096' → bytes (binary units, optional trailing 'B'/'iB')."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*", text, re.I)
    if not m:
        raise UsageError(f"{text!r} is not a size (examples: 512M, 10G)")
    # exact: a float would round 9223372036854775807 up past the limit
    size = int(Fraction(m.group(1)) * _UNITS[m.group(2).upper()])
    if size >= 1 << 63:  # more than the index can record (SQLite's 64-bit integers)
        raise UsageError(f"{text!r} is not a size: too large (at most {(1 << 63) - 1} "
                         "bytes, 8 EiB less one)")
    return size


def positive_size(text: str) -> int:
    """`parse_size` for what cannot be nothing (a volume size, a medium's capacity):
    refused here, before a medium is written, not by the index after."""
    size = parse_size(text)
    if size < 1:
        raise UsageError(f"{text!r} is not a size: less than a byte")
    return size


def human_size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


#: What a terminal would act on rather than show (C0 and C1 controls, DEL), the backslash
#: that introduces the escapes put in their place, and the bytes of a name that are not
#: UTF-8 (os.fsdecode makes each a lone surrogate, U+DC80..U+DCFF: a terminal would show
#: them all alike, as U+FFFD).
_ESCAPED = re.compile("[\x00-\x1f\x7f-\x9f\\\\\udc80-\udcff]")
_ESCAPES = {"\n": "\\n", "\t": "\\t", "\r": "\\r", "\\": "\\\\"}


def _escape(char: str) -> str:
    # \xNN is always one byte of the name: the byte itself for a control and for a byte
    # that is not UTF-8, and both bytes of a C1 control (U+0085 is \xc2\x85), so that a
    # C1 control and a lone byte 0x85 are not written alike
    return _ESCAPES.get(char) or "".join(
        f"\\x{byte:02x}" for byte in char.encode("utf-8", "surrogateescape"))


def shown(text: str) -> str:
    """*text* (a name, or a message naming one) made safe for a terminal: a name may hold
    any byte but / and NUL, and written as it is an ESC could recolour the screen or move
    the cursor, and a newline forge a line of output. Controls become escapes (\\n,
    \\x1b), and so do bytes that are not UTF-8 (\\xff), which a terminal would show
    alike; a backslash is doubled so the escapes are unambiguous."""
    return _ESCAPED.sub(lambda m: _escape(m[0]), text)


def name_fields(key: str, name: bytes) -> dict[str, str]:
    """The --json fields for a file *name* (or path) under *key*: the name as text and, only
    for a name that is not UTF-8, *key*_hex with its exact bytes in hex. The text has such
    bytes as lone surrogates (\\udcff), which most JSON parsers (jq, JavaScript, Go) turn
    into U+FFFD, so that names differing only there would read the same."""
    fields = {key: os.fsdecode(name)}
    try:
        name.decode("utf-8")
    except UnicodeDecodeError:
        fields[f"{key}_hex"] = name.hex()
    return fields


def print_json(value: Any) -> None:
    json.dump(value, sys.stdout, indent=1, default=str)
    sys.stdout.write("\n")


def print_json_items(items: Iterable[Any]) -> None:
    """A JSON array of *items*, each written as it comes (on a line of its own), so that a
    listing of millions is never held whole, in a list or in the text of the array."""
    empty = True
    for item in items:
        sys.stdout.write(("[\n " if empty else ",\n ") + json.dumps(item, default=str))
        empty = False
    sys.stdout.write("[]\n" if empty else "\n]\n")


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    cells = [[str(c) for c in headers]] + [[shown(str(c)) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    for row in cells:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


class Progress:
    """A one-line progress display on a terminal (stderr); silent otherwise.

    Engines report a stats dict: *what* (a count, "files" by default), ``bytes`` done,
    ``bytes_read`` (the rate), and, when they know the whole, ``expected_bytes`` or
    ``expected_count``; *expected_bytes* given here (a backup's estimate from the plan's
    previous checkpoint) stands in for the former. With a whole, a bar and an ETA."""

    WIDTH = 20

    def __init__(self, expected_bytes: int = 0, *, what: str = "files") -> None:
        self.enabled = sys.stderr.isatty()
        self.start = time.monotonic()
        self.expected = expected_bytes
        self.what = what

    def __call__(self, stats: dict[str, Any]) -> None:
        if self.enabled:
            sys.stderr.write("\r\x1b[K" + self.line(stats, time.monotonic() - self.start))
            sys.stderr.flush()

    def line(self, stats: dict[str, Any], elapsed: float) -> str:
        """The display for *stats* after *elapsed* seconds."""
        elapsed = max(elapsed, 1e-6)
        count, done = stats.get(self.what, 0), stats.get("bytes", 0)
        line = (f"{count} {self.what}  {human_size(done)}  "
                f"{human_size(stats.get('bytes_read', 0) / elapsed)}/s")
        if stats.get("expected_bytes") or self.expected:
            whole, part = stats.get("expected_bytes") or self.expected, done
        elif stats.get("expected_count"):
            whole, part = stats["expected_count"], count
        else:
            return line
        fraction = min(part / whole, 1.0)
        filled = int(fraction * self.WIDTH)
        line += f"  [{'#' * filled}{'.' * (self.WIDTH - filled)}] {fraction:4.0%}"
        if 0 < part < whole:
            eta = elapsed * (whole - part) / part
            line += f"  ETA {int(eta) // 60}:{int(eta) % 60:02d}"
        return line

    def done(self) -> None:
        if self.enabled:
            sys.stderr.write("\r\x1b[K")
