# SPDX-License-Identifier: GPL-3.0-or-later
"""The FUSE tree: every plan's checkpoints as a read-only file system.

Modules, top to bottom:

* `mount` — the trio entry point `serve` (pyfuse3 session, background tasks, clean and
  crash exits, stale mounts), used by ``durafs mount`` and later by the daemon;
* `fuseops` — the pyfuse3 ``Operations`` adapter and the only errno mapping;
* `devpoll` — pyfuse3's request loop polls the device before sleeping;
* `vfs` — the FUSE-free model: layout, attributes, listings, xattrs, read plans, all from
  the index (`inodes`: the arithmetic inode numbers);
* `reads` — open-time availability, staging of whole volumes, chunk cache, readahead;
* `requests` — media requests: raise, join, publish, serve, withdraw, interrupts.

Concurrency (one trio thread plus worker threads):

* Everything in `vfs`, `fuseops`, `requests` and `reads.Reader` runs on the trio thread,
  so code between two ``await``s is atomic: the handle tables, the chunk cache, the
  in-flight fetch table and the open requests need no locks. Adding an ``await`` inside
  such a section (for instance between reading and updating ``Reader._inflight``) would
  break that.
* The tree's catalog connection is used only on the trio thread, for indexed queries that
  take microseconds. It is a read-only WAL reader, so a backup writing meanwhile never
  blocks it, and each query sees the newest commit.
* Blocking work goes to worker threads under `reads.Reader`'s named limiters: chunk
  reads (``read``), readahead (``ahead``), medium probes (``probe``) and staging copies
  (``stage``). Those threads use `reads.ChunkSource` and `durafs.engine.access.VolumeAccess`
  with their own catalog connection; both are thread-safe.
* A medium that must be waited for is waited for in trio (polling every second), never in
  a thread, so ``ls`` and ``stat`` go on, and a signal to the waiting process ends its
  wait (see `requests`).
"""
