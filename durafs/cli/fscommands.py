# SPDX-License-Identifier: GPL-3.0-or-later
"""The FUSE subcommands: ``durafs mount``, ``durafs umount`` and ``durafs requests``.

``mount`` serves the tree itself (no daemon needed). In the foreground it runs until
unmounted or signalled. In the background it forks *before* starting anything (no
threads, no trio, no index connection cross the fork): the child mounts and serves, and
tells the parent through a pipe whether the mount is ready or why it failed, so the
command returns only once the mount works, or with the error. The child then logs to
``$DURAFS_HOME/logs/mount.log``.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

import trio

from durafs import interrupts
from durafs.cli.output import print_json, print_table, shown
from durafs.engine.home import Home, forget_secret_env
from durafs.engine.owndata import own_paths, refuse_own_place
from durafs.errors import DurafsError, UsageError
from durafs.fs.mount import (
    MountConfig,
    MountError,
    drop_mount_record,
    prepare_mountpoint,
    read_mount_record,
    serve,
    unmount,
    wait_for_exit,
)
from durafs.fs.reads import OfflinePolicy
from durafs.fs.requests import read_requests

Args = argparse.Namespace
log = logging.getLogger("durafs")

#: ``-o`` options ``durafs mount`` accepts.
MOUNT_OPTIONS = frozenset({"allow_other"})


# -- mount --------------------------------------------------------------------------------


def mount(home: Home, args: Args) -> int:
    config = _config(home, args)
    forget_secret_env()  # the keys are read: a passphrase given lives on in memory only
    prepare_mountpoint(config.mountpoint)  # errors now, before any fork
    if os.listdir(config.mountpoint):
        log.warning("%s is not empty: what is in it stays hidden while the tree is mounted",
                    config.mountpoint)
    if args.foreground:
        _run(config, lambda: print(f"durafs: mounted on {shown(config.mountpoint)}",
                                   file=sys.stderr, flush=True))
        return 0
    return _background(config)


def _config(home: Home, args: Args) -> MountConfig:
    home.config()  # a clear error if there is no catalog
    try:
        policy = OfflinePolicy.parse(args.offline)
    except ValueError as exc:
        raise UsageError(f"--offline: {exc}") from exc
    options = {o.strip() for text in args.options for o in text.split(",") if o.strip()}
    unknown = options - MOUNT_OPTIONS
    if unknown:
        raise UsageError(f"-o: unsupported mount option(s) {', '.join(sorted(unknown))} "
                         f"(supported: {', '.join(sorted(MOUNT_OPTIONS))})")
    # the real path: a mount through a symlink is the same mount, and is found again
    mountpoint = os.path.realpath(args.mountpoint)
    _refuse_own_data(home, mountpoint)
    config = MountConfig(mountpoint, home, home.keys(read=True),
                         policy=policy, allow_other="allow_other" in options)
    if args.staging_size is not None:
        config.staging_bytes = args.staging_size
    if args.cache_size is not None:
        config.cache_bytes = args.cache_size
    return config


def _run(config: MountConfig, ready: Callable[[], None]) -> None:
    """Serve until unmounted; SIGTERM, SIGINT or SIGHUP unmount cleanly."""
    interrupts.uninstall()
    trio.run(_serve_until_signal, config, ready)


async def _serve_until_signal(config: MountConfig, ready: Callable[[], None]) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async with trio.open_nursery() as nursery:
            await nursery.start(_serve_then_stop, config, nursery.cancel_scope)
            ready()
            async for signum in signals:
                log.info("%s: unmounting %s", signal.Signals(signum).name, config.mountpoint)
                nursery.cancel_scope.cancel()
                break


async def _serve_then_stop(config: MountConfig, scope: trio.CancelScope,
                           task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    await serve(config, task_status=task_status)
    scope.cancel()  # unmounted from outside: stop watching signals


def _background(config: MountConfig) -> int:
    sys.stdout.flush()
    sys.stderr.flush()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        _child(config, write_end)  # never returns
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        message = pipe.read().decode(errors="replace").strip()
    if message == "ok":
        print(f"mounted on {shown(config.mountpoint)} (pid {pid})")
        return 0
    os.waitpid(pid, 0)
    code, _, text = message.partition(" ")
    error = MountError(text or "the mount process ended before the mount was ready")
    error.exit_code = int(code) if code.isdigit() else 3
    raise error


def _child(config: MountConfig, pipe: int) -> None:
    code = 3

    def report(message: str) -> None:
        nonlocal pipe
        if pipe >= 0:
            os.write(pipe, message.encode() + b"\n")
            os.close(pipe)
            pipe = -1

    try:
        os.setsid()
        _detach(config.home)
        _run(config, lambda: report("ok"))
        code = 0
    except DurafsError as exc:
        log.error("%s", exc)
        report(f"{exc.exit_code} {exc}")
        code = exc.exit_code
    except BaseException as exc:
        log.exception("mount failed")
        report(f"3 {exc}")
    finally:
        logging.shutdown()
        os._exit(code)


def _detach(home: Home) -> None:
    """Stdio to /dev/null, logging to the mount log (the parent's pipes must close)."""
    logs = home.path / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.close(null)
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = logging.FileHandler(logs / "mount.log")
    handler.setFormatter(logging.Formatter(
        "%(asctime)s durafs mount[%(process)d] %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(min(root.level, logging.INFO) or logging.INFO)


# -- umount -------------------------------------------------------------------------------


def _refuse_own_data(home: Home, mountpoint: str) -> None:
    """A mount on, above or inside the catalog directory or a directory medium would hide
    what it serves from (on the catalog directory it would wait for itself forever)."""
    with home.catalog(readonly=True) as catalog:
        refuse_own_place(mountpoint, own_paths(catalog), "mount", holding=True)


def umount(home: Home, args: Args) -> int:
    mountpoint = os.path.realpath(args.mountpoint)
    record = read_mount_record(home, mountpoint)
    unmount(mountpoint)
    pid = record.get("pid") if record else None
    if isinstance(pid, int) and not wait_for_exit(pid):
        raise MountError(f"unmounted {mountpoint}, but its server (pid {pid}) has not exited")
    drop_mount_record(home, mountpoint)  # gone with its server, unless that was killed
    print(f"unmounted {shown(mountpoint)}")
    return 0


# -- requests -----------------------------------------------------------------------------


def requests(home: Home, args: Args) -> int:
    home.config()  # a clear error if there is no catalog
    rows = read_requests(home.path / "requests")
    if args.json:
        print_json(rows)
        return 0
    now = time.time_ns()
    print_table(
        ("medium", "pool", "where", "reason", "since", "who waits", "mount", "pid"),
        [(r.get("medium"), r.get("pool"),
          r.get("offline_reason") or r.get("location") or r.get("path") or "-",
          r.get("reason"), f"{r.get('since')} ({(now - r.get('since_ns', now)) // 10**9} s)",
          _who(r), r.get("mountpoint"), r.get("pid")) for r in rows],
    )
    return 0


def _who(request: dict[str, Any]) -> str:
    """``cat[4242], rsync[4250]``: the processes waiting (or the count, from an older mount)."""
    who = request.get("who")
    if not isinstance(who, list):
        return str(request.get("waiters"))
    return ", ".join(f"{w.get('command', '?')}[{w.get('pid', '?')}]" for w in who
                     if isinstance(w, dict)) or "-"
