# SPDX-License-Identifier: GPL-3.0-or-later
"""Serving the tree on a mount point: the pyfuse3 session, its tasks, clean exits.

`serve` is the library entry point: the CLI runs it under ``trio.run`` (foreground, or in
a forked child for background mounts), the daemon will run it in its own nursery with
``await nursery.start(serve, config)``. It returns when the file system is unmounted
(``durafs umount``, ``fusermount3 -u``) and unmounts cleanly when cancelled (SIGTERM in
the CLI). After a crash it leaves the mount in place (``pyfuse3.close(unmount=False)``):
a dead mount answers ENOTCONN, which a mirroring ``rsync --delete`` treats as an error,
whereas an unmounted, empty directory would look like a tree whose files were all
deleted. The next `prepare_mountpoint` lazily unmounts such a stale mount.

pyfuse3 keeps its session in module globals, so one process serves at most one mount.

While a mount is served, ``$DURAFS_HOME/mounts/<key>.json`` names the mount point and the
serving process, so ``durafs umount`` knows whom to wait for.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import re
import shutil
import stat
import subprocess
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyfuse3
import trio

from durafs.engine.access import VolumeAccess
from durafs.engine.collector import gc_relaxed
from durafs.engine.home import Home
from durafs.errors import DurafsError, UsageError
from durafs.format.keys import CatalogKeys
from durafs.fs import devpoll
from durafs.fs.fuseops import Operations
from durafs.fs.reads import (
    DEFAULT_CACHE_BYTES,
    DEFAULT_STAGING_BYTES,
    RUN_WINDOW,
    ChunkSource,
    OfflinePolicy,
    Reader,
    Staging,
)
from durafs.fs.requests import MediaRequests, process_running
from durafs.fs.vfs import Tree
from durafs.index.catalog import Catalog

log = logging.getLogger(__name__)

#: Page cache of the mount's index connections, KiB: the tree's queries touch few pages,
#: and the default (64 MiB each) would dominate the mount's memory after a big listing.
TREE_CACHE_KIB = 16_384
ACCESS_CACHE_KIB = 2_048
#: The mount's subtype, and so its type in /proc/self/mountinfo: `durafs umount` and the
#: stale-mount cleanup touch nothing else.
SUBTYPE = "durafs"
FSTYPE = f"fuse.{SUBTYPE}"
#: Seconds `unmount` waits for the serving process to exit.
EXIT_WAIT = 15.0
#: Garbage collector thresholds while serving. Each request allocates a few dozen
#: short-lived objects and the caches hold tens of thousands of long-lived ones: with the
#: defaults (700, 10, 10) collections took about a sixth of a request's CPU time.
GC_THRESHOLDS = (50_000, 20, 20)
#: Kernel readahead of the mount, KiB. FUSE starts at 128 KiB, which cuts a sequential
#: read into 128-256 KiB requests; 1 MiB (also the largest request libfuse takes) needs
#: a quarter of the round trips. Only root may set it (sysfs); others keep the default.
READAHEAD_KIB = 1024


class MountError(DurafsError):
    """The tree could not be mounted or unmounted."""


@dataclass
class MountConfig:
    """Everything a mount needs; *keys* must be able to read (identities loaded).
    *run_window* is the reader's (`Reader`: how far it fetches ahead in a volume)."""

    mountpoint: str
    home: Home
    keys: CatalogKeys
    policy: OfflinePolicy = field(default_factory=OfflinePolicy)
    allow_other: bool = False
    cache_bytes: int = DEFAULT_CACHE_BYTES
    staging_bytes: int = DEFAULT_STAGING_BYTES
    debug: bool = False
    run_window: int = RUN_WINDOW

    def fuse_options(self) -> set[str]:
        # fsname shows in mount(8) and df; a bare word would be taken for a relative path
        home = str(self.home.path)
        fsname = f"durafs:{home}" if "," not in home and "\\" not in home else "durafs:"
        options = {"ro", "default_permissions", f"fsname={fsname}", f"subtype={SUBTYPE}"}
        if self.allow_other:
            options.add("allow_other")
        if self.debug:
            options.add("debug")
        return options


# -- the mount point ----------------------------------------------------------------------


def mount_state(path: str) -> str:
    """``free`` (a directory to mount on), ``mounted`` or ``stale`` (ENOTCONN)."""
    try:
        st = os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ENOTCONN:
            return "stale"
        if exc.errno == errno.ENOENT:
            raise UsageError(f"{path}: no such directory") from exc
        raise
    if not stat.S_ISDIR(st.st_mode):
        raise UsageError(f"{path}: not a directory")
    return "mounted" if os.path.ismount(path) else "free"


