"""The `durafs` command: argument parsing and the exit-code contract.

Exit status: 0 success; 1 done, but some paths were skipped or damage was found (each
named); 2 usage or configuration error; 3 any other failure.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import signal
import sys
import uuid
from collections.abc import Callable
from typing import NoReturn, TypeVar

from durafs import interrupts
from durafs.cli import commands
from durafs.cli.output import parse_size, positive_size, shown
from durafs.engine.home import Home
from durafs.engine.poolwriter import MIN_CAPACITY
from durafs.errors import DurafsError, UsageError
from durafs.format.age_keys import MAX_READ_WORK_FACTOR, MIN_WORK_FACTOR

log = logging.getLogger("durafs")
N = TypeVar("N", int, float)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{self.prog}: {message}")


def _fs(name: str) -> Callable[..., int]:
    """A FUSE subcommand, imported only when run: pyfuse3 and trio cost 0.3 s to import,
    which every backup would pay otherwise."""

    def run(home: Home, args: argparse.Namespace) -> int:
        from durafs.cli import fscommands

        return int(getattr(fscommands, name)(home, args))

    return run


def _number(parse: Callable[[str], N], ok: Callable[[N], bool],
            what: str) -> Callable[[str], N]:
    """An argument type: *parse* the text, and refuse it, named, unless *ok* says the
    value is *what* the option takes."""

    def check(text: str) -> N:
        try:
            value = parse(text)
        except ValueError:
            value = None
        if value is None or not ok(value):  # nan compares false: refused too
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}")
        return value

    return check


_percent = _number(lambda text: float(text.rstrip("%")), lambda v: 0 < v <= 100,
                   "a percentage in (0, 100]")
#: A wait: 0 or more, finite (no wait is "forever": leave the option out).
_seconds = _number(float, lambda v: 0 <= v < math.inf, "a number of seconds (0 or more)")
#: scrypt's cost as log2 N, in the range age allows (checked before anything is made).
# a catalog made with more could be read neither by durafs nor by `age -d`
_work_factor = _number(int, lambda v: MIN_WORK_FACTOR <= v <= MAX_READ_WORK_FACTOR,
                       f"a work factor in {MIN_WORK_FACTOR}..{MAX_READ_WORK_FACTOR}")


def _text(text: str) -> str:
    """A name the index keeps as text (a plan, a pool, a label, a location, a medium's
    path): the shell may pass any bytes, and the undecodable ones cannot be stored."""
    try:
        text.encode()
    except UnicodeEncodeError:
        raise argparse.ArgumentTypeError(f"'{text}' is not UTF-8 text") from None
    return text


def _new_name(text: str) -> str:
    """A new pool's name or medium's label: text (see _text) that shows in tables, medium
    markers and messages, so not empty or blank (nothing there to tell it by)."""
    if not text.strip():
        raise argparse.ArgumentTypeError(f"{text!r} is not a name: it is empty or blank")
    return _text(text)


def _medium_path(text: str) -> str:
    """A directory medium's path: text (see _text), and never empty, which os.path.abspath
    would take for the current directory (an unset shell variable, `--path "$DISK"`)."""
    if not text:
        raise argparse.ArgumentTypeError("a medium's path is empty (give a directory; "
                                         "'.' for the current one)")
    return _text(text)


def _capacity(text: str) -> int:
    """A medium's capacity: a size, or 'none' (0) for no limit but the disk's own."""
    return 0 if text.strip().lower() == "none" else _medium_size(text)


def _medium_size(text: str) -> int:
    """A medium's capacity, which must take a volume: a smaller one could only ever be
    'full' (said at the first backup, long after the typo)."""
    size = positive_size(text)
    if size < MIN_CAPACITY:
        raise UsageError(f"{text!r} is too small for a medium's capacity: it must have room "
                         f"for a volume ({MIN_CAPACITY // 1024} KiB at least)")
    return size


def _add(sub: argparse._SubParsersAction[_Parser], name: str, func: Callable[..., int],
         help_text: str) -> _Parser:
    parser = sub.add_parser(name, help=help_text, description=help_text)
    parser.set_defaults(func=func)
    return parser


def build_parser() -> _Parser:
    parser = _Parser(prog="durafs", description="Backups you can mount.")
    parser.add_argument("--home", help="catalog directory (default $DURAFS_HOME, "
                        "/var/lib/durafs as root, ~/.local/share/durafs otherwise)")
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _add_setup_commands(sub)
    _add_media_commands(sub)
    _add_data_commands(sub)
    _add_mount_commands(sub)
    return parser


def _add_setup_commands(sub: argparse._SubParsersAction[_Parser]) -> None:
    """init and key."""
    p = _add(sub, "init", commands.init, "create a new catalog")
    p.add_argument("--encryption", choices=("key", "password", "none"), default="key")
    p.add_argument("--work-factor", type=_work_factor, default=18,
                   help="password mode: scrypt cost as log2 N (default 18, as age)")

    key = _add(sub, "key", commands.key_help, "key management")
    ksub = key.add_subparsers(dest="key_command", required=True, parser_class=_Parser)
    _add(ksub, "recipient", commands.key_recipient, "print the age recipient (age1…)")
    p = _add(ksub, "export-identity", commands.key_export, "write the age identity file")
    p.add_argument("file")
    p.add_argument("--protect", action="store_true",
                   help="encrypt the identity file with a passphrase "
                        "(DURAFS_IDENTITY_PASSPHRASE or a prompt)")


def _add_media_commands(sub: argparse._SubParsersAction[_Parser]) -> None:
    """pool and media."""
    pool = _add(sub, "pool", commands.key_help, "pools of media")
    psub = pool.add_subparsers(dest="pool_command", required=True, parser_class=_Parser)
    p = _add(psub, "add", commands.pool_add, "add a pool (and its first medium)")
    p.add_argument("name", type=_new_name)
    p.add_argument("--kind", choices=("dir",), required=True)
    p.add_argument("--path", required=True, type=_medium_path)
    p.add_argument("--volume-size", type=positive_size, default=parse_size("1G"))
    p.add_argument("--label", type=_new_name)
    p.add_argument("--capacity", type=_medium_size)
    p.add_argument("--location", default="", type=_text)
    p = _add(psub, "list", commands.pool_list, "list pools")
    p.add_argument("--json", action="store_true")
    p = _add(psub, "set", commands.pool_set, "change a pool's settings")
    p.add_argument("name", type=_text)
    p.add_argument("--volume-size", type=positive_size, required=True)

    media = _add(sub, "media", commands.key_help, "media")
    msub = media.add_subparsers(dest="media_command", required=True, parser_class=_Parser)
    p = _add(msub, "list", commands.media_list, "list every medium")
    p.add_argument("--json", action="store_true")
    p = _add(msub, "set", commands.media_set, "change what durafs knows of a medium")
    p.add_argument("label", type=_text)
    p.add_argument("--capacity", type=_capacity, help="usable bytes, or 'none' for no limit")
    p.add_argument("--location", type=_text, help="where it is kept (free text)")
    p.add_argument("--path", type=_medium_path,
                   help="where it is mounted now (its marker must be there)")
    p = _add(msub, "add", commands.media_add, "add a medium (a directory or disk) to a pool")
    p.add_argument("pool", type=_text)
    p.add_argument("--path", required=True, type=_medium_path)
    p.add_argument("--label", type=_new_name)
    p.add_argument("--capacity", type=_medium_size)
    p.add_argument("--location", default="", type=_text)


def _add_data_commands(sub: argparse._SubParsersAction[_Parser]) -> None:
    """backup, the listings, restore, verify and recover."""
    p = _add(sub, "backup", commands.backup, "back up source directories")
    p.add_argument("sources", nargs="+")
    p.add_argument("--pool", required=True, type=_text)
    p.add_argument("--plan", default="default", type=_text)
    p.add_argument("--exclude", action="append", default=[])
    p.add_argument("--one-file-system", action="store_true")
    p.add_argument("--follow-symlinks", action="store_true")
    p.add_argument("--dry-run", action="store_true")
    p.add_argument("--pre-hook", help="command run before the backup (saved in the plan)")
    p.add_argument("--post-hook", help="command run after the backup (saved in the plan)")
    p.add_argument("--media-timeout", type=_seconds,
                   help="seconds to wait for an offline medium (default: forever)")
    p.add_argument("--json", action="store_true")

    p = _add(sub, "checkpoints", commands.checkpoints, "list checkpoints")
    p.add_argument("--plan", type=_text)
    p.add_argument("--json", action="store_true")
    p = _add(sub, "ls", commands.ls, "list a directory of a checkpoint")
    p.add_argument("spec", metavar="PLAN/CHECKPOINT[/PATH]")
    p.add_argument("--json", action="store_true")
    p = _add(sub, "find", commands.find, "find names across every checkpoint")
    p.add_argument("pattern")
    p.add_argument("--plan", type=_text)
    p.add_argument("--json", action="store_true")
    p = _add(sub, "restore", commands.restore, "restore a checkpoint or a subtree")
    p.add_argument("spec", metavar="PLAN/CHECKPOINT[/PATH]")
    p.add_argument("target")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--media-timeout", type=_seconds, default=None)
    p.add_argument("--json", action="store_true")
    p = _add(sub, "verify", commands.verify, "check the media against the index")
    p.add_argument("--pool", type=_text)
    group = p.add_mutually_exclusive_group()
    group.add_argument("--read-data", action="store_true")
    group.add_argument("--read-data-subset", type=_percent, metavar="PERCENT")
    p.add_argument("--json", action="store_true")
    p = _add(sub, "recover", commands.recover, "rebuild a lost index from directory media")
    p.add_argument("--path", action="append", required=True, type=_medium_path)
    p.add_argument("--identity", help="age identity file (DURAFS_IDENTITY_PASSPHRASE or a "
                   "prompt if it is passphrase-protected)")
    p.add_argument("--json", action="store_true")


def _add_mount_commands(sub: argparse._SubParsersAction[_Parser]) -> None:
    """mount, umount and requests."""
    p = _add(sub, "mount", _fs("mount"), "mount the checkpoints read-only on MOUNTPOINT")
    p.add_argument("mountpoint")
    p.add_argument("--foreground", action="store_true", help="serve in this process")
    p.add_argument("--offline", default="wait", metavar="wait|fail|wait:SECONDS",
                   help="when a file's medium is offline: wait for it (default), fail at "
                        "once (ENOMEDIUM), or wait SECONDS, then fail")
    p.add_argument("-o", dest="options", action="append", default=[], metavar="OPTION",
                   help="mount option: allow_other (let other users enter the mount)")
    p.add_argument("--staging-size", type=parse_size, default=None,
                   help="room for volumes staged from waited-for media (default 2G)")
    p.add_argument("--cache-size", type=parse_size, default=None,
                   help="memory for decrypted chunks (default 64M)")
    p = _add(sub, "umount", _fs("umount"), "unmount a mounted tree")
    p.add_argument("mountpoint")
    p = _add(sub, "requests", _fs("requests"), "list open media requests")
    p.add_argument("--json", action="store_true")

def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(format="durafs: %(message)s", level=logging.WARNING)
    try:
        args = build_parser().parse_args(argv)
        if args.verbose:
            logging.getLogger().setLevel(logging.DEBUG)
        home = Home(args.home and os.path.abspath(args.home))
        return int(args.func(home, args))
    except DurafsError as exc:
        print(f"durafs: {shown(str(exc))}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("durafs: interrupted", file=sys.stderr)
        return 130
    except interrupts.Terminated:
        print("durafs: terminated", file=sys.stderr)
        return 128 + signal.SIGTERM
    except BrokenPipeError:
        # `durafs ls … | head`: the reader went away; the status says the output is not
        # whole (as when the last flush fails, see run), no message needs saying so
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 3
    except OSError as exc:
        print(f"durafs: {shown(str(exc))}", file=sys.stderr)
        return 3


def new_label(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6].upper()}"


def run() -> NoReturn:
    """The `durafs` command. After a successful command everything is written, synced and
    closed, so the interpreter's teardown (freeing every object a backup cached: 0.1 s or
    more of a 0.6 s no-change backup) is skipped; after a failure the usual exit runs the
    finalizers (an abandoned volume sink removes its temporary file)."""
    interrupts.install()  # `durafs mount` handles its signals itself, under trio
    code = main()
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except BrokenPipeError:
        # the reader went away before the end of the output: say so by the exit status,
        # and point stdout at /dev/null so that the exit does not complain again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = code or 3
    if code != 0:
        sys.exit(code)
    logging.shutdown()
    os._exit(0)


if __name__ == "__main__":
    run()
