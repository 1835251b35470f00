"""Reading whole files into stored chunks, on a worker thread.

A backup hands most files (every non-sparse file up to ``WHOLE_READ`` bytes) to worker
threads in batches: a worker opens the file, reads it, hashes it, cuts it and encodes each
chunk, so the thread that walks the tree and writes volumes only stores finished chunks.
Opening, reading, cutting (pyfastcdc), hashing and compressing all release the GIL, so
both cores work. A file too large to hold whole streams through one worker
(`StreamReader`); a sparse one is read by the walking thread itself (`SparseReader`), which
hands its chunks to the workers. A file that changes while it is read is read again, up to
``READ_ATTEMPTS`` times, then reported.
"""

from __future__ import annotations

import errno
import functools
import os
import queue
import stat
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import NamedTuple

import blake3

from durafs.engine.fsmeta import LONG_PATH, at_path, data_regions
from durafs.format.chunker import SMALL_FILE_MAX, Chunker
from durafs.format.frames import PACK_CHUNK_MAX, StoredChunk

#: Files up to this size are read whole; larger ones stream through the chunker.
WHOLE_READ = 8 * 1024 * 1024
#: Attempts to read a file that keeps changing before it is reported.
READ_ATTEMPTS = 3
#: How often a worker handing a chunk over checks whether the run was abandoned (s).
STOP_POLL = 0.1


class StreamStopped(Exception):
    """A streaming read gave up because the backup was abandoned."""

#: Turns one chunk's bytes into its stored form (hash first, then compress).
Encoder = Callable[[memoryview], StoredChunk]
#: Turns the small chunks of a batch (its number given) into stored ones: packed, or
#: references to copies stored already (engine/packing.py).
SmallEncoder = Callable[[list[bytes], int], list[StoredChunk]]
#: Takes one chunk of a file (its bytes, its offset in the file) for encoding elsewhere.
Submit = Callable[[bytes | memoryview, int], None]


@dataclass
class FileRead:
    """What reading one file produced: its chunks (file offset, stored chunk) in order,
    its content hash and its status after the read that succeeded; or *error*."""

    pieces: list[tuple[int, StoredChunk]] = field(default_factory=list)
    blake3: bytes | None = None
    st: os.stat_result | None = None
    error: str | None = None
    #: Bytes read: the file's size, whatever its status said (procfs and sysfs files
    #: tell 0 or a page); None where holes were not read (sparse files).
    size: int | None = None
    #: A small file's content, until the batch it is read in packs it with others.
    small: bytes | None = None


class ReadRequest(NamedTuple):
    """A file to read: its path and the status the walk saw (the read must match it).
    A tuple: the walking thread makes one per file."""

    path: bytes
    st: os.stat_result


class WholeFileReader:
    """Reads files of at most WHOLE_READ bytes whole; safe to share between threads. The
    small files (PACK_CHUNK_MAX or less) of a batch are stored in packs (frames.py)."""

    def __init__(self, chunker: Chunker, encode: Encoder, *, follow_symlinks: bool,
                 encode_small: SmallEncoder | None = None) -> None:
        self.chunker = chunker
        self.encode = encode
        self.encode_small = encode_small
        self.follow = follow_symlinks
        self._local = threading.local()

    def _buffer(self) -> ReadBuffer:
        buffer: ReadBuffer | None = getattr(self._local, "buffer", None)
        if buffer is None:
            buffer = self._local.buffer = ReadBuffer()
        return buffer

    def read_batch(self, requests: list[ReadRequest], batch: int = 0) -> list[FileRead]:
        """Read *requests*, batch number *batch* of the run (its small files' chunks are
        encoded together, see `encode_small`)."""
        if self.encode_small is None:
            return [self.read(r) for r in requests]
        reads = [read_until_still(r, functools.partial(self._read_once, r.path, pack=True))
                 for r in requests]
        small = [r for r in reads if r.small is not None]
        if small:
            stored = self.encode_small([r.small for r in small if r.small is not None], batch)
            for read, chunk in zip(small, stored, strict=True):
                read.pieces.append((0, chunk))
                read.small = None
        return reads

    def read(self, request: ReadRequest) -> FileRead:
        return read_until_still(request, lambda st: self._read_once(request.path, st))

    def _read_once(self, path: bytes, expected: os.stat_result, *,
                   pack: bool = False) -> FileRead:
        fd = open_source_file(path, expected, follow=self.follow)
        try:
            data = self._buffer().read_all(fd, expected.st_size)
            result = FileRead(blake3=blake3.blake3(data, max_threads=1).digest(),
                              size=len(data))
            if len(data) <= SMALL_FILE_MAX:  # most files: one chunk (an empty one none)
                if pack and 0 < len(data) <= PACK_CHUNK_MAX:
                    result.small = bytes(data)  # the buffer is read into again
                elif data:
                    result.pieces.append((0, self.encode(data)))
            else:
                offset = 0
                for piece in self.chunker.cut_buffer(data):
                    result.pieces.append((offset, self.encode(piece)))
                    offset += len(piece)
            result.st = os.fstat(fd)
            return result
        finally:
            os.close(fd)