def prepare_mountpoint(path: str) -> None:
    """Make sure *path* (a real path) can be mounted on: lazily unmount a stale durafs
    mount left by a crash, refuse a live one, leave any other file system alone."""
    state = mount_state(path)
    if state == "stale":
        _require_ours(path, "stale ")
        log.warning("%s: cleaning up a stale mount (transport endpoint is not connected)", path)
        _lazy_unmount(path)
        state = mount_state(path)
        if state == "stale":
            raise MountError(f"{path}: a stale mount is in the way and could not be removed; "
                             f"remove it with: fusermount3 -uz {path}")
    if state == "mounted":
        raise UsageError(f"{path} is already a mount point (unmount it: durafs umount {path})")


def _lazy_unmount(path: str) -> None:
    for command in (["fusermount3", "-u", "-z", path], ["umount", "-l", path]):
        if shutil.which(command[0]) is None:
            continue
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode == 0:
            return
        log.debug("%s: %s", " ".join(command), result.stderr.strip())


def _require_ours(path: str, what: str = "") -> None:
    kind = mount_type(path)
    if kind != FSTYPE:
        raise UsageError(f"{path}: a {what}{kind or 'unknown'} mount, not a durafs one: "
                         "durafs leaves it alone")


def unmount(path: str) -> None:
    """Unmount the durafs tree at *path*, a real path (a stale one lazily); UsageError for
    any other file system, MountError if it stays mounted."""
    state = mount_state(path)
    if state == "free":
        raise UsageError(f"{path} is not mounted")
    _require_ours(path)
    if state == "stale":
        _lazy_unmount(path)
    else:
        result = subprocess.run(["fusermount3", "-u", path], capture_output=True, text=True,
                                check=False)
        if result.returncode != 0:
            detail = result.stderr.strip() or f"exit status {result.returncode}"
            if "busy" in detail:
                detail += (f" (files or directories in it are in use; close them, or detach "
                           f"it now and let it go when they close: fusermount3 -uz {path})")
            raise MountError(f"cannot unmount {path}: {detail}")
    if mount_state(path) != "free":
        raise MountError(f"{path} is still mounted")


# -- mount records ------------------------------------------------------------------------


def _record_path(home: Home, mountpoint: str) -> Path:
    key = hashlib.sha256(os.fsencode(mountpoint)).hexdigest()[:20]
    return home.path / "mounts" / f"{key}.json"


def read_mount_record(home: Home, mountpoint: str) -> dict[str, Any] | None:
    try:
        record = json.loads(_record_path(home, mountpoint).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def drop_mount_record(home: Home, mountpoint: str) -> None:
    """Forget the mount on *mountpoint* (its server, killed, could not)."""
    _record_path(home, mountpoint).unlink(missing_ok=True)


def _write_mount_record(home: Home, mountpoint: str) -> Path:
    path = _record_path(home, mountpoint)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps({"mountpoint": mountpoint, "pid": os.getpid(),
                               "started_ns": time.time_ns()}) + "\n")
    os.replace(tmp, path)
    return path


def wait_for_exit(pid: int, timeout: float = EXIT_WAIT) -> bool:
    """Wait until process *pid* has exited (or is a zombie); False on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not process_running(pid):
            return True
        time.sleep(0.05)
    return not process_running(pid)




# -- serving ------------------------------------------------------------------------------


def _open_catalog(home: Home, cache_kib: int) -> Catalog:
    catalog = home.catalog(readonly=True)
    catalog.db.execute(f"PRAGMA cache_size = -{int(cache_kib)}")
    return catalog


@dataclass
class Parts:
    """A mount's pieces, assembled but not mounted (tests call `ops` handlers directly)."""

    tree: Tree
    reader: Reader
    requests: MediaRequests
    ops: Operations

    def start(self, nursery: trio.Nursery) -> None:
        """Start the background tasks (media request pollers, readahead) in *nursery*."""
        self.requests.start(nursery)
        self.reader.start(nursery)


@contextmanager
def assemble(config: MountConfig) -> Iterator[Parts]:
    """Open the index connections and build the tree, reader, requests and handlers."""
    with ExitStack() as stack:
        tree = Tree(stack.enter_context(_open_catalog(config.home, TREE_CACHE_KIB)))
        access = VolumeAccess(stack.enter_context(_open_catalog(config.home, ACCESS_CACHE_KIB)),
                              config.keys, wait=0)
        staging = Staging(config.home.staging, config.staging_bytes)
        source = ChunkSource(config.keys, access, staging)
        stack.callback(source.close)
        requests = MediaRequests(config.home.path / "requests", mountpoint=config.mountpoint,
                                 probe=_never_online)
        stack.callback(requests.close)
        reader = Reader(source, requests, policy=config.policy, cache_bytes=config.cache_bytes,
                        neighbours=tree.chunks_after, run_window=config.run_window)
        requests.probe = reader.fresh_probe
        requests.explain = reader.offline_reason
        yield Parts(tree, reader, requests, Operations(tree, reader))


