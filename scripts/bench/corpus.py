#!/usr/bin/env python3
"""A deterministic benchmark corpus: generate it, mutate it, list it with content hashes.

The tree (sizes at ``scale=1``; counts and the large files scale linearly):

- ~20 000 small text files (a few KiB, log-normal, 200 B–32 KiB): lines of the Python
  standard library's sources, drawn at random for every file, under a unique header;
- ~300 medium files (100 KiB–4 MiB, skewed to the top): half text like the above, half
  random bytes;
- 4 large files of 128 MiB: ``random.bin`` (random), ``text.log`` (text), ``sparse.img``
  (a few MiB of data in 16 regions, the rest holes) and ``mixed.vmdk`` (1 MiB segments of
  random, text and written zeros);
- plus a few symlinks, empty files and empty directories, in a tree of ~300 directories
  (depth up to 6).

Apparent size ~1.4 GB (~1.3 GiB). Everything derives from ``--seed`` and the stdlib sources of
the running Python, so the same seed gives the same tree on the same Python. Random bytes come
from a BLAKE3 XOF (~1 GB/s) when the ``blake3`` module is present, else ``random.randbytes``.

``mutate`` changes ~1% of the files: appends, overwrites in the middle (one 128 MiB file
among them), an insertion in the middle of the large text file (moves every later byte),
new files (and a new directory), deletions and one renamed directory.

Command line::

    corpus.py generate DIR [--seed N] [--scale F]
    corpus.py mutate DIR [--seed N] [--scale F]
    corpus.py tiny DIR N [--seed N]          # N files of a few bytes each
    corpus.py manifest DIR                   # one line per entry with a content hash
"""

from __future__ import annotations

import argparse
import concurrent.futures
import glob
import hashlib
import math
import os
import random
import stat
import sysconfig
import time
from collections.abc import Iterator
from dataclasses import dataclass

try:
    import blake3 as _blake3
except ImportError:  # pragma: no cover - plain Python without the venv
    _blake3 = None

KiB = 1024
MiB = 1024 * KiB

SMALL_FILES = 20_000
MEDIUM_FILES = 300
LARGE_SIZE = 128 * MiB
DIRECTORIES = 300
SYMLINKS = 40
EMPTY_FILES = 20
EMPTY_DIRS = 5
SPARSE_REGIONS = 16
SPARSE_REGION = 256 * KiB

_WORDS = (
    "src", "lib", "app", "core", "util", "api", "data", "docs", "test", "tests", "build",
    "config", "assets", "images", "cache", "logs", "models", "views", "static", "templates",
    "scripts", "tools", "vendor", "pkg", "internal", "cmd", "web", "server", "client",
    "common", "shared", "backup", "archive", "reports", "projects", "photos", "music",
    "notes", "mail", "home", "user", "work", "alpha", "beta", "gamma", "delta", "release",
    "v1", "v2", "old", "new", "tmp", "misc", "docs-src", "examples", "bench", "fixtures",
)


# -- building blocks -------------------------------------------------------------------


