# SPDX-License-Identifier: GPL-3.0-or-later
"""Offline media through a real mount: opens wait (and are listed by `durafs requests`),
fail, time out or are interrupted; metadata never waits; waited-for volumes are staged."""

from __future__ import annotations

import errno
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from durafs.fs.requests import read_requests
from tests.fs.catalogs import Catalog, make_catalog

from .mounting import durafs, mounted, wait_until

pytestmark = pytest.mark.fuse

LABEL = "P-001"


@dataclass
class World:
    cat: Catalog
    mnt: Path

    def file(self, name: str, mnt: Path | None = None) -> Path:
        return (mnt or self.mnt) / "default" / "latest" / str(self.cat.source).lstrip("/") / name

    def requests(self) -> list[dict[str, object]]:
        """What `durafs requests --json` prints (read in-process: polled often)."""
        return read_requests(self.cat.home / "requests")

    def requests_cli(self) -> list[dict[str, object]]:
        return list(json.loads(durafs(self.cat.home, "requests", "--json").stdout))

    def clear_staging(self) -> None:
        for staged in (self.cat.home / "staging").glob("*.vol"):
            staged.unlink()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("offline")
    source = tmp / "src"
    source.mkdir()
    rng = random.Random(9)
    for name in ("one", "two", "three", "four", "five"):
        (source / name).write_bytes(rng.randbytes(1000) + name.encode())
    (source / "big").write_bytes(rng.randbytes(3 * 1024 * 1024))
    cat = make_catalog(tmp, source)  # encrypted: staged copies are decrypted on read
    cat.backup()
    with mounted(cat.home, tmp / "mnt") as mnt:
        yield World(cat, mnt)


@contextmanager
def medium_away(world: World) -> Iterator[None]:
    """Unplug the medium (move its directory away) and forget staged copies."""
    world.clear_staging()
    away = world.cat.pool.with_name("pool-away")
    os.rename(world.cat.pool, away)
    try:
        time.sleep(1.1)  # the mount believes an online probe for up to a second
        yield
    finally:
        if away.exists():
            os.rename(away, world.cat.pool)


def _read_in_thread(path: Path) -> tuple[threading.Thread, list[bytes | BaseException]]:
    result: list[bytes | BaseException] = []

    def read() -> None:
        try:
            result.append(path.read_bytes())
        except OSError as exc:
            result.append(exc)

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    return thread, result


def test_open_waits_for_the_medium_then_stages_its_volume(world: World) -> None:
    one = world.file("one")
    with medium_away(world):
        thread, result = _read_in_thread(one)
        wait_until(lambda: len(world.requests()) == 1, 5, "the media request")
        assert thread.is_alive() and not result
        [request] = world.requests_cli()
        assert request["medium"] == LABEL and request["pool"] == "p"
        assert request["path"] == str(world.cat.pool) and request["waiters"] == 1
        assert "open of default/" in str(request["reason"]) and str(request["reason"]).endswith(
            "/src/one")
        assert request["mountpoint"] == str(world.mnt) and isinstance(request["pid"], int)
        [who] = request["who"]  # the reading thread, by its id and command
        assert str(who["pid"]) in os.listdir(f"/proc/{os.getpid()}/task")
        assert who["command"] != "?" and who["reason"] == request["reason"]
        table = durafs(world.cat.home, "requests").stdout
        assert LABEL in table and "/src/one" in table
        assert f"{who['command']}[{who['pid']}]" in table
        # metadata never waits for the medium
        started = time.monotonic()
        assert sorted(os.listdir(one.parent))[:2] == ["big", "five"]
        assert os.stat(one).st_size == 1003
        assert _getfattr(one, "user.durafs.online") == "no"
        assert time.monotonic() - started < 1
        os.rename(world.cat.pool.with_name("pool-away"), world.cat.pool)  # plug it back in
        thread.join(timeout=5)
        assert result == [(world.cat.source / "one").read_bytes()]
        assert world.requests() == []
        assert list((world.cat.home / "staging").glob("*.vol"))
        # unplugged again: the rest of that volume comes from the staging area
        os.rename(world.cat.pool, world.cat.pool.with_name("pool-away"))
        time.sleep(1.1)
        for name in ("two", "big"):
            assert world.file(name).read_bytes() == (world.cat.source / name).read_bytes()
        assert _getfattr(world.file("three"), "user.durafs.online") == "yes"


def _getfattr(path: Path, name: str) -> str:
    return subprocess.run(["getfattr", "--only-values", "-n", name, str(path)],
                          capture_output=True, text=True, check=True).stdout


