"""Running a piece of a test as the unprivileged user nobody (uid and gid 65534)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

NOBODY = 65534


def as_nobody(work: Callable[[], Any]) -> Any:
    """``work()`` in a forked child that has become nobody; its result, which must be
    JSON (tuples come back as lists). Every module *work* needs must be imported already:
    the interpreter's own files may be out of nobody's reach."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into the test runner
        try:
            os.close(read_end)
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            result = work()
            with os.fdopen(write_end, "w") as pipe:
                json.dump(result, pipe)
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        text = pipe.read()
    os.waitpid(pid, 0)
    if not text:
        raise AssertionError("the work done as nobody failed (see its traceback above)")
    return json.loads(text)
