"""The volume scanner's frame walking (the rest of the scan is exercised through volumes in
test_volume.py and verify's tests)."""

from __future__ import annotations

import random

import pytest
import zstandard

from durafs.format.frames import raw_frame
from durafs.format.scanner import frame_length


def test_frame_length_steps_over_a_frame_whose_content_is_damaged() -> None:
    """The scan steps over a compressed frame that no longer decodes by its block
    headers alone, so the frames after it are still checked."""
    text = b"".join(random.Random(5).choices([b"alpha ", b"beta ", b"gamma\n"], k=200_000))
    frames = [zstandard.ZstdCompressor(level=3, write_checksum=flag).compress(text)
              for flag in (False, True)] + [raw_frame(b"x" * 300_000), raw_frame(b"")]
    for frame in frames:
        data = b"junk" + frame + b"more"
        assert frame_length(data, 4) == len(frame)
    damaged = bytearray(frames[0])
    damaged[len(damaged) // 2] ^= 0xFF
    with pytest.raises(zstandard.ZstdError):
        zstandard.ZstdDecompressor().decompress(bytes(damaged))
    assert frame_length(bytes(damaged), 0) == len(damaged)
    assert frame_length(b"not a frame", 0) is None
    assert frame_length(frames[0][: len(frames[0]) // 2], 0) is None  # cut short
