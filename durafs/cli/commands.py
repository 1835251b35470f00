"""One function per `durafs` subcommand: parse nothing, call the engine, print results."""

from __future__ import annotations

import argparse
import contextlib
import os
import stat
import sys
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict

from durafs.cli.output import (
    Progress,
    human_size,
    name_fields,
    print_json,
    print_json_items,
    print_table,
    shown,
)
from durafs.engine.access import VolumeAccess
from durafs.engine.backup import Backup, BackupOptions, BackupResult
from durafs.engine.excludes import ExcludePatternError, check_patterns
from durafs.engine.fsmeta import at_path
from durafs.engine.home import Home, read_passphrase
from durafs.engine.owndata import own_paths, refuse_own_place
from durafs.errors import CryptoError, DurafsError, FormatError, NoIdentityError, UsageError
from durafs.format import age
from durafs.format.keys import CatalogKeys
from durafs.index.catalog import Catalog
from durafs.index.db import IndexDamagedError
from durafs.index.rows import MediumRow
from durafs.media.base import Medium, MediumMarker
from durafs.media.directory import DirectoryMedium
from durafs.media.fsutil import fsync_dir, write_all

if TYPE_CHECKING:
    from durafs.engine.verify import VerifyResult

Args = argparse.Namespace


# Rows of the listings, printed as JSON or as tables: typed, so the table code's use of
# each column (sizes formatted, times divided) is checked.


class _PoolListing(TypedDict):
    name: str
    kind: str
    volume_size: int
    media: int


class _MediumListing(TypedDict):
    pool: str
    label: str
    kind: str
    state: str
    online: bool
    #: why it is not online (None when it is): its path is missing, or what is wrong there
    reason: str | None
    used: int
    capacity: int | None
    path: str | None
    location: str


class _EntryListing(TypedDict):
    """One entry of `durafs ls` but for its name (see `name_fields`)."""

    type: str
    mode: str
    size: int
    uid: int
    gid: int
    mtime_ns: int


def _say(message: str) -> None:
    print(f"durafs: {shown(message)}", file=sys.stderr, flush=True)


def init(home: Home, args: Args) -> int:
    passphrase = None
    if args.encryption == "password":
        passphrase = read_passphrase("new passphrase: ", confirm=True)
    config = home.init(args.encryption, work_factor=args.work_factor, passphrase=passphrase)
    print(f"initialised catalog {config.catalog_id} in {shown(str(home.path))} (encryption: "
          f"{args.encryption})")
    if args.encryption == "key":
        print("export the identity and keep it safe: durafs key export-identity FILE")
    return 0


def key_help(home: Home, args: Args) -> int:
    raise UsageError("a subcommand is needed (see --help)")


def key_recipient(home: Home, args: Args) -> int:
    print(home.recipient())
    return 0


def key_export(home: Home, args: Args) -> int:
    passphrase = None
    if args.protect:
        passphrase = read_passphrase("identity passphrase: ", env="DURAFS_IDENTITY_PASSPHRASE",
                                     confirm=True)
    _write_new_file(args.file, age.write_identity_file(home.identity(), passphrase))
    print(f"wrote {shown(args.file)}")
    return 0


