"""Waiting in tests for state that worker threads change (a loaded machine is late)."""

from __future__ import annotations

from collections.abc import Callable

import trio


async def eventually(condition: Callable[[], bool], limit: float = 10) -> None:
    """Poll *condition* until it holds; fail the test if it still does not after *limit* s.

    Polling, not an Event: the state lives in worker threads and files, which signal nothing.
    """
    with trio.move_on_after(limit):
        while not condition():  # noqa: ASYNC110 - see the docstring
            await trio.sleep(0.02)
    assert condition()
