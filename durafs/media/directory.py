"""The directory driver: a local directory or a mounted disk as a durafs medium.

Layout (docs/FORMAT.md §7.2)::

    DURAFS-MEDIUM.json                       the marker
    durafs-keys.age | durafs-keys.json       the keys file
    volumes/NNNNNN-<kind>-<volume_id>.tar[.age]

Invariants:

- ``initialize`` writes the marker last, so a marker implies a complete keys file.
- A file has a volume's name only once it is complete and fsynced: a volume is written as
  ``volumes/.tmp-<volume_id>`` (flock-ed by its writer while open) and renamed at commit.
  A sink told to ``keep_if_full`` keeps that file when the disk fills, until its volume has
  been copied to another medium (``copy_to``) and it is aborted.
- Sequence numbers are assigned at commit, under a lock on ``volumes/``, from a fresh scan
  of it: concurrent sinks and writers in other processes never share a number, and the
  numbers order volumes by completion.
- An instance stands for one medium: the one it was told about (``medium_id=``,
  ``initialize``, a successful ``is_online(expected)``), else the first one it worked
  with. If another medium shows up at the path, this one counts as offline: a swapped
  disk is never written to or read as the wrong one.
"""

from __future__ import annotations

import errno
import os
import stat
import threading
from typing import NoReturn

from durafs.errors import (
    DurafsError,
    FormatError,
    MediumError,
    MediumFullError,
    MediumOfflineError,
    MediumReadOnlyError,
    MediumRefusedError,
    UnsupportedVersionError,
    UsageError,
    VolumeMissingError,
)
from durafs.format.header import KINDS
from durafs.interrupts import held
from durafs.media.base import (
    KEYS_FILE_NAMES,
    Medium,
    MediumMarker,
    MediumStatus,
    StoredVolume,
    VolumeSink,
)
from durafs.media.filehandle import FileVolumeHandle
from durafs.media.fsutil import (
    FULL_ERRNOS,
    GONE_ERRNOS,
    READ_ONLY_ERRNOS,
    fsync_dir,
    locked_dir,
    read_small,
    same_file,
    try_lock,
    write_all,
    write_file_durably,
)
from durafs.media.naming import (
    TEMP_PREFIX,
    VolumeName,
    check_volume_id,
    parse_volume_file_name,
    volume_file_name,
)

MARKER_NAME = "DURAFS-MEDIUM.json"
VOLUMES_DIR = "volumes"
#: Sink writes are gathered into this much before a syscall: the volume writer emits
#: many small pieces (tar headers, frames of small files).
WRITE_BUFFER = 1 << 20
#: free_bytes keeps this much of the file system free: 1% of its size, within these bounds.
MARGIN_MIN = 1 << 20
MARGIN_MAX = 64 << 20
#: Volumes (and keys in mode none) hold data in the clear; only the owner reads them.
_DATA_MODE = 0o600
#: A medium's directories: others may read (volumes are 0600 anyway), never delete, whatever
#: the umask (under umask 000 anyone could have removed or swapped volumes).
_DIR_MODE = 0o755
_MARKER_MODE = 0o644
#: mkfs creates it; it is not someone's data that initialize must protect.
_FS_DIRS = frozenset({"lost+found"})