def _write_new_file(path: str, data: bytes) -> None:
    """Write *path*, a file that must not exist yet (nor be a symlink), private and on the
    disk before this returns: it may be the only copy of a key. A file that could not be
    written whole (a full disk) is removed: a part of a key file would pass for one."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        raise UsageError(f"{path}: exists already (not overwritten)") from None
    except OSError as exc:
        raise UsageError(f"{path}: cannot be written ({exc.strerror})") from None
    try:
        write_all(fd, data)
        os.fsync(fd)
    except OSError as exc:
        os.close(fd)
        os.unlink(path)
        raise UsageError(f"{path}: cannot be written ({exc.strerror})") from None
    os.close(fd)
    # the file is on the disk; its name too, unless the file system cannot sync a directory
    with contextlib.suppress(OSError):
        fsync_dir(os.path.dirname(path) or ".")


def _outside_catalog(home: Home, path: str) -> None:
    """A medium in the catalog directory would be lost with it, and keep `recover` from
    using that directory (it must be empty): refused before anything is written."""
    own = os.path.realpath(home.path)
    if Path(os.path.realpath(path)).is_relative_to(own):
        raise UsageError(f"{path} is inside durafs's catalog directory ({own}): a medium "
                         "must be somewhere else (another disk, ideally)")


def _add_medium(home: Home, catalog: Catalog, keys: CatalogKeys, pool_name: str,
                args: Args) -> str:
    pool = catalog.pool(pool_name)
    if pool is None:
        raise UsageError(f"no pool named {pool_name!r}")
    count = len(catalog.media(pool.id)) + 1
    label = args.label or f"{pool_name.upper()}-{count:03d}"
    while args.label is None and catalog.medium_by_label(label) is not None:
        count += 1  # pools 'a' and 'A' would both start at A-001
        label = f"{pool_name.upper()}-{count:03d}"
    # checked before the medium is written: a marker naming a medium the index then refuses
    # would make the directory unusable for any other
    taken = catalog.medium_by_label(label)
    if taken is not None:
        raise UsageError(f"label {label!r} is taken (medium of pool {taken.pool} at "
                         f"{taken.path or taken.location or '?'}): choose another with --label")
    marker = MediumMarker(uuid.uuid4().hex, label, pool_name, keys.catalog_id, "dir",
                          time.time_ns(), {})
    path = os.path.abspath(args.path)
    _outside_catalog(home, path)
    medium = DirectoryMedium(path, args.capacity)
    medium.initialize(marker, keys.keys_file_name, keys.keys_file())
    catalog.add_medium(pool.id, uuid=marker.medium_id, label=label, path=path,
                       location=args.location, capacity=args.capacity)
    return label


def pool_add(home: Home, args: Args) -> int:
    keys = home.keys(read=False)  # asked before the write lock is taken (password mode)
    # one transaction: a pool whose first medium cannot be set up is not left behind empty
    # (its name taken, every backup to it refused for want of a medium)
    with home.catalog() as catalog, catalog.db.transaction():
        catalog.add_pool(args.name, args.kind, volume_size=args.volume_size)
        label = _add_medium(home, catalog, keys, args.name, args)
    print(shown(f"pool {args.name}: medium {label} at {os.path.abspath(args.path)}"))
    return 0


def media_add(home: Home, args: Args) -> int:
    keys = home.keys(read=False)
    with home.catalog() as catalog:
        label = _add_medium(home, catalog, keys, args.pool, args)
    print(shown(f"pool {args.pool}: medium {label} at {os.path.abspath(args.path)}"))
    return 0


def pool_set(home: Home, args: Args) -> int:
    with home.catalog() as catalog:
        pool = catalog.pool(args.name)
        if pool is None:
            raise UsageError(f"no pool named {args.name!r} (see `durafs pool list`)")
        catalog.set_volume_size(pool.id, args.volume_size)
    print(shown(f"pool {args.name}: volumes of {human_size(args.volume_size)} from now on"))
    return 0


def media_set(home: Home, args: Args) -> int:
    if args.capacity is None and args.location is None and args.path is None:
        raise UsageError("nothing to change: give --capacity, --location and/or --path")
    with home.catalog() as catalog:
        medium = catalog.medium_by_label(args.label)
        if medium is None:
            raise UsageError(f"no medium labelled {args.label!r} (see `durafs media list`)")
        fields: dict[str, Any] = {}
        if args.capacity is not None:  # 0 stands for 'none' (see _capacity)
            fields["capacity"] = args.capacity or None
        if args.location is not None:
            fields["location"] = args.location
        if args.path is not None:
            fields["path"] = _found_at(medium, args.path)
        catalog.update_medium(medium.id, **fields)
    print(shown(f"medium {args.label}: updated"))
    return 0


def _found_at(medium: MediumRow, path: str) -> str:
    """*path* made absolute, once its marker shows it holds *medium*: a disk mounted at
    another place than before. Anything else there (no marker, another medium's) is
    refused, so a typo never sends the medium's next volumes somewhere it is not."""
    where = os.path.abspath(path)
    if medium.kind != "dir":
        raise UsageError(f"medium {medium.label} is a {medium.kind} medium: it has no path")
    status = DirectoryMedium(where, label=medium.label, medium_id=medium.uuid).status()
    if not status.online:
        raise UsageError(f"medium {medium.label} is not at {where}: {status.reason}")
    return where


def pool_list(home: Home, args: Args) -> int:
    with home.catalog(readonly=True) as catalog:
        pools: list[_PoolListing] = [
            {"name": p.name, "kind": p.kind, "volume_size": p.volume_size,
             "media": len(catalog.media(p.id))} for p in catalog.pools()]
    if args.json:
        print_json(pools)
    else:
        print_table(("pool", "kind", "volume size", "media"),
                    [(p["name"], p["kind"], human_size(p["volume_size"]), p["media"])
                     for p in pools])
    return 0


def media_list(home: Home, args: Args) -> int:
    from durafs.engine.poolwriter import open_medium

    with home.catalog(readonly=True) as catalog:
        rows: list[_MediumListing] = []
        for m in catalog.media():
            medium = open_medium(m)
            status = medium.status()
            rows.append({"pool": m.pool, "label": m.label, "kind": m.kind, "state": m.state,
                         "online": status.online, "reason": status.reason,
                         "used": _used_now(medium, m) if status.online else m.used,
                         "capacity": m.capacity, "path": m.path, "location": m.location})
    if args.json:
        print_json(rows)
    else:
        print_table(("pool", "label", "state", "online", "used", "capacity", "path", "location",
                     "reason"),
                    [(r["pool"], r["label"], r["state"], "yes" if r["online"] else "no",
                      human_size(r["used"]), human_size(r["capacity"]) if r["capacity"] else "-",
                      r["path"], r["location"], r["reason"] or "") for r in rows])
    return 0


def _used_now(medium: Medium, row: MediumRow) -> int:
    """What durafs's files take on an online medium now (files deleted or copied there by
    hand included); what the index last recorded if it cannot be measured."""
    try:
        return medium.used_bytes()
    except (OSError, DurafsError):
        return row.used


def _save_hooks(catalog: Catalog, args: Args) -> None:
    if (args.pre_hook is None and args.post_hook is None) or args.dry_run:
        return
    plan = catalog.ensure_plan(args.plan)
    config = dict(plan.config)
    for key in ("pre_hook", "post_hook"):
        if getattr(args, key) is not None:
            config[key] = getattr(args, key)
    catalog.ensure_plan(args.plan, config)  # stores a config that differs


def _backup_source(src: str, *, missing_ok: bool) -> bytes:
    """*src* as an absolute path; a missing one (unless *missing_ok*: a pre-hook may make
    it), or a symlink to something not a directory, is a usage error. A source that exists
    but cannot be looked at (a directory above it unreadable, a loop) is the scan's to
    report, by name and reason, while the other sources are backed up: only ENOENT means a
    typo. Any length works, as in the scan."""
    if not src:  # an unset shell variable, say: not the current directory
        raise UsageError("a source path is empty")
    path = physical_path(os.fsencode(src))
    try:
        with at_path(path) as (dir_fd, name):
            if not stat.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode):
                return path
            try:
                linked_dir = stat.S_ISDIR(os.stat(name, dir_fd=dir_fd).st_mode)
            except OSError:
                linked_dir = False
    except FileNotFoundError:
        if missing_ok:
            return path
        raise UsageError(f"{src}: no such file or directory") from None
    except OSError:
        return path
    if not linked_dir:
        # a linked directory is walked under the name given; a linked file is not
        raise UsageError(f"{src}: a symlink to something not a directory (name the "
                         "file itself)")
    return path


