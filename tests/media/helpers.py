"""Shared builders for the media tests."""

from __future__ import annotations

import os
import random
import uuid
from pathlib import Path

from durafs.format.keys import KEYS_FILE_ENCRYPTED
from durafs.media.base import MediumMarker, StoredVolume, VolumeSink
from durafs.media.directory import DirectoryMedium

#: Stands in for an age-encrypted keys file: the medium stores it without looking inside.
KEYS_BYTES = b"age-encryption.org/v1\n-> X25519 stand-in\n--- mac\n\x00\x01binary"


def new_marker(label: str = "HDD-001", catalog_id: str = "cat-1", **extra: object) -> MediumMarker:
    return MediumMarker(
        medium_id=str(uuid.uuid4()),
        label=label,
        pool="usb-disks",
        catalog_id=catalog_id,
        kind="dir",
        created_ns=1_763_700_000_000_000_000,
        extra=dict(extra),
    )


def new_medium(path: Path, label: str = "HDD-001", capacity: int | None = None) -> DirectoryMedium:
    """An initialized directory medium at *path*."""
    medium = DirectoryMedium(path, capacity)
    medium.initialize(new_marker(label), KEYS_FILE_ENCRYPTED, KEYS_BYTES)
    return medium


def write_pieces(sink: VolumeSink, data: bytes, seed: int = 0, largest: int = 5000) -> None:
    """Feed *data* to *sink* in pieces of random sizes (some empty, some memoryviews)."""
    rng = random.Random(seed)
    view = memoryview(data)
    pos = 0
    while pos < len(data):
        n = rng.randint(0, largest)
        sink.write(view[pos : pos + n] if n % 2 else data[pos : pos + n])
        pos += n


def store(
    medium: DirectoryMedium,
    data: bytes,
    volume_id: str | None = None,
    kind: str = "data",
    encrypted: bool = True,
) -> StoredVolume:
    """Write *data* as one committed volume."""
    with medium.create_volume(kind, volume_id or str(uuid.uuid4()), encrypted) as sink:
        write_pieces(sink, data)
        return sink.commit()


def read_all(medium: DirectoryMedium, name: str) -> bytes:
    with medium.open_volume(name) as handle:
        return handle.read_at(0, handle.size)


def temp_files(medium: DirectoryMedium) -> list[str]:
    return sorted(n for n in os.listdir(medium.volumes_path) if n.startswith(".tmp-"))
