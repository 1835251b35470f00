"""Rebuild a lost index from directory media alone (plus the identity or passphrase).

Reads each medium's marker and keys file, records its pool and medium, every volume's
manifest (chunk locations), then replays the catalog volumes — one per checkpoint, oldest
first — through the TreeWriter, so checkpoints, trees and chunk locations come back as
they were and `restore` and `verify` work again.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from durafs.engine.home import Home, HomeConfig
from durafs.errors import DurafsError, UsageError
from durafs.format import age
from durafs.format.catalog import CheckpointRecord, TreeEntry, read_catalog
from durafs.format.keys import CatalogKeys, read_keys_file
from durafs.format.reader import VolumeReader
from durafs.index.catalog import Catalog
from durafs.index.rows import Entry, NewChunk, pack_pieces, pack_xattrs
from durafs.media.directory import DirectoryMedium

DEFAULT_VOLUME_SIZE = 1 << 30


@dataclass
class RecoverResult:
    media: int = 0
    volumes: int = 0
    chunks: int = 0
    checkpoints: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def _scrypt_params(keys_file: bytes) -> tuple[str, int]:
    header, _ = age.parse_header(keys_file)
    args = header.stanzas[0].args
    if args[0] != "scrypt":
        raise UsageError("keys file is not passphrase-encrypted")
    salt = age._b64decode(args[1].encode(), "scrypt salt")
    return salt.hex(), int(args[2])


class Recover:
    def __init__(
        self, home: Home, identities: list[Any],
        progress: Callable[[str], None] = lambda message: None,
    ) -> None:
        if home.exists():
            raise UsageError(f"{home.path} already holds a catalog: recover into an empty one")
        self.home = home
        self.identities = identities
        self.progress = progress
        self.result = RecoverResult()
        self.keys: CatalogKeys | None = None
        self._catalogs: list[tuple[CheckpointRecord, VolumeReader, str]] = []
        self._leaders: dict[bytes | None, tuple[bytes | None, bytes | None]] = {}

    def run(self, paths: list[str]) -> RecoverResult:
        media = [DirectoryMedium(p) for p in paths]
        catalog: Catalog | None = None
        for medium in media:
            marker = medium.marker()
            if marker is None:
                raise UsageError(f"{medium.describe()}: no durafs medium marker found")
            if catalog is None:
                catalog = self._adopt(medium)
            marker.check_catalog(catalog.catalog_id)
            self._medium(catalog, medium, marker)
        assert catalog is not None
        self._replay(catalog)
        catalog.close()
        return self.result

    def _adopt(self, medium: DirectoryMedium) -> Catalog:
        name, data = medium.read_keys_file()
        keys = read_keys_file(data, self.identities, name=name)
        config = HomeConfig(keys.catalog_id, keys.encryption)
        if keys.encryption == "password":
            config.scrypt_salt, config.scrypt_work_factor = _scrypt_params(data)
        identity = next((i.to_str() for i in self.identities
                         if isinstance(i, age.X25519Identity)), None)
        self.home.adopt(config, keys.id_key, identity)
        self.keys = keys
        catalog = self.home.catalog()
        # The fresh index was given a new catalog id; it must be the media's. Nothing refers
        # to the id yet (the index is empty), so changing it here is safe.
        catalog.db.execute("UPDATE meta SET value = ? WHERE key = 'catalog_id'",
                           (keys.catalog_id,))
        catalog.set_meta("encryption", keys.encryption)
        return catalog

    def _medium(self, catalog: Catalog, medium: DirectoryMedium, marker: Any) -> None:
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
        with catalog.db.transaction():
            volume = catalog.add_volume(
                medium_id, uuid=reader.header.volume_id, kind=reader.header.kind,
                seq=stored.seq, name=stored.name, plain_size=reader.plain_size or 0,
                stored_size=stored.stored_size, created_ns=reader.header.created_ns)
            catalog.add_chunks(pool_id, volume.id, [
                NewChunk(c.id, c.offset, c.length, c.size, c.raw) for c in manifest.chunks])
        self.result.volumes += 1
        self.result.chunks += len(manifest.chunks)
        if reader.header.kind == "catalog":
            record, _ = read_catalog(reader)
            self._catalogs.append((record, reader, pool_id_name(catalog, pool_id)))
        self.progress(f"read {stored.name}")

    def _replay(self, catalog: Catalog) -> None:
        seen: set[tuple[str, str]] = set()
        for record, reader, pool in sorted(self._catalogs, key=lambda c: c[0].created_ns):
            if (record.plan, record.name) in seen:
                continue  # the same checkpoint's catalog in a second pool
            seen.add((record.plan, record.name))
            plan = catalog.ensure_plan(record.plan)
            pool_row = catalog.pool(pool)
            assert pool_row is not None
            _, entries = read_catalog(reader)
            links = {e.link for e in read_catalog(reader)[1] if e.type == "h"}
            with catalog.tree_writer(plan.id, catalog.next_seq(plan.id), record.name,
                                     created_ns=record.created_ns,
                                     sources=[os.fsdecode(s) for s in record.sources]) as tree:
                for entry in entries:
                    tree.add(self._entry(catalog, pool_row.id, entry, links))
                tree.finish(stats={**record.stats, "pool": pool}, finished_ns=record.finished_ns)
            self.result.checkpoints.append(f"{record.plan}/{record.name}")

    def _entry(self, catalog: Catalog, pool_id: int, e: TreeEntry, links: set[Any]) -> Entry:
        kind = "f" if e.type == "h" else e.type
        chunks = None
        if e.type == "f":
            found = catalog.lookup_chunks(pool_id, [c for _, c, _ in e.chunks])
            chunks = pack_pieces((off, found[cid].id, size) for off, cid, size in e.chunks
                                 if cid in found)
        key = e.link if e.type == "h" else (e.path if e.path in links else None)
        if e.type == "h":
            chunks, e.blake3 = self._leaders.get(e.link, (None, None))
        elif key is not None:
            self._leaders[e.path] = (chunks, e.blake3)
        return Entry(
            path=e.path, type=kind, mode=e.mode, uid=e.uid, gid=e.gid, uname=e.user or None,
            gname=e.group or None, size=e.size, mtime_ns=e.mtime_ns, atime_ns=e.atime_ns,
            ctime_ns=e.ctime_ns, ino=e.ino, dev=e.dev, nlink=e.nlink, rdev=e.rdev,
            target=e.target, xattrs=pack_xattrs(e.xattrs), chunks=chunks, blake3=e.blake3,
            hardlink_key=key,
        )


def pool_id_name(catalog: Catalog, pool_id: int) -> str:
    return next(p.name for p in catalog.pools() if p.id == pool_id)
