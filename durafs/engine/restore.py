"""Restore a checkpoint or a subtree to a directory, with everything the source had.

Three passes: (1) walk the tree: create directories, symlinks, FIFOs and devices (with their
metadata), and collect every regular file's chunks; (2) read the chunks in medium, volume
and offset order — one sequential pass over each volume, each chunk checked against its
id — in batches (a run of nearby chunks of one volume, decrypted with one read) that two
worker threads decode and write; (3) hard links, then directory metadata, deepest first so
their times survive their children. Without root, directories already there are opened to
their owner for the passes (`let_owner_in`); however the run ends, those not given their
own mode by pass 3 get the one they had back.

A regular file is opened once per batch holding its chunks — for most files that is once:
created (``O_EXCL``, so nothing is overwritten without ``--overwrite``) when its first chunk
is written, given its owner, xattrs, mode and times through the descriptor after its last
(``apply_fd_metadata``), then closed. Holes are never written; a trailing one is made by
``ftruncate``. Decryption, zstd, BLAKE3 and the file system calls release the GIL, so both
cores work; the main thread only walks the index and hands out batches.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import errno
import logging
import os
import stat
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Any, NamedTuple, TypeVar

from durafs.engine.access import VolumeAccess
from durafs.engine.beneath import Beneath
from durafs.engine.catalogvol import to_tree_entry
from durafs.engine.collector import gc_frozen, gc_paused
from durafs.engine.fsmeta import (
    AtPath,
    apply_fd_metadata,
    apply_metadata,
    has_default_acl,
    let_owner_in,
    make_dir,
    make_node,
    put_mode_back,
    pwrite_all,
)
from durafs.engine.progress import Reporter
from durafs.errors import CatalogError, DurafsError, MediumOfflineError, UsageError
from durafs.format.catalog import TreeEntry
from durafs.format.frames import codec_for_thread
from durafs.format.reader import VolumeReader
from durafs.index.catalog import Catalog
from durafs.index.rows import CheckpointRow, ChunkRow, VersionRow, VolumeRow
from durafs.interrupts import held

log = logging.getLogger(__name__)

#: Worker threads decoding and writing (the machine this is tuned on has two cores).
WORKERS = 2
#: A batch is at most this much of one volume, read (and decrypted) at once...
BATCH_SPAN = 2 * 1024 * 1024
#: ...and at most this many chunks, so work spreads evenly over the workers.
BATCH_CHUNKS = 256
#: Bytes between two wanted chunks that are read rather than starting a new batch.
BATCH_GAP = 64 * 1024
#: Files whose chunk rows are looked up in one query.
LOOKUP_FILES = 512
#: Files without chunks (empty, or holes only) finished per worker task.
EMPTY_BATCH = 256

_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
_REOPEN = os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC
_T = TypeVar("_T")


@dataclass
class RestoreResult:
    files: int = 0
    bytes: int = 0
    problems: list[str] = field(default_factory=list)


@dataclass(eq=False, slots=True)
class _File:
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


class _Job(NamedTuple):
    """One chunk to write into one file (a chunk shared by files gives one job each)."""

    medium_id: int
    volume_seq: int
    offset: int
    volume: VolumeRow
    length: int
    size: int
    cid: bytes
    file: _File
    file_offset: int


_job_order = attrgetter("medium_id", "volume_seq", "offset")


@dataclass
class _Batch:
    volume: VolumeRow
    start: int
    end: int
    jobs: list[_Job] = field(default_factory=list)


@dataclass
class _Plan:
    """What the walk found, for the later passes."""

    files: list[_File] = field(default_factory=list)
    jobs: list[_Job] = field(default_factory=list)
    #: Files whose chunk rows are not looked up yet, with their pieces.
    unresolved: list[tuple[_File, list[tuple[int, int, int]]]] = field(default_factory=list)
    #: Files without chunks: created, truncated and finished by a worker.
    empty: list[_File] = field(default_factory=list)
    #: Hard-link group leaders by source path; links as (dest, leader's source path).
    leaders: dict[bytes, _File] = field(default_factory=dict)
    links: list[tuple[bytes, bytes]] = field(default_factory=list)
    #: The leaders' pieces, for a link that takes over when its leader is not restored.
    leader_pieces: dict[bytes, list[tuple[int, int, int]]] = field(default_factory=dict)
    #: Links given their group's content because its first name was not restored.
    heirs: set[bytes] = field(default_factory=set)
    #: Directories in walk order (parents first), with "may hold ACLs it did not get".
    dirs: list[tuple[bytes, TreeEntry, bool]] = field(default_factory=list)
    #: Per directory: do objects created in it inherit ACLs (has it a default ACL)?
    passes_acls: dict[bytes, bool] = field(default_factory=dict)


def parse_spec(catalog: Catalog, spec: str) -> tuple[CheckpointRow, bytes]:
    """'PLAN/CHECKPOINT[/PATH]' → (checkpoint, absolute path inside it)."""
    parts = spec.split("/", 2)
    if len(parts) < 2 or not parts[0] or not parts[1]:
        raise UsageError(f"{spec!r}: expected PLAN/CHECKPOINT[/PATH]")
    for name in parts[:2]:
        try:
            name.encode()
        except UnicodeEncodeError:  # the shell passes any bytes; names in the index are text
            raise UsageError(f"'{name}' is not UTF-8 text: no plan or checkpoint is "
                             "named so") from None
    checkpoint = catalog.checkpoint(parts[0], parts[1])
    if checkpoint is None:
        raise UsageError(f"no checkpoint {parts[1]!r} in plan {parts[0]!r}")
    path = b"/" + os.fsencode(parts[2]).strip(b"/") if len(parts) == 3 else b"/"
    return checkpoint, path


class Restore:
    """Restores one subtree of one checkpoint to *target*.

    *batch_chunks* caps the chunks of one batch (default `BATCH_CHUNKS`); smaller batches
    spread a file's chunks over more batches, which two workers may then write at once.
    """

    def __init__(
        self, catalog: Catalog, access: VolumeAccess, *, overwrite: bool = False,
        progress: Callable[[dict[str, Any]], None] | None = None,
        batch_chunks: int = BATCH_CHUNKS,
    ) -> None:
        self.catalog = catalog
        self.access = access
        self.overwrite = overwrite
        self.progress = progress
        self.batch_chunks = batch_chunks
        self.result = RestoreResult()
        self.is_root = os.geteuid() == 0
        self._volumes: dict[int, VolumeRow] = {}
        #: Media that stayed offline past the wait, by id: the rest of the run does not
        #: wait for them again, batch after batch.
        self._offline: dict[int, str] = {}
        #: Directories opened to their owner (`let_owner_in`) whose own mode is not given
        #: yet, with the mode they had, parents first: an interrupted run puts those back.
        self._opened: dict[bytes, int] = {}
        #: How every path under TARGET is reached: never through a symlink (`Beneath`).
        self._beneath: Beneath
        self._at: AtPath

    def run(self, checkpoint: CheckpointRow, path: bytes, target: bytes) -> RestoreResult:
        """Restore *path* of *checkpoint*: a directory's contents become *target*'s, anything
        else goes into *target* under its own name. Problems are collected, not raised."""
        plan_row = self.catalog.plan(checkpoint.plan)
        assert plan_row is not None
        top = self.catalog.resolve(plan_row.id, checkpoint.seq, path)
        if top is None:
            raise UsageError(f"{os.fsdecode(path)} is not in {checkpoint.plan}/{checkpoint.name}")
        try:
            os.makedirs(target, exist_ok=True)
        except FileExistsError:
            raise UsageError(f"{os.fsdecode(target)}: exists and is not a directory") from None
        except OSError as exc:
            raise UsageError(f"{os.fsdecode(target)}: cannot be made ({exc.strerror})") from None
        # A TARGET that is a symlink means the directory it points to; inside TARGET no
        # symlink is ever followed, not even one put there while the restore runs (see
        # _walk and `Beneath`).
        target = os.path.realpath(target)
        if top.type == "d":  # its contents become TARGET's
            strip = len(path.rstrip(b"/")) if path != b"/" else 0
        else:  # anything else goes into TARGET under its own name
            strip = len(path.rsplit(b"/", 1)[0])
        plan = _Plan()
        with Beneath(target) as beneath:
            self._beneath, self._at = beneath, beneath.at
            try:
                with gc_paused():
                    self._walk(plan, plan_row.id, checkpoint.seq, top.path_id, target, strip)
                with gc_frozen():
                    try:
                        self._fill(plan)
                        self._finish(plan)
                    except BaseException:  # Ctrl-C, or a failure: no half-written file stays
                        self._drop_unfinished(plan)  # (while its directory is still open)
                        raise
            finally:  # whatever ended the run, no directory keeps the permission it lent
                self._put_modes_back()
        done = [f for f in plan.files
                if f.state == "created" and not f.damaged and not f.reported]
        self.result.files = len(done)
        self.result.bytes = sum(f.entry.size for f in done)
        self.result.problems.sort()  # workers report in no fixed order
        return self.result

    # -- pass 1: the walk ---------------------------------------------------------------

    def _walk(
        self, plan: _Plan, plan_id: int, seq: int, top_id: int, target: bytes, strip: int
    ) -> None:
        leaders: dict[int, bytes] = {}
        # Directories that could not be made (something else is there, a symlink maybe):
        # nothing goes under them, or it would land wherever that thing leads.
        blocked: set[bytes] = set()
        base = b"" if target == b"/" else target  # a restore into / must not make "//x"
        for src, version in self.catalog.walk(plan_id, seq, top_id):
            dest = (base + (src[strip:] if strip else src).rstrip(b"/")) or target
            if dest.rsplit(b"/", 1)[0] in blocked:
                blocked.add(dest)
                continue
            entry = to_tree_entry(self.catalog, src, version, leaders, chunks=False)
            try:
                self._node(plan, src, dest, entry, version)
            except (OSError, DurafsError) as exc:
                blocks = entry.type == "d"
                if blocks:
                    blocked.add(dest)
                self._problem(dest, exc, "; nothing under it was restored" if blocks else "")
            if len(plan.unresolved) >= LOOKUP_FILES:
                self._resolve(plan)
        self._resolve(plan)

    def _node(
        self, plan: _Plan, src: bytes, dest: bytes, entry: TreeEntry, version: VersionRow
    ) -> None:
        kind = entry.type
        if kind == "d":
            self._dir(plan, dest, entry)
        elif kind == "f":
            file = _File(dest, entry, self._inherits(plan, dest))
            plan.files.append(file)
            plan.unresolved.append((file, version.pieces()))
            if version.hardlink_id is not None:
                plan.leaders[src] = file
                plan.leader_pieces[src] = version.pieces()
        elif kind == "h":
            assert entry.link is not None
            plan.links.append((dest, entry.link))
        elif kind != "s":  # sockets are never recreated
            self._make_node(dest, entry)
            apply_metadata(dest, entry, is_root=self.is_root,
                           inherited=self._inherits(plan, dest), at=self._at)

    def _dir(self, plan: _Plan, dest: bytes, entry: TreeEntry) -> None:
        if self._replacing(dest, make_dir, dest, self._at):
            # A new directory has a default ACL only if it inherited one (ours come last).
            inherits = self._inherits(plan, dest)
            plan.passes_acls[dest] = inherits
        else:  # it was there before: it may hold anything
            if not self.is_root:
                try:
                    # opened and noted as one step: a signal between would lose its mode
                    with held():
                        before = let_owner_in(dest, self._at_held)
                        if before is not None:
                            self._opened[dest] = before
                except OSError:
                    pass  # what cannot be made in it is named, with the reason
            inherits = True
            plan.passes_acls[dest] = has_default_acl(dest, self._at)
        plan.dirs.append((dest, entry, inherits))

    def _inherits(self, plan: _Plan, dest: bytes) -> bool:
        """Whether a new object at *dest* may get ACLs from a default ACL of its directory."""
        parent = dest.rsplit(b"/", 1)[0] or b"/"
        passes = plan.passes_acls.get(parent)
        if passes is None:  # TARGET itself, when one file is restored into it
            passes = plan.passes_acls[parent] = has_default_acl(parent, self._at)
        return passes

    def _resolve(self, plan: _Plan) -> None:
        """Look up the chunk rows of the files walked since the last call, in one query,
        and turn their pieces into jobs."""
        if not plan.unresolved:
            return
        rows = self.catalog.chunk_by_rowid(
            rid for _, pieces in plan.unresolved for _, rid, _ in pieces)
        for file, pieces in plan.unresolved:
            try:
                jobs = [self._job(file, rows, offset, rid) for offset, rid, _ in pieces]
            except DurafsError as exc:
                file.state = "failed"
                self._report(file, exc)
                continue
            file.pending = len(jobs)
            file.end = max((offset + size for offset, _, size in pieces), default=0)
            plan.jobs += jobs
            if not jobs:
                plan.empty.append(file)
        plan.unresolved.clear()

    def _job(self, file: _File, rows: dict[int, ChunkRow], offset: int, rid: int) -> _Job:
        chunk = rows.get(rid)
        if chunk is None:
            raise CatalogError(f"the index has no chunk {rid}")
        volume = self._volumes.get(chunk.volume_id)
        if volume is None:
            volume = self.catalog.volume(chunk.volume_id)
            if volume is None:
                raise CatalogError(f"the index has no volume {chunk.volume_id}")
            self._volumes[chunk.volume_id] = volume
        return _Job(volume.medium_id, volume.seq, chunk.offset, volume, chunk.length,
                    chunk.size, chunk.cid, file, offset)

    # -- pass 2: content ----------------------------------------------------------------

    def _fill(self, plan: _Plan) -> None:
        """Hand the batches (and the files without chunks) to the workers and wait."""
        plan.jobs.sort(key=_job_order)
        tasks: list[tuple[Callable[[Any], None], Any]] = [
            (self._finish_empty, plan.empty[i : i + EMPTY_BATCH])
            for i in range(0, len(plan.empty), EMPTY_BATCH)]
        batches = _batches(plan.jobs, self.batch_chunks)
        tasks += [(self._run_batch, batch) for batch in batches]
        # what each task completes, for the progress report: its files whose last chunk
        # it writes (`_batches` notes each file's last batch), and its bytes
        weights = [(len(files), 0) for _, files in tasks[: len(tasks) - len(batches)]]
        weights += [(len({j.file for j in batch.jobs if j.file.batch == k}),
                     sum(j.size for j in batch.jobs)) for k, batch in enumerate(batches, 1)]
        reporter = Reporter(self.progress, expected_bytes=sum(w[1] for w in weights),
                            expected_count=sum(w[0] for w in weights))
        plan.jobs, plan.empty = [], []
        pool = concurrent.futures.ThreadPoolExecutor(WORKERS, "durafs-restore")
        try:
            for future, (files, size) in zip([pool.submit(func, arg) for func, arg in tasks],
                                             weights, strict=True):
                future.result()
                reporter.add(files=files, bytes=size, bytes_read=size)
        except BaseException:
            # the workers must end before their unfinished files are removed: none may
            # wait on for an offline medium
            self.access.stop_waiting()
            pool.shutdown(cancel_futures=True)
            raise
        pool.shutdown()
        reporter.report(force=True)

    def _finish_empty(self, files: list[_File]) -> None:
        for file in files:
            self._done(file, -1, 0)

    def _run_batch(self, batch: _Batch) -> None:
        """Read, check and write every chunk of *batch*; a file is finished (metadata,
        closed) as soon as its last chunk here is written."""
        counts = collections.Counter(job.file for job in batch.jobs)
        left = counts.copy()
        fds: dict[_File, int] = {}
        try:
            for job, data in self._decoded(batch):
                file = job.file
                if data is None:
                    file.damaged = True
                else:
                    fd = fds.get(file)
                    if fd is None:
                        fd = fds[file] = self._open(file)
                    if fd >= 0:
                        self._write(file, fd, data, job.file_offset)
                left[file] -= 1
                if not left[file]:
                    self._done(file, fds.pop(file, -1), counts[file])
        finally:
            for fd in fds.values():  # left open only by an unexpected error
                if fd >= 0:
                    os.close(fd)

    def _decoded(self, batch: _Batch) -> Iterator[tuple[_Job, bytes | None]]:
        """Each job of *batch* with its chunk's checked plaintext, or None (reported)."""
        try:
            reader = self._reader(batch.volume)
        except (OSError, DurafsError) as exc:
            for job in batch.jobs:
                self._report(job.file, exc)
                yield job, None
            return
        span = _read_span(reader, batch)
        previous: tuple[int, bytes | None] = (-1, None)
        for job in batch.jobs:
            if job.offset == previous[0]:  # one chunk in several files, or twice in one
                yield job, previous[1]
                continue
            data: bytes | None
            try:
                data = _decode(reader, span, batch.start, job)
            except (OSError, DurafsError) as exc:
                self._report(job.file, exc)
                data = None
            previous = (job.offset, data)
            yield job, data

    def _reader(self, volume: VolumeRow) -> VolumeReader:
        gave_up = self._offline.get(volume.medium_id)
        if gave_up is not None:
            raise MediumOfflineError(gave_up)
        try:
            return self.access.reader(volume)
        except MediumOfflineError as exc:
            self._offline[volume.medium_id] = str(exc)
            raise

    def _open(self, file: _File) -> int:
        """A descriptor to write *file* through, creating it the first time; -1 if there is
        none (reported)."""
        if file.lock is None:
            return self._open_locked(file)
        with file.lock:
            return self._open_locked(file)

    def _open_locked(self, file: _File) -> int:
        if file.state == "failed":
            return -1
        try:
            if file.state == "created":  # by an earlier batch
                return self._reopen(file.temp or file.dest)
            fd = self._create_file(file)
        except OSError as exc:
            if file.state == "new":
                file.state = "failed"  # never touch what is there
            else:
                file.damaged = True
            self._report(file, exc)
            return -1
        file.state = "created"
        return fd

    def _write(self, file: _File, fd: int, data: bytes, offset: int) -> None:
        try:
            pwrite_all(fd, data, offset)
        except OSError as exc:
            file.damaged = file.unwritten = True
            self._report(file, exc)

    def _done(self, file: _File, fd: int, batch_jobs: int) -> None:
        """This batch wrote its *batch_jobs* chunks of *file* (through *fd*, if it opened
        one): close it, or finish it if no other batch has chunks of it left."""
        if file.lock is not None:
            with file.lock:
                file.pending -= batch_jobs
                last = file.pending == 0
            if not last:
                if fd >= 0:
                    os.close(fd)
                return
        if fd < 0:  # nothing written here: no chunks, or every one failed
            fd = self._open(file)
            if fd < 0:
                return
        try:
            if file.damaged or file.end < file.entry.size:
                try:
                    os.ftruncate(fd, file.entry.size)  # a trailing hole, or holes for damage
                except OSError:
                    file.damaged = file.unwritten = True
                    raise
            if not file.damaged:  # a damaged file keeps today's time, so no tool trusts it
                apply_fd_metadata(fd, file.dest, file.entry, is_root=self.is_root,
                                  inherited=file.inherits)
        except OSError as exc:
            self._report(file, exc)
        finally:
            os.close(fd)
        if file.temp is not None:
            self._put_in_place(file)
        elif file.unwritten:
            self._drop(file)
        file.finished = True

    # -- pass 3: hard links and directories ---------------------------------------------

    def _finish(self, plan: _Plan) -> None:
        self._promote_heirs(plan)
        for dest, leader_src in plan.links:
            if dest in plan.heirs:
                continue  # restored with the content, or its failure is reported already
            leader = plan.leaders.get(leader_src)
            try:
                if leader is None or leader.state != "created":
                    raise FileNotFoundError(
                        f"its first name {os.fsdecode(leader_src)} was not restored")
                self._replacing(dest, self._link, leader.dest, dest)
            except OSError as exc:
                self._problem(dest, exc)
                continue
            if leader.damaged:  # every name of damaged content is named
                self._problem(dest, f"a hard link to {os.fsdecode(leader.dest)}, which is damaged")
        for dest, entry, inherits in reversed(plan.dirs):
            try:
                self._dir_metadata(dest, entry, inherits)
            except OSError as exc:
                self._problem(dest, exc)

    def _dir_metadata(self, dest: bytes, entry: TreeEntry, inherits: bool) -> None:
        """Give the directory *dest* its metadata, and so its own mode: it is no longer
        one to put back. One step: a signal between would put back its old mode."""
        with held():
            try:
                if dest == self._beneath.root:
                    self._target_metadata(entry, inherits)
                else:
                    apply_metadata(dest, entry, is_root=self.is_root, inherited=inherits,
                                   at=self._at)
            finally:
                self._opened.pop(dest, None)

    def _target_metadata(self, entry: TreeEntry, inherits: bool) -> None:
        """Give TARGET itself its directory's metadata through the descriptor held since the
        restore began: TARGET's path may lead elsewhere by now (a directory above it
        renamed and a symlink put in its place), the directory held is the one restored."""
        try:
            fd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC,
                         dir_fd=self._beneath.fd)
        except PermissionError:  # not root and TARGET unreadable: by its path, as before
            apply_metadata(self._beneath.root, entry, is_root=self.is_root,
                           inherited=inherits, at=self._at)
            return
        try:
            apply_fd_metadata(fd, self._beneath.root, entry, is_root=self.is_root,
                              inherited=inherits)
        finally:
            os.close(fd)

    def _put_modes_back(self) -> None:
        """Give the directories still opened to their owner (a run that did not get to
        their own modes) the modes they had, deepest first: a parent of mode 0600, say,
        would bar the way to its children. Not cut by a second signal: a directory left
        open would stay open (SIGKILL alone can leave that)."""
        with held():
            for dest, mode in reversed(self._opened.items()):
                try:
                    put_mode_back(dest, mode, self._at_held)
                except OSError as exc:  # the run is ending on an error: say it all the same
                    log.warning("%s: mode %04o not put back (%s)", os.fsdecode(dest), mode,
                                exc.strerror or exc)
            self._opened.clear()

    @contextlib.contextmanager
    def _at_held(self, path: bytes) -> Iterator[tuple[int | None, bytes]]:
        """As `self._at`, but TARGET itself is the directory held since the restore began
        (as for its metadata, `_target_metadata`), not whatever its path leads to now: the
        mode lent to TARGET is given back to TARGET."""
        if path == self._beneath.root:
            yield self._beneath.fd, b"."
        else:
            with self._at(path) as pair:
                yield pair

    def _promote_heirs(self, plan: _Plan) -> None:
        """A hard-link group whose first name was not restored (something was there, say)
        gets its content under its first link's name instead, or, if that is not restored
        either, under the next one's; the other links follow it."""
        while True:
            heirs: dict[bytes, _File] = {}
            for dest, leader_src in plan.links:
                leader = plan.leaders.get(leader_src)
                if (leader is None or leader.state == "created" or leader_src in heirs
                        or dest in plan.heirs):
                    continue
                heir = _File(dest, leader.entry, self._inherits(plan, dest))
                plan.files.append(heir)
                plan.unresolved.append((heir, plan.leader_pieces[leader_src]))
                heirs[leader_src] = heir
                plan.heirs.add(dest)
            if not heirs:
                return
            self._resolve(plan)
            self._fill(plan)
            plan.leaders.update(heirs)

    # -- helpers ------------------------------------------------------------------------

    def _create_file(self, file: _File) -> int:
        """Create *file* for writing. Something already at its name is replaced only with
        --overwrite, and only once the new content is complete: until then the file is
        written under a temporary name beside it."""
        try:
            return self._create(file.dest)
        except FileExistsError:
            if not self.overwrite:
                raise FileExistsError("exists (use --overwrite)") from None
        with self._at(file.dest) as (dir_fd, name):
            if stat.S_ISDIR(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode):
                raise IsADirectoryError(errno.EISDIR, "Is a directory")
        file.temp, fd = self._beside(file.dest, self._create)
        return fd

    def _make_node(self, dest: bytes, entry: TreeEntry) -> None:
        """Make the symlink, FIFO or device node *entry* at *dest*. Something already there
        is replaced only with --overwrite, by renaming the new node over it: one that
        cannot be made (a device without CAP_MKNOD) leaves the old thing as it was."""
        try:
            return make_node(dest, entry, self._at)
        except FileExistsError:
            if not self.overwrite:
                raise FileExistsError("exists (use --overwrite)") from None
        temp, _ = self._beside(dest, lambda path: make_node(path, entry, self._at))
        try:
            with self._at(temp) as (src_fd, src), self._at(dest) as (dst_fd, dst):
                os.rename(src, dst, src_dir_fd=src_fd, dst_dir_fd=dst_fd)
        except BaseException:  # a directory is there, say, or Ctrl-C
            with self._at(temp) as (dir_fd, name):
                os.unlink(name, dir_fd=dir_fd)
            raise

    def _beside(self, dest: bytes, create: Callable[[bytes], _T]) -> tuple[bytes, _T]:
        """``create(temp)`` for a new temporary name beside *dest*: (temp, its result)."""
        parent = dest.rsplit(b"/", 1)[0] or b"/"
        while True:
            temp = parent + b"/.durafs-restore-" + os.urandom(6).hex().encode()
            try:
                return temp, create(temp)
            except FileExistsError:
                continue

    def _put_in_place(self, file: _File) -> None:
        """Rename a replacement over the file it replaces; a damaged one is dropped and
        the old file stays."""
        assert file.temp is not None
        temp, file.temp = file.temp, None
        try:
            with self._at(temp) as (src_fd, src), self._at(file.dest) as (dst_fd, dst):
                if file.damaged:
                    os.unlink(src, dir_fd=src_fd)
                    # what is at its name is not the backup's file: its hard links must
                    # not become links to that (another name takes the content over)
                    file.state = "failed"
                    why = "could not be written" if file.unwritten else "is damaged"
                    self._problem(file.dest, f"left as it was (the backup's copy {why})")
                else:
                    os.rename(src, dst, src_dir_fd=src_fd, dst_dir_fd=dst_fd)
        except OSError as exc:
            file.damaged = True
            self._report(file, exc)

    def _drop(self, file: _File) -> None:
        """Remove the new file *file*, written only in part (its failure is reported): its
        hard links then take the content over, as when it could not be created."""
        file.state = "failed"
        try:
            with self._at(file.dest) as (dir_fd, name):
                os.unlink(name, dir_fd=dir_fd)
        except OSError as exc:
            self._problem(file.dest, exc, "; this copy is incomplete")

    def _drop_unfinished(self, plan: _Plan) -> None:
        """Remove the files this run created but did not finish writing (batches not run,
        or a worker stopped by an unexpected error): a replacement (--overwrite) goes and
        the file it was to replace stays as it was; a new file goes, so no rerun takes it
        for one."""
        for file in plan.files:
            if file.state != "created" or file.finished:
                continue
            try:
                with self._at(file.temp or file.dest) as (dir_fd, name):
                    os.unlink(name, dir_fd=dir_fd)
            except OSError:
                pass  # gone already, or its directory is: nothing is left of it

    def _replacing(self, dest: bytes, create: Callable[..., _T], *args: Any) -> _T:
        """``create(*args)``, which makes *dest*; if something is there already, it is
        replaced only with --overwrite."""
        try:
            return create(*args)
        except FileExistsError:
            if not self.overwrite:
                raise FileExistsError("exists (use --overwrite)") from None
        with self._at(dest) as (dir_fd, name):
            os.unlink(name, dir_fd=dir_fd)
        return create(*args)

    def _create(self, path: bytes) -> int:
        """Create the regular file *path* for writing; FileExistsError if anything is there
        (``O_EXCL`` fails on a symlink too, dangling or not)."""
        return self._beneath.open(path, _CREATE)

    def _reopen(self, path: bytes) -> int:
        return self._beneath.open(path, _REOPEN)

    def _link(self, existing: bytes, new: bytes) -> None:
        with self._at(existing) as (src_fd, src), self._at(new) as (dst_fd, dst):
            os.link(src, dst, src_dir_fd=src_fd, dst_dir_fd=dst_fd, follow_symlinks=False)

    def _report(self, file: _File, exc: BaseException) -> None:
        """One problem per file: the first thing that went wrong with it."""
        if not file.reported:
            file.reported = True
            self._problem(file.dest, exc)

    def _problem(self, path: bytes, exc: BaseException | str, more: str = "") -> None:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        self.result.problems.append(f"{os.fsdecode(path)}: {reason}{more}")  # atomic: threads


