"""Work handed to one thread of its own, run in order, a bounded number of jobs behind.

The backup's walking thread is its critical path: what it can hand off without waiting for
the result (encrypting and writing a volume member, serializing catalog lines) goes to a
SerialWorker. The first failure stops later jobs and is raised to the caller at its next
submit or wait, so nothing built on a failed job is finished as if it had not failed.
"""

from __future__ import annotations

import collections
import concurrent.futures
from collections.abc import Callable


class SerialWorker:
    """Runs jobs in submission order on one thread (started on first use), at most
    *max_behind* jobs behind the caller."""

    def __init__(self, name: str, max_behind: int = 2) -> None:
        self.name = name
        self.max_behind = max_behind
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._jobs: collections.deque[concurrent.futures.Future[None]] = collections.deque()
        self._failed = False

    def submit(self, fn: Callable[..., None], *args: object) -> None:
        if self._executor is None:
            self._executor = concurrent.futures.ThreadPoolExecutor(1, self.name)
        self._jobs.append(self._executor.submit(self._run, fn, *args))
        while len(self._jobs) > self.max_behind:
            self._jobs.popleft().result()

    def _run(self, fn: Callable[..., None], *args: object) -> None:
        if self._failed:
            raise RuntimeError(f"{self.name}: an earlier job failed")
        try:
            fn(*args)
        except BaseException:
            self._failed = True
            raise

    def wait(self) -> None:
        """Wait for every job; raise the first failure."""
        while self._jobs:
            self._jobs.popleft().result()

    def close(self, *, wait: bool = True) -> None:
        """Stop the thread; with *wait*, after every job ran (raising the first failure),
        else dropping jobs not started yet."""
        try:
            if wait:
                self.wait()
        finally:
            if self._executor is not None:
                self._executor.shutdown(wait=True, cancel_futures=not wait)
                self._executor = None
            self._jobs.clear()
