# SPDX-License-Identifier: GPL-3.0-or-later
"""The pyfuse3 handlers called directly (no kernel): errno mapping, reads, offline opens."""

from __future__ import annotations

import errno
import os
import random
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pyfuse3
import pytest
import trio

from durafs.engine.home import Home
from durafs.errors import IntegrityError, MediumOfflineError
from durafs.fs.errors import (
    BadHandle,
    Interrupted,
    IsADirectory,
    NoSuchAttribute,
    NoSuchEntry,
    NotADirectory,
    ReadOnly,
)
from durafs.fs.fuseops import STABLE_TIMEOUT, VOLATILE_TIMEOUT, Operations, errno_of
from durafs.fs.mount import MountConfig, Parts, assemble
from durafs.fs.reads import OfflinePolicy, OpenFile
from durafs.fs.vfs import ROOT_INO, XATTR_ONLINE
from tests.fs.polling import eventually

from .catalogs import Catalog, make_catalog, make_model_tree, sparse_content
from .conftest import Backed

# The handlers only read ctx.pid (whose signals end a wait); this process stands in.
CTX: Any = SimpleNamespace(pid=os.getpid(), uid=0, gid=0, umask=0)
READ_SIZE = 128 * 1024


@asynccontextmanager
async def served(cat: Catalog, **config: Any) -> AsyncIterator[Parts]:
    home = Home(cat.home)
    with assemble(MountConfig("/nonexistent", home, home.keys(read=True), **config)) as parts:
        async with trio.open_nursery() as nursery:
            parts.start(nursery)
            yield parts
            nursery.cancel_scope.cancel()


async def resolve(parts: Parts, path: bytes) -> int:
    ino = ROOT_INO
    for name in path.split(b"/"):
        ino = (await parts.ops.lookup(ino, name, CTX)).st_ino
    return ino


async def file_ino(parts: Parts, cat: Catalog, rel: str) -> int:
    checkpoint = cat.checkpoints()[-1].encode()
    return await resolve(parts, b"default/" + checkpoint + b"/" + cat.source_in_tree + b"/"
                         + rel.encode())


async def read_all(parts: Parts, ino: int, size: int = READ_SIZE) -> bytes:
    info = await parts.ops.open(ino, os.O_RDONLY, CTX)
    try:
        data = bytearray()
        while True:
            piece = await parts.ops.read(info.fh, len(data), size)
            if not piece:
                return bytes(data)
            data += piece
    finally:
        await parts.ops.release(info.fh)


@contextmanager
def medium_away(cat: Catalog) -> Iterator[None]:
    """The pool's only medium is unplugged (its directory moved away) inside the block."""
    away = cat.pool.with_name("pool-away")
    os.rename(cat.pool, away)
    try:
        yield
    finally:
        os.rename(away, cat.pool)


def test_errno_mapping() -> None:
    cases = {
        NoSuchEntry("x"): errno.ENOENT, NotADirectory("x"): errno.ENOTDIR,
        IsADirectory("x"): errno.EISDIR, NoSuchAttribute("x"): pyfuse3.ENOATTR,
        ReadOnly("x"): errno.EROFS, Interrupted("x"): errno.EINTR, BadHandle("x"): errno.EBADF,
        MediumOfflineError("x"): errno.ENOMEDIUM, IntegrityError("x"): errno.EIO,
        OSError(errno.EACCES, "x"): errno.EACCES, ValueError("bug"): errno.EIO,
    }
    for exc, number in cases.items():
        assert errno_of(exc) == number, exc


async def test_every_change_is_erofs(backed: Backed) -> None:
    async with served(backed.cat) as parts:
        ops, ino = parts.ops, await file_ino(parts, backed.cat, "small")
        attempts = [
            ops.setattr(ino, pyfuse3.EntryAttributes(), pyfuse3.SetattrFields(), None, CTX),
            ops.mknod(ROOT_INO, b"n", 0o644, 0, CTX), ops.mkdir(ROOT_INO, b"d", 0o755, CTX),
            ops.unlink(ROOT_INO, b"default", CTX), ops.rmdir(ROOT_INO, b"default", CTX),
            ops.symlink(ROOT_INO, b"l", b"t", CTX),
            ops.rename(ROOT_INO, b"default", ROOT_INO, b"x", 0, CTX),
            ops.link(ino, ROOT_INO, b"h", CTX), ops.write(1, 0, b"x"),
            ops.create(ROOT_INO, b"f", 0o644, os.O_WRONLY, CTX),
            ops.setxattr(ino, b"user.x", b"1", CTX), ops.removexattr(ino, b"user.colour", CTX),
            ops.open(ino, os.O_RDWR, CTX),
        ]
        for attempt in attempts:
            with pytest.raises(pyfuse3.FUSEError) as caught:
                await attempt
            assert caught.value.errno == errno.EROFS


