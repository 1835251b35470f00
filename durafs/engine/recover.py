"""Rebuild a lost index from directory media alone (plus the identity or passphrase).

Reads each medium's marker and keys file, records its pool and medium, every volume's
manifest (chunk locations), then replays the checkpoints — oldest first — through the
TreeWriter, so checkpoints, trees and chunk locations come back as they were and `restore`
and `verify` work again. A checkpoint whose catalog volume is a delta is rebuilt from its
chain (the full tree and the deltas up to it, `catalogchain`); if a volume of the chain is
missing or unreadable, that checkpoint is reported and the others are still recovered.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from durafs.engine.catalogchain import ChainedTree
from durafs.engine.catalogspool import DEPTH_KEY, META_KEY
from durafs.engine.home import Home, HomeConfig
from durafs.errors import DurafsError, FormatError, NoIdentityError, UsageError
from durafs.format import age
from durafs.format.catalog import (
    XATTRS_UNREAD,
    CheckpointRecord,
    TreeEntry,
    read_catalog_lines,
    read_checkpoint,
    read_deleted,
)
from durafs.format.keys import CatalogKeys, read_keys_file
from durafs.format.reader import VolumeReader
from durafs.index.catalog import Catalog
from durafs.index.rows import LOST_VOLUME_PREFIX, Entry, NewChunk, pack_pieces, pack_xattrs
from durafs.media.base import MediumMarker
from durafs.media.directory import DirectoryMedium

DEFAULT_VOLUME_SIZE = 1 << 30


@dataclass
class _CatalogVolume:
    """A catalog volume found on a medium: its checkpoint record and how to read it."""

    record: CheckpointRecord
    reader: VolumeReader
    pool: str
    name: str
    volume_id: str


@dataclass
class RecoverResult:
    media: int = 0
    volumes: int = 0
    chunks: int = 0
    checkpoints: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def _media_at(paths: list[str]) -> list[tuple[DirectoryMedium, MediumMarker]]:
    """The media at *paths* with their markers, each medium once, in the order given.

    All are read before anything is written: a path holding no medium, media of two
    catalogs, or one medium at two places is refused while the catalog directory is still
    empty, not as a recover cut short. One directory named twice (a trailing slash, a
    symlink to it) is read once.
    """
    found: dict[str, tuple[DirectoryMedium, MediumMarker]] = {}
    for path in paths:
        medium = DirectoryMedium(path)
        marker = medium.marker()
        if marker is None:
            raise UsageError(f"{medium.describe()}: no durafs medium marker found")
        seen = found.get(marker.medium_id)
        if seen is None:
            found[marker.medium_id] = (medium, marker)
        elif not _same_directory(seen[0].path, medium.path):
            # copies of one disk: their volumes may differ, and the index holds one place
            raise UsageError(
                f"{seen[0].path} and {medium.path} hold the same medium {marker.label} "
                f"({marker.medium_id}): give only one of them")
    media = list(found.values())
    first, first_marker = media[0]
    for medium, marker in media[1:]:
        if marker.catalog_id != first_marker.catalog_id:  # the user gave a wrong path
            raise UsageError(
                f"{medium.path}: medium {marker.label} belongs to catalog {marker.catalog_id}, "
                f"{first.path} to catalog {first_marker.catalog_id}: recover one catalog at "
                "a time")
    return media


def _same_directory(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them went away since its marker was read
        return a == b


def _scrypt_params(keys_file: bytes) -> tuple[str, int]:
    header, _ = age.parse_header(keys_file)
    args = header.stanzas[0].args
    if args[0] != "scrypt":
        raise UsageError("keys file is not passphrase-encrypted")
    salt = age._b64decode(args[1].encode(), "scrypt salt")
    return salt.hex(), int(args[2])


def _opening_identity(keys_file: bytes, identities: list[Any]) -> str | None:
    """The key (of an identity file that may hold several) that opens the media's keys
    file, which the catalog keeps: its recipient is the one new volumes are written to,
    and the identity the one that reads the old ones. None for a passphrase or no key."""
    if not keys_file.startswith(age.VERSION_LINE):
        return None
    header, _ = age.parse_header(keys_file)
    for identity in identities:
        if isinstance(identity, age.X25519Identity):
            with contextlib.suppress(NoIdentityError):
                age.unwrap_file_key(header, [identity])
                return identity.to_str()
    return None


class Recover:
    def __init__(
        self, home: Home, identities: list[Any],
        progress: Callable[[str], None] = lambda message: None,
    ) -> None:
        if home.exists() and not home.recovering.exists():
            raise UsageError(f"{home.path} already holds a catalog: recover into an empty one")
        self.home = home
        self.identities = identities
        self.progress = progress
        self.result = RecoverResult()
        self.keys: CatalogKeys | None = None
        self._catalogs: dict[str, _CatalogVolume] = {}
        self._leaders: dict[bytes, tuple[bytes | None, bytes | None]] = {}
        #: Per pool id, the stand-in volume of the chunks found on no medium.
        self._stand_ins: dict[int, int] = {}
        #: Entries of the checkpoint being replayed that its index record goes without.
        self._left_out = 0
        #: Where each volume read is (its medium and file name), by volume row id.
        self._stored: dict[int, tuple[DirectoryMedium, str]] = {}
        #: Later copies of chunks a pool already had, by (pool id, cid): (volume id, frame).
        self._copies: dict[tuple[int, bytes], list[tuple[int, NewChunk]]] = {}

    def run(self, paths: list[str]) -> RecoverResult:
        catalog: Catalog | None = None
        for medium, marker in _media_at(paths):
            if catalog is None:
                catalog = self._adopt(medium)
            marker.check_catalog(catalog.catalog_id)
            self._medium(catalog, medium, marker)
        assert catalog is not None
        self._keep_sound_copies(catalog)
        self._replay(catalog)
        catalog.close()
        self.home.end_recover()
        return self.result

    def _adopt(self, medium: DirectoryMedium) -> Catalog:
        name, data = medium.read_keys_file()
        keys = read_keys_file(data, self.identities, name=name)
        config = HomeConfig(keys.catalog_id, keys.encryption)
        if keys.encryption == "password":
            config.scrypt_salt, config.scrypt_work_factor = _scrypt_params(data)
        identity = _opening_identity(data, self.identities)
        self.home.begin_recover()
        self.home.adopt(config, keys.id_key, identity, data)
        self.keys = keys
        catalog = self.home.catalog()
        # The fresh index was given a new catalog id; it must be the media's. Nothing refers
        # to the id yet (the index is empty), so changing it here is safe.
        catalog.db.execute("UPDATE meta SET value = ? WHERE key = 'catalog_id'",
                           (keys.catalog_id,))
        catalog.set_meta("encryption", keys.encryption)
        return catalog

    def _medium(self, catalog: Catalog, medium: DirectoryMedium, marker: MediumMarker) -> None:
        pool = catalog.pool(marker.pool) or catalog.add_pool(
            marker.pool, "dir", volume_size=DEFAULT_VOLUME_SIZE)
        row = catalog.add_medium(pool.id, uuid=marker.medium_id, label=marker.label,
                                 path=os.path.abspath(medium.path), created_ns=marker.created_ns)
        self.result.media += 1
        for stored in medium.list_volumes():
            try:
                self._volume(catalog, medium, pool.id, row.id, stored)
            except (OSError, DurafsError) as exc:
                self.result.problems.append(f"{stored.name}: {exc}")
        catalog.update_medium(row.id, used=medium.used_bytes())

    def _volume(self, catalog: Catalog, medium: DirectoryMedium, pool_id: int, medium_id: int,
                stored: Any) -> None:
        assert self.keys is not None
        handle = medium.open_volume(stored.name)
        reader = VolumeReader(handle.read_at, identities=self.identities, size=handle.size,
                              name=stored.name, catalog_id=self.keys.catalog_id)
        manifest = reader.read_manifest()
        chunks = [NewChunk(c.id, c.offset, c.length, c.size, c.raw, c.frame_pos)
                  for c in manifest.chunks]
        with catalog.db.transaction():
            volume = catalog.add_volume(
                medium_id, uuid=reader.header.volume_id, kind=reader.header.kind,
                seq=stored.seq, name=stored.name, plain_size=reader.plain_size or 0,
                stored_size=stored.stored_size, created_ns=reader.header.created_ns)
            known = catalog.lookup_chunks(pool_id, [c.cid for c in chunks])
            catalog.add_chunks(pool_id, volume.id, chunks)
        self._stored[volume.id] = (medium, stored.name)
        listed: set[bytes] = set()
        for c in chunks:  # a chunk listed again in this volume (in a pack) is a copy too
            if c.cid in known or c.cid in listed:
                self._copies.setdefault((pool_id, c.cid), []).append((volume.id, c))
            listed.add(c.cid)
        self.result.volumes += 1
        self.result.chunks += len(manifest.chunks)
        if reader.header.kind == "catalog":
            volume_id = reader.header.volume_id
            self._catalogs[volume_id] = _CatalogVolume(
                read_checkpoint(reader), reader, pool_id_name(catalog, pool_id), stored.name,
                volume_id)
        self.progress(f"read {stored.name}")

    def _keep_sound_copies(self, catalog: Catalog) -> None:
        """A chunk stored more than once (a run resumed; a backup stored again a chunk
        verify found damaged; a pack holding it again, in the same volume or a later one)
        keeps its first copy, unless that one is damaged: then a sound later copy takes its
        place. Else every checkpoint using it would read the damage the heal had left behind.
        One found damaged with no sound copy is noted as such (`damaged_chunks`): the next
        backup stores it again from a source that has it."""
        readers = CopyChecker(self._open_reader)
        try:
            for (pool_id, cid), copies in self._copies.items():
                row = catalog.lookup_chunks(pool_id, [cid])[cid]
                first = NewChunk(cid, row.offset, row.length, row.size, row.raw, row.fpos)
                if readers.sound(row.volume_id, first):
                    continue
                with catalog.db.transaction():
                    catalog.set_chunks_damaged([row.id], True)
                    sound = next(((v, c) for v, c in copies if readers.sound(v, c)), None)
                    if sound is not None:  # its row moves there (and is no longer damaged)
                        catalog.add_chunks(pool_id, sound[0], [sound[1]])
        finally:
            readers.close()

    def _open_reader(self, volume_id: int) -> tuple[Any, VolumeReader]:
        """Volume *volume_id* opened: (its handle, its reader)."""
        assert self.keys is not None
        medium, name = self._stored[volume_id]
        handle = medium.open_volume(name)
        try:
            return handle, VolumeReader(handle.read_at, identities=self.identities,
                                        size=handle.size, name=name,
                                        catalog_id=self.keys.catalog_id)
        except BaseException:
            handle.close()
            raise

    def _replay(self, catalog: Catalog) -> None:
        by_checkpoint: dict[tuple[str, str], list[_CatalogVolume]] = {}
        for cat in sorted(self._catalogs.values(), key=lambda c: c.record.created_ns):
            by_checkpoint.setdefault((cat.record.plan, cat.record.name), []).append(cat)
        trees: dict[tuple[str, str], ChainedTree] = {}  # by (pool, plan): chains advance
        try:
            for candidates in by_checkpoint.values():
                self._replay_checkpoint(catalog, candidates, trees)
        finally:
            for tree in trees.values():
                tree.close()

    def _replay_checkpoint(self, catalog: Catalog, candidates: list[_CatalogVolume],
                           trees: dict[tuple[str, str], ChainedTree]) -> None:
        """Replay one checkpoint from the first of its catalog volumes (one per pool it
        was written to) whose chain can be read; else report why none could."""
        errors = []
        for cat in candidates:
            try:
                chain = self._chain(cat)
                tree = trees.setdefault((cat.pool, cat.record.plan), ChainedTree())
                _advance(tree, chain)
                self._commit(catalog, cat, tree)
            except (OSError, DurafsError) as exc:
                errors.append(str(exc))
                continue
            self.result.checkpoints.append(f"{cat.record.plan}/{cat.record.name}")
            return
        self.result.problems.extend(errors)

    def _chain(self, cat: _CatalogVolume) -> list[_CatalogVolume]:
        """The catalog volumes *cat*'s tree is built from: a full tree, then each delta up
        to *cat*. Raises FormatError naming the volume whose base is missing."""
        chain = [cat]
        while (base := chain[-1].record.base) is not None:
            top = chain[-1]
            found = self._catalogs.get(base.volume_id)
            if found is None or (found.record.plan, found.record.name, found.record.depth) != (
                    top.record.plan, base.checkpoint, top.record.depth - 1):
                via = "" if top is cat else f", base of {top.name}"
                raise FormatError(
                    f"{cat.name}: checkpoint {cat.record.plan}/{cat.record.name} not recovered: "
                    f"its catalog volume is a delta and the catalog volume {base.volume_id} "
                    f"(checkpoint {base.checkpoint}{via}) was not found or could not be read")
            chain.append(found)
        return chain[::-1]

    def _commit(self, catalog: Catalog, cat: _CatalogVolume, tree: ChainedTree) -> None:
        """Record the checkpoint of *cat* with the tree *tree* holds, in one transaction."""
        record = cat.record
        plan = catalog.ensure_plan(record.plan)
        pool_row = catalog.pool(cat.pool)
        assert pool_row is not None
        links = tree.links()
        self._leaders, self._left_out = {}, 0
        where = f"{record.plan}/{record.name}"
        with catalog.tree_writer(plan.id, catalog.next_seq(plan.id), record.name,
                                 created_ns=record.created_ns,
                                 sources=[os.fsdecode(s) for s in record.sources]) as writer:
            for tree_entry in tree.entries():
                entry = self._entry(catalog, pool_row.id, tree_entry, links, where)
                if entry is not None:
                    writer.add(entry)
                else:
                    self._left_out += 1
            stats: dict[str, Any] = {**record.stats, "pool": cat.pool}
            if record.xattrs_unread:  # as the backup that made it notes them
                stats[XATTRS_UNREAD] = [os.fsdecode(p) for p in record.xattrs_unread]
            checkpoint = writer.finish(stats=stats, finished_ns=record.finished_ns)
        # Which catalog volume holds it, as the backup notes it: so the next backup does
        # not write it again, and its catalog volume can be a delta of this one.
        # A checkpoint recorded without some of its volume's entries (left out below) is
        # not that volume's tree: a delta of it would not delete them, so a later recover
        # would put them back into checkpoints that never had them. With no depth noted,
        # the next backup's catalog volume is a full tree (`catalogspool.find_base`).
        with catalog.db.transaction():
            catalog.set_meta(META_KEY.format(pool=cat.pool, checkpoint=checkpoint.id),
                             cat.volume_id)
            if not self._left_out:
                catalog.set_meta(DEPTH_KEY.format(volume=cat.volume_id), record.depth)

    def _entry(self, catalog: Catalog, pool_id: int, e: TreeEntry,
               links: set[bytes], where: str) -> Entry | None:
        """The index entry for tree entry *e* of checkpoint *where*; hard-link members
        come after their group's "f" entry (`ChainedTree.entries`). A file whose chunks are
        not all on the media keeps them as lost (`_stand_in_chunks`, and a problem); None
        (and a problem) for a member without its group's file."""
        chunks = None
        # a group as the backup forms it (scan: a file with nlink > 1), even one whose other
        # names are all outside the checkpoint, so it has no "h" line naming it
        key = e.path if e.type == "f" and (e.path in links or e.nlink > 1) else None
        if e.type == "f":
            # usable: a chunk given a stand-in for an earlier checkpoint is missing here too
            found = catalog.lookup_chunks(pool_id, [c for _, c, _ in e.chunks], usable=True)
            ids = {cid: row.id for cid, row in found.items()}
            missing = [(cid, size) for _, cid, size in e.chunks if cid not in ids]
            if missing:
                self.result.problems.append(
                    f"{where}{os.fsdecode(e.path)}: {len(missing)} of its {len(e.chunks)} "
                    "chunks are in no volume on the media given: kept as lost (a restore "
                    "names it; a backup of a source that still has it stores it again)")
                ids.update(self._stand_in_chunks(catalog, pool_id, missing))
            chunks = pack_pieces((off, ids[cid], size) for off, cid, size in e.chunks)
            if key is not None:
                self._leaders[e.path] = (chunks, e.blake3)
        elif e.type == "h":
            if e.link is None or e.link not in self._leaders:
                self.result.problems.append(
                    f"{os.fsdecode(e.path)}: hard link to {e.link!r}, which is not a file of "
                    "the checkpoint: left out")
                return None
            key = e.link
            chunks, e.blake3 = self._leaders[e.link]
        return Entry(
            path=e.path, type="f" if e.type == "h" else e.type, mode=e.mode, uid=e.uid,
            gid=e.gid, uname=e.user or None, gname=e.group or None, size=e.size,
            mtime_ns=e.mtime_ns, atime_ns=e.atime_ns, ctime_ns=e.ctime_ns, ino=e.ino,
            dev=e.dev, nlink=e.nlink, rdev=e.rdev, target=e.target,
            xattrs=pack_xattrs(e.xattrs), chunks=chunks, blake3=e.blake3, hardlink_key=key,
        )


    def _stand_in_chunks(
        self, catalog: Catalog, pool_id: int, missing: list[tuple[bytes, int]],
    ) -> dict[bytes, int]:
        """Rows for chunks a checkpoint names but no medium holds, in the pool's stand-in
        volume (LOST_VOLUME_PREFIX: lost, so the file reads as damaged, never as zeros,
        and the next backup of a source that still has the file reads it again and moves
        the rows to the new copies). Their ids, by cid."""
        volume_id = self._stand_ins.get(pool_id)
        if volume_id is None:
            medium = catalog.media(pool_id)[0]
            with catalog.db.transaction():
                volume = catalog.add_volume(
                    medium.id, uuid=LOST_VOLUME_PREFIX + uuid.uuid4().hex, kind="data",
                    seq=catalog.next_volume_seq(medium.id), name=None, plain_size=0,
                    stored_size=0)
                catalog.set_volume_lost(volume.id, True)
            volume_id = self._stand_ins[pool_id] = volume.id
        # a frame's place and length are unknown: 0 and 1 (the schema's least)
        return catalog.add_chunks(pool_id, volume_id,
                                  [NewChunk(cid, 0, 1, size, False) for cid, size in missing])


