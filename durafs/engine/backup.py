"""The backup pipeline: scan → read → chunk → hash+compress (2 threads) → volumes → index.

The caller's thread walks the sources and hands files to a pool of worker threads, which
read, hash, cut and compress them (filereader.py; blake3, pyfastcdc, zstd and file reads
release the GIL, so both cores work). A file too large to hold whole streams through a
worker (at most one per worker; the next wait their turn while the walk goes on); sparse
files are read and cut by the walking thread, their chunks compressed by the workers. The
walking thread stores each new chunk in the open volume in submission order (the volume
writer encrypts and writes on a thread of its own). Bytes in flight are bounded, so memory
stays flat whatever the tree's size.

Two queues keep order: ``_jobs`` (batches of whole files, streamed files and single
chunks, in submission order) and ``_units`` (the files being read, in walk order; every
other entry goes to the TreeWriter at once). A unit goes to the TreeWriter once all its
chunks are in committed volumes, so the tree never refers to a chunk the index
does not have.
"""

from __future__ import annotations

import collections
import concurrent.futures
import functools
import logging
import os
import socket
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, cast

from durafs.engine.catalogspool import MAX_DELTAS, CatalogSpool
from durafs.engine.catalogvol import write_catalog_volume
from durafs.engine.collector import gc_relaxed
from durafs.engine.dedup import PoolChunks
from durafs.engine.excludes import check_patterns
from durafs.engine.filereader import (
    READ_ATTEMPTS,
    WHOLE_READ,
    FileRead,
    ReadRequest,
    SparseReader,
    StreamReader,
    WholeFileReader,
    same_content_stat,
)
from durafs.engine.hooks import run_hook
from durafs.engine.known import KnownChunks
from durafs.engine.memory import Trimmer, limit_arenas
from durafs.engine.owndata import own_directories, refuse_only_own_data
from durafs.engine.packing import Packer
from durafs.engine.pipeline import (
    BatchJob,
    ChunkJob,
    Done,
    InlineReads,
    Job,
    StreamJob,
    Unit,
)
from durafs.engine.poolwriter import PoolWriter
from durafs.engine.prevtree import PrevTree, same_as_before
from durafs.engine.progress import Reporter
from durafs.engine.resume import adopt_orphan_volumes, write_missing_catalogs
from durafs.engine.scan import ScanItem, ScanNote, ScanProblem, scan
from durafs.engine.streams import STREAM_POLL, Streams
from durafs.engine.switching import switch_interval
from durafs.errors import CatalogError, UsageError
from durafs.format.catalog import XATTRS_UNREAD
from durafs.format.chunker import Chunker
from durafs.format.frames import PACK_CHUNK_MAX, StoredChunk, codec_for_thread
from durafs.format.keys import CatalogKeys
from durafs.index.catalog import Catalog
from durafs.index.rows import (
    I64_MAX,
    I64_MIN,
    TYPE_OF_FMT,
    CheckpointRow,
    Entry,
    PlanRow,
    pack_pieces,
    pack_xattrs,
    stored_int,
    stored_ns,
)
from durafs.index.treewriter import TreeWriter

log = logging.getLogger(__name__)

#: Plaintext bytes read but not yet stored: bounds memory.
IN_FLIGHT = 20 * 1024 * 1024
#: Tree entries waiting for their volume: past this many the volume is committed early.
MAX_WAITING_UNITS = 20_000
WORKERS = 2
#: Chunk ids (cid -> chunks.id) kept from one trim to the next.
ID_CACHE = 20_000
#: Finished chunks whose ids are looked up in the index in one query.
PREFETCH = 512
#: Chunks smaller than this are compressed without asking the index first (the lookup
#: costs more than compressing them).
INLINE_MAX = 256 * 1024
#: Unchanged paths walked between two looks at the streaming files' queues (a look costs
#: more than skipping an unchanged path; a worker encodes a chunk in milliseconds).
PUMP_EVERY = 16
#: Files handed to a worker together (one future per batch, not per file) ...
BATCH_FILES = 64
#: ... or fewer when they add up to this many bytes.
BATCH_BYTES = 1024 * 1024