async def test_lookups_negative_cache_only_inside_checkpoints(backed: Backed) -> None:
    async with served(backed.cat) as parts:
        src = await file_ino(parts, backed.cat, "many")
        missing = await parts.ops.lookup(src, b"nope", CTX)
        assert missing.st_ino == 0 and missing.entry_timeout == STABLE_TIMEOUT
        plan = (await parts.ops.lookup(ROOT_INO, b"default", CTX)).st_ino
        with pytest.raises(pyfuse3.FUSEError) as caught:
            await parts.ops.lookup(plan, b"not-yet", CTX)  # a checkpoint may appear later
        assert caught.value.errno == errno.ENOENT


async def test_reads_return_the_bytes(backed: Backed) -> None:
    async with served(backed.cat) as parts:
        for rel in ("big", "small", "empty", "private", "hard/b"):
            expected = backed.contents.get(rel) or backed.contents.get("hard/a" if "hard" in rel
                                                                      else rel, b"")
            if rel == "small":
                expected = b"changed\n"  # the second checkpoint's content
            assert await read_all(parts, await file_ino(parts, backed.cat, rel)) == expected, rel
        sparse = await read_all(parts, await file_ino(parts, backed.cat, "sparse"), 1 << 20)
        assert sparse == sparse_content()
        # odd offsets and sizes across chunk boundaries
        big = backed.contents["big"]
        info = await parts.ops.open(await file_ino(parts, backed.cat, "big"), os.O_RDONLY, CTX)
        for offset, size in ((0, 1), (1048570, 20), (len(big) - 3, 100), (len(big) + 5, 10)):
            assert bytes(await parts.ops.read(info.fh, offset, size)) == \
                big[offset : offset + size]


async def test_sequential_reads_prefetch_the_next_chunk(backed: Backed) -> None:
    async with served(backed.cat) as parts:
        ino = await file_ino(parts, backed.cat, "big")
        plan = parts.tree.read_plan(ino)
        info = await parts.ops.open(ino, os.O_RDONLY, CTX)
        await parts.ops.read(info.fh, 0, READ_SIZE)
        # the prefetch runs in a worker thread: wait for it (a loaded machine is slow)
        await eventually(lambda: plan.pieces[1].chunk.id in parts.reader.cache)


@pytest.fixture(scope="module")
def small_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Catalog, dict[str, bytes]]:
    """A checkpoint of many small files (and a big one stored between them)."""
    tmp = tmp_path_factory.mktemp("small-files")
    source = tmp / "src"
    source.mkdir()
    rng = random.Random(7)
    contents = {f"f{i:03d}": rng.randbytes(rng.randrange(1, 6000)) for i in range(300)}
    contents["f150-big"] = rng.randbytes(2 * 1024 * 1024)
    for name, data in contents.items():
        (source / name).write_bytes(data)
    cat = make_catalog(tmp, source)
    cat.backup()
    return cat, contents


def record_fetches(parts: Any) -> list[int]:
    """The ids of the chunks the served tree's source fetches one by one from now on."""
    fetched: list[int] = []
    read_chunk = parts.reader.source.read_chunk

    def counting(chunk: Any, volume: Any) -> bytes:
        fetched.append(chunk.id)
        return read_chunk(chunk, volume)

    parts.reader.source.read_chunk = counting
    return fetched


async def test_small_files_in_backup_order_are_fetched_in_runs(
        small_files: tuple[Catalog, dict[str, bytes]]) -> None:
    cat, contents = small_files
    async with served(cat) as parts:
        fetched = record_fetches(parts)
        for name in sorted(contents):
            got = await read_all(parts, await file_ino(parts, cat, name))
            assert got == contents[name], name
        # one by one: the first two small files, and the big file's chunks
        big_chunks = len(parts.tree.read_plan(await file_ino(parts, cat, "f150-big")).pieces)
        assert len(fetched) <= 2 + big_chunks + 2, len(fetched)