#: What a streamed file's worker hands over, in order: a chunk (file offset, stored
#: chunk), RESTART (the file changed: drop the chunks so far, it is read again) or END.
RESTART = "restart"
END = "end"
StreamItem = tuple[int, StoredChunk] | str


class StreamReader:
    """Reads a large file on a worker thread, passing each chunk on as soon as it is
    encoded through a bounded queue, so the walking thread goes on walking meanwhile and
    memory stays bounded whatever the file's size."""

    def __init__(self, chunker: Chunker, encode: Encoder, *, follow_symlinks: bool) -> None:
        self.chunker = chunker
        self.encode = encode
        self.follow = follow_symlinks
        #: Set when the run is abandoned: nobody takes chunks any more, so a worker
        #: waiting to hand one over gives up instead of waiting forever.
        self.stop = threading.Event()

    def read(self, request: ReadRequest, out: queue.Queue[StreamItem]) -> FileRead:
        """Stream *request*'s file into *out*, END last whatever happens; return its hash
        and final status, or the error that stopped it."""
        try:
            return read_until_still(request, lambda _: self._read_once(request, out),
                                    restart=lambda: self._put(out, RESTART))
        finally:
            self._put(out, END)

    def _put(self, out: queue.Queue[StreamItem], item: StreamItem) -> None:
        while not self.stop.is_set():
            try:
                out.put(item, timeout=STOP_POLL)
                return
            except queue.Full:
                pass
        raise StreamStopped("the backup stopped")

    def _read_once(self, request: ReadRequest, out: queue.Queue[StreamItem]) -> FileRead:
        fd = open_source_file(request.path, request.st, follow=self.follow)
        hasher = blake3.blake3(max_threads=1)
        size = 0
        try:
            for offset, piece in cut_file(self.chunker, fd, hasher):
                size = offset + len(piece)
                self._put(out, (offset, self.encode(piece)))
            return FileRead(blake3=hasher.digest(), st=os.fstat(fd), size=size)
        finally:
            os.close(fd)


class SparseReader:
    """Reads a sparse file on the calling thread, only its data regions: the holes are
    hashed as the zeros they read as, never read; each chunk goes to *submit*."""

    def __init__(self, chunker: Chunker, *, follow_symlinks: bool) -> None:
        self.chunker = chunker
        self.follow = follow_symlinks

    def read_once(self, path: bytes, st: os.stat_result,
                  submit: Submit) -> tuple[bytes, os.stat_result, int]:
        """The file's content hash, its status after the read and its size: where a read
        ends early (a sysfs file tells a page, holds a line) the file ends."""
        fd = open_source_file(path, st, follow=self.follow)
        hasher = blake3.blake3(max_threads=1)
        try:
            size = st.st_size
            if st.st_blocks * 512 < size:
                size = self._read_regions(fd, size, hasher, submit)
            else:  # no longer sparse since the walk saw it
                size = 0
                for offset, piece in cut_file(self.chunker, fd, hasher):
                    size = offset + len(piece)
                    submit(bytes(piece), offset)  # the view is reused by the next piece
            return hasher.digest(), os.fstat(fd), size
        finally:
            os.close(fd)

    def _read_regions(self, fd: int, size: int, hasher: blake3.blake3, submit: Submit) -> int:
        pos = 0
        for start, length in data_regions(fd, size):
            _hash_zeros(hasher, start - pos)
            for block in range(start, start + length, WHOLE_READ):
                want = min(WHOLE_READ, start + length - block)
                data = os.pread(fd, want, block)
                hasher.update(data)
                offset = block
                for piece in self.chunker.cut_buffer(memoryview(data)):
                    if piece:  # nothing read: the file shrank meanwhile
                        submit(piece, offset)
                        offset += len(piece)
                if len(data) < want:  # the end of the file
                    return block + len(data)
            pos = start + length
        _hash_zeros(hasher, size - pos)
        return size


