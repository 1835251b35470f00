"""What a restore writes and in what order: its files, the chunk jobs that fill them, and
the batches those jobs are cut into — runs of nearby chunks of one volume, read and
decrypted with one read, in medium, volume and offset order (see restore.py)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from operator import attrgetter
from typing import NamedTuple

from durafs.errors import DurafsError
from durafs.format.catalog import TreeEntry
from durafs.format.frames import codec_for_thread
from durafs.format.reader import VolumeReader, chunk_what
from durafs.index.rows import VolumeRow

#: A batch is at most this much of one volume, read (and decrypted) at once...
BATCH_SPAN = 2 * 1024 * 1024
#: ...and at most this many chunks, so work spreads evenly over the workers.
BATCH_CHUNKS = 256
#: Bytes between two wanted chunks that are read rather than starting a new batch.
BATCH_GAP = 64 * 1024


@dataclass(eq=False, slots=True)
class RestoredFile:
    """A regular file being restored. Its chunks may be in several batches: then *lock*
    is set and guards *state* and *pending* (else one worker alone touches it)."""

    dest: bytes
    entry: TreeEntry
    #: Whether it may inherit ACLs from its directory (its xattrs must then be listed).
    inherits: bool
    #: Chunk writes still to come.
    pending: int = 0
    #: Where its last piece ends: short of the size, the file ends in a hole.
    end: int = 0
    lock: threading.Lock | None = None
    #: "new", "created" (by us), "failed" (not restored: creation failed, or the damaged
    #: replacement was dropped; reported, what was there left alone).
    state: str = "new"
    damaged: bool = False
    #: A write to it failed (the target is full, say): unlike a file whose chunks could
    #: not be read, what a rerun would restore whole, so it is removed, not kept.
    unwritten: bool = False
    reported: bool = False
    #: With --overwrite, the name it is written under until it is complete (then renamed
    #: over *dest*, so a replacement that fails leaves the old file as it was).
    temp: bytes | None = None
    #: The last batch (by number) holding a chunk of it, while batches are cut.
    batch: int = -1
    #: Written whole and closed (damaged or not): an interrupted run keeps it.
    finished: bool = False


class ChunkJob(NamedTuple):
    """One chunk to write into one file (a chunk shared by files gives one job each)."""

    medium_id: int
    volume_seq: int
    offset: int
    volume: VolumeRow
    length: int
    size: int
    cid: bytes
    file: RestoredFile
    file_offset: int
    #: Where the chunk starts in its frame's content (not 0 only in a pack).
    fpos: int = 0


#: The order chunks are read in: medium by medium, each volume once, front to back (a
#: pack's chunks one after another, so that it is decompressed once).
JOB_ORDER = attrgetter("medium_id", "volume_seq", "offset", "fpos")


@dataclass
class Batch:
    """Jobs whose chunks lie in *volume* between *start* and *end*: read with one read."""

    volume: VolumeRow
    start: int
    end: int
    jobs: list[ChunkJob] = field(default_factory=list)


def cut_batches(jobs: list[ChunkJob], max_chunks: int = BATCH_CHUNKS) -> list[Batch]:
    """Sorted jobs cut into batches: runs of one volume at most BATCH_SPAN long and
    *max_chunks* chunks, without gaps over BATCH_GAP. A file met in a second batch gets a
    lock: two workers may then write it at once."""
    batches: list[Batch] = []
    batch: Batch | None = None
    for job in jobs:
        end = job.offset + job.length
        if (batch is None or job.volume is not batch.volume or len(batch.jobs) >= max_chunks
                or job.offset > batch.end + BATCH_GAP or end - batch.start > BATCH_SPAN):
            batch = Batch(job.volume, job.offset, end)
            batches.append(batch)
        batch.jobs.append(job)
        batch.end = max(batch.end, end)
        file = job.file
        if file.batch != len(batches):
            if file.batch >= 0 and file.lock is None:
                file.lock = threading.Lock()
            file.batch = len(batches)
    return batches


def read_span(reader: VolumeReader, batch: Batch) -> memoryview | None:
    """The plaintext of the volume under *batch* (one read: each age chunk decrypted once),
    or None to read chunk by chunk — one chunk alone, or a span that does not read whole
    (damage), so that only the chunks really hurt are named."""
    if len(batch.jobs) == 1:
        return None
    try:
        return memoryview(reader.read(batch.start, batch.end - batch.start))
    except (OSError, DurafsError):
        return None


def decode_job(reader: VolumeReader, span: memoryview | None, start: int, job: ChunkJob) -> bytes:
    """The chunk of *job*, checked against its id."""
    if span is None:
        return reader.read_chunk(job.offset, job.length, job.size, job.cid, job.fpos)
    frame = span[job.offset - start : job.offset - start + job.length]
    what = chunk_what(reader.name, job.cid, job.offset, job.fpos)
    return codec_for_thread(reader.header.id_key).decode(frame, job.size, job.cid, what,
                                                         job.fpos)
