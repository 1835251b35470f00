"""SIGINT and SIGTERM become exceptions, held back over the steps run under `held()`."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator

import pytest

from durafs import interrupts


@pytest.fixture
def installed() -> Iterator[None]:
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    interrupts.install()
    try:
        yield
    finally:
        for signum, handler in before.items():
            signal.signal(signum, handler)


@pytest.mark.parametrize(("signum", "raised"), [(signal.SIGINT, KeyboardInterrupt),
                                                (signal.SIGTERM, interrupts.Terminated)])
def test_a_signal_is_raised_at_once_or_at_the_end_of_a_held_step(
    installed: None, signum: int, raised: type[BaseException]
) -> None:
    with pytest.raises(raised):
        os.kill(os.getpid(), signum)
        signal.sigtimedwait([], 0.01)  # gives the handler its chance to run
    steps = []
    with pytest.raises(raised), interrupts.held():
        os.kill(os.getpid(), signum)
        steps += ["after the signal"]
        with interrupts.held():  # nested: the outermost end raises
            steps += ["nested"]
        steps += ["still held"]
    assert steps == ["after the signal", "nested", "still held"]


def test_held_is_free_outside_the_main_thread(installed: None) -> None:
    seen: list[object] = []

    def work() -> None:
        with interrupts.held():
            seen.append(interrupts._held)

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    assert seen == [0]


def test_uninstall_gives_python_its_own_handling_back(installed: None) -> None:
    # trio, which serves the mount, guards its internals only under Python's SIGINT handler
    interrupts.uninstall()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