def _pre_hook_in_effect(home: Home, args: Args) -> bool:
    """Whether a pre-backup hook will run first: given now, or saved with the plan."""
    if args.pre_hook is not None:
        return bool(args.pre_hook) and not args.dry_run
    try:
        with home.catalog(readonly=True) as catalog:
            plan = catalog.plan(args.plan)
    except DurafsError:  # no catalog yet, say: the backup itself tells
        return False
    return plan is not None and bool(plan.config.get("pre_hook")) and not args.dry_run


def backup(home: Home, args: Args) -> int:
    try:
        sources = [_backup_source(src, missing_ok=False) for src in args.sources]
    except UsageError:
        # a source the pre-hook makes (a database dump, say) need not be there yet: the
        # walk names it (exit 1) if the hook did not make it
        if not _pre_hook_in_effect(home, args):
            raise
        sources = [_backup_source(src, missing_ok=True) for src in args.sources]
    try:
        # before the keys, the catalog and the plan's lock: neither a passphrase prompt
        # nor a busy plan comes before this usage error
        check_patterns(args.exclude)
    except ExcludePatternError as exc:
        # quoted as typed: the message is escaped as a whole when it is shown
        raise UsageError(f"--exclude '{exc.pattern}': {exc.reason}") from None
    options = BackupOptions(sources, args.pool, args.plan, args.exclude, args.one_file_system,
                            args.follow_symlinks, args.dry_run, args.media_timeout)
    keys = home.keys(read=None)
    with home.plan_lock(args.plan), home.catalog() as catalog:
        # the plan's last checkpoint is the estimate of the whole (the walk counts as it goes)
        last = catalog.checkpoint(args.plan, "latest")
        progress = Progress(last.stats.get("bytes", 0) if last is not None else 0)
        job = Backup(catalog, keys, options, progress=progress, on_wait=_say)
        # only a backup that goes ahead (its pool known, its plan not busy) keeps its hooks
        _save_hooks(catalog, args)
        result = job.run()
    progress.done()
    for problem in (*result.notes, *result.problems):
        _say(str(problem))
    if args.json:
        print_json({"plan": result.plan, "checkpoint": result.checkpoint,
                    "dry_run": args.dry_run, "stats": result.stats,
                    "problems": [{**name_fields("path", p.path), "reason": p.reason}
                                 for p in result.problems],
                    "notes": [{**name_fields("path", p.path), "reason": p.reason}
                              for p in result.notes]})
    else:
        print(_backup_summary(result, args.dry_run))
    return 1 if result.problems else 0


