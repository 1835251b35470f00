"""Running the real `durafs` command line from tests, in-process or as a subprocess."""

from __future__ import annotations

import contextlib
import io
import json
import os
import pty
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from durafs.cli.main import main


@dataclass
class Run:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


def durafs(*args: str | os.PathLike[str]) -> Run:
    """`durafs ARGS…` in this process (DURAFS_HOME comes from the test's environment)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([os.fspath(a) for a in args])
    return Run(code, out.getvalue(), err.getvalue())


def durafs_process(*args: str | os.PathLike[str], **kwargs: Any) -> subprocess.Popen[bytes]:
    """`durafs ARGS…` as a child process (for kill -9 tests)."""
    command = [sys.executable, "-m", "durafs.cli.main", *map(os.fspath, args)]
    return subprocess.Popen(command, **kwargs)


def on_a_terminal(*args: str | os.PathLike[str]) -> tuple[int, str]:
    """`durafs ARGS…` as a child process whose stderr is a terminal (where progress is
    shown): its exit status and everything it wrote there."""
    primary, secondary = pty.openpty()
    process = durafs_process(*args, stdout=subprocess.DEVNULL, stderr=secondary)
    os.close(secondary)
    shown = []
    while True:
        try:
            data = os.read(primary, 65536)
        except OSError:  # EIO: the child is gone and the terminal closed
            break
        if not data:
            break
        shown.append(data)
    os.close(primary)
    return process.wait(), b"".join(shown).decode(errors="replace")


def setup_catalog(tmp: Path, encryption: str = "key", **pool: str) -> Path:
    """A catalog with one directory pool `p` at tmp/pool; returns the pool path."""
    # a cheap scrypt work factor keeps password-mode tests fast
    assert durafs("init", "--encryption", encryption, "--work-factor", "12").code == 0
    path = tmp / "pool"
    extra = [f"--{k.replace('_', '-')}={v}" for k, v in pool.items()]
    run = durafs("pool", "add", "p", "--kind", "dir", "--path", path, *extra)
    assert run.code == 0, run.err
    return path


def one_file_backed_up(tmp: Path, text: str = "x") -> tuple[Path, Path]:
    """A source tmp/src holding one file `f` (*text*), backed up into pool `p` of a fresh
    catalog (`setup_catalog`): (source, pool path)."""
    source = tmp / "src"
    source.mkdir()
    (source / "f").write_text(text)
    pool = setup_catalog(tmp)
    assert durafs("backup", source, "--pool", "p").code == 0
    return source, pool


def checkpoint_names(plan: str = "default") -> list[str]:
    run = durafs("checkpoints", "--plan", plan, "--json")
    if run.code == 2 and f"no plan named {plan!r}" in run.err:
        return []
    assert run.code == 0, run.err
    return [c["name"] for c in run.json()]
