"""Verify: the index against the media, and optionally every stored byte.

Structure (always): the index file itself is sound (SQLite's quick_check and foreign key
check); every volume the index records is on its medium with the recorded
size, and its manifest and seal read back; a delta catalog volume's base is recorded too,
on the same medium. Data (``--read-data``): every byte of every volume is read front to
back and checked (docs/FORMAT.md §3.4), and a chunk the scan did not find sound is read at
its recorded offset and checked against its id, so damage is named chunk by chunk, with
every plan/checkpoint/path it hurts; everything else stays restorable. A random sample
(``--read-data-subset``) reads only the chunks drawn. A volume that cannot be opened at
all hurts every chunk it holds: all are named, whether data is read or not.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from durafs.engine.access import VolumeAccess
from durafs.engine.catalogspool import catalog_volume_in_use
from durafs.engine.poolwriter import open_medium
from durafs.engine.progress import Reporter
from durafs.errors import (
    DurafsError,
    MediumOfflineError,
    UnsupportedVersionError,
    UsageError,
    VolumeMissingError,
)
from durafs.format.catalog import read_checkpoint
from durafs.format.reader import VolumeReader
from durafs.format.scanner import ScanDamage, ScannedChunk, scan_reader
from durafs.index.catalog import Catalog
from durafs.index.db import REBUILD
from durafs.index.rows import ChunkRow, VolumeRow, unpack_pieces

#: File versions read at once while naming the paths damage hurts.
NAME_PAGE = 10_000
_FILE_VERSIONS = (
    "SELECT v.id, v.path_id, v.plan_id, v.first_seq, coalesce(v.last_seq, p.last_seq),"
    " v.chunks, p.name FROM versions v JOIN plans p ON p.id = v.plan_id"
    " WHERE v.id > ? AND v.type = 'f' AND v.chunks IS NOT NULL ORDER BY v.id LIMIT ?")


@dataclass
class Damage:
    volume: str
    chunk: str
    reason: str
    paths: list[str] = field(default_factory=list)


@dataclass
class VerifyResult:
    volumes: int = 0
    chunks_read: int = 0
    offline: list[str] = field(default_factory=list)
    damage: list[Damage] = field(default_factory=list)
    structure: list[str] = field(default_factory=list)
    #: Volumes missing from their online media (in *structure* too while needed)...
    lost: list[str] = field(default_factory=list)
    #: ... of which nothing needs any more (their chunks or trees were written again).
    unneeded: list[str] = field(default_factory=list)
    #: Volume files on online media that the index does not record (no damage).
    unknown: list[str] = field(default_factory=list)
    #: Damaged frames no chunk row points at any more (a backup stored them again): no
    #: checkpoint is hurt, so no damage, but the bytes on the medium are as they are.
    frames_unneeded: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.damage and not self.structure


class Verify:
    def __init__(
        self, catalog: Catalog, access: VolumeAccess, *, fraction: float = 0.0,
        progress: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.catalog = catalog
        self.access = access
        self.fraction = fraction
        self.progress = progress
        self.result = VerifyResult()
        self._reporter = Reporter(None)
        self._bad: dict[int, Damage] = {}
        self._sound: set[int] = set()  # chunks read and found what their ids say
        self._bad_in: dict[int, int] = {}  # damaged chunk -> the volume it was read from
        self._in_lost: set[int] = set()  # chunks not to note as damaged (see _unreadable)
        self._lost_ids: set[int] = set()

    def run(self, pool: str | None) -> VerifyResult:
        pool_id = None
        if pool is not None:
            row = self.catalog.pool(pool)
            if row is None:
                raise UsageError(f"no pool named {pool!r}")
            pool_id = row.id
        damage = self.catalog.db.damage()
        if damage:  # nothing the index says can be trusted: the media are what counts
            where = self.catalog.db.path
            self.result.structure += [f"the index {where} is damaged: {d}" for d in damage]
            self.result.structure.append(f"the index {where}: {REBUILD}")
            return self.result
        volumes = self.catalog.volumes(pool_id=pool_id)
        self._lost_ids = self.catalog.lost_volume_ids()
        self._reporter = Reporter(self.progress, expected_count=len(volumes))
        for volume in volumes:
            self._volume(volume)
            self._reporter.add(volumes=1)
        self._reporter.report(force=True)
        self._unknown_volumes(pool_id, {v.name for v in volumes})
        self._note_damage()
        if self._bad:
            self._name_paths()
        return self.result

    def _unknown_volumes(self, pool_id: int | None, known: set[str | None]) -> None:
        """Volume files on the online media that the index does not record: a volume a
        killed backup wrote (the next backup adopts it), or one put there by hand. Named,
        left as they are, no damage."""
        for row in self.catalog.media(pool_id):
            try:
                medium = open_medium(row)
                found = medium.list_volumes() if medium.is_online() else []
            except (OSError, DurafsError):
                continue  # offline, or not readable: its volumes are reported already
            self.result.unknown += [f"{row.label}: {v.name}" for v in found
                                    if v.name not in known]

    def _note_damage(self) -> None:
        """Note in the index the chunks found damaged, and those found sound again: the
        next backup stores the damaged ones again from the sources that still have them
        (see `damaged_chunks` in schema.sql). Chunks of a lost volume are noted with it;
        a read-only index is left as it is."""
        if self.catalog.db.readonly:
            return
        with self.catalog.db.transaction():
            # a row a backup moved meanwhile (it stored the chunk again) is not damaged
            self.catalog.note_damaged((i, self._bad_in[i])
                                      for i in self._bad.keys() - self._in_lost)
            healed = self.catalog.damaged_chunk_ids(list(self._sound))
            self.catalog.set_chunks_damaged(healed, False)

    def _volume(self, volume: VolumeRow) -> None:
        name = volume.name or volume.uuid
        reader: VolumeReader | None = None
        try:
            try:
                reader = self.access.reader(volume)
            except VolumeMissingError:
                self._lost(volume, True)
                self.result.lost.append(name)
                if not self._needed(volume):
                    self.result.unneeded.append(name)
                    return
                raise
            self._lost(volume, False)
            self.result.volumes += 1  # reached: checked, whatever is found
            if reader.plain_size != volume.plain_size:
                self.result.structure.append(f"{name}: size differs from the index")
            reader.read_manifest()
            if volume.kind == "catalog":
                self._catalog_base(volume, name, reader)
        except MediumOfflineError as exc:
            self.result.offline.append(f"{name}: {exc}")
            return
        except (OSError, DurafsError) as exc:
            self.result.structure.append(f"{name}: {exc}")
            if reader is None:  # not even opened: no chunk in it can be read
                self._unreadable(volume, name, exc)
            elif self.fraction:
                self._read_chunks(volume, name, scan_damage=False)  # the damage is named
            return
        if self.fraction:
            self._read_chunks(volume, name, scan_damage=True)

    def _unreadable(self, volume: VolumeRow, name: str, exc: Exception) -> None:
        """A volume that cannot be opened (gone from its medium, another volume's file in
        its place, a damaged header) hurts every chunk it holds: each is named with the
        paths it hurts, though no data is read (without --read-data, and beyond the share
        of them a --read-data-subset sample would have read)."""
        for chunk in self._chunks_of(volume):
            self._hurt(chunk, volume, name, exc)
            if isinstance(exc, VolumeMissingError | UnsupportedVersionError):
                # noted as lost instead; or written by a newer durafs: not damaged
                self._in_lost.add(chunk.id)

    def _hurt(self, chunk: ChunkRow, volume: VolumeRow, name: str, exc: Exception) -> None:
        """Note *chunk* damaged, as read from *volume* (named *name* in the report)."""
        self._bad[chunk.id] = Damage(name, chunk.cid.hex(), str(exc))
        self._bad_in[chunk.id] = volume.id

    def _lost(self, volume: VolumeRow, lost: bool) -> None:
        """Note in the index whether *volume* is missing from its medium: the next
        backup stores its chunks again from the sources that still have them (see
        `lost_volumes` in schema.sql). A read-only index is left as it is."""
        if self.catalog.db.readonly or (volume.id in self._lost_ids) == lost:
            return
        with self.catalog.db.transaction():
            self.catalog.set_volume_lost(volume.id, lost)

    def _needed(self, volume: VolumeRow) -> bool:
        """Whether anything still needs the lost *volume*: a data volume some chunk is
        still in (none, once backups stored them all again), a catalog volume the index
        names as a checkpoint's (none, once a backup wrote those again)."""
        if volume.kind == "data":
            return self.catalog.volume_has_chunks(volume.id)
        return catalog_volume_in_use(self.catalog, volume.uuid)

    def _catalog_base(self, volume: VolumeRow, name: str, reader: VolumeReader) -> None:
        """A delta catalog volume is read together with its base (docs/FORMAT.md §4): the
        base must be in the index and on the same medium (each medium stands alone)."""
        base_ref = read_checkpoint(reader).base
        if base_ref is None:
            return
        base = self.catalog.volume_by_uuid(base_ref.volume_id)
        if base is None:
            self.result.structure.append(
                f"{name}: its base catalog volume {base_ref.volume_id} (checkpoint "
                f"{base_ref.checkpoint}) is not in the index")
        elif base.medium_id != volume.medium_id:
            self.result.structure.append(
                f"{name}: its base catalog volume {base.name or base.uuid} is on another medium")

    def _read_chunks(self, volume: VolumeRow, name: str, *, scan_damage: bool) -> None:
        chunks = self._chunks_of(volume)
        if self.fraction < 1:
            chunks = [c for c in chunks if random.random() < self.fraction]
        try:
            reader = self.access.reader(volume)
        except (OSError, DurafsError) as exc:
            for chunk in chunks:
                self._hurt(chunk, volume, name, exc)
            return
        sound, stopped, frames = (self._scan(volume, reader) if self.fraction >= 1
                                  else ({}, None, {}))
        hurt = False
        hurt_frames = set()
        for chunk in chunks:
            self.result.chunks_read += 1
            if sound.get((chunk.offset, chunk.fpos)) == (chunk.cid, chunk.length):
                self._sound.add(chunk.id)
                continue  # the scan read and checked it
            self._reporter.add(bytes=chunk.size, bytes_read=chunk.size)
            try:
                reader.read_chunk(chunk.offset, chunk.length, chunk.size, chunk.cid, chunk.fpos)
            except (OSError, DurafsError) as exc:
                self._hurt(chunk, volume, name, exc)
                hurt = True
                hurt_frames.add(chunk.offset)
            else:
                self._sound.add(chunk.id)
        for offset, message in frames.items():
            if offset not in hurt_frames:  # a pack: what rows point at in it reads sound
                self.result.frames_unneeded.append(
                    f"{message} (in a pack; the chunks in it that checkpoints use read "
                    "sound: the damage is in copies of chunks stored elsewhere too)")
        if stopped is not None and scan_damage:
            healed = (volume.kind == "data" and not hurt
                      and _in_a_healed_member(reader, stopped.offset, {c.offset for c in chunks}))
            self._where_the_scan_stopped(name, stopped.message, healed)

    def _where_the_scan_stopped(self, name: str, message: str, healed: bool) -> None:
        """The damage that stopped a scan (a damaged age chunk, a frame whose blocks do
        not hold together, a tar header) is damage, unless *healed*: it lies in the data
        of a member with frames a backup stored again, and every chunk of the volume reads
        sound one by one. Then only the bytes on the medium are hurt, which durafs reads
        around but `age -d` or `tar` by hand do not."""
        if not healed:
            self.result.structure.append(f"{name}: {message}")
        else:
            self.result.frames_unneeded.append(
                f"{name}: {message} (no checkpoint needs what is there; by hand, `age -d` "
                "and `tar` stop at it)")

    def _scan(
        self, volume: VolumeRow, reader: VolumeReader,
    ) -> tuple[dict[tuple[int, int], tuple[bytes, int]], ScanDamage | None, dict[int, str]]:
        """Every byte of the volume, front to back (docs/FORMAT.md §3.4): tar headers,
        padding, end blocks, every member against its manifest hash, the manifest against
        the seal, every frame against the id of what it holds. Returns (id, length) of each
        chunk found sound, by (offset, fpos), and what stopped the scan if it stopped at damage
        (the chunks it did not reach are then read one by one), and the damaged frames that
        chunk rows point at (offset -> message). A frame damaged where its blocks still
        hold together does not stop it."""
        sound: dict[tuple[int, int], tuple[bytes, int]] = {}
        stopped: ScanDamage | None = None
        needed: set[int] | None = None
        frames: dict[int, str] = {}
        for event in scan_reader(reader):
            if isinstance(event, ScannedChunk):
                sound[(event.offset, event.fpos)] = (event.id, event.length)
                self._reporter.add(bytes=event.size, bytes_read=event.size)
            elif isinstance(event, ScanDamage) and event.frame:
                # a damaged frame hurts its chunk alone, which is read on its own (and named
                # as damage) if a row still points here; else a backup stored it again
                if needed is None:
                    needed = {c.offset for c in self._chunks_of(volume)}
                if event.offset not in needed:
                    self.result.frames_unneeded.append(event.message)
                else:
                    frames[event.offset] = event.message
            elif isinstance(event, ScanDamage):
                stopped = event
        return sound, stopped, frames

    def _chunks_of(self, volume: VolumeRow) -> list[ChunkRow]:
        ids = [r[0] for r in self.catalog.db.query(
            "SELECT id FROM chunks WHERE volume_id = ? ORDER BY offset, fpos", (volume.id,))]
        found = self.catalog.chunk_by_rowid(ids)
        return [found[i] for i in ids]

    def _name_paths(self) -> None:
        """Every plan/checkpoint/path whose content uses a damaged chunk (a full scan of
        the file versions, a page at a time: damage is rare, and this keeps the index free
        of a reverse map)."""
        names = {(c.plan_id, c.seq): c.name for c in self.catalog.checkpoints()}
        after = 0
        while rows := self.catalog.db.query(_FILE_VERSIONS, (after, NAME_PAGE)):
            after = rows[-1][0]
            for _id, path_id, plan_id, first, last, blob, plan in rows:
                hit = {rid for _, rid, _ in unpack_pieces(blob)} & self._bad.keys()
                if not hit:
                    continue
                path = os.fsdecode(self.catalog.path_of(path_id))
                for seq in range(first, last + 1):
                    name = names.get((plan_id, seq))
                    for rid in hit if name is not None else ():
                        self._bad[rid].paths.append(f"{plan}/{name}{path}")
        self.result.damage = list(self._bad.values())


def _in_a_healed_member(reader: VolumeReader, offset: int, needed: set[int]) -> bool:
    """Whether *offset*, where a scan stopped, starts the data of a member holding a frame
    no chunk row points at any more (*needed*: the offsets rows point at): a frame a
    backup stored again after verify found it damaged."""
    try:
        entries = reader.read_manifest().chunks
    except (OSError, DurafsError):
        return False
    return any(e.offset - e.member_offset == offset and e.offset not in needed
               for e in entries)

