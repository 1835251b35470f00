"""Where batches of tiny files are read (engine/pipeline.InlineReads)."""

from __future__ import annotations

import os

import pytest

from durafs.engine.filereader import FileRead, ReadRequest
from durafs.engine.pipeline import (
    INLINE_BATCH_BYTES,
    INLINE_SLOW_BATCHES,
    INLINE_SLOW_MIN,
    INLINE_SLOW_PER_FILE,
    InlineReads,
)


def test_only_batches_of_tiny_files_are_read_inline() -> None:
    inline = InlineReads()
    assert inline.wanted(0) and inline.wanted(INLINE_BATCH_BYTES)
    assert not inline.wanted(INLINE_BATCH_BYTES + 1)


def test_a_fast_batch_keeps_inline_reading_and_gives_its_result() -> None:
    inline = InlineReads()
    reads = [FileRead(size=1), FileRead(size=2)]
    requests = [ReadRequest(b"/a", os.stat("/")), ReadRequest(b"/b", os.stat("/"))]
    future = inline.read(lambda got: reads[: len(got)], requests)
    assert future.done() and future.result() == reads
    assert inline.enabled


def test_a_slow_source_sends_every_later_batch_to_the_workers() -> None:
    inline = InlineReads()
    inline.took(INLINE_SLOW_MIN / 2, 1)  # fast
    slow = INLINE_SLOW_PER_FILE * 64 * 2  # 2 ms a file: a disk that seeks
    for _ in range(INLINE_SLOW_BATCHES - 1):
        inline.took(slow, 64)
    inline.took(INLINE_SLOW_MIN / 2, 1)  # passing stalls, then a fast batch: still inline
    for _ in range(INLINE_SLOW_BATCHES - 1):
        inline.took(slow, 64)
    assert inline.enabled and inline.wanted(1)
    inline.took(slow, 64)  # slow batches in a row: the source is slow
    assert not inline.enabled
    assert not inline.wanted(1)


def test_a_failing_read_still_counts_its_time() -> None:
    inline = InlineReads()

    def broken(requests: list[ReadRequest]) -> list[FileRead]:
        raise MemoryError("no room")

    with pytest.raises(MemoryError):
        inline.read(broken, [])
    assert inline.enabled  # it failed at once: not slow
