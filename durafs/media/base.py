"""The Medium interface: what every media driver (directory/disk, tape, S3) provides.

A medium holds a marker (or tape label) saying which medium it is, the catalog's keys
file, and volumes written once, front to back (docs/FORMAT.md §7). The engine writes a
volume through a ``VolumeSink`` and reads it back at random offsets through a
``VolumeHandle``; a volume becomes visible on the medium only when its sink commits, so a
crash never leaves a half-written volume that ``list_volumes`` would report.

Every method is synchronous and may block (disk I/O, tape ioctls, HTTP): the engine calls
them from worker threads.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, ClassVar

from durafs.errors import ForeignCatalogError, FormatError, MediumError, UsageError
from durafs.format.header import FORMAT_VERSION, check_version, dumps, loads
from durafs.format.keys import KEYS_FILE_ENCRYPTED, KEYS_FILE_PLAIN

MARKER_MAGIC = "durafs-medium"
#: The keys file's possible names (``CatalogKeys.keys_file_name`` picks one), in the order
#: a reader looks for them.
KEYS_FILE_NAMES = (KEYS_FILE_ENCRYPTED, KEYS_FILE_PLAIN)

_STR_FIELDS = ("medium_id", "label", "pool", "catalog_id", "kind")
#: Keys of the marker's JSON that ``extra`` may not use: they are the marker's own.
_RESERVED = frozenset({"magic", "format", *_STR_FIELDS, "created_ns"})


@dataclass(frozen=True)
class MediumMarker:
    """Which medium this is: the marker file of a directory medium, a tape's label.

    Plain JSON, never a secret. ``extra`` holds driver-specific fields (a tape label's
    ``barcode`` and ``record_size``); they are stored as top-level keys next to the
    standard ones, exactly as docs/FORMAT.md §7 shows them, and read back into ``extra``.
    """

    medium_id: str
    label: str
    pool: str
    catalog_id: str
    kind: str
    created_ns: int
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> bytes:
        clash = sorted(_RESERVED.intersection(self.extra))
        if clash:
            raise UsageError(f"medium marker: extra fields may not be named {', '.join(clash)}")
        record: dict[str, Any] = {"magic": MARKER_MAGIC, "format": FORMAT_VERSION}
        record.update({name: getattr(self, name) for name in _STR_FIELDS})
        record["created_ns"] = self.created_ns
        record.update(self.extra)
        return dumps(record)

    @classmethod
    def from_json(cls, data: bytes, what: str = "medium marker") -> MediumMarker:
        """Parse a marker; FormatError if damaged or foreign, UnsupportedVersionError
        if it declares a format version this durafs does not know."""
        record = loads(data, what)
        if record.get("magic") != MARKER_MAGIC:
            raise FormatError(f"{what}: not a durafs medium marker (no {MARKER_MAGIC!r} magic)")
        check_version(record, what)
        missing = [name for name in (*_STR_FIELDS, "created_ns") if name not in record]
        if missing:
            raise FormatError(f"{what}: medium marker lacks {', '.join(missing)}")
        strings = {name: record[name] for name in _STR_FIELDS}
        created_ns = record["created_ns"]
        # bool is an int subclass; a marker saying "created_ns": true is damaged, not time 1
        if not all(isinstance(v, str) for v in strings.values()) or type(created_ns) is not int:
            raise FormatError(f"{what}: medium marker has a field of the wrong type")
        extra = {k: v for k, v in record.items() if k not in _RESERVED}
        return cls(**strings, created_ns=created_ns, extra=extra)

    def check_catalog(self, catalog_id: str) -> None:
        """ForeignCatalogError if this medium belongs to another catalog than *catalog_id*."""
        if self.catalog_id != catalog_id:
            raise ForeignCatalogError(
                f"medium {self.label} ({self.medium_id}) belongs to catalog {self.catalog_id}, "
                f"not {catalog_id}"
            )


@dataclass(frozen=True, slots=True)
class MediumStatus:
    """Whether a medium is online and, when it is not, why.

    ``absent``: nothing is at the medium's place (its path or marker is missing), the
    ordinary offline medium on a shelf. Otherwise something is there that is not this
    medium, or cannot be told to be: a damaged or unreadable marker, another medium's.
    Then ``reason`` names the place and what is wrong, for the user to act on: waiting
    alone will not bring the medium online.
    """

    online: bool
    reason: str | None = None
    absent: bool = False


@dataclass(frozen=True, slots=True)
class StoredVolume:
    """A volume safely on a medium.

    ``name`` is what ``Medium.open_volume`` takes back: the file name on a directory
    medium, the object key on S3, ``"file N"`` on tape (where ``tape_file`` and
    ``tape_block`` say where it starts). ``seq`` orders the volumes on the medium;
    ``stored_size`` is the number of bytes stored (ciphertext when encrypted).
    """

    name: str
    kind: str
    volume_id: str
    seq: int
    stored_size: int
    tape_file: int | None = None
    tape_block: int | None = None


class VolumeSink(ABC):
    """A binary sink one volume is written into, front to back, by one thread.

    Life cycle: ``write`` any number of times, then exactly one of ``commit`` (the volume
    is durable and listed) or ``abort`` (nothing of it stays). Leaving a ``with`` block
    without having committed aborts. A failed ``write`` or ``commit`` has already
    aborted: the data is gone and the sink is closed.

    One exception, asked for with ``keep_if_full``: when the medium fills, a sink that can
    keeps what it accepted (``kept``), so that ``copy_to`` can carry the volume on to a
    sink on another medium; it must then still be aborted.
    """

    @abstractmethod
    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Append *data*. MediumFullError when the medium has no room (after aborting)."""

    @abstractmethod
    def commit(self) -> StoredVolume:
        """Make the volume durable and visible; returns where it is. Idempotent."""

    @abstractmethod
    def abort(self) -> None:
        """Drop everything written (best effort if the medium vanished). Idempotent."""

    @property
    @abstractmethod
    def committed(self) -> bool:
        """True once ``commit`` has succeeded."""

    @property
    @abstractmethod
    def written(self) -> int:
        """Bytes accepted by ``write`` so far."""

    def keep_if_full(self) -> bool:
        """From now on, a MediumFullError from ``write`` or ``commit`` leaves what the sink
        accepted on the medium, for ``copy_to``, instead of aborting. False if this driver
        cannot read back what it wrote (a tape, an upload): it aborts as before."""
        return False

    @property
    def kept(self) -> bool:
        """True after a MediumFullError that left what the sink accepted (``keep_if_full``);
        neither ``write`` nor ``commit`` works any more, ``copy_to`` and ``abort`` do."""
        return False

    def copy_to(self, other: VolumeSink) -> None:
        """Write everything this ``kept`` sink accepted into *other* (a sink of the same
        volume on another medium), which then goes on from there. Errors of *other* pass
        through as they are; any other failure is a MediumError (never MediumFullError),
        and this sink still holds its bytes either way."""
        raise MediumError(f"{self!r}: this sink holds nothing to copy")

    def __enter__(self) -> VolumeSink:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if not self.committed:
            self.abort()


