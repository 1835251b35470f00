"""Writing volumes into a pool: choosing a medium, rotating volumes, recording them.

A volume's chunks enter the index only after the volume is committed (fsynced and renamed
on its medium): a run killed at any moment leaves the index describing only what is safely
stored, and the next run stores just what is missing.

A data volume is started with the room its medium has then; if something else fills the
medium meanwhile, the volume moves on to another medium of the pool (`MovingSink`).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Sequence

from durafs.errors import MediumFullError, MediumOfflineError, MediumReadOnlyError
from durafs.format.frames import StoredChunk
from durafs.format.keys import CatalogKeys
from durafs.format.writer import VolumeWriter, chunk_growth, new_header
from durafs.index.catalog import Catalog
from durafs.index.rows import MediumRow, NewChunk, PoolRow, VolumeRow
from durafs.media.base import Medium, MediumStatus, StoredVolume, VolumeSink
from durafs.media.directory import DirectoryMedium

log = logging.getLogger(__name__)

#: A medium with less room than this takes no new volume (it is marked full).
MIN_VOLUME = 1024 * 1024
#: Room kept free beyond what a volume takes (rounding, the file system's own needs).
SLACK = 64 * 1024
#: The least capacity a medium may be given: a medium takes a new volume only with room
#: for MIN_VOLUME and SLACK (`_choose_medium`), besides its own files (its marker and keys
#: file, a few hundred bytes: another SLACK leaves room for long names).
MIN_CAPACITY = MIN_VOLUME + 2 * SLACK
#: At most what a volume takes before its first chunk (tar headers, the volume header).
FRESH_VOLUME = 64 * 1024
#: At most what age adds before the payload (header, recipient stanzas, nonce).
AGE_HEADER = 4096
POLL_SECONDS = 1.0


def open_medium(row: MediumRow) -> Medium:
    """The driver object for a medium row."""
    if row.kind != "dir":
        raise MediumOfflineError(f"medium {row.label}: kind {row.kind!r} is not supported yet")
    return DirectoryMedium(row.path or "", row.capacity, label=row.label, medium_id=row.uuid)


def describe_offline(row: MediumRow) -> str:
    """'medium HDD-001 (last seen at /mnt/x, kept at shelf 2)' for messages and requests."""
    where = f"last seen at {row.path}" if row.path else "never seen"
    if row.location:
        where += f", kept at {row.location}"
    return f"medium {row.label} of pool {row.pool} ({where})"


def describe_unavailable(row: MediumRow, status: MediumStatus) -> str:
    """Why a medium that is not online cannot be used, for errors and reports: it is
    offline, or something else is at its place (a damaged marker, another medium)."""
    if status.absent:
        return f"{describe_offline(row)} is offline"
    return f"{describe_offline(row)} cannot be used: {status.reason}"


def waiting_for(row: MediumRow, status: MediumStatus) -> str:
    """What a run waiting for a medium tells the user: bring it online, or what is wrong
    with what is at its place (the run still waits: the right disk may come there)."""
    if status.absent:
        return f"waiting for {describe_offline(row)}: bring it online"
    return f"waiting for {describe_offline(row)}: {status.reason}"


class PoolWriter:
    """Feeds chunks into volumes of one pool and records each volume as it is committed.

    *on_wait* is told (once per medium) when the run waits for a medium to come online;
    *media_timeout* (seconds, None = forever) bounds that wait.
    """

    def __init__(
        self,
        catalog: Catalog,
        keys: CatalogKeys,
        pool: PoolRow,
        *,
        on_wait: Callable[[str], None] = log.warning,
        media_timeout: float | None = None,
    ) -> None:
        self.catalog = catalog
        self.keys = keys
        self.pool = pool
        self.on_wait = on_wait
        self.media_timeout = media_timeout
        self.open: dict[bytes, NewChunk] = {}
        self._sink: VolumeSink | None = None
        self._writer: VolumeWriter | None = None
        self._medium_row: MediumRow | None = None
        self._limit = 0
        #: media this run found full: not taken again before the next run
        self._filled: set[int] = set()
        #: media this run found refusing writes (read-only): passed over until the next run
        self._read_only: set[int] = set()
        self.volumes_written = 0
        self.bytes_stored = 0

    # -- data ------------------------------------------------------------------------

    def add_chunk(
        self, stored: StoredChunk, files: Sequence[tuple[bytes, int]]
    ) -> dict[bytes, int]:
        """Store one new chunk; returns cid -> chunks.id of any volume committed meanwhile."""
        committed: dict[bytes, int] = {}
        bound = VolumeWriter.chunk_record_bound(files)
        if self._writer is not None and not self._fits(
                self._writer, self._writer.growth(stored, bound)):
            committed = self.commit()
        writer = self._writer
        if writer is None:
            # a chunk bigger than the room left on a medium goes to one with room for it
            extra = chunk_growth(stored, bound, pack_added=False)
            writer = self._start("data", need=self._stored(FRESH_VOLUME + extra))
        offset = writer.add_chunk(stored, files, bound)
        self.open[stored.id] = NewChunk(stored.id, offset, len(stored.frame), stored.size,
                                        stored.raw, stored.fpos)
        return committed

    def commit(self) -> dict[bytes, int]:
        """Finish the open volume, if any, and record it and its chunks."""
        if self._writer is None or self._sink is None or self._medium_row is None:
            return {}
        summary = self._writer.finish()
        stored = self._sink.commit()
        left: list[MediumRow] = []
        if isinstance(self._sink, MovingSink):  # it may have moved on from a full medium
            self._medium_row, left = self._sink.row, self._sink.left
            self._tell_moved(stored, left)
        with self.catalog.db.transaction():
            if left:  # moved to a medium an earlier run had found full: it has room again
                self._reopen(self._medium_row)
            volume = self._record(stored, summary.plain_size, "data")
            ids = self.catalog.add_chunks(self.pool.id, volume.id, self.open.values())
            self._mark_full(left)
        self.bytes_stored += stored.stored_size
        self._writer = self._sink = None
        self.open = {}
        return ids

    def abort(self) -> None:
        """Drop the open volume (nothing of it was recorded)."""
        if self._writer is not None:
            self._writer.abort()
        if self._sink is not None:
            self._sink.abort()
        self._writer = self._sink = None
        self.open = {}

    @property
    def medium(self) -> MediumRow | None:
        """The medium the open volume is being written to (None when none is open): known
        once a volume is started, e.g. inside `write_volume`'s *fill*."""
        return self._medium_row if self._writer is not None else None

    # -- whole volumes (catalog, index copies) ---------------------------------------

    def write_volume(
        self, kind: str, fill: Callable[[VolumeWriter], None],
        recorded: Callable[[VolumeRow], None] = lambda volume: None,
    ) -> VolumeRow:
        """Write a non-data volume whose members *fill* adds; record and return it.
        *recorded* runs in the transaction that records it (what refers to the volume is
        recorded with it, or neither is).

        Its size is not known before it is written: one that outgrows the room left on a
        medium is written again on another medium of the pool (*fill* runs once per try)."""
        self.commit()
        tried: set[int] = set()
        while True:
            writer = self._start(kind, skip=tried)
            assert self._sink is not None and self._medium_row is not None
            try:
                fill(writer)
                summary = writer.finish()
                stored = self._sink.commit()
                break
            except MediumFullError:
                tried.add(self._medium_row.id)
                self.abort()
            except BaseException:
                self.abort()
                raise
        with self.catalog.db.transaction():
            volume = self._record(stored, summary.plain_size, kind)
            recorded(volume)
        self._writer = self._sink = None
        return volume

    # -- internals -------------------------------------------------------------------

    def _fits(self, writer: VolumeWriter, extra: int) -> bool:
        """Whether the open volume, grown by *extra* plaintext bytes, still fits its
        limit once finished (manifest, seal) and encrypted."""
        return self._stored(writer.size + writer.reserve + extra) <= self._limit

    def _stored(self, plain: int) -> int:
        """At most the bytes a volume of *plain* plaintext bytes takes on the medium: age
        adds a 16-byte tag per 64 KiB and a header."""
        if self.keys.encryption == "none":
            return plain
        return plain + plain // 4096 + AGE_HEADER

    def _record(self, stored: StoredVolume, plain_size: int, kind: str) -> VolumeRow:
        assert self._medium_row is not None
        medium = open_medium(self._medium_row)
        volume = self.catalog.add_volume(
            self._medium_row.id, uuid=stored.volume_id, kind=kind, seq=stored.seq,
            name=stored.name, plain_size=plain_size, stored_size=stored.stored_size,
            tape_file=stored.tape_file, tape_block=stored.tape_block,
        )
        free = medium.free_bytes()
        full = free is not None and free < MIN_VOLUME
        self.catalog.update_medium(
            self._medium_row.id, used=medium.used_bytes(), last_seen_ns=time.time_ns(),
            **({"state": "full"} if full else {}),
        )
        if full:
            self._filled.add(self._medium_row.id)
        self.volumes_written += 1
        return volume

    def _tell_moved(self, stored: StoredVolume, left: list[MediumRow]) -> None:
        assert self._medium_row is not None
        if left:
            full = ", ".join(row.label for row in left)
            log.warning("medium %s filled while volume %s was written to it (something else "
                        "took its room): the volume went on on medium %s", full,
                        stored.volume_id, self._medium_row.label)

    def _mark_full(self, rows: list[MediumRow]) -> None:
        """Media a volume left because they filled take no new volume: what the moved
        volume had there is gone again, but whatever filled them may well go on."""
        for row in rows:
            self._set_full(row)

    def _start(self, kind: str, need: int = 0, skip: set[int] | None = None) -> VolumeWriter:
        volume_id = uuid.uuid4().hex
        encrypted = self.keys.encryption != "none"
        row, limit = self._created(kind, volume_id, need, set(skip or ()))
        assert self._sink is not None
        if kind == "data":
            # it can move on if the medium fills under it; a non-data volume is written
            # again elsewhere instead (write_volume). Another medium needs room for all of
            # it: the limit, or its one chunk bigger than that (add_chunk). It may go where
            # a new volume may: a disk an earlier run found full may have room again
            media = [m for m in self.catalog.media(self.pool.id) if self._takes_volumes(m)]
            # the seq floors are read here: the sink moves on the volume's own thread
            taken = {m.id: self.catalog.next_volume_seq(m.id) - 1 for m in media}
            self._sink = MovingSink(
                self._sink, row, media=media, need=max(limit, need), pool=self.pool.name,
                create=lambda other, medium: medium.create_volume(
                    kind, volume_id, encrypted, after_seq=taken[other.id]))
        header = new_header(self.keys.catalog_id, volume_id, kind, self.pool.name,
                            self.keys.encryption, self.keys.id_key)
        self._writer = VolumeWriter(self._sink, header, self.keys.recipients)
        self._medium_row, self._limit = row, limit
        return self._writer

    def _created(
        self, kind: str, volume_id: str, need: int, skip: set[int]
    ) -> tuple[MediumRow, int]:
        """Start volume *volume_id* (its sink in ``self._sink``) on a medium of the pool
        with room for it: its row and the volume's size limit there. A medium
        whose free bytes looked enough but where the volume's file cannot even be made (no
        inode left, a quota) takes no new volume, as a full one; the next one is tried."""
        while True:
            row, medium = self._choose_medium(need, skip, data=kind == "data")
            free = medium.free_bytes()
            limit = (self.pool.volume_size if free is None
                     else min(self.pool.volume_size, free - SLACK))
            try:
                self._sink = medium.create_volume(
                    kind, volume_id, self.keys.encryption != "none",
                    after_seq=self.catalog.next_volume_seq(row.id) - 1)
                return row, limit
            except MediumFullError as exc:
                log.warning("%s: trying another medium of pool %s", exc, self.pool.name)
                self._set_full(row)
                skip.add(row.id)
            except MediumReadOnlyError as exc:
                # not full: its state stays, and the next run tries it again
                log.warning("%s: trying another medium of pool %s", exc, self.pool.name)
                self._read_only.add(row.id)

    def _takes_volumes(self, row: MediumRow, *, data: bool = True) -> bool:
        """Whether new volumes may go to *row*: an active medium, or a disk found full by
        an earlier run that may have room again (its files deleted, or what filled it
        while a volume was written gone: its free bytes tell). One this run filled takes
        no new *data* volume; whether another still fits, its free bytes tell."""
        if (data and row.id in self._filled) or row.id in self._read_only:
            return False
        return row.state == "active" or (row.state == "full" and row.kind == "dir")

    def _room_for_itself(self, need: int, skip: set[int]) -> tuple[MediumRow, Medium] | None:
        """An online medium short of a data volume's room (MIN_VOLUME) that still has
        *need* bytes and the slack: where a backup that filled the pool's last disk to just
        under that writes its catalog volume, instead of storing its data and then failing
        (one that outgrows the room is written again elsewhere, see `write_volume`). It
        stays full for data."""
        for row in sorted(self.catalog.media(self.pool.id), key=lambda m: m.id):
            if row.id in skip or not self._takes_volumes(row, data=False):
                continue
            medium = open_medium(row)
            if not medium.status().online:
                continue
            free = medium.free_bytes()
            if free is None or free >= need + SLACK:
                return row, medium
        return None

    def _set_full(self, row: MediumRow) -> None:
        self._filled.add(row.id)
        if row.state != "full":
            self.catalog.update_medium(row.id, state="full")

    def _reopen(self, row: MediumRow) -> None:
        if row.state == "full":
            log.warning("medium %s has room again: it takes new volumes", row.label)
            self.catalog.update_medium(row.id, state="active")

    def _choose_medium(self, need: int, skip: set[int], *,
                       data: bool = True) -> tuple[MediumRow, Medium]:
        """An online medium of the pool with room for a volume (and *need* bytes), not one
        of *skip* (media ids), waiting for an offline one if none is. When none has that
        room and none is offline, a volume that is not *data* (a catalog volume, often a
        few KiB) goes where it fits (`_room_for_itself`) before the run gives up."""
        deadline = None if self.media_timeout is None else time.monotonic() + self.media_timeout
        told: dict[int, str] = {}  # what the user was last told about each medium
        while True:
            offline: list[tuple[MediumRow, MediumStatus]] = []
            short: list[str] = []  # why each other medium cannot take it
            # in the order they were added: a pool fills its media in turn
            for row in sorted(self.catalog.media(self.pool.id), key=lambda m: m.id):
                if row.id in skip or not self._takes_volumes(row):
                    if row.state != "retired":
                        why = "read-only" if row.id in self._read_only else "full"
                        short.append(f"{row.label} {why}")
                    continue
                medium = open_medium(row)
                status = medium.status()
                if not status.online:
                    offline.append((row, status))
                    continue
                free = medium.free_bytes()
                if free is None or free >= max(MIN_VOLUME, need) + SLACK:
                    self._reopen(row)
                    return row, medium
                if free < MIN_VOLUME + SLACK:
                    self._set_full(row)
                short.append(f"{row.label} has {free} bytes free")
            if not offline:
                fits = None if data else self._room_for_itself(need, skip)
                if fits is not None:
                    return fits
                room = f"room for a volume of {need} bytes" if need > MIN_VOLUME else "room"
                raise MediumFullError(
                    f"pool {self.pool.name} has no medium with {room} left "
                    f"({'; '.join(short) or 'it has none'}): add one with "
                    f"`durafs media add {self.pool.name} --path PATH`"
                )
            for row, status in offline:
                message = waiting_for(row, status)
                if told.get(row.id) != message:  # told again when what is there changes
                    told[row.id] = message
                    self.on_wait(message)
            if deadline is not None and time.monotonic() >= deadline:
                names = "; ".join(describe_unavailable(r, s) for r, s in offline)
                # and why none of the others took it, else the user wonders
                others = f" ({'; '.join(short)})" if short else ""
                raise MediumOfflineError(
                    f"no writable medium online in pool {self.pool.name}: {names}{others}")
            time.sleep(POLL_SECONDS)


