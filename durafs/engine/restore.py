"""Restore a checkpoint or a subtree to a directory, with everything the source had.

Three passes: (1) create every node (directories, empty files at their size, symlinks,
FIFOs, devices) and collect the chunks files need; (2) read chunks in medium and volume
order — one sequential pass over each volume, each chunk checked against its id — and
write them at their file offsets (holes stay holes); (3) hard links, then metadata, with
directories last and deepest first so their times survive their children.
"""

from __future__ import annotations

import collections
import concurrent.futures
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from durafs.engine.access import VolumeAccess
from durafs.engine.catalogvol import to_tree_entry
from durafs.engine.fsmeta import apply_metadata, at_path, make_node
from durafs.errors import DurafsError, UsageError
from durafs.format.catalog import TreeEntry
from durafs.index.catalog import Catalog
from durafs.index.rows import CheckpointRow, VersionRow, VolumeRow

#: Chunks smaller than this are read and written on the restoring thread.
INLINE_MAX = 256 * 1024


@dataclass
class RestoreResult:
    files: int = 0
    bytes: int = 0
    problems: list[str] = field(default_factory=list)


@dataclass(order=True)
class _Job:
    medium_id: int
    volume_seq: int
    offset: int
    volume_id: int = field(compare=False)
    length: int = field(compare=False)
    size: int = field(compare=False)
    cid: bytes = field(compare=False)
    dest: bytes = field(compare=False)
    file_offset: int = field(compare=False)


def parse_spec(catalog: Catalog, spec: str) -> tuple[CheckpointRow, bytes]:
    """'PLAN/CHECKPOINT[/PATH]' → (checkpoint, absolute path inside it)."""
    parts = spec.split("/", 2)
    if len(parts) < 2 or not parts[0] or not parts[1]:
        raise UsageError(f"{spec!r}: expected PLAN/CHECKPOINT[/PATH]")
    checkpoint = catalog.checkpoint(parts[0], parts[1])
    if checkpoint is None:
        raise UsageError(f"no checkpoint {parts[1]!r} in plan {parts[0]!r}")
    path = b"/" + os.fsencode(parts[2]).strip(b"/") if len(parts) == 3 else b"/"
    return checkpoint, path


