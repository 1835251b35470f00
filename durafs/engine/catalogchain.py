"""A checkpoint's tree rebuilt from catalog volumes: a full tree and the deltas after it.

The rule (docs/FORMAT.md §4): a delta's tree is its base's tree without the deleted paths,
where each line of the delta replaces the line of the same path in place, or, for a path
the base does not have, comes after all the others. That keeps parents before children.
A hard-link member ("h") may then come before the "f" entry it names, so `entries` gives
every other entry first, then the members.

The tree lives in a private temporary SQLite database (on disk, deleted when closed), so a
tree of millions of paths does not sit in memory, and it is advanced one delta at a time.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator

import apsw

from durafs.errors import FormatError
from durafs.format.catalog import TreeEntry
from durafs.format.header import decode_path

_SCHEMA = """
    PRAGMA cache_size = -8192;
    CREATE TABLE tree (
        ord  INTEGER PRIMARY KEY,     -- position: a new path goes after every other
        path BLOB NOT NULL UNIQUE,
        link BLOB,                    -- for "h" lines: the path of the group's "f" entry
        line BLOB NOT NULL);          -- the tree line as stored (JSON)
"""
_PUT = """
    INSERT INTO tree (path, link, line) VALUES (?, ?, ?)
    ON CONFLICT (path) DO UPDATE SET link = excluded.link, line = excluded.line"""


class ChainedTree:
    """The tree of one catalog volume (`at`), built by `apply`-ing volumes in chain order."""

    def __init__(self) -> None:
        self._db = apsw.Connection("")  # "": a temporary on-disk database
        self._db.execute(_SCHEMA)
        #: The id of the catalog volume whose tree this is (None: empty).
        self.at: str | None = None

    def apply(self, volume_id: str, lines: Iterable[bytes], deleted: Iterable[bytes] = (),
              *, full: bool) -> None:
        """Make this the tree of catalog volume *volume_id*: a full tree's *lines*, or a
        delta's (*deleted* paths and *lines*) applied to the tree of its base, which must
        be the one held. On any error the tree stays as it was."""
        what = f"catalog volume {volume_id}"
        with self._db:  # one transaction: rolled back if the volume turns out damaged
            if full:
                self._db.execute("DELETE FROM tree")
            self._db.executemany("DELETE FROM tree WHERE path = ?", ((p,) for p in deleted))
            self._db.executemany(_PUT, (_row(line, what) for line in lines))
        self.at = volume_id

    def links(self) -> set[bytes]:
        """The paths that "h" entries name."""
        return {row[0] for row in self._db.execute(
            "SELECT DISTINCT link FROM tree WHERE link IS NOT NULL")}

    def entries(self) -> Iterator[TreeEntry]:
        """Every entry, parents before children; hard-link members ("h") last."""
        for where in ("link IS NULL", "link IS NOT NULL"):
            for (line,) in self._db.execute(f"SELECT line FROM tree WHERE {where} ORDER BY ord"):
                yield TreeEntry.from_record(json.loads(line))

    def close(self) -> None:
        self._db.close()


def _row(line: bytes, what: str) -> tuple[bytes, bytes | None, bytes]:
    try:
        record = json.loads(line)
        link = record.get("link") if record.get("type") == "h" else None
        return (decode_path(record["path"]), None if link is None else decode_path(link),
                line)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise FormatError(f"{what}: damaged tree line ({exc})") from exc