class CopyChecker:
    """The last few volumes opened to check copies of chunks: a chunk stored more than
    once is common (every pack lists the chunks in it that the pool had already), and
    opening a volume costs a header decryption (with a passphrase, an scrypt)."""

    KEEP = 8

    def __init__(self, open_reader: Callable[[int], tuple[Any, VolumeReader]]) -> None:
        self._open = open_reader
        self._open_now: OrderedDict[int, tuple[Any, VolumeReader] | None] = OrderedDict()

    def sound(self, volume_id: int, chunk: NewChunk) -> bool:
        """Whether the frame of *chunk* in volume *volume_id* is what its id says."""
        opened = self._reader(volume_id)
        if opened is None:
            return False
        try:
            opened[1].read_chunk(chunk.offset, chunk.length, chunk.size, chunk.cid, chunk.fpos)
        except (OSError, DurafsError):
            return False
        return True

    def _reader(self, volume_id: int) -> tuple[Any, VolumeReader] | None:
        if volume_id in self._open_now:
            self._open_now.move_to_end(volume_id)
            return self._open_now[volume_id]
        try:
            opened: tuple[Any, VolumeReader] | None = self._open(volume_id)
        except (OSError, DurafsError):
            opened = None  # unreadable: so is every copy in it
        self._open_now[volume_id] = opened
        if len(self._open_now) > self.KEEP:
            _, dropped = self._open_now.popitem(last=False)
            if dropped is not None:
                dropped[0].close()
        return opened

    def close(self) -> None:
        for opened in self._open_now.values():
            if opened is not None:
                opened[0].close()
        self._open_now.clear()


def _advance(tree: ChainedTree, chain: list[_CatalogVolume]) -> None:
    """Bring *tree* to the last volume of *chain*: from where it is if that is in the
    chain (the usual case: checkpoints are replayed in order), else from the full tree."""
    ids = [c.volume_id for c in chain]
    start = ids.index(tree.at) + 1 if tree.at in ids else 0
    for cat in chain[start:]:
        _, lines = read_catalog_lines(cat.reader)
        full = cat.record.base is None
        tree.apply(cat.volume_id, lines, [] if full else read_deleted(cat.reader), full=full)


def pool_id_name(catalog: Catalog, pool_id: int) -> str:
    return next(p.name for p in catalog.pools() if p.id == pool_id)