class VolumeHandle(ABC):
    """An open volume, read at random offsets; ``read_at`` is safe from many threads.

    ``read_at`` returns fewer than *length* bytes only at the end of the volume, so a
    reader can tell truncation from damage.
    """

    name: str
    size: int

    @abstractmethod
    def read_at(self, offset: int, length: int) -> bytes:
        """Up to *length* bytes at *offset* (fewer only at the end of the volume)."""

    @abstractmethod
    def close(self) -> None:
        """Release the handle; waits for reads in flight. Idempotent."""

    def __enter__(self) -> VolumeHandle:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class Medium(ABC):
    """One medium: a directory or disk, a tape, a bucket prefix.

    A medium is *online* when it is reachable and its marker says it is this medium.
    Methods other than ``marker``, ``is_online`` and ``initialize`` raise
    MediumOfflineError (naming the medium's label and location) when it is not.
    """

    #: the ``kind`` its markers carry: "dir", "tape", "s3"
    kind: ClassVar[str]

    @abstractmethod
    def marker(self) -> MediumMarker | None:
        """The marker now on the medium; None when offline (medium or marker missing).

        FormatError (or UnsupportedVersionError) if a marker is there but unreadable.
        """

    @abstractmethod
    def is_online(self, expected: MediumMarker | None = None) -> bool:
        """True if reachable with a readable marker and (if given) *expected*'s
        ``medium_id``: the right medium is loaded. Never raises for a damaged marker."""

    def status(self, expected: MediumMarker | None = None) -> MediumStatus:
        """``is_online``, and why not: what is at the medium's place instead (see
        MediumStatus). Never raises for a damaged marker. Drivers that can tell more than
        present or absent override it."""
        if self.is_online(expected):
            return MediumStatus(True)
        return MediumStatus(False, f"{self!r} is offline", absent=True)

    @abstractmethod
    def initialize(self, marker: MediumMarker, keys_file_name: str, keys_file: bytes) -> None:
        """First use: write the keys file, then the marker (so a marker implies keys).

        Idempotent for this medium's own marker; MediumError for a medium holding another
        durafs medium or unrelated data.
        """

    @abstractmethod
    def read_keys_file(self) -> tuple[str, bytes]:
        """The keys file: (its name, one of KEYS_FILE_NAMES; its bytes)."""

    @abstractmethod
    def create_volume(
        self, kind: str, volume_id: str, encrypted: bool, *, after_seq: int = 0,
    ) -> VolumeSink:
        """Start writing a new volume; it is listed only once its sink commits. Its seq is
        above *after_seq* (the index may know volumes the medium has lost since) and
        above every volume's on the medium."""

    @abstractmethod
    def open_volume(self, name: str) -> VolumeHandle:
        """Open a stored volume (``StoredVolume.name``) for random-access reads."""

    @abstractmethod
    def list_volumes(self) -> list[StoredVolume]:
        """Every committed volume, read from the medium itself, in ``seq`` order."""

    @abstractmethod
    def free_bytes(self) -> int | None:
        """Room left for new volumes (None = unknown or unlimited)."""

    @abstractmethod
    def used_bytes(self) -> int:
        """Bytes durafs occupies on the medium."""

    def cleanup_temp(self) -> list[str]:
        """Remove leftovers of writes a crash interrupted; returns what was removed."""
        return []