def _backup_summary(result: BackupResult, dry_run: bool) -> str:
    """A backup's one line. A dry run reads no file, so it cannot know how much of what
    it would read is new data (a first backup's 0 B new data read as nothing to store):
    it says how much it would read."""
    s = result.stats
    counts = (f"{s.get('files', 0)} files, {human_size(s.get('bytes', 0))}; "
              f"{s.get('changed_files', 0)} new or changed")
    if dry_run:
        return (f"would back up {counts}, {human_size(s.get('bytes_to_read', 0))} to read "
                "(how much of it is new data is known only once it is read)")
    return (f"checkpoint {shown(result.plan)}/{result.checkpoint}: {counts}, "
            f"{human_size(s.get('bytes_new', 0))} new data")


def _known_plan(catalog: Catalog, plan: str | None) -> None:
    """A --plan that names no plan is a typo, not an empty answer."""
    if plan is not None and catalog.plan(plan) is None:
        raise UsageError(f"no plan named {plan!r}")


def checkpoints(home: Home, args: Args) -> int:
    with home.catalog(readonly=True) as catalog:
        _known_plan(catalog, args.plan)
        rows = catalog.checkpoints(args.plan)
    data = [{"plan": c.plan, "name": c.name, "created_ns": c.created_ns,
             "files": c.stats.get("files", 0), "bytes": c.stats.get("bytes", 0)} for c in rows]
    if args.json:
        print_json(data)
    else:
        print_table(("plan", "checkpoint", "files", "size"),
                    [(d["plan"], d["name"], d["files"], human_size(d["bytes"])) for d in data])
    return 0


def ls(home: Home, args: Args) -> int:
    from durafs.engine.restore import parse_spec

    with home.catalog(readonly=True) as catalog:
        checkpoint, path = parse_spec(catalog, args.spec)
        plan = catalog.plan(checkpoint.plan)
        assert plan is not None
        top = catalog.resolve(plan.id, checkpoint.seq, path)
        if top is None:
            raise UsageError(f"{os.fsdecode(path)}: not in {checkpoint.plan}/{checkpoint.name}")
        children = catalog.listdir(plan.id, checkpoint.seq, top.path_id) if top.type == "d" \
            else [(path.rsplit(b"/", 1)[-1], top)]
    rows: list[tuple[bytes, _EntryListing]] = [
        (n, {"type": v.type, "mode": oct(v.mode), "size": v.size, "uid": v.uid, "gid": v.gid,
             "mtime_ns": v.mtime_ns}) for n, v in children]
    if args.json:
        print_json([{**name_fields("name", n), **r} for n, r in rows])
    else:
        for n, r in rows:
            when = time.strftime("%Y-%m-%d %H:%M", time.localtime(r["mtime_ns"] / 1e9))
            print(f"{r['type']} {r['mode']:>7} {r['uid']:>6} {r['gid']:>6} {r['size']:>12} "
                  f"{when} {shown(os.fsdecode(n))}")
    return 0


