# SPDX-License-Identifier: GPL-3.0-or-later
"""durafs's own data as a backup meets it: the catalog directory and the pools' directory
media. A copy of a store taken while it is written is useless, and would grow with every
run, so a source holding them gets them as empty directories, and a source inside them
is not backed up (see `durafs.engine.scan.scan`'s *own*)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from durafs.engine.scan import own_data_around
from durafs.errors import UsageError
from durafs.index.catalog import Catalog

#: What `scan` takes as *own*: (st_dev, st_ino) of a directory -> what it is, in words.
OwnData = dict[tuple[int, int], str]


def own_directories(catalog: Catalog, pool_id: int) -> OwnData:
    """The catalog directory and every pool's directory media (those of pool *pool_id*
    called "this pool"), found as they are now: one offline is nowhere to be met."""
    own = {catalog.db.path.parent: "durafs's catalog directory"}
    for medium in catalog.media():
        if medium.kind == "dir" and medium.path:
            whose = "this pool" if medium.pool_id == pool_id else f"pool {medium.pool}"
            own.setdefault(Path(medium.path), f"medium {medium.label} of {whose}")
    found: OwnData = {}
    for path, what in own.items():
        try:
            st = os.stat(path)
        except OSError:
            continue  # offline, or gone: nothing of it can be met
        found[(st.st_dev, st.st_ino)] = what
    return found


def refuse_only_own_data(sources: Sequence[str | bytes], own: OwnData) -> None:
    """A run whose every source is durafs's own data would record nothing: refused as a
    configuration error (one such source among others is a problem the scan names, while
    the others are backed up)."""
    reasons = [own_data_around(b"/" + os.path.abspath(src).lstrip(b"/"), own)
               for src in map(os.fsencode, sources)]
    if reasons and all(reasons):
        named = "; ".join(f"{os.fsdecode(src)} is in {what}"
                          for src, what in zip(sources, reasons, strict=True))
        raise UsageError(f"nothing to back up: {named}, which is never backed up")
