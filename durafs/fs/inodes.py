# SPDX-License-Identifier: GPL-3.0-or-later
"""Inode numbers of the mounted tree: arithmetic, so nothing is kept per inode.

* 1 is the root; plan *p* has ``16 + 2p`` (its directory) and ``17 + 2p`` (its
  ``latest`` link); all of them are below ``2**SEQ_BITS``.
* A node inside checkpoint *seq* has ``(vid << SEQ_BITS) | seq`` where *vid* is
  ``hardlink_id or id`` of its version: the members of a hard-link group share one inode
  within a checkpoint, and the same version in two checkpoints has two inodes (its
  ``st_nlink`` and ``user.durafs.checkpoint`` may differ). ``vid >= 1``, so these never
  collide with the reserved numbers. Version ids are never reused (AUTOINCREMENT), so an
  inode means the same node for the life of the mount. 20 bits of seq allow a million
  checkpoints per plan, the other 44 bits 17 trillion versions.
"""

from __future__ import annotations

from typing import NamedTuple

from durafs.fs.errors import NoSuchEntry
from durafs.index.rows import VersionRow

SEQ_BITS = 20
SEQ_MASK = (1 << SEQ_BITS) - 1
ROOT_INO = 1
PLAN_BASE = 16
#: Plan ids above this have no reserved inode numbers left (about half a million plans).
MAX_PLAN_ID = (SEQ_MASK - PLAN_BASE - 1) // 2


class Node(NamedTuple):
    """A decoded inode: *kind* is root, plan, latest or tree. (A named tuple: every
    request decodes one, and a frozen dataclass takes several times as long to build.)"""

    kind: str
    plan_id: int = 0
    vid: int = 0
    seq: int = 0


def plan_ino(plan_id: int) -> int:
    """The inode of plan *plan_id*'s directory."""
    if not 0 < plan_id <= MAX_PLAN_ID:
        raise NoSuchEntry(f"plan id {plan_id} is outside the mountable range")
    return PLAN_BASE + 2 * plan_id


def latest_ino(plan_id: int) -> int:
    """The inode of plan *plan_id*'s ``latest`` link."""
    return plan_ino(plan_id) + 1


def tree_ino(version: VersionRow, seq: int) -> int:
    """The inode of *version* inside checkpoint *seq* (hard links share the leader's)."""
    return ((version.hardlink_id or version.id) << SEQ_BITS) | seq


def decode(ino: int) -> Node:
    """Which node inode *ino* stands for (see the module docstring)."""
    if ino == ROOT_INO:
        return Node("root")
    if ino > SEQ_MASK:
        return Node("tree", vid=ino >> SEQ_BITS, seq=ino & SEQ_MASK)
    if ino < PLAN_BASE + 2:
        raise NoSuchEntry(f"inode {ino} is not in use")
    plan_id, odd = divmod(ino - PLAN_BASE, 2)
    return Node("latest" if odd else "plan", plan_id=plan_id)
