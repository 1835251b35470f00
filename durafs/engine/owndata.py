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


def own_paths(catalog: Catalog, pool_id: int | None = None) -> dict[str, str]:
    """The catalog directory and every pool's directory media: real path -> what it is, in
    words (a medium of pool *pool_id* is "of this pool")."""
    own = {os.path.realpath(catalog.db.path.parent): "durafs's catalog directory"}
    for medium in catalog.media():
        if medium.kind == "dir" and medium.path:
            whose = "this pool" if medium.pool_id == pool_id else f"pool {medium.pool}"
            own.setdefault(os.path.realpath(medium.path), f"medium {medium.label} of {whose}")
    return own


def refuse_own_place(place: str, own: dict[str, str], doing: str, *,
                     holding: bool = False) -> None:
    """Refuse *place* (where to *doing*: mount, restore) on or inside one of *own*, or,
    with *holding*, above one: a usage error naming both."""
    at = Path(os.path.realpath(place))
    for path, what in own.items():
        inside = at.is_relative_to(path)
        if inside or (holding and Path(path).is_relative_to(at)):
            where = "is" if at == Path(path) else "is inside" if inside else "holds"
            raise UsageError(f"{place} {where} {what} ({path}): {doing} somewhere else")


def own_directories(catalog: Catalog, pool_id: int) -> OwnData:
    """`own_paths` found as they are now, by (st_dev, st_ino): one offline is nowhere to
    be met."""
    found: OwnData = {}
    for path, what in own_paths(catalog, pool_id).items():
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
