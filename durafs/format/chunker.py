"""Cutting file content into chunks: small files whole, large files content-defined.

Sizes (docs/FORMAT.md, "Chunking"): a file up to SMALL_FILE_MAX bytes is one chunk; a
larger one is cut by FastCDC 2020 (normalized chunking level 1) with min/avg/max of
256 KiB / 1 MiB / 4 MiB, so an insertion re-stores only the chunks around it. The gear
table is seeded from the catalog's id key: cut points, like chunk ids, reveal nothing
about content to someone without the key.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import IO

import blake3
from pyfastcdc import FastCDC

SMALL_FILE_MAX = 1024 * 1024
CDC_MIN = 256 * 1024
CDC_AVG = 1024 * 1024
CDC_MAX = 4 * 1024 * 1024


def chunker_seed(id_key: bytes) -> int:
    """A non-zero gear seed derived from the id key (zero means "unseeded").

    62 bits: pyfastcdc shifts the seed left by one into a uint64.
    """
    digest = blake3.blake3(b"durafs chunker seed", key=id_key).digest()
    return (int.from_bytes(digest[:8], "little") & (2**62 - 1)) | 1


class Chunker:
    """Cuts byte streams into chunks; one instance may be shared by threads (no state)."""

    def __init__(self, id_key: bytes) -> None:
        self._cdc = FastCDC(CDC_AVG, min_size=CDC_MIN, max_size=CDC_MAX, seed=chunker_seed(id_key))

    def cut_buffer(self, data: bytes | memoryview) -> Iterator[memoryview]:
        """Chunks of an in-memory buffer (a small file yields itself whole)."""
        view = memoryview(data)
        if len(view) <= SMALL_FILE_MAX:
            yield view
            return
        for chunk in self._cdc.cut_buf(view):
            yield chunk.data

    def cut_stream(self, src: IO[bytes]) -> Iterator[memoryview]:
        """Chunks of a file object read in pieces; each view is valid only until the next.

        Callers that keep a chunk beyond the next iteration must copy it.
        """
        for chunk in self._cdc.cut_stream(src):
            yield chunk.data