def find(home: Home, args: Args) -> int:
    with home.catalog(readonly=True) as catalog:
        _known_plan(catalog, args.plan)
        # printed as found, not gathered first: a find may give millions of lines
        hits = ({"plan": p, "checkpoint": c, **name_fields("path", path)}
                for p, c, path in catalog.find(args.pattern, args.plan))
        if args.json:
            print_json_items(hits)
        else:
            for h in hits:
                print(shown(f"{h['plan']}/{h['checkpoint']}{h['path']}"))
    return 0


def physical_path(path: bytes) -> bytes:
    """*path* made absolute, with ``..`` meaning what the kernel makes of it: the parent
    of where the path so far leads (through symlinks), as ``ls`` and ``tar`` see it, not
    the text before it (``os.path.abspath`` would back up ``a`` for ``a/link/..``)."""
    parts = path.split(b"/")
    if b".." not in parts:
        return os.path.abspath(path)
    last = len(parts) - 1 - parts[::-1].index(b"..")
    head = os.path.realpath(b"/".join(parts[: last + 1]) or b"/")
    return os.path.abspath(os.path.join(head, *parts[last + 1 :]))


def _restore_target(target: str) -> bytes:
    """TARGET as an absolute path; an empty one (an unset shell variable) is refused
    rather than taken for the current directory, whose contents and metadata it gets."""
    if not target:
        raise UsageError("TARGET is empty (give a directory; '.' for the current one)")
    return physical_path(os.fsencode(target))  # `..` as for a source


def restore(home: Home, args: Args) -> int:
    from durafs.engine.restore import Restore, parse_spec

    keys = home.keys(read=True)
    with home.catalog(readonly=True) as catalog:
        checkpoint, path = parse_spec(catalog, args.spec)
        target = _restore_target(args.target)
        # among durafs's own files it would give their directory the backup's owner,
        # mode and ACLs (letting others at the volumes): refused
        refuse_own_place(os.fsdecode(target), own_paths(catalog), "restore")
        access = VolumeAccess(catalog, keys, wait=args.media_timeout, on_wait=_say)
        progress = Progress()
        try:
            result = Restore(catalog, access, overwrite=args.overwrite,
                             progress=progress).run(checkpoint, path, target)
        finally:
            access.close()
            progress.done()
    for problem in result.problems:
        _say(problem)
    if args.json:
        print_json(result.__dict__)
    else:
        print(f"restored {result.files} files, {human_size(result.bytes)}"
              + (f"; {len(result.problems)} problems" if result.problems else ""))
    return 1 if result.problems else 0


def verify(home: Home, args: Args) -> int:
    result = _verified(home, args)
    _print_verify(result, json_out=args.json)
    # volumes on offline media were not checked: done, but not all of it (exit 1)
    return 0 if result.ok and not result.offline else 1


def _verified(home: Home, args: Args) -> VerifyResult:
    from durafs.engine.verify import Verify, VerifyResult

    keys = home.keys(read=True)
    fraction = 1.0 if args.read_data else (args.read_data_subset or 0) / 100
    try:
        # not read-only: a volume found missing is noted, so backups store it again
        with home.catalog() as catalog:
            access = VolumeAccess(catalog, keys, wait=0)
            progress = Progress(what="volumes")
            try:
                return Verify(catalog, access, fraction=fraction,
                              progress=progress).run(args.pool)
            finally:
                access.close()
                progress.done()
    except IndexDamagedError as exc:  # damage SQLite met before verify's own check did
        return VerifyResult(structure=[str(exc)])


#: Paths a damaged chunk hurts that verify's text output shows (--json has them all).
PATHS_SHOWN = 20


