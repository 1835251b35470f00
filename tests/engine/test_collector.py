"""The garbage collector policy of long runs: applied inside the block, undone after."""

from __future__ import annotations

import gc

from durafs.engine.collector import RELAXED_THRESHOLDS, gc_frozen, gc_paused, gc_relaxed


def test_relaxed_raises_thresholds_freezes_and_restores() -> None:
    before = gc.get_threshold()
    survivor = [object() for _ in range(10)]
    with gc_relaxed():
        assert gc.get_threshold() == RELAXED_THRESHOLDS
        assert gc.get_freeze_count() >= len(survivor)
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0


def test_relaxed_still_collects_cycles() -> None:
    class Node:
        def __init__(self) -> None:
            self.me = self

    with gc_relaxed():
        Node()
        assert gc.collect() >= 1  # a cycle made inside the block is garbage, and found


def test_frozen_leaves_an_outer_freeze_alone() -> None:
    gc.freeze()
    try:
        count = gc.get_freeze_count()
        with gc_frozen():
            pass
        assert gc.get_freeze_count() == count  # not unfrozen by the inner block
    finally:
        gc.unfreeze()


def test_paused_restores_the_enabled_state() -> None:
    assert gc.isenabled()
    with gc_paused():
        assert not gc.isenabled()
    assert gc.isenabled()