def _batches(jobs: list[_Job], max_chunks: int = BATCH_CHUNKS) -> list[_Batch]:
    """Sorted jobs cut into batches: runs of one volume at most BATCH_SPAN long and
    *max_chunks* chunks, without gaps over BATCH_GAP. A file met in a second batch gets a
    lock: two workers may then write it at once."""
    batches: list[_Batch] = []
    batch: _Batch | None = None
    for job in jobs:
        end = job.offset + job.length
        if (batch is None or job.volume is not batch.volume or len(batch.jobs) >= max_chunks
                or job.offset > batch.end + BATCH_GAP or end - batch.start > BATCH_SPAN):
            batch = _Batch(job.volume, job.offset, end)
            batches.append(batch)
        batch.jobs.append(job)
        batch.end = max(batch.end, end)
        file = job.file
        if file.batch != len(batches):
            if file.batch >= 0 and file.lock is None:
                file.lock = threading.Lock()
            file.batch = len(batches)
    return batches


def _read_span(reader: VolumeReader, batch: _Batch) -> memoryview | None:
    """The plaintext of the volume under *batch* (one read: each age chunk decrypted once),
    or None to read chunk by chunk — one chunk alone, or a span that does not read whole
    (damage), so that only the chunks really hurt are named."""
    if len(batch.jobs) == 1:
        return None
    try:
        return memoryview(reader.read(batch.start, batch.end - batch.start))
    except (OSError, DurafsError):
        return None


def _decode(reader: VolumeReader, span: memoryview | None, start: int, job: _Job) -> bytes:
    """The chunk of *job*, checked against its id."""
    if span is None:
        return reader.read_chunk(job.offset, job.length, job.size, job.cid)
    frame = span[job.offset - start : job.offset - start + job.length]
    what = f"{reader.name}: chunk {job.cid.hex()[:16]} at offset {job.offset}"
    return codec_for_thread(reader.header.id_key).decode(frame, job.size, job.cid, what)
