"""Ctrl-C and SIGTERM as exceptions, held back over the few steps that must not be cut.

A command unwinds on SIGINT (KeyboardInterrupt) and SIGTERM (`Terminated`) so that what it
began and did not finish is cleaned up: a half-written restored file, a volume being
written. An exception raised by a signal handler can land between any two bytecodes,
though, and a few steps leave something behind if cut in the middle: a temporary volume
file created but not yet handed to the object that removes it. Those steps run under
`held()`: a signal arriving meanwhile is raised when they end.

Python runs signal handlers in the main thread only, so `held()` matters there and is
free elsewhere.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType


class Terminated(BaseException):
    """SIGTERM arrived (the counterpart of KeyboardInterrupt)."""


_held = 0
_pending: int | None = None


def install() -> None:
    """Turn SIGINT and SIGTERM into exceptions in the main thread (call from it)."""
    signal.signal(signal.SIGINT, _handler)
    signal.signal(signal.SIGTERM, _handler)


def uninstall() -> None:
    """Python's own handling again (before ``trio.run``: trio protects its internals from
    KeyboardInterrupt only when it finds Python's SIGINT handler)."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _handler(signum: int, frame: FrameType | None) -> None:
    global _pending
    if _held:
        _pending = signum
        return
    _raise(signum)


def _raise(signum: int) -> None:
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise Terminated


@contextmanager
def held() -> Iterator[None]:
    """Run the body whole: a SIGINT or SIGTERM meanwhile is raised at its end."""
    global _held, _pending
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _held += 1
    try:
        yield
    finally:
        _held -= 1
        if not _held and _pending is not None:
            signum, _pending = _pending, None
            _raise(signum)
