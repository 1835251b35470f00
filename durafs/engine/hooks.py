"""A plan's pre- and post-backup hooks: shell commands run around a backup (to quiesce a
database, say), whose failure the backup reports.

A hook runs in a session of its own, so that an interrupted backup ends it with all it
started (a signal sent to durafs alone reaches none of them), and with /dev/null as its
input: its output is captured, so nobody would see what it asks. Should durafs itself be
killed while a hook runs (kill -9, the OOM killer), a watcher process ends the hook's
process group in its place.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time

from durafs.engine.home import env_without_secrets

#: Seconds an interrupted hook gets to end on SIGTERM before its process group is killed.
HOOK_GRACE = 5.0
#: The watch kept on a hook by a process of its own (`sh -c WATCH sh PGID`): its input is
#: a pipe only durafs writes to, so reaching its end without a line means durafs died
#: (kill -9, the OOM killer) while the hook ran; it then ends the hook's process group as
#: an interrupted backup does.
#: (Numbered signals: dash's kill takes neither `--` nor a name before a negative id.)
_HOOK_WATCH = (f'IFS= read -r _ || {{ kill -15 "-$1"; sleep {HOOK_GRACE:g}; '
               'kill -9 "-$1"; } 2>/dev/null')


def run_hook(command: str, what: str) -> str | None:
    """Run the shell *command* (*what* names it in messages) to its end; None if it
    succeeded, else why it failed, with what it wrote to stderr."""
    # a hook is any command, written into the plan by whoever set it: no passphrase for it
    with subprocess.Popen(command, shell=True, stdin=subprocess.DEVNULL, env=env_without_secrets(),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          errors="replace",  # what a hook writes need not be UTF-8
                          start_new_session=True) as hook:
        watch = _HookWatch(hook.pid)
        try:
            _, stderr = hook.communicate()
        except BaseException:
            _end_hook(hook)
            raise
        finally:
            watch.stand_down()
    if hook.returncode == 0:
        return None
    return f"{what} `{command}` failed (exit {hook.returncode}): {stderr.strip()}"


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


def _end_hook(hook: subprocess.Popen[str]) -> None:
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
