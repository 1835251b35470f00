"""Backups of two plans into one pool at the same time: what one commits, the other
finds (engine/dedup.py `PoolChunks.index_empty`: a pool empty when a run began is looked at again
every EMPTY_RECHECK seconds)."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

from durafs.engine.dedup import EMPTY_RECHECK
from tests.engine.cli import durafs, setup_catalog
from tests.support.straced import (
    child_env,
    let_go,
    python_command,
    require_strace,
    strace_command,
    wait_in_log,
)


def test_a_first_backup_finds_what_another_plan_stored_meanwhile(tmp_path: Path) -> None:
    """Plan a's first backup into an empty pool is held as it opens its copy of a file;
    meanwhile plan b backs up the same content, and commits it. Plan a then stores only
    its own file: the pool is not taken to be empty for the whole run."""
    require_strace("one backup is held at a chosen open while another runs")
    setup_catalog(tmp_path, encryption="none")
    # larger than filereader.WHOLE_READ: streamed, its chunks looked up one by one
    shared, own = os.urandom(12 << 20), os.urandom(100_000)
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "own").write_bytes(own)
    held = a / "zz-shared"  # the last in walk order
    held.write_bytes(shared)
    (b / "shared").write_bytes(shared)
    log = tmp_path / "strace.log"
    options = ["-e", "trace=openat", "-P", os.fspath(held),
               "-e", "inject=openat:delay_enter=60000000"]
    backup_a = python_command("-m", "durafs.cli.main", "backup", a, "--pool", "p",
                              "--plan", "a", "--json")
    with subprocess.Popen(strace_command(log, options, backup_a), env=child_env(),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
        wait_in_log(proc, log, os.fsencode(held))
        run = durafs("backup", b, "--pool", "p", "--plan", "b", "--json")
        assert run.code == 0, run.err
        assert run.json()["stats"]["bytes_new"] == len(shared)
        time.sleep(EMPTY_RECHECK + 0.2)  # plan a has looked at the pool before, not since
        let_go(proc)
        out, err = proc.communicate(timeout=120)
    stats = json.loads(out)["stats"]
    assert stats["bytes_new"] == len(own), (stats, err)
    assert durafs("verify", "--read-data").code == 0
    restored = tmp_path / "out"
    assert durafs("restore", f"a/latest{a}", restored).code == 0
    assert (restored / "zz-shared").read_bytes() == shared