class Restore:
    """Restores one subtree of one checkpoint to *target*."""

    def __init__(
        self, catalog: Catalog, access: VolumeAccess, *, overwrite: bool = False,
        progress: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.catalog = catalog
        self.access = access
        self.overwrite = overwrite
        self.progress = progress
        self.result = RestoreResult()
        self.is_root = os.geteuid() == 0
        self._volumes: dict[int, VolumeRow | None] = {}

    def run(self, checkpoint: CheckpointRow, path: bytes, target: bytes) -> RestoreResult:
        plan = self.catalog.plan(checkpoint.plan)
        assert plan is not None
        top = self.catalog.resolve(plan.id, checkpoint.seq, path)
        if top is None:
            raise UsageError(f"{os.fsdecode(path)} is not in {checkpoint.plan}/{checkpoint.name}")
        os.makedirs(target, exist_ok=True)
        strip = len(path.rstrip(b"/")) if path != b"/" else 0
        nodes: list[tuple[bytes, TreeEntry]] = []
        jobs: list[_Job] = []
        leaders: dict[int, bytes] = {}
        for src, version in self.catalog.walk(plan.id, checkpoint.seq, top.path_id):
            dest = target + (src[strip:] if strip else src).rstrip(b"/")
            dest = dest or target
            entry = self._node(src, dest, version, leaders, jobs)
            if entry is not None:
                nodes.append((dest, entry))
        self._fill(sorted(jobs))
        self._finish(nodes, target)
        return self.result

    def _node(
        self, src: bytes, dest: bytes, version: VersionRow, leaders: dict[int, bytes],
        jobs: list[_Job],
    ) -> TreeEntry | None:
        entry = to_tree_entry(self.catalog, src, version, leaders, chunks=False)
        try:
            if entry.type == "d":
                make_node(dest, entry)
                return entry
            with at_path(dest) as (dir_fd, name):
                if _lexists(name, dir_fd):
                    if not self.overwrite:
                        raise FileExistsError("exists (use --overwrite)")
                    os.unlink(name, dir_fd=dir_fd)
            if entry.type == "f":
                self._file(dest, entry, version, jobs)
            elif entry.type != "h":
                make_node(dest, entry)
        except (OSError, DurafsError) as exc:
            self._problem(dest, exc)
            return None
        return entry

    def _file(self, dest: bytes, entry: TreeEntry, version: VersionRow, jobs: list[_Job]) -> None:
        with at_path(dest) as (dir_fd, name):
            fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600, dir_fd=dir_fd)
        try:
            os.ftruncate(fd, entry.size)
        finally:
            os.close(fd)
        self.result.files += 1
        self.result.bytes += entry.size
        for piece in self.catalog.file_chunks(version):
            chunk = piece.chunk
            volume = self._volumes.get(chunk.volume_id)
            if volume is None:
                volume = self._volumes[chunk.volume_id] = self.catalog.volume(chunk.volume_id)
            assert volume is not None
            jobs.append(_Job(volume.medium_id, volume.seq, chunk.offset, volume.id,
                             chunk.length, chunk.size, chunk.cid, dest, piece.file_offset))

    def _fill(self, jobs: list[_Job]) -> None:
        """Read and write every chunk: small ones on this thread (a thread hop costs more
        than they do), large ones on two workers (decryption and zstd release the GIL)."""
        with concurrent.futures.ThreadPoolExecutor(2, "durafs-restore") as pool:
            results: collections.deque[tuple[_Job, concurrent.futures.Future[None]]] = (
                collections.deque())
            for job in jobs:
                volume = self._volumes[job.volume_id]
                if job.size < INLINE_MAX:
                    try:
                        self._write_chunk(volume, job)
                    except (OSError, DurafsError) as exc:
                        self._problem(job.dest, exc)
                    continue
                results.append((job, pool.submit(self._write_chunk, volume, job)))
                if len(results) > 8:
                    self._collect(results.popleft())
            for item in results:
                self._collect(item)

    def _write_chunk(self, volume: Any, job: _Job) -> None:
        reader = self.access.reader(volume)
        data = reader.read_chunk(job.offset, job.length, job.size, job.cid)
        with at_path(job.dest) as (dir_fd, name):
            fd = os.open(name, os.O_WRONLY, dir_fd=dir_fd)
        try:
            os.pwrite(fd, data, job.file_offset)
        finally:
            os.close(fd)

    def _collect(self, item: tuple[_Job, concurrent.futures.Future[None]]) -> None:
        job, future = item
        try:
            future.result()
        except (OSError, DurafsError) as exc:
            self._problem(job.dest, exc)

    def _finish(self, nodes: list[tuple[bytes, TreeEntry]], target: bytes) -> None:
        links = {e.path: d for d, e in nodes if e.type == "f"}
        dirs = []
        for dest, entry in nodes:
            try:
                if entry.type == "h":
                    assert entry.link is not None
                    _link(links[entry.link], dest)
                    continue
                if entry.type == "d":
                    dirs.append((dest, entry))
                    continue
                apply_metadata(dest, entry, is_root=self.is_root)
            except (OSError, KeyError, DurafsError) as exc:
                self._problem(dest, exc)
        for dest, entry in reversed(dirs):
            try:
                apply_metadata(dest, entry, is_root=self.is_root)
            except OSError as exc:
                self._problem(dest, exc)

    def _problem(self, path: bytes, exc: BaseException) -> None:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        self.result.problems.append(f"{os.fsdecode(path)}: {reason}")


def _lexists(name: bytes, dir_fd: int | None) -> bool:
    try:
        os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True


def _link(existing: bytes, new: bytes) -> None:
    """os.link for paths of any length."""
    with at_path(existing) as (src_fd, src), at_path(new) as (dst_fd, dst):
        os.link(src, dst, src_dir_fd=src_fd, dst_dir_fd=dst_fd, follow_symlinks=False)