class MovingSink(VolumeSink):
    """A data volume's sink that moves on to another medium of the pool when its medium
    fills under it: what was written so far is copied from the full medium (nothing is
    read from the sources again) and the volume goes on, and is committed, on the other.

    The volume's bytes name no medium (docs/FORMAT.md: the header has the catalog, the
    pool, the volume), so they are the same wherever they land. This runs on the volume's
    own thread, so it never touches the catalog: *media* are the pool's media that could take
    a volume as it started (`PoolWriter._takes_volumes`); the PoolWriter records `left`
    (the media it filled) and `row` (where it is).
    A driver that cannot keep what it wrote (`VolumeSink.keep_if_full`) fails as before.
    """

    def __init__(
        self, sink: VolumeSink, row: MediumRow, *, media: Sequence[MediumRow], need: int,
        pool: str, create: Callable[[MediumRow, Medium], VolumeSink],
    ) -> None:
        """*sink* is the volume's on medium *row*; another medium needs *need* bytes free
        for it; *create* starts the same volume on another medium."""
        self.sink, self.row = sink, row
        self.left: list[MediumRow] = []
        self._media, self._need, self._pool, self._create = media, need, pool, create
        sink.keep_if_full()

    @property
    def committed(self) -> bool:
        return self.sink.committed

    @property
    def written(self) -> int:
        return self.sink.written

    def write(self, data: bytes | bytearray | memoryview) -> None:
        while True:
            try:
                self.sink.write(data)
                return
            except MediumFullError as exc:
                self._move(exc)  # then the same data again, on the next medium

    def commit(self) -> StoredVolume:
        while True:
            try:
                return self.sink.commit()
            except MediumFullError as exc:
                self._move(exc)

    def abort(self) -> None:
        self.sink.abort()

    def _move(self, full: MediumFullError) -> None:
        """Carry the volume from the full medium to another one with room, or raise *full*
        (with why it could not move) with nothing of the volume left on either."""
        old = self.sink
        if not old.kept:
            raise full  # the driver dropped it (or could not trust what it holds)
        self.left.append(self.row)
        try:
            self.sink, self.row = self._copy_elsewhere(old, full)
        finally:
            old.abort()  # copied, or given up: either way nothing of it stays there

    def _copy_elsewhere(
        self, old: VolumeSink, full: MediumFullError
    ) -> tuple[VolumeSink, MediumRow]:
        tried = {row.id for row in self.left}
        while True:
            row, medium = self._medium_with_room(tried, full)
            tried.add(row.id)
            try:
                # full already for a file (no inode left, an inode quota): on to the next
                new = self._create(row, medium)
            except MediumFullError:
                self.left.append(row)
                continue
            except MediumReadOnlyError as exc:  # not full: the next run tries it again
                log.warning("%s: trying another medium of pool %s", exc, self._pool)
                continue
            new.keep_if_full()
            try:
                old.copy_to(new)
                return new, row
            except MediumFullError:
                self.left.append(row)  # it filled as well: on to the next
                new.abort()
            except BaseException:
                new.abort()
                raise

    def _medium_with_room(
        self, tried: set[int], full: MediumFullError
    ) -> tuple[MediumRow, Medium]:
        """An online medium of the pool (of *media*, those that may take volumes), not one
        of *tried*, with room for the volume.
        It does not wait for an offline one: the run would hang on this thread, where an
        interrupt never arrives."""
        offline = []
        for row in sorted(self._media, key=lambda m: m.id):
            if row.id in tried:
                continue
            medium = open_medium(row)
            try:
                if medium.is_online():
                    free = medium.free_bytes()
                    if free is None or free >= self._need + SLACK:
                        return row, medium
                    continue
            except MediumOfflineError:
                pass
            offline.append(row.label)
        also = f" ({', '.join(offline)} offline)" if offline else ""
        raise MediumFullError(
            f"{full}; no other medium of pool {self._pool} online has room for the volume "
            f"({self._need} bytes){also}: add one with "
            f"`durafs media add {self._pool} --path PATH`"
        ) from full
