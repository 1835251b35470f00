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
import logging
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from durafs.engine.access import VolumeAccess
from durafs.engine.beneath import Beneath
from durafs.engine.catalogvol import to_tree_entry
from durafs.engine.collector import gc_frozen, gc_paused
from durafs.engine.fsmeta import (
    AtPath,
    apply_fd_metadata,
    apply_metadata,
    has_default_acl,
    make_dir,
    pwrite_all,
)
from durafs.engine.placing import Placer
from durafs.engine.progress import Reporter
from durafs.engine.restorejobs import (
    BATCH_CHUNKS,
    JOB_ORDER,
    Batch,
    ChunkJob,
    RestoredFile,
    cut_batches,
    decode_job,
    read_span,
)
from durafs.errors import CatalogError, DurafsError, MediumOfflineError, UsageError
from durafs.format.catalog import TreeEntry
from durafs.format.reader import VolumeReader
from durafs.index.catalog import Catalog
from durafs.index.rows import CheckpointRow, ChunkRow, VersionRow, VolumeRow

log = logging.getLogger(__name__)

#: Worker threads decoding and writing (the machine this is tuned on has two cores).
WORKERS = 2
#: Files whose chunk rows are looked up in one query.
LOOKUP_FILES = 512
#: Files without chunks (empty, or holes only) finished per worker task.
EMPTY_BATCH = 256



@dataclass
class RestoreResult:
    files: int = 0
    bytes: int = 0
    problems: list[str] = field(default_factory=list)


