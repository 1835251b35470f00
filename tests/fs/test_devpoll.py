# SPDX-License-Identifier: GPL-3.0-or-later
"""The device poller and read lock of pyfuse3's loop, on a pipe instead of /dev/fuse."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator

import pyfuse3
import pytest
import trio

from durafs.fs import devpoll
from durafs.fs.devpoll import Poller, ReadLock, TrioWithPolling


def _marker(ran: list[int]):  # type: ignore[no-untyped-def]
    async def mark() -> None:
        ran.append(1)
    return mark


@pytest.fixture
def pipe() -> Iterator[tuple[int, int]]:
    r, w = os.pipe()
    yield r, w
    os.close(r)
    os.close(w)


async def test_a_queued_request_is_taken_without_a_scheduler_pass(
        pipe: tuple[int, int]) -> None:
    r, w = pipe
    os.write(w, b"x")
    poller = Poller()
    ran: list[int] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_marker(ran))  # runs at the next scheduler pass
        await poller.wait_readable(r)
        assert ran == []  # no pass happened
        assert (poller.polled, poller.slept) == (1, 0)
    assert ran == [1]


async def test_a_request_soon_after_is_caught_by_polling(pipe: tuple[int, int]) -> None:
    r, w = pipe
    poller = Poller(spin=0.5)  # generous: a loaded machine may take long to start a thread
    threading.Timer(0.01, os.write, (w, b"x")).start()
    await poller.wait_readable(r)
    assert (poller.polled, poller.slept) == (1, 0)


async def test_no_request_within_the_spin_sleeps_and_the_next_wait_does_not_spin(
        pipe: tuple[int, int]) -> None:
    r, w = pipe
    poller = Poller(spin=0.001)
    threading.Timer(0.2, os.write, (w, b"x")).start()
    started = time.monotonic()
    await poller.wait_readable(r)
    assert time.monotonic() - started >= 0.15  # it waited for the write
    assert (poller.polled, poller.slept) == (0, 1)
    assert not poller.spinning  # a client that pauses is not polled for
    os.read(r, 1)
    threading.Timer(0.05, os.write, (w, b"y")).start()
    await poller.wait_readable(r)  # sleeps at once: nothing polled
    assert (poller.polled, poller.slept) == (0, 2)


async def test_a_fast_request_after_a_sleep_turns_polling_back_on(
        pipe: tuple[int, int]) -> None:
    r, w = pipe
    poller = Poller(spin=0.5)
    poller.spinning = False
    threading.Timer(0.01, os.write, (w, b"x")).start()
    await poller.wait_readable(r)
    assert poller.slept == 1 and poller.spinning


async def test_polling_gives_way_to_a_runnable_task(pipe: tuple[int, int]) -> None:
    r, w = pipe
    poller = Poller(spin=5.0)  # would hold the thread for 5 s if it did not give way
    ran = trio.Event()

    async def other() -> None:
        ran.set()
        os.write(w, b"x")

    started = time.monotonic()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(other)
        await poller.wait_readable(r)
    assert ran.is_set() and time.monotonic() - started < 2.0
    assert poller.slept == 1


async def test_polling_gives_way_to_a_worker_threads_result(pipe: tuple[int, int]) -> None:
    r, w = pipe
    poller = Poller(spin=5.0)
    done = []

    async def in_thread() -> None:
        done.append(await trio.to_thread.run_sync(time.sleep, 0.05))
        os.write(w, b"x")

    started = time.monotonic()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(in_thread)
        await trio.sleep(0.01)  # the thread is running: its result comes back mid-spin
        await poller.wait_readable(r)
    assert done and time.monotonic() - started < 2.0


async def test_a_streak_of_queued_requests_ends_with_a_scheduler_pass(
        pipe: tuple[int, int]) -> None:
    r, w = pipe
    os.write(w, b"x")
    poller = Poller(max_streak=3)
    ran: list[int] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_marker(ran))
        for _ in range(3):
            await poller.wait_readable(r)
        assert ran == []
        await poller.wait_readable(r)  # the fourth goes through trio's scheduler
        assert (poller.polled, poller.slept) == (3, 1)
        assert poller.streak == 0
    assert ran == [1]


async def test_the_read_lock_excludes_and_lets_a_parked_task_in() -> None:
    lock = ReadLock(Poller())
    inside = []
    order = []

    async def user(name: str, hold: float) -> None:
        async with lock:
            inside.append(name)
            assert len(inside) == 1
            await trio.sleep(hold)  # a handler that waits: the others may go in
            inside.remove(name)
            order.append(name)

    async with trio.open_nursery() as nursery:
        for name in "abc":
            nursery.start_soon(user, name, 0.02)
    assert sorted(order) == ["a", "b", "c"]


async def test_the_read_lock_can_be_taken_again_at_once_by_its_releaser() -> None:
    poller = Poller()
    lock = ReadLock(poller)
    parked = []

    async def waiter() -> None:
        async with lock:
            parked.append("in")

    async with trio.open_nursery() as nursery:
        async with lock:
            nursery.start_soon(waiter)
            await trio.sleep(0.01)  # the waiter parks
        # released: the waiter is woken (and counted) but has not run; take it again
        assert poller.woken == 1
        async with lock:
            assert parked == []
        await trio.sleep(0.01)
    assert parked == ["in"] and poller.woken == 0


def test_install_swaps_what_pyfuse3_sees_as_trio_and_uninstall_restores_it() -> None:
    assert pyfuse3.trio is trio  # type: ignore[attr-defined]
    poller = Poller()
    devpoll.install(poller)
    try:
        fake = pyfuse3.trio  # type: ignore[attr-defined]
        assert isinstance(fake, TrioWithPolling)
        assert fake.lowlevel.wait_readable == poller.wait_readable
        assert fake.lowlevel.current_task is trio.lowlevel.current_task
        assert fake.open_nursery is trio.open_nursery
        assert isinstance(fake.Lock(), ReadLock)
        with pytest.raises(RuntimeError, match="not possible"):
            devpoll.install(poller)  # twice: refused, not stacked
    finally:
        devpoll.uninstall()
    assert pyfuse3.trio is trio  # type: ignore[attr-defined]
