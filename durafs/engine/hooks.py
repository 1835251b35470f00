"""A plan's pre- and post-backup hooks: shell commands run around a backup (to quiesce a
database, say), whose failure the backup reports.

A hook runs in a session of its own, so that an interrupted backup ends it with all it
started (a signal sent to durafs alone reaches none of them), and with /dev/null as its
input: nobody would see what it asks (its stdout goes to /dev/null, the end of its stderr
into the message should it fail). Should durafs itself be
killed while a hook runs (kill -9, the OOM killer), a watcher process ends the hook's
process group in its place. A hook gets durafs's environment without the passphrases
(`durafs.engine.home.SECRET_ENV`): a hook is the plan's business, the keys are not. It runs in
`/`: it is saved with the plan and run by every later backup of it, from wherever that
is started (cron, a shell elsewhere), so `./dump.sh` must not work only from one place.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time

from durafs.engine.home import env_without_secrets

#: Seconds an interrupted hook gets to end on SIGTERM before its process group is killed.
HOOK_GRACE = 5.0
#: How much of the end of what a failing hook wrote to stderr its message quotes (the
#: reason is usually last; a hook may write without bound, durafs keeps no more).
STDERR_KEPT = 4096
#: Seconds a failed hook's stderr is waited for once its shell has ended: what the shell
#: wrote is in the pipe already, but a command it left running may hold the pipe for ever.
STDERR_LINGER = 1.0
#: The watch kept on a hook by a process of its own (`sh -c WATCH sh PGID`): its input is
#: a pipe only durafs writes to, so reaching its end without a line means durafs died
#: (kill -9, the OOM killer) while the hook ran; it then ends the hook's process group as
#: an interrupted backup does.
#: (Numbered signals: dash's kill takes neither `--` nor a name before a negative id.)
_HOOK_WATCH = (f'IFS= read -r _ || {{ kill -15 "-$1"; sleep {HOOK_GRACE:g}; '
               'kill -9 "-$1"; } 2>/dev/null')


def run_hook(command: str, what: str) -> str | None:
    """Run the shell *command* (*what* names it in messages) until its shell ends (what it
    left running in the background is not waited for: a service it started, say); None if
    it succeeded, else why it failed, with the end of what it wrote to stderr. Its stdout
    goes to /dev/null: nobody reads it, and it may be a whole dump written by mistake."""
    read_end, write_end = os.pipe()
    stderr = _Tail(read_end)
    try:
        hook = subprocess.Popen(command, shell=True, stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=write_end,
                                env=env_without_secrets(), start_new_session=True,
                                cwd="/")  # the same for every backup, wherever run from
    finally:
        os.close(write_end)  # the hook's now: the tail ends when the last holder closes it
    with hook:
        watch = _HookWatch(hook.pid)
        try:
            hook.wait()
        except BaseException:
            _end_hook(hook)
            raise
        finally:
            watch.stand_down()
    if hook.returncode == 0:
        return None
    return f"{what} `{command}` failed ({_ending(hook.returncode)}): {stderr.text()}"


def _ending(returncode: int) -> str:
    """How a hook's shell ended, as a message says it: Popen's -N is signal N, which no
    exit status can be (`exit -9` read as a status the hook chose)."""
    if returncode >= 0:
        return f"exit {returncode}"
    try:
        return f"killed by {signal.Signals(-returncode).name}"
    except ValueError:  # a real-time signal has no name
        return f"killed by signal {-returncode}"


class _Tail:
    """The last STDERR_KEPT bytes written to the pipe *fd*, read on a thread of its own to
    the pipe's end (then *fd* is closed): a hook may write without bound, and may leave
    commands running that hold the pipe long after the hook has ended."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._kept = bytearray()
        self._cut = False  # whether more was written than is kept
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._read, name="durafs-hook-stderr",
                                        daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            while chunk := os.read(self._fd, 65536):
                with self._lock:
                    self._kept += chunk
                    self._cut = self._cut or len(self._kept) > STDERR_KEPT
                    del self._kept[:-STDERR_KEPT]
        finally:
            os.close(self._fd)

    def text(self) -> str:
        """What is kept, once the pipe has ended or STDERR_LINGER has passed."""
        self._thread.join(STDERR_LINGER)
        with self._lock:
            kept, cut = bytes(self._kept), self._cut
        text = kept.decode(errors="replace").strip()  # a hook's output need not be UTF-8
        return f"…{text}" if cut else text


class _HookWatch:
    """Ends the process group *pgid* (a hook's) should durafs die before `stand_down`:
    a hook's commands (a database dump, say) must not go on after the backup is gone."""

    def __init__(self, pgid: int) -> None:
        read_end, self._write_end = os.pipe()
        try:
            # a session of its own: a Ctrl-C on the terminal is durafs's to handle
            self._watcher = subprocess.Popen(
                ["sh", "-c", _HOOK_WATCH, "sh", str(pgid)], stdin=read_end,
                env=env_without_secrets(),
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        except BaseException:
            os.close(self._write_end)
            raise
        finally:
            os.close(read_end)

    def stand_down(self) -> None:
        """The hook is over (or ended by durafs itself): the watch goes away."""
        try:
            os.write(self._write_end, b"done\n")
        except OSError:
            pass  # it is gone already
        finally:
            os.close(self._write_end)
        self._watcher.wait()


def _end_hook(hook: subprocess.Popen[bytes]) -> None:
    """End the hook's process group: SIGTERM (its traps may clean up), then SIGKILL for
    whatever is left once its shell has ended or HOOK_GRACE has passed (the shell is left
    unreaped meanwhile, so the group's id stays its own)."""
    try:
        os.killpg(hook.pid, signal.SIGTERM)
        deadline = time.monotonic() + HOOK_GRACE
        while (time.monotonic() < deadline and os.waitid(
                os.P_PID, hook.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None):
            time.sleep(0.02)
    except (ProcessLookupError, ChildProcessError):
        pass
    finally:
        try:
            os.killpg(hook.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