async def test_reading_a_big_file_to_its_end_fetches_the_next_file(
        small_files: tuple[Catalog, dict[str, bytes]]) -> None:
    cat, contents = small_files
    # runs of small files reach no further than the big file's first chunk
    async with served(cat, run_window=64 * 1024) as parts:
        for name in ("f149", "f150", "f150-big"):  # backup order: the volume is followed
            assert await read_all(parts, await file_ino(parts, cat, name)) == contents[name]
        following = parts.tree.read_plan(await file_ino(parts, cat, "f151"))
        await eventually(lambda: following.pieces[0].chunk.id in parts.reader.cache)


async def test_readers_of_small_files_only_never_fetch_big_chunks(
        small_files: tuple[Catalog, dict[str, bytes]]) -> None:
    cat, contents = small_files
    async with served(cat) as parts:
        fetched = record_fetches(parts)
        big = parts.tree.read_plan(await file_ino(parts, cat, "f150-big"))
        for name in sorted(contents):
            if name != "f150-big":
                assert await read_all(parts, await file_ino(parts, cat, name)) == contents[name]
        await trio.sleep(0.2)  # readahead tasks started last get to run
        assert not {p.chunk.id for p in big.pieces} & set(fetched)


async def test_preload_gives_small_files_in_memory_whole(
        small_files: tuple[Catalog, dict[str, bytes]]) -> None:
    cat, contents = small_files
    async with served(cat) as parts:
        ino = await file_ino(parts, cat, "f007")
        plan = parts.tree.read_plan(ino)
        assert await parts.reader.preload(OpenFile(plan)) is None  # not in memory: reads fetch
        assert await read_all(parts, ino) == contents["f007"]
        assert bytes(await parts.reader.preload(OpenFile(plan)) or b"") == contents["f007"]
        big = parts.tree.read_plan(await file_ino(parts, cat, "f150-big"))
        await read_all(parts, big.ino)
        assert await parts.reader.preload(OpenFile(big)) is None  # too big for that


async def test_open_stores_small_files_only_when_no_other_handle_is_open(
        small_files: tuple[Catalog, dict[str, bytes]]) -> None:
    cat, contents = small_files
    stored: list[tuple[int, bytes]] = []
    async with served(cat) as served_parts:
        # what open puts in the page cache, seen through the hook in the kernel's place
        ops = Operations(served_parts.tree, served_parts.reader,
                         notify_store=lambda ino, off, data: stored.append((ino, bytes(data))))
        parts = replace(served_parts, ops=ops)
        a, b = await file_ino(parts, cat, "f010"), await file_ino(parts, cat, "f011")
        for ino in (a, b):
            await read_all(parts, ino)  # chunks in memory; no kernel session yet: no store
        assert stored == []
        held = await ops.open(b, os.O_RDONLY, CTX)
        ops.initialized.set()  # as if the kernel's INIT was answered
        first = await ops.open(a, os.O_RDONLY, CTX)
        assert stored == [(a, contents["f010"])]
        again = await ops.open(a, os.O_RDONLY, CTX)  # stored already
        other = await ops.open(b, os.O_RDONLY, CTX)  # b has a handle open: reads may be due
        assert stored == [(a, contents["f010"])]
        for info in (first, again, other, held):
            await ops.release(info.fh)
        assert not ops._open_inodes


async def test_absent_xattrs_are_enoattr(backed: Backed) -> None:
    async with served(backed.cat) as parts:
        ino = await file_ino(parts, backed.cat, "small")
        assert await parts.ops.getxattr(ino, b"user.colour", CTX) == b"blue"
        for name, number in ((b"system.posix_acl_access", pyfuse3.ENOATTR),
                             (b"user.missing", pyfuse3.ENOATTR),
                             (b"security.selinux", errno.EOPNOTSUPP)):
            with pytest.raises(pyfuse3.FUSEError) as caught:
                await parts.ops.getxattr(ino, name, CTX)
            assert caught.value.errno == number, name


async def test_parallel_readers_share_fetches(backed: Backed) -> None:
    async with served(backed.cat) as parts:
        ino = await file_ino(parts, backed.cat, "big")
        results: list[bytes] = []

        async def reader(size: int) -> None:
            results.append(await read_all(parts, ino, size))

        async with trio.open_nursery() as nursery:
            for i in range(8):
                nursery.start_soon(reader, 4096 * (i + 1))
        assert results == [backed.contents["big"]] * 8


