"""Helpers for format tests: keys in each encryption mode and in-memory volumes."""

from __future__ import annotations

import io
import os
import uuid
from dataclasses import dataclass

from durafs.format import age
from durafs.format.frames import ChunkCodec, StoredChunk
from durafs.format.writer import VolumeWriter, new_header

MODES = ("key", "password", "none")
CATALOG = "cat-" + uuid.uuid4().hex
ID_KEY = os.urandom(32)
IDENTITY = age.X25519Identity.generate()
PASSPHRASE = b"correct horse battery staple"
SALT = os.urandom(16)


def recipients(mode: str) -> list[age.X25519Recipient | age.ScryptRecipient]:
    if mode == "key":
        return [IDENTITY.recipient()]
    if mode == "password":
        return [age.ScryptRecipient(PASSPHRASE, work_factor=10, salt=SALT)]
    return []


def identities(mode: str) -> list[age.X25519Identity | age.ScryptIdentity]:
    if mode == "key":
        return [IDENTITY]
    if mode == "password":
        return [age.ScryptIdentity(PASSPHRASE)]
    return []


@dataclass
class Written:
    data: bytes
    chunks: list[tuple[int, StoredChunk, bytes]]

    def read_at(self, offset: int, length: int) -> bytes:
        return self.data[offset : offset + length]


def write_volume(
    mode: str, payloads: list[bytes], *, kind: str = "data", member_target: int = 64 * 1024
) -> Written:
    """A volume holding *payloads* as chunks (small member target: many members)."""
    out = io.BytesIO()
    header = new_header(CATALOG, uuid.uuid4().hex, kind, "pool", mode, ID_KEY)
    writer = VolumeWriter(out, header, recipients(mode), member_target=member_target)
    codec = ChunkCodec(ID_KEY)
    chunks = []
    for i, payload in enumerate(payloads):
        stored = codec.encode(payload)
        offset = writer.add_chunk(stored, [(f"/src/file{i}".encode(), 0)])
        chunks.append((offset, stored, payload))
    writer.finish()
    return Written(out.getvalue(), chunks)