@dataclass
class _Plan:
    """What the walk found, for the later passes."""

    files: list[RestoredFile] = field(default_factory=list)
    jobs: list[ChunkJob] = field(default_factory=list)
    #: Files whose chunk rows are not looked up yet, with their pieces.
    unresolved: list[tuple[RestoredFile, list[tuple[int, int, int]]]] = field(default_factory=list)
    #: Files without chunks: created, truncated and finished by a worker.
    empty: list[RestoredFile] = field(default_factory=list)
    #: Hard-link group leaders by source path; links as (dest, leader's source path).
    leaders: dict[bytes, RestoredFile] = field(default_factory=dict)
    links: list[tuple[bytes, bytes]] = field(default_factory=list)
    #: The leaders' pieces, for a link that takes over when its leader is not restored.
    leader_pieces: dict[bytes, list[tuple[int, int, int]]] = field(default_factory=dict)
    #: Links given their group's content because its first name was not restored.
    heirs: set[bytes] = field(default_factory=set)
    #: The group's file each link was made to (pass 3), counted as restored with it.
    linked: list[RestoredFile] = field(default_factory=list)
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
    if len(parts) == 3 and parts[2].endswith("/") and path != b"/":
        # as in a shell, a trailing / names a directory: `file/` is not the file
        version = catalog.resolve(checkpoint.plan_id, checkpoint.seq, path)
        if version is not None and version.type != "d":
            raise UsageError(f"{os.fsdecode(path)}/: not a directory in "
                             f"{checkpoint.plan}/{checkpoint.name} (drop the trailing /)")
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
        #: How every object under TARGET is made, and every path reached (`Placer`).
        self._place: Placer
        self._at: AtPath
        #: What went wrong, by path: one problem per path, whatever else befell it later
        #: (a damaged copy, then dropped in favour of the old file, is one problem).
        self._problems: dict[bytes, str] = {}
        self._problems_lock = threading.Lock()  # workers report too

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
            what = ("is a symlink to nothing" if os.path.islink(target)
                    and not os.path.exists(target) else "exists and is not a directory")
            raise UsageError(f"{os.fsdecode(target)}: {what} (TARGET must be a directory, "
                             "or not exist)") from None
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
            self._place = Placer(beneath, overwrite=self.overwrite, is_root=self.is_root)
            self._at = beneath.at
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
                self._place.put_modes_back()
        done = {f for f in plan.files if f.state == "created" and not f.damaged
                and not f.reported}
        # every name counts, as in the backup's totals: a hard link made to a file
        # restored whole is one more file restored (one to a damaged one is a problem)
        names = [*done, *(f for f in plan.linked if f in done)]
        self.result.files = len(names)
        self.result.bytes = sum(f.entry.size for f in names)
        # sorted: workers report in no fixed order
        self.result.problems = sorted(f"{os.fsdecode(path)}: {reason}"
                                      for path, reason in self._problems.items())
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
            file = RestoredFile(dest, entry, self._inherits(plan, dest))
            plan.files.append(file)
            plan.unresolved.append((file, version.pieces()))
            if version.hardlink_id is not None:
                plan.leaders[src] = file
                plan.leader_pieces[src] = version.pieces()
        elif kind == "h":
            assert entry.link is not None
            plan.links.append((dest, entry.link))
        elif kind != "s":  # sockets are never recreated
            self._place.make_node(dest, entry)
            apply_metadata(dest, entry, is_root=self.is_root,
                           inherited=self._inherits(plan, dest), at=self._at)

    def _dir(self, plan: _Plan, dest: bytes, entry: TreeEntry) -> None:
        if self._place.replacing(dest, make_dir, dest, self._at):
            # A new directory has a default ACL only if it inherited one (ours come last).
            inherits = self._inherits(plan, dest)
            plan.passes_acls[dest] = inherits
        else:  # it was there before: it may hold anything
            self._place.open_to_owner(dest)
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

    def _job(
        self, file: RestoredFile, rows: dict[int, ChunkRow], offset: int, rid: int,
    ) -> ChunkJob:
        chunk = rows.get(rid)
        if chunk is None:
            raise CatalogError(f"the index has no chunk {rid}")
        volume = self._volumes.get(chunk.volume_id)
        if volume is None:
            volume = self.catalog.volume(chunk.volume_id)
            if volume is None:
                raise CatalogError(f"the index has no volume {chunk.volume_id}")
            self._volumes[chunk.volume_id] = volume
        return ChunkJob(volume.medium_id, volume.seq, chunk.offset, volume, chunk.length,
                    chunk.size, chunk.cid, file, offset, chunk.fpos)

    # -- pass 2: content ----------------------------------------------------------------

    def _fill(self, plan: _Plan) -> None:
        """Hand the batches (and the files without chunks) to the workers and wait."""
        plan.jobs.sort(key=JOB_ORDER)
        tasks: list[tuple[Callable[[Any], None], Any]] = [
            (self._finish_empty, plan.empty[i : i + EMPTY_BATCH])
            for i in range(0, len(plan.empty), EMPTY_BATCH)]
        batches = cut_batches(plan.jobs, self.batch_chunks)
        tasks += [(self._run_batch, batch) for batch in batches]
        # what each task completes, for the progress report: its files whose last chunk
        # it writes (`cut_batches` notes each file's last batch), and its bytes
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

    def _finish_empty(self, files: list[RestoredFile]) -> None:
        for file in files:
            self._done(file, -1, 0)

    def _run_batch(self, batch: Batch) -> None:
        """Read, check and write every chunk of *batch*; a file is finished (metadata,
        closed) as soon as its last chunk here is written."""
        counts = collections.Counter(job.file for job in batch.jobs)
        left = counts.copy()
        fds: dict[RestoredFile, int] = {}
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

    def _decoded(self, batch: Batch) -> Iterator[tuple[ChunkJob, bytes | None]]:
        """Each job of *batch* with its chunk's checked plaintext, or None (reported)."""
        try:
            reader = self._reader(batch.volume)
        except (OSError, DurafsError) as exc:
            for job in batch.jobs:
                self._report(job.file, exc)
                yield job, None
            return
        span = read_span(reader, batch)
        previous: tuple[tuple[int, int], bytes | None] = ((-1, 0), None)
        for job in batch.jobs:
            if (job.offset, job.fpos) == previous[0]:  # one chunk in several files, or
                yield job, previous[1]                  # twice in one
                continue
            data: bytes | None
            try:
                data = decode_job(reader, span, batch.start, job)
            except (OSError, DurafsError) as exc:
                self._report(job.file, exc)
                data = None
            previous = ((job.offset, job.fpos), data)
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

    def _open(self, file: RestoredFile) -> int:
        """A descriptor to write *file* through, creating it the first time; -1 if there is
        none (reported)."""
        if file.lock is None:
            return self._open_locked(file)
        with file.lock:
            return self._open_locked(file)

    def _open_locked(self, file: RestoredFile) -> int:
        if file.state == "failed":
            return -1
        try:
            if file.state == "created":  # by an earlier batch
                return self._place.reopen(file.temp or file.dest)
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

    def _write(self, file: RestoredFile, fd: int, data: bytes, offset: int) -> None:
        try:
            pwrite_all(fd, data, offset)
        except OSError as exc:
            file.damaged = file.unwritten = True
            self._report(file, exc)

    def _done(self, file: RestoredFile, fd: int, batch_jobs: int) -> None:
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
        except OSError as exc:
            self._report(file, exc)
        else:
            if not file.damaged:  # a damaged file keeps today's time, so no tool trusts it
                self._metadata(fd, file)
        finally:
            os.close(fd)
        if file.temp is not None:
            self._put_in_place(file)
        elif file.unwritten:
            self._drop(file)
        file.finished = True

    def _metadata(self, fd: int, file: RestoredFile) -> None:
        """Give the whole file *file* its owner, xattrs, mode and times. What it could not
        be given (an owner without root, say) is named, but the file still counts as
        restored: its content is all there."""
        try:
            apply_fd_metadata(fd, file.dest, file.entry, is_root=self.is_root,
                              inherited=file.inherits)
        except OSError as exc:
            self._problem(file.dest, exc)

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
                self._place.replacing(dest, self._place.link, leader.dest, dest)
            except OSError as exc:
                self._problem(dest, exc)
                continue
            if leader.damaged:  # every name of damaged content is named
                self._problem(dest, f"a hard link to {os.fsdecode(leader.dest)}, which is damaged")
            plan.linked.append(leader)
        for dest, entry, inherits in reversed(plan.dirs):
            try:
                self._place.dir_metadata(dest, entry, inherits)
            except OSError as exc:
                self._problem(dest, exc)

    def _promote_heirs(self, plan: _Plan) -> None:
        """A hard-link group whose first name was not restored (something was there, say)
        gets its content under its first link's name instead, or, if that is not restored
        either, under the next one's; the other links follow it."""
        while True:
            heirs: dict[bytes, RestoredFile] = {}
            for dest, leader_src in plan.links:
                leader = plan.leaders.get(leader_src)
                if (leader is None or leader.state == "created" or leader_src in heirs
                        or dest in plan.heirs):
                    continue
                heir = RestoredFile(dest, leader.entry, self._inherits(plan, dest))
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

    def _create_file(self, file: RestoredFile) -> int:
        """Create *file* for writing (see `Placer.create_file`)."""
        fd, file.temp = self._place.create_file(file.dest)
        return fd

    def _put_in_place(self, file: RestoredFile) -> None:
        """Rename a replacement over the file it replaces; a damaged one is dropped and
        the old file stays."""
        assert file.temp is not None
        temp, file.temp = file.temp, None
        try:
            if file.damaged:
                self._place.remove(temp)
                # what is at its name is not the backup's file: its hard links must
                # not become links to that (another name takes the content over)
                file.state = "failed"
                why = "could not be written" if file.unwritten else "is damaged"
                self._problem(file.dest, f"left as it was (the backup's copy {why})")
            else:
                self._place.put_in_place(temp, file.dest)
        except OSError as exc:
            file.damaged = True
            self._report(file, exc)

    def _drop(self, file: RestoredFile) -> None:
        """Remove the new file *file*, written only in part (its failure is reported): its
        hard links then take the content over, as when it could not be created."""
        file.state = "failed"
        try:
            self._place.remove(file.dest)
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
                self._place.remove(file.temp or file.dest)
            except OSError:
                pass  # gone already, or its directory is: nothing is left of it

    def _report(self, file: RestoredFile, exc: BaseException) -> None:
        """One problem per file: the first thing that went wrong with it."""
        if not file.reported:
            file.reported = True
            self._problem(file.dest, exc)

    def _problem(self, path: bytes, exc: BaseException | str, more: str = "") -> None:
        """Report *path*; what befalls a path already reported is added to its problem."""
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        reason += more
        with self._problems_lock:
            known = self._problems.get(path)
            self._problems[path] = reason if known is None else f"{known}; {reason}"