@pytest.fixture
def small_cat(tmp_path: Path) -> Catalog:
    (tmp_path / "src").mkdir()
    make_model_tree(tmp_path / "src")
    cat = make_catalog(tmp_path, tmp_path / "src", encryption="none")
    cat.backup()
    return cat


async def test_offline_fail_at_once(small_cat: Catalog) -> None:
    async with served(small_cat, policy=OfflinePolicy(0)) as parts:
        ino = await file_ino(parts, small_cat, "small")
        with medium_away(small_cat):
            assert await parts.ops.getxattr(ino, XATTR_ONLINE, CTX) == b"no"
            started = time.monotonic()
            with pytest.raises(pyfuse3.FUSEError) as caught:
                await parts.ops.open(ino, os.O_RDONLY, CTX)
            assert caught.value.errno == errno.ENOMEDIUM
            assert time.monotonic() - started < 0.5
            # metadata never needs the medium
            assert (await parts.ops.getattr(ino, CTX)).st_size == 6
            # a file without data needs no medium either
            assert await read_all(parts, await file_ino(parts, small_cat, "empty")) == b""
        assert await parts.ops.getxattr(ino, XATTR_ONLINE, CTX) in (b"no", b"yes")


async def test_offline_wait_times_out_and_withdraws(small_cat: Catalog) -> None:
    async with served(small_cat, policy=OfflinePolicy(0.6)) as parts:
        parts.requests.grace = 0.1
        ino = await file_ino(parts, small_cat, "small")
        with medium_away(small_cat):
            started = time.monotonic()
            with pytest.raises(pyfuse3.FUSEError) as caught:
                await parts.ops.open(ino, os.O_RDONLY, CTX)
            assert caught.value.errno == errno.ENOMEDIUM
            assert 0.5 < time.monotonic() - started < 2
            await eventually(lambda: parts.requests.pending() == [])  # after the grace
            assert list((small_cat.home / "requests").glob("*.json")) == []


async def test_offline_wait_until_served_then_staged(small_cat: Catalog) -> None:
    async with served(small_cat) as parts:
        parts.requests.poll = 0.1
        ino = await file_ino(parts, small_cat, "small")
        other = await file_ino(parts, small_cat, "big")
        with medium_away(small_cat):
            got: list[bytes] = []
            done = trio.Event()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_collect, got, done, read_all(parts, ino))
                await trio.sleep(0.4)
                assert not got  # still waiting
                [request] = parts.requests.pending()
                assert request.medium.label == "P-001" and request.waiters == 1
                published = list((small_cat.home / "requests").glob("*.json"))
                assert len(published) == 1
                os.rename(small_cat.pool.with_name("pool-away"), small_cat.pool)
                try:
                    with trio.fail_after(3):
                        await done.wait()
                finally:
                    os.rename(small_cat.pool, small_cat.pool.with_name("pool-away"))
            assert got == [b"hello\n"]
            assert list((small_cat.home / "requests").glob("*.json")) == []
            assert list((small_cat.home / "staging").glob("*.vol"))
            # the rest of the staged volume reads without the medium
            assert await read_all(parts, other) == (small_cat.source / "big").read_bytes()


async def _collect(into: list[bytes], done: trio.Event, reading: Any) -> None:
    into.append(await reading)
    done.set()


async def test_interrupted_wait(small_cat: Catalog) -> None:
    async with served(small_cat) as parts:
        ino = await file_ino(parts, small_cat, "small")
        dead = SimpleNamespace(pid=2**22 + 12345)  # no such process: nobody waits any more
        with medium_away(small_cat):
            with pytest.raises(pyfuse3.FUSEError) as caught:
                await parts.ops.open(ino, os.O_RDONLY, dead)
            assert caught.value.errno == errno.EINTR



async def test_a_checkpoint_is_named_for_a_short_while_and_is_stable_inside(
    backed: Backed,
) -> None:
    # a checkpoint's tree never changes, but its name in the plan goes if it is deleted
    async with served(backed.cat) as parts:
        ops = parts.ops
        plan = (await ops.lookup(ROOT_INO, b"default", CTX)).st_ino
        root = await ops.lookup(plan, backed.first.encode(), CTX)
        assert root.entry_timeout == VOLATILE_TIMEOUT and root.attr_timeout == STABLE_TIMEOUT
        top = backed.cat.source_in_tree.split(b"/")[0]
        inside = await ops.lookup(root.st_ino, top, CTX)
        assert inside.entry_timeout == inside.attr_timeout == STABLE_TIMEOUT