async def serve(config: MountConfig, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    """Mount the tree on *config.mountpoint* and serve it until it is unmounted.

    Reports readiness through *task_status* once the kernel mount exists. Cancelling
    the caller's scope unmounts cleanly. Sets the process's garbage collector thresholds
    to `GC_THRESHOLDS` (and freezes what exists by then) while it serves.
    """
    await trio.to_thread.run_sync(prepare_mountpoint, config.mountpoint)
    # Resolved before mounting: afterwards the lstat would wait for this very process.
    target = await trio.to_thread.run_sync(os.path.realpath, config.mountpoint)
    # modules, index connections: nothing to collect there, ever
    with assemble(config) as parts, gc_relaxed(GC_THRESHOLDS):
        await _session(config, parts, target, task_status)


async def _never_online(_medium: object) -> bool:
    return False


def mount_device(target: str, mountinfo: str = "/proc/self/mountinfo") -> str | None:
    """``major:minor`` of the newest mount on *target* (a real path), from *mountinfo*
    (the mount itself is not asked: it may not serve yet)."""
    found = _newest_mount(target, mountinfo)
    return found[0] if found else None


def mount_type(target: str, mountinfo: str = "/proc/self/mountinfo") -> str | None:
    """The file system type of the newest mount on *target* (``fuse.durafs`` for ours)."""
    found = _newest_mount(target, mountinfo)
    return found[1] if found else None


def _newest_mount(target: str, mountinfo: str) -> tuple[str, str] | None:
    """(device, type) of the newest mount on *target*, from *mountinfo*."""
    found = None
    with open(mountinfo, encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            fields = line.rstrip("\n").split(" ")
            where = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4])
            if where == target:
                found = (fields[2], fields[fields.index("-") + 1])
    return found


def _raise_readahead(target: str, kib: int = READAHEAD_KIB) -> None:
    """Best effort: set the kernel readahead of the mount on *target* (see READAHEAD_KIB)."""
    try:
        device = mount_device(target)
        if device is None:
            raise OSError(f"{target} is not in /proc/self/mountinfo")
        with open(f"/sys/class/bdi/{device}/read_ahead_kb", "w", encoding="ascii") as f:
            f.write(f"{kib}\n")
    except OSError as exc:
        log.debug("kernel readahead of %s left as it is: %s", target, exc)


async def _raise_readahead_after_init(ops: Operations, target: str) -> None:
    # The kernel lowers the readahead to what the INIT answer allows (libfuse: 128 KiB)
    # when it gets that answer, so raising it must wait until then.
    await ops.initialized.wait()
    await trio.to_thread.run_sync(_raise_readahead, target)


async def _session(config: MountConfig, parts: Parts, target: str, task_status: Any) -> None:
    try:
        pyfuse3.init(parts.ops, config.mountpoint, config.fuse_options())
    except RuntimeError as exc:
        hint = ""
        if config.allow_other and os.geteuid() != 0:
            hint = " (-o allow_other needs user_allow_other in /etc/fuse.conf)"
        raise MountError(f"cannot mount on {config.mountpoint}: {exc}{hint}") from exc
    record: Path | None = None
    crashed = True
    poller = _start_polling()
    try:
        async with trio.open_nursery() as nursery:
            parts.start(nursery)
            nursery.start_soon(_main_then_stop, nursery.cancel_scope)
            nursery.start_soon(_raise_readahead_after_init, parts.ops, target)
            record = _write_mount_record(config.home, config.mountpoint)
            log.info("serving %s on %s", config.home.path, config.mountpoint)
            task_status.started()
        crashed = False
    except BaseException as exc:
        crashed = not _only_cancelled(exc)
        raise
    finally:
        if crashed:
            log.error("the mount of %s crashed; it is left in place (ENOTCONN) until the "
                      "next mount or: fusermount3 -uz %s", config.mountpoint, config.mountpoint)
        if poller is not None:
            devpoll.uninstall()
            log.info("requests taken by polling the device: %d; waits asleep: %d",
                     poller.polled, poller.slept)
        pyfuse3.close(unmount=not crashed)
        if record is not None:
            record.unlink(missing_ok=True)
        log.info("unmounted %s", config.mountpoint)


def _start_polling() -> devpoll.Poller | None:
    """Have pyfuse3 poll the device before sleeping (`durafs.fs.devpoll`); a pyfuse3
    without the hook is served as it comes, only slower."""
    poller = devpoll.Poller()
    try:
        devpoll.install(poller)
    except RuntimeError as exc:
        log.warning("%s", exc)
        return None
    return poller


async def _main_then_stop(scope: trio.CancelScope) -> None:
    await pyfuse3.main()
    scope.cancel()  # unmounted from outside: stop pollers and readahead too


def _only_cancelled(exc: BaseException) -> bool:
    if isinstance(exc, trio.Cancelled):
        return True
    if isinstance(exc, BaseExceptionGroup):
        return exc.split(trio.Cancelled)[1] is None
    return False
