"""The tar layer of a volume: POSIX pax member headers, written and parsed.

durafs writes ordinary pax (POSIX.1-2001) members so GNU tar and bsdtar list and extract a
volume. Headers are built with the standard library's ``tarfile`` so they are exactly what
tar expects; parsing is our own because the scanner must check every checksum and every
padding byte and report damage instead of guessing past it.
"""

from __future__ import annotations

import tarfile
from dataclasses import dataclass

from durafs.errors import FormatError

BLOCK = 512
#: Two zero blocks end a tar archive.
END_OF_ARCHIVE = bytes(2 * BLOCK)


def padding(size: int) -> int:
    """Bytes of zero padding after a member of *size* bytes."""
    return -size % BLOCK


def member_header(name: str, size: int, mtime: int) -> bytes:
    """Header block(s) of a regular-file member; 512 bytes for names up to 100 ASCII chars."""
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = mtime
    info.mode = 0o644
    info.uname = info.gname = "durafs"
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


@dataclass(frozen=True, slots=True)
class MemberHeader:
    """A parsed member: its name, type, size, and where its header and data start."""

    name: str
    typeflag: bytes
    size: int
    header_offset: int
    data_offset: int


def _checksum_ok(block: bytes) -> bool:
    # durafs writes the field as six octal digits, NUL, space (as POSIX tar does); anything
    # else, even a changed terminator that sums the same, is damage.
    field = block[148:156]
    if field[6:] != b"\0 " or not field[:6].isdigit():
        return False
    stored = int(field[:6], 8)
    unsigned = sum(block[:148]) + 8 * 32 + sum(block[156:])
    return stored == unsigned


def _octal(field: bytes, what: str) -> int:
    text = field.split(b"\0", 1)[0].strip()
    try:
        return int(text or b"0", 8)
    except ValueError as exc:
        raise FormatError(f"bad {what} field {field!r} in tar header") from exc


def parse_block(block: bytes, offset: int) -> tuple[str, bytes, int] | None:
    """Parse one 512-byte header block at *offset*: (name, typeflag, size), or None at the end.

    Raises FormatError when the checksum is wrong: a damaged header is never guessed past.
    """
    if len(block) < BLOCK:
        raise FormatError(f"truncated tar header at offset {offset}")
    if block == bytes(BLOCK):
        return None
    if not _checksum_ok(block):
        raise FormatError(f"tar header checksum mismatch at offset {offset}")
    name = block[0:100].split(b"\0", 1)[0]
    prefix = block[345:500].split(b"\0", 1)[0] if block[257:262] == b"ustar" else b""
    if prefix:
        name = prefix + b"/" + name
    size = _octal(block[124:136], "size")
    return name.decode("utf-8", "surrogateescape"), block[156:157], size


def parse_pax_records(data: bytes, offset: int) -> dict[str, str]:
    """Parse a pax extended header body ("LEN key=value\\n" records)."""
    records: dict[str, str] = {}
    pos = 0
    while pos < len(data):
        space = data.find(b" ", pos)
        try:
            length = int(data[pos:space])
        except ValueError as exc:
            raise FormatError(f"bad pax record at offset {offset + pos}") from exc
        record = data[space + 1 : pos + length]
        if length <= 0 or not record.endswith(b"\n") or b"=" not in record:
            raise FormatError(f"bad pax record at offset {offset + pos}")
        key, value = record[:-1].split(b"=", 1)
        records[key.decode()] = value.decode("utf-8", "surrogateescape")
        pos += length
    return records