def stdlib_lines(limit_files: int = 2500) -> list[bytes]:
    """Lines of real text: the stdlib's .py sources (not site-packages), an even sample of
    *limit_files* files."""
    root = sysconfig.get_paths()["stdlib"]
    paths = sorted(p for p in glob.glob(os.path.join(root, "**", "*.py"), recursive=True)
                   if "site-packages" not in p and "dist-packages" not in p)
    step = max(1, len(paths) // limit_files)
    lines: list[bytes] = []
    for path in paths[::step]:
        try:
            with open(path, "rb") as f:
                lines.extend(f.read().splitlines(keepends=True))
        except OSError:
            continue
    if not lines:
        raise SystemExit(f"no Python sources under {root}")
    return lines


class Source:
    """Deterministic text and random bytes for one seed."""

    def __init__(self, seed: int, lines: list[bytes] | None = None) -> None:
        self.seed = seed
        self.lines = lines if lines is not None else stdlib_lines()
        self._avg_line = max(1, sum(map(len, self.lines[:20000])) // min(len(self.lines), 20000))

    def text(self, rng: random.Random, size: int) -> bytes:
        """*size* bytes of stdlib lines picked at random."""
        out: list[bytes] = []
        got = 0
        while got < size:
            k = max(8, (size - got) // self._avg_line + 8)
            block = b"".join(rng.choices(self.lines, k=k))
            out.append(block)
            got += len(block)
        return b"".join(out)[:size]

    def random(self, name: str, size: int, seek: int = 0) -> bytes:
        """*size* random bytes, a pure function of (seed, name, seek)."""
        if _blake3 is not None:
            key = hashlib.blake2b(f"{self.seed}:{name}".encode(), digest_size=32).digest()
            return _blake3.blake3(b"corpus", key=key).digest(length=size, seek=seek)
        rng = random.Random(f"{self.seed}:{name}:{seek}")
        return rng.randbytes(size)


def _write(path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)


def _small_size(rng: random.Random) -> int:
    return int(min(32 * KiB, max(200, rng.lognormvariate(math.log(3500), 0.8))))


def _medium_size(rng: random.Random) -> int:
    return int(100 * KiB + (4 * MiB - 100 * KiB) * rng.random() ** 0.7)


def _make_dirs(rng: random.Random, root: str, count: int) -> list[str]:
    """*count* directories (relative paths) in a random tree of depth ≤ 6."""
    dirs = [""]
    depth = {"": 0}
    names: dict[str, set[str]] = {"": set()}
    while len(dirs) < count + 1:
        # Favour shallow parents a little so the tree is bushy, not a list.
        parent = rng.choice(dirs[: max(2, len(dirs) // 2)] if rng.random() < 0.5 else dirs)
        if depth[parent] >= 6:
            continue
        name = rng.choice(_WORDS)
        if rng.random() < 0.4:
            name = f"{name}-{rng.randrange(1000):03d}"
        if name in names[parent]:
            continue
        names[parent].add(name)
        path = f"{parent}/{name}" if parent else name
        dirs.append(path)
        depth[path] = depth[parent] + 1
        names[path] = set()
    for d in dirs[1:]:
        os.makedirs(os.path.join(root, d), exist_ok=True)
    return dirs[1:]


# -- generate ---------------------------------------------------------------------------


@dataclass
class Summary:
    files: int = 0
    dirs: int = 0
    symlinks: int = 0
    bytes: int = 0
    seconds: float = 0.0

    def __str__(self) -> str:
        return (f"{self.files} files, {self.dirs} directories, {self.symlinks} symlinks, "
                f"{self.bytes / 1e9:.2f} GB apparent, {self.seconds:.1f} s")


def generate(root: str, seed: int = 1, scale: float = 1.0, src: Source | None = None) -> Summary:
    """Create the corpus under *root* (which must not exist or be empty)."""
    start = time.perf_counter()
    os.makedirs(root, exist_ok=True)
    if os.listdir(root):
        raise SystemExit(f"{root}: not empty")
    src = src or Source(seed)
    rng = random.Random(seed)
    summary = Summary()
    dirs = _make_dirs(rng, root, max(10, int(DIRECTORIES * min(1.0, scale * 3))))
    summary.dirs = len(dirs)
    # Some directories hold many files, most a few: Pareto weights.
    weights = [rng.paretovariate(1.2) for _ in dirs]

    n_small = max(10, int(SMALL_FILES * scale))
    targets = rng.choices(dirs, weights=weights, k=n_small)
    for i, d in enumerate(targets):
        ext = rng.choice((".py", ".txt", ".md", ".cfg", ".json", ".html", ".c", ".rst"))
        path = os.path.join(root, d, f"file{i:06d}{ext}")
        header = f"# {d}/file{i:06d}{ext} seed={seed} n={rng.getrandbits(64):016x}\n".encode()
        _write(path, header + src.text(rng, _small_size(rng)))
        summary.files += 1

    n_medium = max(4, int(MEDIUM_FILES * scale))
    for i in range(n_medium):
        d = rng.choice(dirs)
        size = _medium_size(rng)
        if i % 2 == 0:
            path = os.path.join(root, d, f"doc{i:04d}.txt")
            _write(path, src.text(rng, size))
        else:
            path = os.path.join(root, d, f"blob{i:04d}.bin")
            _write(path, src.random(f"medium{i}", size))
        summary.files += 1

    big = os.path.join(root, "big")
    os.makedirs(big)
    large = max(4 * MiB, int(LARGE_SIZE * scale)) // MiB * MiB
    _write_stream(os.path.join(big, "random.bin"), large,
                  lambda off, n: src.random("large", n, off))
    _write_stream(os.path.join(big, "text.log"), large, lambda off, n: src.text(rng, n))
    _write_sparse(os.path.join(big, "sparse.img"), large, rng, src)
    pattern = [rng.randrange(3) for _ in range(large // MiB)]

    def mixed(off: int, n: int) -> bytes:
        kind = pattern[off // MiB]
        if kind == 0:
            return src.random("mixed", n, off)
        return src.text(rng, n) if kind == 1 else bytes(n)

    _write_stream(os.path.join(big, "mixed.vmdk"), large, mixed, block=MiB)
    summary.files += 4

    for i in range(EMPTY_FILES):
        open(os.path.join(root, rng.choice(dirs), f"empty{i:02d}"), "wb").close()
        summary.files += 1
    for i in range(EMPTY_DIRS):
        os.makedirs(os.path.join(root, rng.choice(dirs), f"emptydir{i}"))
        summary.dirs += 1
    files = sorted(p for p, _ in _walk_files(root))
    for i in range(SYMLINKS):
        d = rng.choice(dirs)
        target = os.path.relpath(os.path.join(root, rng.choice(files)), os.path.join(root, d))
        if i % 10 == 9:
            target = f"does-not-exist-{i}"  # a dangling link
        os.symlink(target, os.path.join(root, d, f"link{i:02d}"))
        summary.symlinks += 1
    summary.bytes = sum(size for _, size in _walk_files(root))
    summary.seconds = time.perf_counter() - start
    return summary


def _write_stream(path: str, size: int, make, block: int = 4 * MiB) -> None:
    with open(path, "wb") as f:
        for off in range(0, size, block):
            f.write(make(off, min(block, size - off)))


def _write_sparse(path: str, size: int, rng: random.Random, src: Source) -> None:
    """*size* bytes apparent, SPARSE_REGIONS data regions at block-aligned offsets, holes."""
    regions = sorted(rng.sample(range(0, size - SPARSE_REGION, 64 * KiB), SPARSE_REGIONS))
    with open(path, "wb") as f:
        f.truncate(size)
        last = -1
        for i, off in enumerate(regions):
            if off < last:
                continue
            data = (src.random(f"sparse{i}", SPARSE_REGION) if i % 2
                    else src.text(rng, SPARSE_REGION))
            f.seek(off)
            f.write(data)
            last = off + SPARSE_REGION


def _walk_files(root: str) -> Iterator[tuple[str, int]]:
    """(relative path, size) of every regular file under *root*."""
    for dirpath, _, names in os.walk(root):
        for name in names:
            full = os.path.join(dirpath, name)
            st = os.lstat(full)
            if stat.S_ISREG(st.st_mode):
                yield os.path.relpath(full, root), st.st_size


# -- mutate -----------------------------------------------------------------------------


def mutate(root: str, seed: int = 1, scale: float = 1.0, src: Source | None = None) -> dict:
    """Change ~1% of the files of the corpus under *root*; returns counts of each change."""
    src = src or Source(seed)
    rng = random.Random(seed * 1_000_003 + 7)
    files = sorted(p for p, _ in _walk_files(root) if not p.startswith("big" + os.sep))
    files = [p for p in files if os.path.getsize(os.path.join(root, p)) > 0]
    k = max(8, len(files) // 100)
    chosen = rng.sample(files, k)
    n_append, n_rewrite, n_delete = int(k * 0.3), int(k * 0.25), int(k * 0.2)
    appends = chosen[:n_append]
    rewrites = chosen[n_append : n_append + n_rewrite]
    deletes = chosen[n_append + n_rewrite : n_append + n_rewrite + n_delete]
    counts = {"appended": 0, "rewritten": 0, "deleted": 0, "new": 0, "renamed_dir_files": 0}

    for p in appends:
        full = os.path.join(root, p)
        data = src.random(f"append:{p}", rng.randrange(100, 8 * KiB)) if p.endswith(".bin") \
            else src.text(rng, rng.randrange(100, 8 * KiB))
        with open(full, "ab") as f:
            f.write(data)
        counts["appended"] += 1
    for p in rewrites:
        full = os.path.join(root, p)
        size = os.path.getsize(full)
        n = max(1, min(size // 4, 64 * KiB))
        off = size // 2 - n // 2
        data = src.random(f"rewrite:{p}", n) if p.endswith(".bin") else src.text(rng, n)
        with open(full, "r+b") as f:
            f.seek(off)
            f.write(data)
        counts["rewritten"] += 1
    # One large file overwritten in the middle (same size), one with bytes inserted.
    big = os.path.join(root, "big")
    with open(os.path.join(big, "random.bin"), "r+b") as f:
        size = os.fstat(f.fileno()).st_size
        n = min(MiB, size // 8)
        f.seek(size // 2 + 12345)
        f.write(src.random("rewrite:random.bin", n))
    counts["rewritten"] += 1
    _insert(os.path.join(big, "text.log"), src.text(rng, 10 * KiB))
    counts["rewritten"] += 1
    for p in deletes:
        os.unlink(os.path.join(root, p))
        counts["deleted"] += 1

    dirs = sorted({os.path.dirname(p) for p in files if os.path.dirname(p)})
    n_new = max(2, int(k * 0.25))
    for i in range(n_new):
        d = rng.choice(dirs)
        path = os.path.join(root, d, f"new{i:05d}.txt")
        _write(path, f"# new {i}\n".encode() + src.text(rng, _small_size(rng)))
        counts["new"] += 1
    fresh = os.path.join(root, "new-project", "src")
    os.makedirs(fresh)
    for i in range(max(2, int(20 * scale))):
        _write(os.path.join(fresh, f"mod{i:03d}.py"), src.text(rng, _small_size(rng)))
        counts["new"] += 1
    medium = int(2 * MiB * min(1, scale * 4))
    _write(os.path.join(fresh, "assets.bin"), src.random("new-medium", medium))
    _write(os.path.join(fresh, "notes.txt"), src.text(rng, medium // 2))
    counts["new"] += 2

    # Rename the leaf directory whose file count is closest to 0.3% of the files.
    per_dir: dict[str, int] = {}
    for p in files:
        per_dir[os.path.dirname(p)] = per_dir.get(os.path.dirname(p), 0) + 1
    leaves = [d for d in per_dir if d and not any(o.startswith(d + os.sep) for o in per_dir)]
    want = max(3, len(files) * 0.003)
    victim = min(leaves, key=lambda d: (abs(per_dir[d] - want), d))
    os.rename(os.path.join(root, victim), os.path.join(root, victim + "-renamed"))
    counts["renamed_dir_files"] = len(os.listdir(os.path.join(root, victim + "-renamed")))
    counts["renamed_dir"] = victim
    return counts


def _insert(path: str, data: bytes) -> None:
    """Insert *data* in the middle of *path* (rewrites everything after the middle)."""
    with open(path, "r+b") as f:
        size = os.fstat(f.fileno()).st_size
        mid = size // 2 + 777
        f.seek(mid)
        tail = f.read()
        f.seek(mid)
        f.write(data)
        f.write(tail)


# -- tiny files -------------------------------------------------------------------------


def tiny(root: str, n: int, seed: int = 1, per_dir: int = 1000) -> Summary:
    """*n* files of a few bytes each, *per_dir* to a directory (two levels)."""
    start = time.perf_counter()
    rng = random.Random(seed)
    summary = Summary()
    for i in range(n):
        d = os.path.join(root, f"d{i // (per_dir * 100):03d}", f"d{(i // per_dir) % 100:02d}")
        if i % per_dir == 0:
            os.makedirs(d, exist_ok=True)
            summary.dirs += 1
        data = f"{i} {rng.getrandbits(32):x}\n".encode()
        _write(os.path.join(d, f"t{i:07d}"), data)
        summary.files += 1
        summary.bytes += len(data)
    summary.seconds = time.perf_counter() - start
    return summary


# -- manifest ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Node:
    type: str  # "f", "d", "l"
    size: int
    digest: str  # content hash of a file, target of a symlink, "" for a directory
    mode: int
    mtime_ns: int


def _hash_file(path: str) -> str:
    if _blake3 is not None:
        h = _blake3.blake3(max_threads=_blake3.blake3.AUTO)
        try:
            h.update_mmap(path)
        except (AttributeError, ValueError, OSError):
            h = _blake3.blake3()
            with open(path, "rb") as f:
                while block := f.read(4 * MiB):
                    h.update(block)
        return h.hexdigest()
    h2 = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(4 * MiB):
            h2.update(block)
    return h2.hexdigest()


def manifest(root: str) -> dict[str, Node]:
    """Every entry under *root* by relative path, files with a content hash."""
    nodes: dict[str, Node] = {}
    files: list[tuple[str, str, os.stat_result]] = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, root)
            st = os.lstat(full)
            mode = stat.S_IMODE(st.st_mode)
            if stat.S_ISDIR(st.st_mode):
                nodes[rel] = Node("d", 0, "", mode, 0)
            elif stat.S_ISLNK(st.st_mode):
                nodes[rel] = Node("l", 0, os.readlink(full), 0, 0)
            elif stat.S_ISREG(st.st_mode):
                files.append((rel, full, st))
            else:
                nodes[rel] = Node("?", 0, "", mode, 0)
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        digests = pool.map(lambda item: _hash_file(item[1]), files, chunksize=64)
        for (rel, _, st), digest in zip(files, digests, strict=True):
            nodes[rel] = Node("f", st.st_size, digest, stat.S_IMODE(st.st_mode), st.st_mtime_ns)
    return nodes


def compare(expected: dict[str, Node], got: dict[str, Node], *, metadata: bool = True
            ) -> list[str]:
    """Differences between two manifests (empty if equal); *metadata*: modes and mtimes."""
    out: list[str] = []
    for rel in sorted(expected.keys() - got.keys()):
        out.append(f"missing: {rel}")
    for rel in sorted(got.keys() - expected.keys()):
        out.append(f"unexpected: {rel}")
    for rel in sorted(expected.keys() & got.keys()):
        a, b = expected[rel], got[rel]
        if (a.type, a.size, a.digest) != (b.type, b.size, b.digest):
            out.append(f"content differs: {rel} ({a.type} {a.size} {a.digest[:12]} vs "
                       f"{b.type} {b.size} {b.digest[:12]})")
        elif metadata and a.type != "l" and a.mode != b.mode:
            out.append(f"mode differs: {rel} ({oct(a.mode)} vs {oct(b.mode)})")
        elif metadata and a.type == "f" and a.mtime_ns != b.mtime_ns:
            out.append(f"mtime differs: {rel} ({a.mtime_ns} vs {b.mtime_ns})")
    return out


# -- command line -----------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    for name in ("generate", "mutate"):
        p = sub.add_parser(name)
        p.add_argument("dir")
        p.add_argument("--seed", type=int, default=1)
        p.add_argument("--scale", type=float, default=1.0)
    p = sub.add_parser("tiny")
    p.add_argument("dir")
    p.add_argument("n", type=int)
    p.add_argument("--seed", type=int, default=1)
    p = sub.add_parser("manifest")
    p.add_argument("dir")
    args = parser.parse_args()
    if args.cmd == "generate":
        print(generate(args.dir, args.seed, args.scale))
    elif args.cmd == "mutate":
        print(mutate(args.dir, args.seed, args.scale))
    elif args.cmd == "tiny":
        print(tiny(args.dir, args.n, args.seed))
    else:
        for rel, node in sorted(manifest(args.dir).items()):
            print(f"{node.type} {node.size:>12} {oct(node.mode)} {node.digest[:32]:<32} {rel}")


if __name__ == "__main__":
    main()
