"""Chunk frames: which data is compressed, which stored raw, and that both decode."""

from __future__ import annotations

import os
import random
import shutil
import subprocess

import pytest

from durafs.errors import IntegrityError
from durafs.format.frames import ChunkCodec
from tests.format.volumes import ID_KEY

MiB = 1024 * 1024


def _text(size: int, seed: int = 1) -> bytes:
    rng = random.Random(seed)
    words = [b"backup", b"tape", b"volume", b"chunk", b"catalog", b"mount", b"restore"]
    out = bytearray()
    while len(out) < size:
        out += b" ".join(rng.choice(words) for _ in range(12)) + b"\n"
    return bytes(out[:size])


def _round_trip(codec: ChunkCodec, data: bytes) -> bool:
    """Encode *data*, check it decodes back exactly; return whether it was stored raw."""
    stored = codec.encode(data)
    assert codec.decode(stored.frame, stored.size, stored.id, "test chunk") == data
    return stored.raw


def test_random_data_is_stored_raw_and_text_compressed() -> None:
    codec = ChunkCodec(ID_KEY)
    assert _round_trip(codec, os.urandom(MiB)) is True
    assert _round_trip(codec, _text(MiB)) is False


@pytest.mark.parametrize("layout", ["zeros-first", "text-last", "text-first-quarter"])
def test_a_chunk_mixing_random_and_compressible_data_is_compressed(layout: str) -> None:
    """A disk image's chunk may be random in the middle and zeros or text elsewhere: a
    probe of the middle alone stored such chunks raw, wasting what the rest would save."""
    noise = os.urandom(MiB)
    if layout == "zeros-first":
        data = bytes(MiB // 3) + noise[: MiB - MiB // 3]
    elif layout == "text-last":
        data = noise[: MiB - MiB // 3] + _text(MiB // 3)
    else:
        data = _text(MiB // 4) + noise[: MiB - MiB // 4]
    codec = ChunkCodec(ID_KEY)
    stored = codec.encode(data)
    assert not stored.raw
    assert len(stored.frame) < len(data) * 0.9
    assert codec.decode(stored.frame, stored.size, stored.id, "mixed chunk") == data


def test_small_and_empty_chunks_round_trip() -> None:
    codec = ChunkCodec(ID_KEY)
    for data in (b"", b"x", os.urandom(100), _text(5000), os.urandom(70_000)):
        _round_trip(codec, data)


def test_a_damaged_frame_is_detected() -> None:
    codec = ChunkCodec(ID_KEY)
    data = _text(200_000)
    stored = codec.encode(data)
    damaged = bytearray(stored.frame)
    damaged[len(damaged) // 2] ^= 0x40
    with pytest.raises(IntegrityError, match="damaged"):
        codec.decode(bytes(damaged), stored.size, stored.id, "chunk 7")


@pytest.mark.skipif(shutil.which("zstd") is None, reason="needs the zstd command (apt: zstd)")
def test_zstd_command_decodes_both_kinds_of_frame() -> None:
    codec = ChunkCodec(ID_KEY)
    datas = [os.urandom(300_000), _text(300_000), bytes(100_000) + os.urandom(200_000)]
    frames = b"".join(codec.encode(d).frame for d in datas)
    out = subprocess.run(["zstd", "-d", "-c"], input=frames, capture_output=True, check=True)
    assert out.stdout == b"".join(datas)