def _open_errno(path: Path) -> tuple[int, float]:
    started = time.monotonic()
    try:
        os.close(os.open(path, os.O_RDONLY))
    except OSError as exc:
        return exc.errno or 0, time.monotonic() - started
    return 0, time.monotonic() - started


def test_offline_fail_returns_enomedium_at_once(world: World, tmp_path: Path) -> None:
    with mounted(world.cat.home, tmp_path / "mnt", "--offline", "fail") as mnt, \
            medium_away(world):
        number, took = _open_errno(world.file("four", mnt))
        assert number == errno.ENOMEDIUM and took < 1
        assert world.requests() == []
        assert os.stat(world.file("four", mnt)).st_size == 1004


def test_offline_wait_seconds_then_enomedium(world: World, tmp_path: Path) -> None:
    with mounted(world.cat.home, tmp_path / "mnt", "--offline", "wait:2") as mnt, \
            medium_away(world):
        number, took = _open_errno(world.file("four", mnt))
        assert number == errno.ENOMEDIUM and 1.8 < took < 4
        wait_until(lambda: world.requests() == [], 3, "the request to be withdrawn")


def test_a_signal_ends_the_wait(world: World) -> None:
    with medium_away(world):
        cat = subprocess.Popen(["cat", str(world.file("five"))], stdout=subprocess.DEVNULL)
        wait_until(lambda: len(world.requests()) == 1, 5, "the media request")
        cat.send_signal(signal.SIGTERM)
        assert cat.wait(timeout=3) == -signal.SIGTERM
        # a handled signal makes the open fail with EINTR (the handler raises here)
        script = ("import os, signal, sys\n"
                  "class Stop(Exception): pass\n"
                  "def stop(*_): raise Stop\n"
                  "signal.signal(signal.SIGUSR1, stop)\n"
                  "print('ready', flush=True)\n"
                  "try:\n"
                  f"    os.open({str(world.file('five'))!r}, os.O_RDONLY)\n"
                  "except Stop:\n"
                  "    print('interrupted')\n")
        child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                                 text=True)
        assert child.stdout is not None and child.stdout.readline() == "ready\n"
        wait_until(lambda: any(r["waiters"] == 1 for r in world.requests()), 5, "the waiter")
        time.sleep(0.3)
        child.send_signal(signal.SIGUSR1)
        assert child.wait(timeout=3) == 0 and child.stdout.read() == "interrupted\n"
        wait_until(lambda: world.requests() == [], 4, "the request to be withdrawn")


def test_a_request_says_what_is_at_the_medium_s_place_instead(world: World,
                                                               tmp_path: Path) -> None:
    """A disk whose marker is damaged is mounted right where the medium belongs: "bring
    P-001 online" alone would send the user to the shelf. The request names the marker
    and what is wrong with it, and a timed-out open says it too."""
    with mounted(world.cat.home, tmp_path / "mnt", "--offline", "wait:3") as mnt, \
            medium_away(world):
        world.cat.pool.mkdir()
        marker = world.cat.pool / "DURAFS-MEDIUM.json"
        marker.write_text("{ not json")
        try:
            thread, result = _read_in_thread(world.file("four", mnt))
            wait_until(lambda: len(world.requests()) == 1, 5, "the media request")
            [request] = world.requests_cli()
            why = str(request["offline_reason"])
            assert why.startswith(f"{marker} is damaged"), why
            assert f"{marker} is damaged" in durafs(world.cat.home, "requests").stdout
            thread.join(timeout=5)
            assert isinstance(result[0], OSError) and result[0].errno == errno.ENOMEDIUM
        finally:
            shutil.rmtree(world.cat.pool)
    # a medium plainly away has no such reason
    with medium_away(world):
        thread, result = _read_in_thread(world.file("four"))
        wait_until(lambda: len(world.requests()) == 1, 5, "the media request")
        assert world.requests_cli()[0]["offline_reason"] is None
    thread.join(timeout=5)
    assert result == [(world.cat.source / "four").read_bytes()]


def test_requests_ignores_files_of_dead_mounts(world: World) -> None:
    directory = world.cat.home / "requests"
    directory.mkdir(exist_ok=True)
    stale = directory / "dead.json"
    stale.write_text(json.dumps({"id": "dead", "medium": "X", "pid": 2**22 + 7}))
    assert world.requests_cli() == []
    assert not stale.exists()
    assert shutil.which("getfattr")  # the tests above need it (apt-get install attr)
