"""Progress reports from an engine to whoever shows them (the CLI's progress line).

An engine counts what it has done and the whole it knows of; `Reporter` hands the counts
on at most every `INTERVAL` seconds, so a display costs nothing per file.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from typing import Any

#: Seconds between two reports (a terminal line redrawn faster is not read anyway).
INTERVAL = 0.2

Callback = Callable[[dict[str, Any]], None]


class Reporter:
    """Counts for *callback* (None: nothing is reported), with the whole (*expected*,
    e.g. ``expected_bytes``) known from the start. An engine that keeps its own counts
    passes them as *counts* and only calls `report`."""

    def __init__(self, callback: Callback | None, counts: Counter[str] | None = None,
                 **expected: int) -> None:
        self.callback = callback
        self.counts: Counter[str] = Counter() if counts is None else counts
        self.counts.update(expected)
        self._last = 0.0

    def add(self, **counts: int) -> None:
        """Count what was just done, and report if it is time."""
        self.counts.update(counts)
        self.report()

    def report(self, *, force: bool = False) -> None:
        now = time.monotonic()
        if self.callback is not None and (force or now - self._last >= INTERVAL):
            self._last = now
            self.callback(dict(self.counts))
