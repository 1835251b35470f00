"""Volume file names on directory media (docs/FORMAT.md §7.2).

``NNNNNN-<kind>-<volume_id>.tar`` (``.tar.age`` when encrypted), NNNNNN the medium's
sequence number, zero-padded to at least six digits. A name that does not match is not a
volume: such files are ignored, never read or deleted.
"""

from __future__ import annotations

import re
from typing import NamedTuple

from durafs.errors import UsageError
from durafs.format.header import KINDS

#: Prefix of files being written; never a volume (the pattern starts with a digit).
TEMP_PREFIX = ".tmp-"

_ID = r"[0-9A-Za-z][0-9A-Za-z_-]{0,127}"
_ID_RE = re.compile(_ID)
_NAME_RE = re.compile(
    rf"(?P<seq>[0-9]{{6,}})-(?P<kind>{'|'.join(KINDS)})-(?P<id>{_ID})\.tar(?P<age>\.age)?"
)


class VolumeName(NamedTuple):
    """The parts of a volume file name."""

    seq: int
    kind: str
    volume_id: str
    encrypted: bool


def check_volume_id(volume_id: str) -> None:
    """UsageError unless *volume_id* is safe in a file name (a UUID is)."""
    if not _ID_RE.fullmatch(volume_id):
        raise UsageError(f"volume id {volume_id!r} is not usable in a file name")


def volume_file_name(seq: int, kind: str, volume_id: str, encrypted: bool) -> str:
    """The file name of volume *volume_id*, number *seq* on its medium."""
    if kind not in KINDS:
        raise UsageError(f"unknown volume kind {kind!r} (expected one of {', '.join(KINDS)})")
    check_volume_id(volume_id)
    if seq < 1:
        raise UsageError(f"volume sequence number must be positive, not {seq}")
    return f"{seq:06d}-{kind}-{volume_id}.tar{'.age' if encrypted else ''}"


def parse_volume_file_name(name: str) -> VolumeName | None:
    """The parts of *name*, or None if it is not a volume's file name."""
    match = _NAME_RE.fullmatch(name)
    if match is None:
        return None
    return VolumeName(int(match["seq"]), match["kind"], match["id"], match["age"] is not None)