@dataclass
class BackupOptions:
    """What one run backs up, and how.

    *max_deltas*: at most this many delta catalog volumes follow a full one (default
    `catalogspool.MAX_DELTAS`); a smaller chain costs more catalog bytes per checkpoint but
    loses fewer checkpoints to one lost catalog volume.
    """

    sources: list[bytes]
    pool: str
    plan: str = "default"
    excludes: list[str] = field(default_factory=list)
    one_file_system: bool = False
    follow_symlinks: bool = False
    dry_run: bool = False
    media_timeout: float | None = None
    max_deltas: int = MAX_DELTAS


@dataclass
class Problem:
    path: bytes
    reason: str

    def __str__(self) -> str:
        return f"{os.fsdecode(self.path)}: {self.reason}"


@dataclass
class BackupResult:
    plan: str
    checkpoint: str | None
    stats: dict[str, Any]
    problems: list[Problem]
    notes: list[Problem] = field(default_factory=list)  # skipped on purpose, not problems


class Backup:
    """One run of a plan into a pool (see the module docstring for the pipeline)."""

    def __init__(
        self,
        catalog: Catalog,
        keys: CatalogKeys,
        options: BackupOptions,
        *,
        progress: Callable[[dict[str, Any]], None] | None = None,
        on_wait: Callable[[str], None] = log.warning,
    ) -> None:
        # the scan compiles the patterns only as it reaches each source, with the run's
        # checkpoint begun and its pre-backup hook run: a bad one is refused before that
        check_patterns(options.excludes)
        self.catalog = catalog
        self.keys = keys
        self.opts = options
        self.progress = progress
        pool = catalog.pool(options.pool)
        if pool is None:
            raise UsageError(f"no pool named {options.pool!r} (see `durafs pool list`)")
        self.pool = pool
        self._say = on_wait  # what the user is told while the run goes on
        self.writer = PoolWriter(catalog, keys, pool, on_wait=on_wait,
                                 media_timeout=options.media_timeout)
        self.chunker = Chunker(keys.id_key)
        self.problems: list[Problem] = []
        self.notes: list[Problem] = []
        self.stats: dict[str, Any] = collections.Counter()
        # paths recorded without some of their xattrs (unreadable): this run's, kept in its
        # checkpoint, and the previous checkpoint's, whose xattrs are read again rather
        # than taken from it (the next run may be allowed to read them all)
        self._xattrs_unread: list[bytes] = []
        self._reread_xattrs: set[bytes] = set()
        self._spool: CatalogSpool  # made once missing catalog volumes are written
        # whether the pool is empty is known once orphan volumes are adopted (_run_plan)
        self._known = KnownChunks(catalog.db.path, pool.id, keys.id_key, empty=False)
        self._chunks = PoolChunks(catalog, self.writer, self._known)
        self._init_pipeline(options)
        self._own: dict[tuple[int, int], str] = {}  # durafs's own data (`scan`'s *own*)
        self._tree: TreeWriter
        self._pool: concurrent.futures.ThreadPoolExecutor
        # the stats are counts but for a few facts added at the end (the pool's name)
        self._reporter = Reporter(progress, cast("collections.Counter[str]", self.stats))
        self._trimmer = Trimmer()
        limit_arenas()

    def _init_pipeline(self, options: BackupOptions) -> None:
        """The readers, and the state of the jobs and entries on their way."""
        self._packer = Packer(self.keys.id_key, self._known, self._stored_by_run)
        self._batches = 0  # batches submitted so far: the next one's number
        self._jobs: collections.deque[Job] = collections.deque()
        self._batch: list[tuple[Unit, ScanItem]] = []
        self._batch_bytes = 0
        self._reader = WholeFileReader(self.chunker, self._encode,
                                       follow_symlinks=options.follow_symlinks,
                                       encode_small=self._packer.encode)
        self._sparse = SparseReader(self.chunker, follow_symlinks=options.follow_symlinks)
        self._streams = Streams(
            StreamReader(self.chunker, self._encode, follow_symlinks=options.follow_symlinks),
            self._jobs, max_streams=WORKERS, store=self._store_streamed,
            finish=self._finish_read)
        self._pump_countdown = PUMP_EVERY
        self._units: collections.deque[Unit] = collections.deque()
        self._in_flight = 0
        self._inline = InlineReads()
        self._links: dict[Any, Unit] = {}

    # -- the run ---------------------------------------------------------------------

    def run(self) -> BackupResult:
        # the walk's objects live to its end: nothing to collect
        with gc_relaxed(), switch_interval():
            return self._run()

    def _run(self) -> BackupResult:
        if not self.opts.dry_run:
            return self._run_plan(self.catalog.ensure_plan(self.opts.plan))
        new_plan = self.catalog.plan(self.opts.plan) is None
        plan = self.catalog.ensure_plan(self.opts.plan)
        try:
            return self._run_plan(plan)
        finally:  # a dry run leaves no trace, not even the plan it looked at
            if new_plan:
                self.catalog.drop_unused_plan(plan.id)

    def _prepare(self, plan: PlanRow) -> bool:
        """Everything before the walk: what a killed run left taken in, the catalog
        volume planned, the pre-backup hook run. Whether the plan has a checkpoint."""
        if not self.opts.dry_run:
            adopt_orphan_volumes(self.catalog, self.keys, self.pool)
            write_missing_catalogs(self.catalog, self.writer, plan.name)
        # after those: this checkpoint's catalog volume may be a delta of one just written
        self._spool = CatalogSpool(self.catalog, plan.name, self.pool.name,
                                   max_deltas=self.opts.max_deltas)
        self._chunks.start()
        self._own = own_directories(self.catalog, self.pool.id)
        refuse_only_own_data(self.opts.sources, self._own)
        prev = self.catalog.checkpoints(plan.name)
        self._trust_prev = bool(prev) and prev[-1].stats.get("pool") == self.pool.name
        if prev:
            self._reread_xattrs = {os.fsencode(p) for p in prev[-1].stats.get(XATTRS_UNREAD, ())}
        self._run_hook(plan.config.get("pre_hook"), "pre-backup hook", fatal=True)
        return bool(prev)

    def _run_plan(self, plan: PlanRow) -> BackupResult:
        had_checkpoint = self._prepare(plan)
        # The pre-backup hook has run: the post-backup hook runs however the run ends (what
        # the one did, a database quiesced, a service stopped, the other must undo).
        try:
            checkpoint = self._take_checkpoint(plan, had_checkpoint)
        except BaseException:
            self._post_hook_after_failure(plan)
            raise
        if checkpoint is None:  # a dry run
            return BackupResult(plan.name, None, dict(self.stats), self.problems, self.notes)
        self._run_hook(plan.config.get("post_hook"), "post-backup hook", fatal=False)
        self._report(force=True)
        return BackupResult(plan.name, checkpoint.name, dict(self.stats), self.problems,
                            self.notes)

    def _take_checkpoint(self, plan: PlanRow, had_checkpoint: bool) -> CheckpointRow | None:
        """The walk and all it stores, recorded as a checkpoint with its catalog volume;
        None for a dry run, which records nothing."""
        name = self._checkpoint_name(plan.name)
        created = time.time_ns()
        try:
            with self.catalog.tree_writer(
                plan.id, self.catalog.next_seq(plan.id), name, created_ns=created,
                sources=[os.fsdecode(s) for s in self.opts.sources],
            ) as tree, concurrent.futures.ThreadPoolExecutor(WORKERS, "durafs-cpu") as pool:
                self._tree, self._pool = tree, pool
                self._streams.submit = pool.submit
                self._prev = PrevTree(tree, enabled=had_checkpoint)
                try:
                    self._walk()
                    self._drain(final=True)
                except BaseException:
                    # workers streaming a file wait for the walk to take their chunks:
                    # release them, and drop the jobs not started, before the pool joins
                    self._streams.reader.stop.set()
                    pool.shutdown(wait=False, cancel_futures=True)
                    self.writer.abort()
                    raise
                if self.opts.dry_run:
                    return None
                self.stats["pool"] = self.pool.name
                self.stats["problems"] = len(self.problems)
                stats = dict(self.stats)
                if self._xattrs_unread:
                    stats[XATTRS_UNREAD] = [os.fsdecode(p) for p in self._xattrs_unread]
                checkpoint = tree.finish(stats=stats)
        finally:
            self._known.close()
        try:
            write_catalog_volume(self.catalog, self.writer, checkpoint, self._spool)
        finally:
            self._spool.close()
        return checkpoint

    def _walk(self) -> None:
        items = scan(self.opts.sources, excludes=self.opts.excludes,
                     one_file_system=self.opts.one_file_system,
                     follow_symlinks=self.opts.follow_symlinks, known=self._known_object,
                     check_readable=False,  # the readers report a file they cannot open
                     own=self._own)
        for item in items:
            if isinstance(item, ScanProblem):
                self.problems.append(Problem(item.path, item.reason))
                if item.incomplete:
                    self._xattrs_unread.append(item.path)
                continue
            if isinstance(item, ScanNote):
                self.notes.append(Problem(item.path, item.reason))
                continue
            self.stats["entries"] += 1
            st = item.st
            if not (I64_MIN < st.st_mtime_ns < I64_MAX and I64_MIN < st.st_atime_ns < I64_MAX
                    and I64_MIN < st.st_ctime_ns < I64_MAX):
                self._times_beyond(item)
            if not self._unchanged(item):
                self._add(item)
            elif self._streams.active:
                self._pump_countdown -= 1
                if self._pump_countdown <= 0:
                    self._pump_countdown = PUMP_EVERY
                    self._streams.pump_all()
            self._report()
        self._submit_batch()

    def _times_beyond(self, item: ScanItem) -> None:
        """Name *item*, whose times the index cannot hold: it is backed up with them
        clamped (`stored_ns`), on every run, so the user can set them right."""
        st = item.st
        for what, ns in (("modification", st.st_mtime_ns), ("access", st.st_atime_ns),
                         ("change", st.st_ctime_ns)):
            if stored_ns(ns) != ns:
                edge = "2262-04-11" if ns > 0 else "1677-09-21"
                self.problems.append(Problem(item.path, (
                    f"its {what} time ({ns} ns from 1970) is beyond {edge}, as far as "
                    f"durafs records times: backed up as {edge}")))

    def _known_object(
        self, path: bytes, st: os.stat_result,
    ) -> tuple[dict[bytes, bytes], bytes | None] | None:
        """The xattrs and symlink target of *path* if it is the very object of the previous
        checkpoint with the same ctime (so the scan need not read them again), and that
        checkpoint has them all."""
        if path in self._reread_xattrs:
            return None
        prev = self._prev.version(path)
        if prev is None or (prev.ino, prev.dev, prev.ctime_ns, prev.mode) != (
                stored_int(st.st_ino), stored_int(st.st_dev), stored_ns(st.st_ctime_ns),
                stat.S_IMODE(st.st_mode)):
            return None
        if prev.type != TYPE_OF_FMT.get(stat.S_IFMT(st.st_mode)):
            return None
        return prev.xattr_dict(), prev.target

    def _add(self, item: ScanItem) -> None:
        """Take *item* into the pipeline. Only files being read or stored (and hard-linked
        files, which follow their group's first) wait in `_units`; the rest go to the tree
        at once, so a directory is always in it before anything inside it (files are
        leaves, and the TreeWriter needs a path's parent first)."""
        unit = Unit(self._entry(item))
        if item.type == "f":
            self._file(unit, item)
        if item.hardlink_key is None and not unit.skip and self._ready(unit):
            self._record(unit)
        else:
            self._units.append(unit)
        if len(self._jobs) >= 64 or not self._jobs or self._streams.active:
            self._drain(final=False)

    def _unchanged(self, item: ScanItem) -> bool:
        """Keep *item* as the very version it had in the previous checkpoint, if nothing
        about it changed (most of a later backup): no Entry, no unit, no comparison in the
        TreeWriter. A full catalog volume needs every Entry, so then this declines."""
        if self._spool.needs_kept:
            return False
        prev = self._prev.version(item.path)  # asked already by the scan: from its cache
        if (prev is None or (item.type == "f" and not self._trust_prev)
                or not same_as_before(item, prev)
                or (item.type == "f" and self._chunks.lost_content(prev))):
            return False
        if item.type == "f":
            self.stats["files"] += 1
            self.stats["bytes"] += item.st.st_size
            self.stats["unchanged_files"] += 1
        if not self.opts.dry_run:
            self._tree.keep(item.path)
        return True

    def _entry(self, item: ScanItem) -> Entry:
        return Entry.from_stat(
            item.path, item.st, uname=item.user or None, gname=item.group or None,
            target=item.target, xattrs=pack_xattrs(item.xattrs),
            hardlink_key=item.hardlink_key,
        )

    # -- files -----------------------------------------------------------------------

    def _file(self, unit: Unit, item: ScanItem) -> None:
        self.stats["files"] += 1
        self.stats["bytes"] += item.st.st_size
        entry = unit.entry
        if item.hardlink_key is not None and item.hardlink_key in self._links:
            unit.reading = False  # content comes from the group's first member
            return
        if item.hardlink_key is not None:
            self._links[item.hardlink_key] = unit
        prev = self._prev.version(item.path)
        if (prev is not None and self._trust_prev and prev.type == "f"
                and (prev.size, prev.mtime_ns, prev.ctime_ns, prev.ino, prev.dev)
                == (entry.size, entry.mtime_ns, entry.ctime_ns, entry.ino, entry.dev)
                and not self._chunks.lost_content(prev)):
            entry.chunks, entry.blake3 = prev.chunks, prev.blake3
            self.stats["unchanged_files"] += 1
            return
        self.stats["changed_files"] += 1
        if self.opts.dry_run:
            self.stats["bytes_to_read"] += entry.size
            return
        st = item.st
        sparse = st.st_blocks * 512 < st.st_size
        if st.st_size <= WHOLE_READ and not sparse:
            self._add_to_batch(unit, item)
        elif not sparse:
            self._submit_stream(unit, item)
        else:
            self._submit_batch()  # the workers get on with it while this thread reads
            self._read_file(unit, item)

    # -- whole files, read by the workers ---------------------------------------------

    def _add_to_batch(self, unit: Unit, item: ScanItem) -> None:
        unit.reading = True
        self._batch.append((unit, item))
        self._batch_bytes += item.st.st_size
        if len(self._batch) >= BATCH_FILES or self._batch_bytes >= BATCH_BYTES:
            self._submit_batch()

    def _submit_batch(self) -> None:
        if not self._batch:
            return
        units = [unit for unit, _ in self._batch]
        items = [item for _, item in self._batch]
        requests = [ReadRequest(item.path, item.st) for item in items]
        future: concurrent.futures.Future[list[FileRead]] | Done[list[FileRead]]
        number = self._batches
        self._batches += 1
        read = functools.partial(self._reader.read_batch, batch=number)
        if self._inline.wanted(self._batch_bytes):  # tiny files (see InlineReads)
            future = self._inline.read(read, requests)
        else:
            future = self._pool.submit(read, requests)
        self._jobs.append(BatchJob(units, items, future, self._batch_bytes, number))
        self._in_flight += self._batch_bytes
        self._batch, self._batch_bytes = [], 0
        while self._in_flight > IN_FLIGHT:
            self._store_next()

    def _store_batch(self, job: BatchJob) -> None:
        if not self._chunks.index_empty():  # a first backup's pool: nothing to ask
            self._chunks.look_up(job.cids())
        small = []
        for unit, item, read in zip(job.units, job.items, job.future.result(), strict=True):
            if not self._finish_read(unit, item, read):
                continue
            for offset, stored in read.pieces:
                self.stats["bytes_read"] += stored.size
                if stored.size <= PACK_CHUNK_MAX and len(read.pieces) == 1:
                    small.append((unit, stored, offset))
                else:
                    self._store_chunk(unit, stored, offset)
        # a pack's chunks one after another (the volume writer then adds the pack once),
        # and a chunk packed earlier in the batch before a reference to it
        for unit, stored, offset in small:
            self._store_chunk(unit, stored, offset)
        self._packer.release([stored.id for _, stored, _ in small], job.number)

    def _finish_read(self, unit: Unit, item: ScanItem, read: FileRead) -> bool:
        """Take a worker's read of *item* into its unit; False if it failed (reported)."""
        unit.reading = False
        if read.error is not None:
            self._fail(unit, item.path, read.error)
            return False
        assert read.st is not None
        counted = unit.entry.size
        if not same_content_stat(read.st, item.st):  # it changed, then held still
            item.st = read.st
            unit.entry = self._entry(item)
        if read.size is not None:  # a pseudo-file's status may not tell its size
            unit.entry.size = read.size
        self.stats["bytes"] += unit.entry.size - counted  # the size the checkpoint records
        unit.entry.blake3 = read.blake3
        return True

    def _encode(self, data: memoryview) -> StoredChunk:
        """The stored form of one chunk (on a worker thread)."""
        if len(data) < INLINE_MAX:
            return codec_for_thread(self.keys.id_key).encode(data)
        return self._known.encode(data)

    def _stored_by_run(self, cid: bytes) -> bool:
        """Whether this run has stored *cid* (asked on worker threads: two dict look-ups,
        each atomic; a miss while a volume is committed only costs a copy)."""
        return cid in self.writer.open or cid in self._chunks.ids

    # -- large files, streamed by a worker ------------------------------------------

    def _submit_stream(self, unit: Unit, item: ScanItem) -> None:
        unit.reading = True
        if self._streams.full():
            self._streams.wait_turn(unit, item)
            return
        self._submit_batch()
        self._streams.start(unit, item)

    def _store_streamed(self, unit: Unit, stored: StoredChunk, offset: int) -> None:
        self.stats["bytes_read"] += stored.size
        self._trimmer.add(stored.size)
        self._store_chunk(unit, stored, offset)

    # -- sparse files, read by this thread ------------------------------------------

    def _read_file(self, unit: Unit, item: ScanItem) -> None:
        for attempt in range(READ_ATTEMPTS):
            unit.attempt, unit.pieces, unit.reading = attempt, [], True
            try:
                unit.entry.blake3, st, size = self._sparse.read_once(
                    item.path, item.st, lambda data, offset: self._submit(unit, data, offset))
            except OSError as exc:
                self._fail(unit, item.path, exc.strerror or str(exc))
                return
            if same_content_stat(st, item.st):
                self.stats["bytes"] += size - unit.entry.size  # the size the checkpoint records
                unit.entry.size = size
                unit.reading = False
                return
            self.stats["bytes"] += st.st_size - unit.entry.size
            item.st = st
            unit.entry = self._entry(item)
        self._fail(unit, item.path, f"changed while being read ({READ_ATTEMPTS} attempts)")

    def _fail(self, unit: Unit, path: bytes, reason: str) -> None:
        self.problems.append(Problem(path, reason))
        unit.skip, unit.reading = True, False
        unit.attempt += 1
        # not in the checkpoint, so not in its counts (`durafs checkpoints`)
        self.stats["files"] -= 1
        self.stats["changed_files"] -= 1
        self.stats["bytes"] -= unit.entry.size

    def _submit(self, unit: Unit, data: bytes | memoryview, offset: int) -> None:
        self.stats["bytes_read"] += len(data)
        future: concurrent.futures.Future[StoredChunk] | Done[StoredChunk]
        if len(data) < INLINE_MAX:
            # the tail of a sparse region: not worth a thread hop
            future = Done(codec_for_thread(self.keys.id_key).encode(data))
        else:
            future = self._pool.submit(self._known.encode, data)
        self._jobs.append(ChunkJob(unit, unit.attempt, future, offset, len(data)))
        unit.outstanding += 1
        self._in_flight += len(data)
        while self._in_flight > IN_FLIGHT:
            self._store_next()

    # -- storing and recording -------------------------------------------------------

    def _store_next(self) -> None:
        """Store the oldest job that is not a file still streaming, waiting for it. Streams
        go at their workers' pace and are pumped meanwhile: the walk must never wait for a
        large file while a worker has finished other work (and sits idle)."""
        index = self._next_job()
        if index is None:  # only files streaming: wait for the oldest to end
            head = self._jobs.popleft()
            assert isinstance(head, StreamJob)
            while not head.finished:
                self._streams.pump_all()
                self._streams.pump(head, wait=STREAM_POLL)
            return
        job = self._jobs[index]
        while self._streams.active and not job.future.done():
            self._streams.pump_all()
            pending: Any = job.future  # not a Done: that is always done
            concurrent.futures.wait([pending], timeout=STREAM_POLL)
        del self._jobs[index]  # by position: jobs compare by value
        self._in_flight -= job.size
        self._trimmer.add(job.size)
        if isinstance(job, BatchJob):
            self._store_batch(job)
            return
        if isinstance(job, StreamJob):
            return  # finished: its chunks were stored as they came
        stored = job.future.result()
        job.unit.outstanding -= 1
        if job.attempt == job.unit.attempt:  # else a superseded read of a changed file
            self._store_chunk(job.unit, stored, job.offset)

    def _next_job(self) -> int | None:
        """The position of the oldest job that is not a file still streaming."""
        for index, job in enumerate(self._jobs):
            if not isinstance(job, StreamJob) or job.finished:
                return index
        return None

    def _store_chunk(self, unit: Unit, stored: StoredChunk, offset: int) -> None:
        cid, size = stored.id, stored.size
        known = self._known.found(cid) if not stored.frame else None
        ids = self._chunks.ids
        if cid not in ids and cid not in self.writer.open:
            found = known if known is not None else self._chunks.find(cid)
            if found is None and not stored.frame and size:
                # a reference: stored before, perhaps by a backup of another plan into
                # the pool since this run last asked the index
                found = self._chunks.find_now(cid)
            if found is not None:
                ids[cid] = found
            else:
                if not stored.frame and size:
                    # a reference to a chunk the index had, or an earlier batch stored:
                    # only a backup writes chunks, none removes them, so never
                    raise CatalogError(f"chunk {cid.hex()[:16]} left the index during the run")
                ids.update(self.writer.add_chunk(stored, [(unit.entry.path, offset)]))
                self.stats["chunks_new"] += 1
                self.stats["bytes_new"] += size
        unit.pieces.append((offset, cid, size))

    def _prefetch(self) -> None:
        """One dedup query for the finished chunks at the queue's head (one per chunk costs
        more than hashing a small file)."""
        if self._chunks.index_empty():
            return
        cids: list[bytes] = []
        for job in self._jobs:
            if not job.future.done() or len(cids) >= PREFETCH:
                break
            cids += job.cids()
        self._chunks.look_up(cids)

    def _drain(self, *, final: bool) -> None:
        """Store finished chunks and pass ready units to the TreeWriter."""
        if final:
            self._submit_batch()
        # past MAX_WAITING_UNITS the walk waits for the large files: entries after them
        # cannot be recorded before them, and they must not pile up in memory
        self._streams.pump_all(until_done=final or len(self._units) > MAX_WAITING_UNITS)
        self._prefetch()
        while self._jobs:
            index = self._next_job()
            if not final and (index is None or not self._jobs[index].future.done()):
                break
            self._store_next()
        if len(self._units) > MAX_WAITING_UNITS or final:
            self._chunks.ids.update(self.writer.commit())
        self._record_ready()
        if len(self._chunks.ids) > ID_CACHE:
            self._chunks.keep_only({cid for unit in self._units for _, cid, _ in unit.pieces})

    def _record_ready(self) -> None:
        """Pass the units at the head of the queue whose chunks are all committed on to
        the TreeWriter (in walk order: the first still waiting stops it)."""
        while self._units and self._ready(self._units[0]):
            unit = self._units.popleft()
            if not unit.skip:
                self._record(unit)

    def _ready(self, unit: Unit) -> bool:
        if unit.reading or unit.outstanding:
            return False
        ids = self._chunks.ids
        return all(cid in ids for _, cid, _ in unit.pieces)

    def _record(self, unit: Unit) -> None:
        entry = unit.entry
        pieces = None
        if entry.type == "f" and entry.chunks is None:
            leader = self._links.get(entry.hardlink_key) if entry.hardlink_key else None
            if leader is not None and leader is not unit:
                if leader.skip:
                    self.problems.append(Problem(entry.path, "hard link to a file not backed up"))
                    self.stats["files"] -= 1  # not in the checkpoint, so not in its counts
                    self.stats["bytes"] -= entry.size
                    return
                # One inode: the name takes the status the group's content was read with
                # (its own lstat may be from before or after a change the read saw).
                self.stats["bytes"] += leader.entry.size - entry.size
                entry = unit.entry = replace(leader.entry, path=entry.path)
            else:
                ids = self._chunks.ids
                entry.chunks = pack_pieces((o, ids[c], s) for o, c, s in unit.pieces)
                pieces = unit.pieces  # read now: the spool needs no look-up of their ids
        if not self.opts.dry_run:
            kept = self._tree.add(entry)
            leader = self._links.get(entry.hardlink_key) if entry.hardlink_key else None
            link = leader.entry.path if leader is not None and leader is not unit else None
            self._spool.add(entry, link, kept=kept, pieces=pieces)

    # -- odds and ends ---------------------------------------------------------------

    def _checkpoint_name(self, plan: str) -> str:
        base = time.strftime("%Y-%m-%dT%H%M%SZ", time.gmtime())
        name, n = base, 1
        while self.catalog.checkpoint(plan, name) is not None:
            n += 1
            name = f"{base}.{n}"
        return name

    def _run_hook(self, command: str | None, what: str, *, fatal: bool) -> None:
        if not command or self.opts.dry_run:  # a dry run changes nothing, hooks neither
            return
        failure = run_hook(command, what)
        if failure is None:
            return
        if fatal:
            raise UsageError(failure)
        self.problems.append(Problem(b"(" + socket.gethostname().encode() + b")", failure))

    def _post_hook_after_failure(self, plan: PlanRow) -> None:
        """The post-backup hook after a failure or an interrupt that ends the run: its own
        failure is told on the spot (the run's failure is the one that sets the exit
        status). A second Ctrl-C ends it as it ends any hook."""
        command = plan.config.get("post_hook")
        if not command or self.opts.dry_run:
            return
        failure = run_hook(command, "post-backup hook")
        if failure is not None:
            self._say(failure)

    def _report(self, *, force: bool = False) -> None:
        self._reporter.report(force=force)
