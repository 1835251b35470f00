# SPDX-License-Identifier: GPL-3.0-or-later
"""The catalog: the API the engine and the FUSE tree use to read and write the index.

`Catalog` gathers the parts, each in its own module: meta, pools, media, volumes and
chunks (`durafs.index.store`); plans, checkpoints and tree reads
(`durafs.index.tree`); recording a new checkpoint (`durafs.index.treewriter`).

A `Catalog` wraps one `Index` connection. The engine uses one read-write catalog; the
FUSE tree uses read-only ones (``open_catalog(path, readonly=True)``), which see every
checkpoint as soon as it is committed.
"""

from __future__ import annotations

import os
import time
from typing import Any

from durafs.errors import UsageError
from durafs.index.db import Index, open_index
from durafs.index.store import StoreCatalog
from durafs.index.tree import LATEST, TreeCatalog
from durafs.index.treewriter import TreeWriter


class Catalog(StoreCatalog, TreeCatalog):
    """Every query on the index, over one connection (see the module docstring)."""

    def __init__(self, db: Index) -> None:
        self.db = db

    def tree_writer(
        self,
        plan_id: int,
        seq: int,
        name: str,
        *,
        created_ns: int | None = None,
        sources: Any = (),
    ) -> TreeWriter:
        """Start recording checkpoint *seq* (from `next_seq`) named *name* of a plan.

        *created_ns* is when the run started; *sources* (JSON-able) what it backed up.
        The writer has its own connection; see `TreeWriter` for the protocol.
        """
        plan = self.plan_by_id(plan_id)
        if plan is None:
            raise UsageError(f"no plan with id {plan_id}")
        if seq <= plan.last_seq:
            raise UsageError(f"checkpoint seq {seq} of plan {plan.name!r} is already used")
        if not name or "/" in name or name in (LATEST, ".", ".."):
            raise UsageError(f"{name!r} cannot be a checkpoint name")
        if self.checkpoint(plan.name, name) is not None:
            raise UsageError(f"plan {plan.name!r} has a checkpoint {name!r} already")
        return TreeWriter(
            self.db.path,
            plan_id,
            seq,
            name,
            created_ns=created_ns or time.time_ns(),
            sources=sources,
        )

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> Catalog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_catalog(
    path: str | os.PathLike[str], *, readonly: bool = False, create: bool = True
) -> Catalog:
    """`open_index` and wrap the connection in a `Catalog`."""
    return Catalog(open_index(path, readonly=readonly, create=create))
