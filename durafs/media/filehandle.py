"""A VolumeHandle over an open file: ``os.pread``, so threads share it without a lock."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable

from durafs.errors import MediumError, UsageError
from durafs.media.base import VolumeHandle

#: Turns an OSError from a read into the MediumError the caller should see.
ErrorMapper = Callable[[OSError], MediumError]


class FileVolumeHandle(VolumeHandle):
    """Reads one volume file at random offsets from any number of threads.

    ``close`` waits for reads in flight: closing a descriptor under a running ``pread``
    could let the number be reused by another file and return its bytes.
    """

    def __init__(self, fd: int, name: str, on_error: ErrorMapper) -> None:
        self.name = name
        self._fd = fd
        self._on_error = on_error
        self.size = os.fstat(fd).st_size
        self._cond = threading.Condition()
        self._active = 0
        self._closed = False

    def read_at(self, offset: int, length: int) -> bytes:
        if offset < 0 or length < 0:
            raise UsageError(f"{self.name}: bad read range ({offset}, {length})")
        with self._cond:
            if self._closed:
                raise MediumError(f"{self.name}: read after close")
            self._active += 1
        try:
            return self._pread_full(offset, length)
        except OSError as exc:
            raise self._on_error(exc) from exc
        finally:
            with self._cond:
                self._active -= 1
                if not self._active:
                    self._cond.notify_all()

    def _pread_full(self, offset: int, length: int) -> bytes:
        data = os.pread(self._fd, length, offset)
        if len(data) == length or not data:
            return data
        # a short read before the end is legal for pread; collect the rest
        parts = [data]
        got = len(data)
        while got < length:
            more = os.pread(self._fd, length - got, offset + got)
            if not more:
                break
            parts.append(more)
            got += len(more)
        return b"".join(parts)

    def close(self) -> None:
        with self._cond:
            if self._closed:
                return
            self._closed = True
            while self._active:
                self._cond.wait()
        os.close(self._fd)

    def __repr__(self) -> str:
        return f"<FileVolumeHandle {self.name} size={self.size}>"