#: Zeros a hole is hashed from, piece by piece: a hole may be terabytes.
_ZEROS = bytes(1024 * 1024)


def _hash_zeros(hasher: blake3.blake3, n: int) -> None:
    for _ in range(n // len(_ZEROS)):
        hasher.update(_ZEROS)
    hasher.update(memoryview(_ZEROS)[: n % len(_ZEROS)])


def cut_file(
    chunker: Chunker, fd: int, hasher: blake3.blake3,
) -> Iterator[tuple[int, memoryview]]:
    """The chunks of open file *fd* read from its start, with their offsets, hashed into
    *hasher* on the way; each view is valid only until the next."""
    with os.fdopen(os.dup(fd), "rb", buffering=0) as f:
        offset = 0
        for piece in chunker.cut_stream(f):
            hasher.update(piece)
            yield offset, piece
            offset += len(piece)


def read_until_still(
    request: ReadRequest, read_once: Callable[[os.stat_result], FileRead],
    restart: Callable[[], None] | None = None,
) -> FileRead:
    """Read a file with *read_once* (given the status it is expected to have) until the
    status after a read matches the one before it, READ_ATTEMPTS times at most (*restart*
    is called before each new attempt); an OSError or a file that keeps changing becomes
    the result's error."""
    expected = request.st
    for attempt in range(READ_ATTEMPTS):
        if attempt and restart is not None:
            restart()
        try:
            result = read_once(expected)
        except OSError as exc:
            return FileRead(error=exc.strerror or str(exc))
        assert result.st is not None
        if same_content_stat(result.st, expected):
            return result
        expected = result.st
    return FileRead(error=f"changed while being read ({READ_ATTEMPTS} attempts)")


def same_content_stat(a: os.stat_result, b: os.stat_result) -> bool:
    """Whether two statuses of one file promise the same content."""
    return (a.st_size, a.st_mtime_ns, a.st_ctime_ns) == (b.st_size, b.st_mtime_ns, b.st_ctime_ns)


def open_source_file(path: bytes, seen: os.stat_result, *, follow: bool) -> int:
    """Open a file to back up: any path length, without updating its atime when allowed,
    never through a symlink unless symlinks are followed.

    What is there must still be a regular file of the owner and file system the walk
    *seen*: a file saved over (a new inode) is read, as its status after the read says;
    a FIFO put in its place (whose open would block) or someone else's file reached
    through a directory swapped for a symlink is refused."""
    flags = os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | (0 if follow else os.O_NOFOLLOW)
    if len(path) < LONG_PATH:  # most: no directory to open first, no context manager
        fd = _open_noatime(path, flags, None)
    else:
        with at_path(path) as (dir_fd, name):
            fd = _open_noatime(name, flags, dir_fd)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or (st.st_dev, st.st_uid) != (seen.st_dev, seen.st_uid):
            raise OSError(errno.ESTALE, "replaced by another object while the backup ran")
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _open_noatime(name: bytes, flags: int, dir_fd: int | None) -> int:
    try:
        return os.open(name, flags | os.O_NOATIME, dir_fd=dir_fd)
    except PermissionError:  # O_NOATIME needs ownership of the file
        return os.open(name, flags, dir_fd=dir_fd)


class ReadBuffer:
    """A buffer reused for every file one thread reads: fresh megabyte buffers per file
    cost a page fault per 4 KiB and grow malloc's arenas."""

    def __init__(self, size: int = 64 * 1024) -> None:
        self._buf = bytearray(size)

    def read_all(self, fd: int, size: int) -> memoryview:
        """The whole file, however its size changed since *size* was seen; valid until
        the next call."""
        if len(self._buf) < size + 1:  # +1: notice a file that grew
            self._buf = bytearray(size + 1)
        view, got = memoryview(self._buf), 0
        while True:
            if got == len(view):
                grown = bytearray(2 * got)
                grown[:got] = view
                self._buf, view = grown, memoryview(grown)
            n = os.readv(fd, [view[got:]])
            if not n:
                return view[:got]
            got += n