class DirectoryMedium(Medium):
    """A durafs medium in directory *path* (a local directory or a disk's mount point).

    *capacity* limits what durafs may use there ("at most N bytes of this disk"): writes
    beyond it fail with MediumFullError just as on a full disk. *label* names the medium
    in error messages until its marker has been read; *medium_id* says which medium this
    instance stands for (see the module's invariants).
    """

    kind = "dir"

    def __init__(
        self,
        path: str | os.PathLike[str],
        capacity: int | None = None,
        *,
        label: str | None = None,
        medium_id: str | None = None,
    ) -> None:
        if capacity is not None and capacity < 0:
            raise UsageError(f"capacity of a directory medium must not be negative: {capacity}")
        self.path = os.path.abspath(os.fspath(path))
        self.capacity = capacity
        self._label = label
        self._medium_id = medium_id
        self._last_seq = 0
        self._lock = threading.Lock()  # guards _label and _medium_id

    # -- identity -------------------------------------------------------------------------

    @property
    def label(self) -> str | None:
        """The medium's label, once known."""
        return self._label

    @property
    def medium_id(self) -> str | None:
        """The medium this instance stands for, once known."""
        return self._medium_id

    @property
    def volumes_path(self) -> str:
        return os.path.join(self.path, VOLUMES_DIR)

    def describe(self) -> str:
        """How messages name this medium: label and path."""
        if self._label:
            return f"medium {self._label} ({self.path})"
        return f"directory medium {self.path}"

    def __repr__(self) -> str:
        return f"<DirectoryMedium {self.describe()}>"

    def marker(self) -> MediumMarker | None:
        where = os.path.join(self.path, MARKER_NAME)
        try:
            data = read_small(where)
        except OSError as exc:
            if exc.errno in GONE_ERRNOS:
                return None
            raise MediumError(f"{self.describe()}: cannot read {MARKER_NAME}: {exc}") from exc
        return MediumMarker.from_json(data, where)

    def is_online(self, expected: MediumMarker | None = None) -> bool:
        return self.status(expected).online

    def status(self, expected: MediumMarker | None = None) -> MediumStatus:
        where = os.path.join(self.path, MARKER_NAME)
        try:
            found = MediumMarker.from_json(read_small(where), where)
        except OSError as exc:
            if exc.errno in GONE_ERRNOS:
                if os.path.exists(self.path) and not os.path.isdir(self.path):
                    # something put in its place, not a disk taken away: waiting will not
                    # bring the medium back until someone moves it
                    return MediumStatus(False, f"{self.path} is not a directory")
                there = os.path.isdir(self.path)
                missing = f"has no {MARKER_NAME}" if there else "does not exist"
                return MediumStatus(False, f"{self.path} {missing}", absent=True)
            return MediumStatus(False, f"{where} cannot be read ({exc.strerror or exc})")
        except UnsupportedVersionError as exc:  # says what it is, naming the file
            return MediumStatus(False, str(exc))
        except DurafsError as exc:
            detail = str(exc).removeprefix(f"{where}: ")
            return MediumStatus(False, f"{where} is damaged ({detail})")
        want = expected.medium_id if expected is not None else self._medium_id
        if want is not None and found.medium_id != want:
            name = expected.label if expected is not None else self._label or want
            return MediumStatus(
                False, f"{self.path} holds medium {found.label} ({found.medium_id}), not {name}"
            )
        if expected is not None:
            self._adopt(found)
        return MediumStatus(True)

    def _adopt(self, marker: MediumMarker) -> None:
        with self._lock:
            self._medium_id = marker.medium_id
            self._label = marker.label

    def _require_online(self) -> MediumMarker:
        """The marker of this instance's medium, or MediumOfflineError."""
        found = self.marker()
        if found is None:
            raise MediumOfflineError(
                f"{self.describe()} is offline: {self.path} has no {MARKER_NAME}"
            )
        with self._lock:
            if self._medium_id is not None and found.medium_id != self._medium_id:
                raise MediumOfflineError(
                    f"{self.describe()} is offline: {self.path} holds another medium, "
                    f"{found.label} ({found.medium_id})"
                )
            self._medium_id = found.medium_id
            self._label = found.label
        return found

    def _error(self, exc: OSError, doing: str) -> MediumError:
        """The MediumError an OSError met while *doing* something means for the user."""
        what = f"{self.describe()}: {doing}"
        if exc.errno in FULL_ERRNOS:
            return MediumFullError(f"{what}: the medium is full ({exc.strerror})")
        if exc.errno == errno.EFBIG:
            return MediumError(f"{what}: file too large for this file system; use smaller volumes")
        if exc.errno in GONE_ERRNOS or not self.is_online():
            return MediumOfflineError(f"{what}: the medium went offline ({exc.strerror})")
        return MediumError(f"{what}: {exc.strerror or exc}")

    # -- first use ------------------------------------------------------------------------

    def initialize(self, marker: MediumMarker, keys_file_name: str, keys_file: bytes) -> None:
        if marker.kind != self.kind:
            raise UsageError(
                f"a directory medium's marker has kind {self.kind!r}, not {marker.kind!r}"
            )
        if keys_file_name not in KEYS_FILE_NAMES:
            raise UsageError(f"keys file must be named {' or '.join(KEYS_FILE_NAMES)}")
        payload = marker.to_json()  # refuses a bad marker before anything is written
        self._check_not_nested(marker)
        self._make_root()
        existing = self.marker()
        if existing is not None:
            self._check_own(existing, marker)
        else:
            self._check_empty(marker)
        try:
            if existing is None:
                self._write_fresh(payload, keys_file_name, keys_file)
            else:
                os.makedirs(self.volumes_path, _DIR_MODE, exist_ok=True)
        except OSError as exc:
            raise self._error(exc, f"initializing as {marker.label}") from exc
        self._adopt(existing or marker)

    def _check_not_nested(self, marker: MediumMarker) -> None:
        """Refuse a place inside another medium's directory (any catalog's): its volumes
        would count as that medium's foreign files, go with that disk wherever it goes,
        and hide from `recover` given that medium. Asked of the directories there are
        now, not of paths recorded: the disk of an offline medium once mounted at the
        same place is not there."""
        parent = os.path.realpath(os.path.dirname(self.path))
        while True:
            where = os.path.join(parent, MARKER_NAME)
            if os.path.lexists(where):
                try:
                    label = MediumMarker.from_json(read_small(where), where).label
                    found = f"medium {label}"
                except (OSError, DurafsError):
                    found = "a durafs medium"  # its marker damaged: still a medium's place
                raise MediumRefusedError(
                    f"{self.path} is inside {found} ({parent}); refusing to initialize it "
                    f"as {marker.label}: choose a directory outside every medium")
            if parent == os.path.dirname(parent):
                return
            parent = os.path.dirname(parent)

    def _make_root(self) -> None:
        try:
            os.mkdir(self.path, _DIR_MODE)
        except FileExistsError:
            if not os.path.isdir(self.path):
                raise MediumRefusedError(f"{self.path} is not a directory") from None
            return
        except OSError as exc:
            # a missing parent is most likely an absent mount: never create mount points
            raise MediumRefusedError(
                f"cannot create directory medium {self.path}: {exc.strerror}"
            ) from exc
        try:
            fsync_dir(os.path.dirname(self.path))
        except OSError as exc:
            raise self._error(exc, "creating its directory") from exc

    def _check_own(self, existing: MediumMarker, marker: MediumMarker) -> None:
        if (existing.medium_id, existing.catalog_id) != (marker.medium_id, marker.catalog_id):
            raise MediumRefusedError(
                f"{self.path} already holds durafs medium {existing.label} "
                f"({existing.medium_id}, pool {existing.pool}, catalog {existing.catalog_id}); "
                f"refusing to initialize it as {marker.label}"
            )

    def _check_empty(self, marker: MediumMarker) -> None:
        try:
            with os.scandir(self.path) as it:
                foreign = sorted(e.name for e in it if not _is_init_leftover(e))
        except OSError as exc:
            raise self._error(exc, f"initializing as {marker.label}") from exc
        if foreign:
            shown = ", ".join(foreign[:5]) + (", …" if len(foreign) > 5 else "")
            raise MediumRefusedError(
                f"{self.path} is not empty and holds no durafs medium ({shown}); "
                f"refusing to initialize it as {marker.label}"
            )

    def _write_fresh(self, payload: bytes, keys_file_name: str, keys_file: bytes) -> None:
        write_file_durably(
            self.path, keys_file_name, keys_file, _DATA_MODE, TEMP_PREFIX + keys_file_name
        )
        for other in KEYS_FILE_NAMES:
            if other != keys_file_name:  # left by an interrupted initialize in another mode
                try:
                    os.unlink(os.path.join(self.path, other))
                except FileNotFoundError:
                    pass
        os.makedirs(self.volumes_path, _DIR_MODE, exist_ok=True)
        fsync_dir(self.path)
        write_file_durably(self.path, MARKER_NAME, payload, _MARKER_MODE, TEMP_PREFIX + MARKER_NAME)

    def read_keys_file(self) -> tuple[str, bytes]:
        self._require_online()
        for name in KEYS_FILE_NAMES:
            try:
                return name, read_small(os.path.join(self.path, name))
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise self._error(exc, f"reading {name}") from exc
        raise FormatError(f"{self.describe()}: no keys file ({' or '.join(KEYS_FILE_NAMES)})")

    # -- volumes --------------------------------------------------------------------------

    def create_volume(
        self, kind: str, volume_id: str, encrypted: bool, *, after_seq: int = 0,
    ) -> DirectorySink:
        if kind not in KINDS:
            raise UsageError(f"unknown volume kind {kind!r} (expected one of {', '.join(KINDS)})")
        check_volume_id(volume_id)
        self._require_online()
        tmp_path = os.path.join(self.volumes_path, TEMP_PREFIX + volume_id)
        try:
            # checked again at commit; here it saves writing a volume that cannot be kept
            if any(v.volume_id == volume_id for v in self._scan_volume_names()):
                raise MediumError(f"{self.describe()}: volume {volume_id} is already on it")
            limit = None if self.capacity is None else max(0, self.capacity - self._used())
            os.makedirs(self.volumes_path, _DIR_MODE, exist_ok=True)
            with held():  # a Ctrl-C must not cut between creating the file and its sink
                fd = self._open_temp(tmp_path, volume_id)
                return DirectorySink(
                    self, fd, tmp_path, VolumeName(after_seq, kind, volume_id, encrypted),
                    limit)
        except OSError as exc:
            if exc.errno in READ_ONLY_ERRNOS:  # not offline, nor broken: readable still
                raise MediumReadOnlyError(
                    f"{self.describe()}: creating volume {volume_id}: the medium cannot be "
                    f"written ({exc.strerror})") from exc
            raise self._error(exc, f"creating volume {volume_id}") from exc

    def _open_temp(self, tmp_path: str, volume_id: str) -> int:
        """Open and lock the temporary file, replacing a stale one a crash left behind."""
        for _ in range(3):
            # read and write: a sink whose medium fills reads its bytes back (copy_to)
            fd = os.open(tmp_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, _DATA_MODE)
            try:
                if not try_lock(fd):
                    raise MediumError(
                        f"{self.describe()}: volume {volume_id} is already being written"
                    )
                if same_file(fd, tmp_path):
                    os.ftruncate(fd, 0)
                    return fd
            except BaseException:
                os.close(fd)
                raise
            # cleanup_temp removed it between our open and lock: try again
            os.close(fd)
        raise MediumError(f"{self.describe()}: cannot create the temporary file {tmp_path}")

    def _commit_temp(self, fd: int, tmp_path: str, vol: VolumeName, size: int) -> StoredVolume:
        """Give the fsynced temporary file its volume name (the caller still holds *fd*)."""
        vdir = self.volumes_path
        with locked_dir(vdir):
            present = self._scan_volume_names()
            if any(v.volume_id == vol.volume_id for v in present):
                raise MediumError(f"{self.describe()}: volume {vol.volume_id} is already on it")
            if not same_file(fd, tmp_path):
                raise MediumOfflineError(
                    f"{self.describe()}: the temporary file of volume {vol.volume_id} is gone "
                    "(medium replaced or cleaned up meanwhile)"
                )
            # vol.seq: the highest the index knows on this medium (see create_volume)
            seq = max([self._last_seq, vol.seq, *(v.seq for v in present)]) + 1
            name = volume_file_name(seq, vol.kind, vol.volume_id, vol.encrypted)
            final = os.path.join(vdir, name)
            os.rename(tmp_path, final)
            try:
                fsync_dir(vdir)
            except BaseException:
                _unlink_quietly(final)  # not known durable: a failed commit leaves nothing
                raise
            self._last_seq = seq
        return StoredVolume(name, vol.kind, vol.volume_id, seq, size)

    def _scan_volume_names(self) -> list[VolumeName]:
        try:
            with os.scandir(self.volumes_path) as it:
                parsed = [parse_volume_file_name(e.name) for e in it]
        except FileNotFoundError:
            return []
        return [p for p in parsed if p is not None]

    def open_volume(self, name: str) -> FileVolumeHandle:
        if parse_volume_file_name(name) is None:
            raise UsageError(f"{name!r} is not a volume file name")
        self._require_online()
        try:
            fd = os.open(os.path.join(self.volumes_path, name), os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            if exc.errno == errno.ENOENT and self.is_online():
                raise VolumeMissingError(f"{self.describe()}: volume {name} is not on it") from exc
            raise self._error(exc, f"opening volume {name}") from exc
        return FileVolumeHandle(fd, name, lambda exc: self._error(exc, f"reading volume {name}"))

    def list_volumes(self) -> list[StoredVolume]:
        self._require_online()
        volumes: list[StoredVolume] = []
        try:
            with os.scandir(self.volumes_path) as it:
                for entry in it:
                    found = self._stored_volume(entry)
                    if found is not None:
                        volumes.append(found)
        except OSError as exc:
            if exc.errno == errno.ENOENT and self.is_online():
                return []  # initialized by hand or by an older tool: no volumes yet
            raise self._error(exc, "listing volumes") from exc
        volumes.sort(key=lambda v: (v.seq, v.name))
        return volumes

    @staticmethod
    def _stored_volume(entry: os.DirEntry[str]) -> StoredVolume | None:
        parsed = parse_volume_file_name(entry.name)
        if parsed is None:
            return None
        try:
            st = entry.stat(follow_symlinks=False)
        except FileNotFoundError:  # pruned while we listed
            return None
        if not stat.S_ISREG(st.st_mode):
            return None
        return StoredVolume(entry.name, parsed.kind, parsed.volume_id, parsed.seq, st.st_size)

    def cleanup_temp(self) -> list[str]:
        """Remove temporary files of volumes whose writer died; returns their names.

        A temporary file whose sink is still open (in any process) is locked and kept.
        """
        self._require_online()
        try:
            with os.scandir(self.volumes_path) as it:
                temps = [e.name for e in it if e.name.startswith(TEMP_PREFIX)]
        except FileNotFoundError:
            return []
        removed = []
        for name in temps:
            try:
                if _remove_if_stale(os.path.join(self.volumes_path, name)):
                    removed.append(name)
            except OSError as exc:
                raise self._error(exc, f"removing {name}") from exc
        return sorted(removed)

    # -- space ----------------------------------------------------------------------------

    def free_bytes(self) -> int:
        """Room for new volumes: the file system's free space less a safety margin, and
        at most what *capacity* leaves."""
        self._require_online()
        try:
            st = os.statvfs(self.path)
        except OSError as exc:
            raise self._error(exc, "checking free space") from exc
        size = st.f_blocks * st.f_frsize
        margin = max(MARGIN_MIN, min(size // 100, MARGIN_MAX))
        free = max(0, st.f_bavail * st.f_frsize - margin)
        if self.capacity is not None:
            free = min(free, max(0, self.capacity - self._used()))
        return free

    def used_bytes(self) -> int:
        """Bytes of durafs's files: marker, keys file, volumes and temporary files."""
        self._require_online()
        try:
            return self._used()
        except OSError as exc:
            raise self._error(exc, "measuring used space") from exc

    def _used(self) -> int:
        total = sum(_size(os.path.join(self.path, n)) for n in (MARKER_NAME, *KEYS_FILE_NAMES))
        try:
            with os.scandir(self.volumes_path) as it:
                names = [e.name for e in it]
        except FileNotFoundError:
            return total
        for name in names:
            if name.startswith(TEMP_PREFIX) or parse_volume_file_name(name) is not None:
                total += _size(os.path.join(self.volumes_path, name))
        return total


#: Bytes written to a volume file between two requests to start writing them back.
WRITEBACK_EVERY = 32 * 1024 * 1024


class DirectorySink(VolumeSink):
    """Writes one volume to its temporary file through a 1 MiB buffer; see VolumeSink.

    Used by one thread at a time. The temporary file stays open and flock-ed until the
    sink ends, which is how ``cleanup_temp`` tells a live writer from a dead one.

    What it accepted is always the file's first ``_flushed`` bytes and the buffer's
    ``_fill``: a write that fails leaves both as they were (what it wrote of its piece
    is past ``_flushed``), so a sink kept when the disk filled knows what to copy.
    """

    def __init__(
        self,
        medium: DirectoryMedium,
        fd: int,
        tmp_path: str,
        volume: VolumeName,
        limit: int | None,
    ) -> None:
        self._medium = medium
        self._fd = fd
        self._tmp_path = tmp_path
        self._volume = volume
        self._limit = limit
        # A memoryview: slice assignment into a bytearray itself would first copy a
        # memoryview argument into a temporary bytearray.
        self._buf = memoryview(bytearray(WRITE_BUFFER))
        self._fill = 0
        self._written = 0
        self._flushed = 0  # bytes handed to the kernel
        self._writeback_from = 0
        self._keep_if_full = False
        self._state = "open"  # -> "committed" | "aborted" | "full" (kept, see keep_if_full)
        self._stored: StoredVolume | None = None

    @property
    def volume_id(self) -> str:
        return self._volume.volume_id

    @property
    def committed(self) -> bool:
        return self._state == "committed"

    @property
    def written(self) -> int:
        return self._written

    def keep_if_full(self) -> bool:
        self._keep_if_full = True
        return True

    @property
    def kept(self) -> bool:
        return self._state == "full"

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self._check_open()
        view = memoryview(data).cast("B")
        n = len(view)
        if self._limit is not None and self._written + n > self._limit:
            self._stop_full()
            raise MediumFullError(
                f"{self._medium.describe()}: volume {self.volume_id} does not fit in the "
                f"capacity left ({self._limit} bytes)"
            )
        if self._fill + n > WRITE_BUFFER:
            self._flush()
        if n >= WRITE_BUFFER:  # large pieces go straight through: no copy
            self._write_through(view)
        else:
            self._buf[self._fill : self._fill + n] = view
            self._fill += n
        self._written += n

    def commit(self) -> StoredVolume:
        if self._stored is not None:
            return self._stored
        self._check_open()
        self._flush()
        try:
            try:
                os.fsync(self._fd)
            except OSError as exc:
                # after a failed fsync the kernel may have dropped pages it could not
                # write: what the file reads back is not known to be what was written,
                # so it is never copied elsewhere
                self._fail(exc, "committing", keep=False)
            stored = self._medium._commit_temp(
                self._fd, self._tmp_path, self._volume, self._written
            )
        except OSError as exc:
            self._fail(exc, "committing")
        except BaseException:
            if self._state == "open":
                self.abort()
            raise
        self._state = "committed"
        self._stored = stored
        os.close(self._fd)
        return stored

    def abort(self) -> None:
        if self._state not in ("open", "full"):
            return
        self._state = "aborted"
        try:
            if same_file(self._fd, self._tmp_path):  # never another writer's newer file
                os.unlink(self._tmp_path)
        except OSError:
            pass  # the medium is gone; cleanup_temp removes the leftover later
        finally:
            os.close(self._fd)

    def __del__(self) -> None:
        # a sink dropped without commit or abort would keep its temp file locked (so
        # cleanup_temp spares it) until the process ends
        if getattr(self, "_state", None) in ("open", "full"):
            try:
                self.abort()
            except Exception:
                pass

    def _check_open(self) -> None:
        if self._state != "open":
            raise MediumError(f"volume {self.volume_id}: sink already {self._state}")

    def _flush(self) -> None:
        if self._fill:
            self._write_through(self._buf[: self._fill])
            self._fill = 0

    def _write_through(self, view: memoryview) -> None:
        try:
            write_all(self._fd, view)
        except OSError as exc:
            self._fail(exc, "writing")
        self._flushed += len(view)
        if self._flushed - self._writeback_from >= WRITEBACK_EVERY:
            # Start writing what we wrote to the disk now (DONTNEED starts the writeback
            # of dirty pages without waiting): the fsync at commit then waits only for the
            # tail, not for a whole volume, and the page cache keeps no volume it won't read.
            os.posix_fadvise(self._fd, self._writeback_from,
                             self._flushed - self._writeback_from, os.POSIX_FADV_DONTNEED)
            self._writeback_from = self._flushed

    def _fail(self, exc: OSError, doing: str, *, keep: bool = True) -> NoReturn:
        error = self._medium._error(exc, f"{doing} volume {self.volume_id}")
        if isinstance(error, MediumFullError) and keep:
            self._stop_full()
        else:
            self.abort()
        raise error from exc

    def _stop_full(self) -> None:
        """The medium is full: keep what was accepted if asked to, else drop it."""
        if self._keep_if_full:
            self._state = "full"
        else:
            self.abort()

    # -- moving a volume whose medium filled ----------------------------------------------

    def copy_to(self, other: VolumeSink) -> None:
        if self._state != "full":
            raise MediumError(f"volume {self.volume_id}: sink is {self._state}, not kept")
        try:
            # drop what a failed write left past the accepted bytes; then an fsync reports
            # any write-back error on those bytes: once it succeeds, what the file reads
            # back is what was written, from the page cache or the disk
            os.ftruncate(self._fd, self._flushed)
            os.fsync(self._fd)
        except OSError as exc:
            raise self._cannot_move(exc) from exc
        pos = 0
        while pos < self._flushed:
            try:
                piece = os.pread(self._fd, min(WRITE_BUFFER, self._flushed - pos), pos)
            except OSError as exc:
                raise self._cannot_move(exc) from exc
            if not piece:
                raise MediumError(f"{self._medium.describe()}: the temporary file of volume "
                                  f"{self.volume_id} ends at {pos} bytes, not {self._flushed}")
            other.write(piece)
            pos += len(piece)
        if self._fill:
            other.write(self._buf[: self._fill])

    def _cannot_move(self, exc: OSError) -> MediumError:
        # a plain MediumError whatever the errno: MediumFullError would say *other* filled
        return MediumError(
            f"{self._medium.describe()}: volume {self.volume_id} cannot be moved off the "
            f"full medium: what it holds cannot be read back safely ({exc.strerror or exc})"
        )

    def __repr__(self) -> str:
        return f"<DirectorySink {self.volume_id} {self._state} {self._written} bytes>"


def _is_init_leftover(entry: os.DirEntry[str]) -> bool:
    """True for what a fresh file system or an interrupted initialize leaves behind."""
    if entry.name in _FS_DIRS:
        return entry.is_dir(follow_symlinks=False)
    if entry.name in KEYS_FILE_NAMES or entry.name.startswith(TEMP_PREFIX):
        return entry.is_file(follow_symlinks=False)
    if entry.name == VOLUMES_DIR and entry.is_dir(follow_symlinks=False):
        with os.scandir(entry.path) as it:
            return all(e.name.startswith(TEMP_PREFIX) for e in it)
    return False


def _remove_if_stale(path: str) -> bool:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return False
    try:
        if not try_lock(fd) or not same_file(fd, path):
            return False  # its writer is alive, or it was replaced meanwhile
        os.unlink(path)
        return True
    finally:
        os.close(fd)


def _size(path: str) -> int:
    try:
        return os.stat(path, follow_symlinks=False).st_size
    except FileNotFoundError:
        return 0


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
