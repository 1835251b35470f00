"""Child processes run under strace: the system calls they really made, and real errors or
delays put into chosen ones (``-e inject=…``), so a test sees the code meet the condition
itself instead of a stand-in swapped into a module.

The strace options name the system calls; ``-P PATH`` narrows them to those on one path
(or a descriptor open on it), which is how a test fails one file's writes and nothing else.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

#: The path and flags of an open in strace's output: ``openat(3, "name", O_…`` and
#: ``openat2(3, "name", {flags=O_…``.
OPEN_RE = re.compile(
    rb'\bopen(?:at2?)?\((?:[^,"]+, )?"((?:[^"\\]|\\.)*)", \{?(?:flags=)?([A-Z0-9_|]+)')


def require_strace(why: str) -> None:
    """Skip the calling test where strace is not installed (scripts/setup.sh installs it)."""
    if shutil.which("strace") is None:
        pytest.skip(f"needs strace: {why}")


#: The checkout under test: a child run from another directory still imports it.
REPO = Path(__file__).resolve().parents[2]


def child_env() -> dict[str, str]:
    """This process's environment, with the checkout first on the child's PYTHONPATH."""
    path = [os.fspath(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(path)}


def python_command(*args: str | os.PathLike[str]) -> list[str]:
    """This test run's Python with *args* (``-m module …`` or ``-c code …``)."""
    return [sys.executable, *map(os.fspath, args)]


def strace_command(log: Path, options: Sequence[str], command: Sequence[str]) -> list[str]:
    """*command* under strace, following its threads and children, logging to *log* only
    the system calls *options* select (no signals, no exit lines)."""
    return ["strace", "-f", "-qq", "-e", "signal=none", "-o", os.fspath(log), *options,
            "--", *command]


def run_traced(
    log: Path, options: Sequence[str], command: Sequence[str], **kwargs: Any
) -> subprocess.CompletedProcess[str]:
    """Run *command* to its end under strace (see `strace_command`); its output as text."""
    return subprocess.run(strace_command(log, options, command), capture_output=True,
                          text=True, timeout=300, check=False, **kwargs)


def opens(log: Path) -> list[tuple[bytes, set[bytes]]]:
    """(path as given, flags) of every open the log shows, in order."""
    return [(m.group(1), set(m.group(2).split(b"|"))) for m in OPEN_RE.finditer(
        log.read_bytes())]


def calls(log: Path, name: str) -> int:
    """How many times the log shows system call *name* started."""
    return len(re.findall(rb"^\d+ +%s\(" % re.escape(name.encode()), log.read_bytes(),
                          re.MULTILINE))


def wait_in_log(proc: subprocess.Popen[bytes], log: Path, text: bytes,
                timeout: float = 60.0) -> None:
    """Wait until *log* shows *text*: strace writes a call's start before it holds it
    (``delay_enter``), so a held call is in the log while the process waits."""
    deadline = time.monotonic() + timeout
    while not (log.exists() and text in log.read_bytes()):
        assert proc.poll() is None, f"strace ended before {text!r} was logged"
        assert time.monotonic() < deadline, f"{text!r} never logged"
        time.sleep(0.002)


def let_go(proc: subprocess.Popen[bytes]) -> None:
    """End the tracing, letting the call strace (*proc*) holds go on at once: strace is
    killed, since on SIGTERM it would sit out the delay before it detached; the kernel
    detaches its tracees as it dies, and they run on, untraced."""
    proc.kill()