def _print_verify(result: VerifyResult, *, json_out: bool) -> None:
    if json_out:
        # ok: no damage found; complete: every volume was reached (offline lists the rest)
        print_json({"ok": result.ok, "complete": not result.offline, "volumes": result.volumes,
                    "chunks_read": result.chunks_read,
                    "offline": result.offline, "structure": result.structure,
                    "lost": result.lost, "lost_unneeded": result.unneeded,
                    "damage": [d.__dict__ for d in result.damage],
                    "damage_unneeded": result.frames_unneeded,
                    "unknown_volumes": result.unknown})
    else:
        print(f"{result.volumes} volumes checked, {result.chunks_read} chunks read")
        for line in result.offline:
            print(f"not checked: {shown(line)}")
        for line in result.structure:
            print(f"DAMAGE: {shown(line)}")
        for name in result.lost:
            if name in result.unneeded:
                print(f"lost: {shown(name)}: nothing needs it any more")
            else:
                print(f"lost: {shown(name)}: the next backup writes again what it held "
                      "(chunks from the sources that still have them, trees from the index)")
        for line in result.unknown:
            print(f"not in the index: {shown(line)} (left as it is; one a killed backup "
                  "wrote is adopted by the next backup)")
        for line in result.frames_unneeded:
            print(f"damaged, unneeded: {shown(line)}: no checkpoint uses it any more")
        for d in result.damage:
            # the reason may name a medium's path, which the user chose
            print(f"DAMAGE: {d.volume} chunk {d.chunk[:16]}: {shown(d.reason)}")
            for p in d.paths[:PATHS_SHOWN]:
                print(f"  affects {shown(p)}")
            if len(d.paths) > PATHS_SHOWN:  # a chunk deduplicated into thousands of files
                print(f"  ... and {len(d.paths) - PATHS_SHOWN} more (--json lists them all)")


#: An identity file holds a few keys of ~75 bytes each (or them encrypted): anything
#: larger is something else, read no further.
IDENTITY_FILE_MAX = 1024 * 1024


def recover(home: Home, args: Args) -> int:
    from durafs.engine.recover import Recover

    identities: list[Any] = []
    if args.identity:
        try:
            with open(args.identity, "rb") as f:
                data = f.read(IDENTITY_FILE_MAX + 1)
        except OSError as exc:
            raise UsageError(f"identity file {args.identity}: {exc.strerror}") from exc
        if len(data) > IDENTITY_FILE_MAX:  # /dev/zero, a volume given by mistake
            raise UsageError(f"identity file {args.identity}: over {IDENTITY_FILE_MAX} bytes, "
                             "not an identity file (`durafs key export-identity` writes one)")
        passphrase = None
        try:
            protected = age.dearmor(data).startswith(b"age-encryption.org/v1")
        except CryptoError as exc:
            raise UsageError(f"identity file {args.identity}: {exc}") from exc
        if protected:
            passphrase = read_passphrase("identity passphrase: ", env="DURAFS_IDENTITY_PASSPHRASE")
        try:
            identities = list(age.read_identity_file(data, passphrase))
        except (CryptoError, FormatError) as exc:  # a wrong passphrase, not an identity file
            raise UsageError(f"identity file {args.identity}: {exc}") from exc
    elif os.environ.get("DURAFS_PASSPHRASE") is not None or os.isatty(0):
        identities = [age.ScryptIdentity(read_passphrase("durafs passphrase: "))]
    try:
        result = Recover(home, identities, progress=lambda m: None).run(args.path)
    except NoIdentityError as exc:
        if identities:  # a configuration error too: another key is needed
            given = (f"the identity file {args.identity}" if args.identity
                     else "the passphrase given")
            media = ", ".join(args.path)  # as given, not a Python list
            raise UsageError(f"{exc}: {given} does not open the media at {media}") from exc
        raise UsageError(f"{exc}: give the identity file (--identity FILE, written by "
                         "`durafs key export-identity`) or, for a 'password' catalog, the "
                         "passphrase (DURAFS_PASSPHRASE)") from exc
    if args.json:
        print_json(result.__dict__)
    else:
        print(f"recovered {len(result.checkpoints)} checkpoints from {result.volumes} volumes "
              f"on {result.media} media ({result.chunks} chunks)")
    # the media hold no plan's hooks: a backup run without its pre-hook (a database not
    # quiesced) would look like any other
    _say("plans come back without their hooks: give --pre-hook/--post-hook again with the "
         "next backup of a plan that had them")
    for problem in result.problems:
        _say(problem)
    return 1 if result.problems else 0
