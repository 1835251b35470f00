# SPDX-License-Identifier: GPL-3.0-or-later
"""Pieces of the read path on their own: policies, the chunk cache, staging, requests."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import trio

from durafs.engine.access import VolumeAccess
from durafs.engine.home import Home
from durafs.errors import MediumOfflineError
from durafs.fs.errors import Interrupted
from durafs.fs.reads import (
    ChunkCache,
    ChunkSource,
    OfflinePolicy,
    Reader,
    Staging,
    _adjacent,
)
from durafs.fs.requests import MediaRequests, read_requests, signal_pending
from durafs.fs.vfs import Tree
from durafs.index.catalog import open_catalog
from durafs.index.rows import ChunkRow, MediumRow, VolumeRow
from tests.fs.polling import eventually

from .catalogs import make_catalog
from .conftest import Backed
from .test_vfs import resolve


def test_offline_policy_parsing() -> None:
    assert OfflinePolicy.parse("wait").timeout is None
    assert OfflinePolicy.parse("fail").timeout == 0
    assert OfflinePolicy.parse("wait:2.5").timeout == 2.5
    for bad in ("", "wait:", "wait:-1", "wait:x", "never", "fail:3", "wait:inf"):
        with pytest.raises(ValueError):
            OfflinePolicy.parse(bad)


def test_chunk_cache_is_bounded_by_bytes() -> None:
    cache = ChunkCache(100)
    for i in range(5):
        cache.put(i, bytes(30))
    assert cache.used <= 100 and 0 not in cache and 4 in cache
    cache.get(2)  # recently used: kept
    cache.put(9, bytes(30))
    assert 2 in cache and 3 not in cache
    cache.put(10, bytes(101))  # larger than the cache: not kept
    assert 10 not in cache


def test_staging_copies_whole_volumes_and_evicts_least_recent(backed: Backed,
                                                              tmp_path: Path) -> None:
    with open_catalog(backed.cat.index, readonly=True) as catalog:
        volume = next(v for v in catalog.volumes() if v.kind == "data")
        medium = catalog.medium(volume.medium_id)
    assert medium is not None
    staging = Staging(tmp_path / "staging", capacity=volume.stored_size - 1)
    assert not staging.stage(volume, medium)  # larger than the whole staging area
    staging.capacity = volume.stored_size
    assert not staging.has(volume) and staging.open(volume) is None
    # an older copy of another volume is in the way: it is evicted to make room
    other = dataclasses.replace(volume, uuid="0" * 32)
    staging.path(other).write_bytes(b"x" * 100)
    os.utime(staging.path(other), (time.time() - 100,) * 2)
    assert staging.stage(volume, medium)
    assert staging.has(volume) and not staging.path(other).exists()
    source = backed.cat.pool / "volumes" / (volume.name or "")
    assert staging.path(volume).read_bytes() == source.read_bytes()
    handle = staging.open(volume)
    assert handle is not None and handle.read_at(0, 16) == source.read_bytes()[:16]
    handle.close()


def test_staging_keeps_copies_in_progress_of_live_mounts(tmp_path: Path) -> None:
    directory = tmp_path / "staging"
    directory.mkdir()
    mine = directory / f".tmp-abc-{os.getpid()}"
    dead = directory / ".tmp-abc-99999999"
    mine.write_bytes(b"x")
    dead.write_bytes(b"x")
    Staging(directory)
    assert mine.exists() and not dead.exists()


def test_signal_pending_sees_a_handled_signal() -> None:
    # a child that blocks SIGUSR1, gets one, and reports when it is pending
    child = subprocess.Popen(
        [sys.executable, "-c",
         "import signal, sys, time\n"
         "signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})\n"
         "print('ready', flush=True)\n"
         "time.sleep(30)\n"], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline() == "ready\n"
        assert not signal_pending(child.pid)
        child.send_signal(signal.SIGUSR1)
        time.sleep(0.1)
        assert not signal_pending(child.pid)  # blocked: it cannot interrupt anything
        child.send_signal(signal.SIGTERM)
        child.wait(timeout=5)
    finally:
        child.kill()
        child.wait()
    assert signal_pending(child.pid)  # gone: nobody waits any more


def _medium(label: str = "M-1") -> MediumRow:
    return MediumRow(1, 1, "p", "uuid-1", label, "dir", "/nowhere", "shelf 2", None, 0,
                     "active", None, 0)


async def test_requests_join_serve_and_publish(tmp_path: Path) -> None:
    online = {"now": False}

    async def probe(_: MediumRow) -> bool:
        return online["now"]

    requests = MediaRequests(tmp_path, mountpoint="/mnt", probe=probe, poll=0.05, grace=0.05)
    async with trio.open_nursery() as nursery:
        requests.start(nursery)
        done: list[str] = []
        both = trio.Event()

        async def waiter(name: str) -> None:
            await requests.wait_online(_medium(), f"open of {name}", give_up_after=None)
            done.append(name)
            if len(done) == 2:
                both.set()

        nursery.start_soon(waiter, "a")
        nursery.start_soon(waiter, "b")
        await eventually(lambda: [r.waiters for r in requests.pending()] == [2])
        [request] = requests.pending()
        assert request.waiters == 2 and request.reason in ("open of a", "open of b")
        [record] = read_requests(tmp_path)
        assert record["medium"] == "M-1" and record["waiters"] == 2
        assert record["location"] == "shelf 2" and record["pid"] == os.getpid()
        online["now"] = True
        with trio.fail_after(2):
            await both.wait()
        assert sorted(done) == ["a", "b"] and requests.pending() == []
        assert read_requests(tmp_path) == []


async def test_requests_time_out_and_interrupts(tmp_path: Path) -> None:
    async def never(_: MediumRow) -> bool:
        return False

    requests = MediaRequests(tmp_path, mountpoint="/mnt", probe=never, poll=0.05, grace=0.05)
    async with trio.open_nursery() as nursery:
        requests.start(nursery)
        with pytest.raises(MediumOfflineError):
            await requests.wait_online(_medium(), "open of x", give_up_after=0.2)
        with pytest.raises(Interrupted):
            await requests.wait_online(_medium(), "open of y", give_up_after=None,
                                       interrupted=lambda: True)
        await eventually(lambda: requests.pending() == [] and read_requests(tmp_path) == [])
        nursery.cancel_scope.cancel()



class _HeldStaging(Staging):
    """Staging whose copies wait until *go* is set: a slow medium."""

    go = threading.Event()

    def stage(self, volume: VolumeRow, medium: MediumRow) -> bool:
        self.go.wait(30)
        return super().stage(volume, medium)


async def test_an_opener_waiting_for_staging_leaves_on_a_signal(tmp_path: Path) -> None:
    source = tmp_path / "src"
    source.mkdir()
    (source / "f").write_bytes(b"on a slow medium\n")
    cat = make_catalog(tmp_path, source, encryption="none")
    checkpoint = cat.backup()
    keys = Home(str(cat.home)).keys(read=True)
    with open_catalog(cat.index, readonly=True) as catalog:
        tree = Tree(catalog)
        path = b"default/" + checkpoint.encode() + b"/" + cat.source_in_tree + b"/f"
        plan = tree.read_plan(resolve(tree, path).ino)
        staging = _HeldStaging(tmp_path / "staging")
        access = VolumeAccess(catalog, keys, wait=0)
        chunks = ChunkSource(keys, access, staging)
        requests = MediaRequests(tmp_path / "requests", mountpoint="/mnt", probe=None)
        reader = Reader(chunks, requests)
        requests.probe = reader.fresh_probe
        signalled, left = False, trio.Event()
        cat.pool.rename(tmp_path / "away")  # unplugged
        async with trio.open_nursery() as nursery:
            requests.start(nursery)
            reader.start(nursery)
            with trio.fail_after(20):
                async def opener() -> None:
                    with pytest.raises(Interrupted, match="being staged"):
                        await reader.ensure_available(plan, lambda: signalled)
                    left.set()

                nursery.start_soon(opener)
                await eventually(lambda: requests.pending() != [])
                (tmp_path / "away").rename(cat.pool)  # back: the copy starts, and hangs
                await eventually(lambda: reader._staging != {})
                signalled = True  # the opener leaves; the copy goes on
                await left.wait()
                assert reader._staging != {}
                _HeldStaging.go.set()
                await eventually(lambda: reader._staging == {})
                assert all(staging.has(v) for v in plan.volumes.values())
            nursery.cancel_scope.cancel()
        chunks.close()


def test_requests_of_a_gone_mount_are_dropped(tmp_path: Path) -> None:
    # a mount killed before it withdrew its requests: its pid is a zombie, or gone and
    # taken by a new process (another start time); the live one stays
    zombie = subprocess.Popen(["true"])
    deadline = time.monotonic() + 5
    while Path(f"/proc/{zombie.pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z":
        assert time.monotonic() < deadline
        time.sleep(0.01)
    me, started = os.getpid(), Path(f"/proc/{os.getpid()}/stat").read_text()
    started_ticks = int(started.rpartition(")")[2].split()[19])
    for name, pid, when in [("live", me, started_ticks), ("reused", me, started_ticks - 1),
                            ("zombie", zombie.pid, None)]:
        (tmp_path / f"{name}.json").write_text(json.dumps(
            {"id": name, "pid": pid, "pid_started": when, "since_ns": 0}))
    assert [r["id"] for r in read_requests(tmp_path)] == ["live"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["live.json"]
    zombie.wait()


def _row(rid: int, offset: int, length: int, size: int, fpos: int = 0) -> ChunkRow:
    return ChunkRow(rid, 1, bytes(32), 1, offset, length, size, False, 1, fpos)


def test_frames_read_together_are_in_volume_order() -> None:
    """Chunks asked in another order than the volume's (rows moved to a new copy keep
    their id) are never read as one span: it would end before one of them."""
    a, b, c = _row(1, 1000, 100, 400), _row(2, 3000, 100, 400), _row(3, 2000, 100, 400)
    assert _adjacent([a, b, c]) == [[a, b], [c]]
    p0, p1, q = _row(4, 5000, 300, 900), _row(5, 5000, 300, 800, 900), _row(6, 5300, 50, 90)
    assert _adjacent([p0, p1, q]) == [[p0, p1, q]]  # a pack's chunks share their frame

