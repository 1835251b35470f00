# SPDX-License-Identifier: GPL-3.0-or-later
"""Random histories of a source tree against a plain dict model of every checkpoint."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from durafs.index.catalog import Catalog, open_catalog
from durafs.index.rows import PlanRow

from .support import attrs, commit, make_entry, tree_at, version_count

NAMES = [b"a", b"b", b"c\xff", b"d d", b"e\n", b"f.jpg"]
MAX_DEPTH = 3

# A model entry: path -> (type, mode, mtime, content). Content is the symlink target's
# tail for symlinks and nothing for directories.
Model = dict[bytes, tuple[str, int, int, bytes]]


def depth(path: bytes) -> int:
    return 0 if path == b"/" else path.count(b"/")


def child(parent: bytes, name: bytes) -> bytes:
    return parent + name if parent == b"/" else parent + b"/" + name


def below(model: Model, path: bytes) -> list[bytes]:
    return [p for p in model if p == path or p.startswith(path + b"/")]


def add(model: Model, data: st.DataObject) -> None:
    dirs = sorted(p for p, a in model.items() if a[0] == "d" and depth(p) < MAX_DEPTH)
    path = child(data.draw(st.sampled_from(dirs)), data.draw(st.sampled_from(NAMES)))
    if path not in model:
        kind = data.draw(st.sampled_from("fdl"))
        model[path] = (kind, 0o755 if kind == "d" else 0o644, 1, data.draw(st.binary(max_size=3)))


def change(model: Model, data: st.DataObject) -> None:
    path = data.draw(st.sampled_from(sorted(model)))
    kind, mode, mtime, content = model[path]
    what = data.draw(st.sampled_from(["mode", "mtime", "content"]))
    if what == "mode":
        mode ^= 0o022
    elif what == "mtime":
        mtime += 1
    elif kind != "d":  # same length when possible: only the hash tells it changed
        content = content[:-1] + bytes([(content[-1] + 1) % 256]) if content else b"+"
    model[path] = (kind, mode, mtime, content)


def delete(model: Model, data: st.DataObject) -> None:
    victims = sorted(p for p in model if p != b"/")
    if victims:
        for path in below(model, data.draw(st.sampled_from(victims))):
            del model[path]


def rename(model: Model, data: st.DataObject) -> None:
    dirs = sorted(p for p, a in model.items() if a[0] == "d" and p != b"/")
    if not dirs:
        return
    old = data.draw(st.sampled_from(dirs))
    new = child(old.rpartition(b"/")[0] or b"/", data.draw(st.sampled_from(NAMES)))
    if new not in model:
        for path in below(model, old):
            model[new + path[len(old) :]] = model.pop(path)


MUTATIONS = [add, add, change, change, delete, rename]


def entries_of(model: Model, data: st.DataObject) -> list[Any]:
    """The model as a walk: parents first; atime is random (it must not matter)."""
    entries = []
    for path in sorted(model, key=lambda p: p.split(b"/")):
        kind, mode, mtime, content = model[path]
        extra: dict[str, Any] = {"atime": data.draw(st.integers(0, 3))}
        if kind == "f":
            extra["content"] = content
        elif kind == "l":
            extra["target"] = b"t" + content
        entries.append(make_entry(path, kind, mode=mode, mtime=mtime, **extra))
    return entries


def check_checkpoint(catalog: Catalog, plan: PlanRow, seq: int, expected: dict) -> None:
    assert tree_at(catalog, plan, seq) == expected
    for path, attributes in expected.items():
        version = catalog.resolve(plan.id, seq, path)
        assert version is not None and version.type == attributes[0]
        if version.type == "d":
            names = [name for name, _ in catalog.listdir(plan.id, seq, version.path_id)]
            prefix = b"/" if path == b"/" else path + b"/"
            assert names == sorted(
                p[len(prefix) :]
                for p in expected
                if p.startswith(prefix) and p != path and b"/" not in p[len(prefix) :]
            )


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_random_histories_match_the_model(data: st.DataObject) -> None:
    with tempfile.TemporaryDirectory() as tmp, open_catalog(Path(tmp) / "i.sqlite") as catalog:
        plan = catalog.ensure_plan("p")
        model: Model = {b"/": ("d", 0o755, 1, b"")}
        snapshots: dict[int, dict[bytes, tuple[Any, ...]]] = {0: {}}
        for seq in range(1, data.draw(st.integers(1, 5)) + 1):
            for _ in range(data.draw(st.integers(0, 6))):
                data.draw(st.sampled_from(MUTATIONS))(model, data)
            entries = entries_of(model, data)
            rows_before = version_count(catalog)
            counts = commit(catalog, plan, seq, entries)
            snapshots[seq] = {e.path: attrs(e) for e in entries}
            # Only entries that differ from the previous checkpoint add a row.
            changed = sum(1 for p, a in snapshots[seq].items() if snapshots[seq - 1].get(p) != a)
            assert counts["new"] == changed == version_count(catalog) - rows_before
        for seq, expected in snapshots.items():
            if seq:
                check_checkpoint(catalog, plan, seq, expected)
        assert catalog.db.query("PRAGMA foreign_key_check") == []
