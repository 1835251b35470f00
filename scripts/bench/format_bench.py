#!/usr/bin/env python3
"""Benchmark of the volume format: writer throughput and random-read latency.

Writes a 1 GiB file (incompressible, then text-like) warm in the page cache into one
key-encrypted volume with 2 worker threads hashing and compressing, and times random 4 KiB
reads from the encrypted volume. Run: .venv/bin/python scripts/bench/format_bench.py [--size MiB]
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import glob
import os
import random
import statistics
import sysconfig
import tempfile
import time
import uuid

from durafs.format import age
from durafs.format.chunker import Chunker
from durafs.format.frames import codec_for_thread
from durafs.format.reader import VolumeReader, file_read_at
from durafs.format.writer import VolumeWriter, new_header

MiB = 1024 * 1024


def text_corpus() -> list[bytes]:
    """Lines of real text: the Python standard library's sources (on every machine)."""
    lines: list[bytes] = []
    for path in sorted(glob.glob(os.path.join(sysconfig.get_paths()["stdlib"], "**", "*.py"),
                            recursive=True))[:2000]:
        with open(path, "rb") as f:
            lines.extend(f.read().splitlines(keepends=True))
    return lines


def make_input(path: str, size: int, text: bool) -> None:
    """*size* bytes of random data, or of real text lines shuffled anew for every block."""
    rng = random.Random(1)
    lines = text_corpus() if text else []
    with open(path, "wb") as f:
        written = 0
        while written < size:
            if text:
                rng.shuffle(lines)
                block = b"".join(lines[:60000])
            else:
                block = os.urandom(4 * MiB)
            f.write(block)
            written += len(block)
        f.truncate(size)
    with open(path, "rb") as f:  # warm the page cache
        while f.read(16 * MiB):
            pass


def write_volume(src: str, dst: str, id_key: bytes, recipient: age.X25519Recipient) -> float:
    header = new_header("bench", uuid.uuid4().hex, "data", "bench", "key", id_key)
    chunker = Chunker(id_key)
    start = time.perf_counter()
    with open(src, "rb") as f, open(dst, "wb", buffering=4 * MiB) as out, \
            concurrent.futures.ThreadPoolExecutor(2) as pool:
        writer = VolumeWriter(out, header, [recipient])
        pending: collections.deque[concurrent.futures.Future] = collections.deque()
        offset = 0
        for piece in chunker.cut_stream(f):
            data = bytes(piece)
            pending.append(pool.submit(lambda d: codec_for_thread(id_key).encode(d), data))
            while len(pending) > 8:
                writer.add_chunk(pending.popleft().result(), [(b"/bench", offset)])
            offset += len(data)
        while pending:
            writer.add_chunk(pending.popleft().result(), [(b"/bench", offset)])
        writer.finish()
    return time.perf_counter() - start


def random_reads(path: str, identity: age.X25519Identity, n: int = 500) -> float:
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        reader = VolumeReader(file_read_at(fd), identities=[identity], size=size)
        plain = reader.plain_size or 0
        rng = random.Random(2)
        times = []
        for _ in range(n):
            off = rng.randrange(0, plain - 4096)
            t = time.perf_counter()
            reader.read(off, 4096)
            times.append(time.perf_counter() - t)
        return statistics.median(times)
    finally:
        os.close(fd)


def dedup_after_edits(size: int, id_key: bytes) -> list[tuple[str, int, int]]:
    """Chunks re-stored after edits of a random file: (edit, new chunks, total chunks)."""
    rng = random.Random(3)
    data = b"".join(rng.randbytes(MiB) for _ in range(size // MiB))
    chunker = Chunker(id_key)
    before = {bytes(c) for c in chunker.cut_buffer(data)}
    edits = {
        "insert 100 B in the middle": data[: size // 2] + rng.randbytes(100) + data[size // 2 :],
        "overwrite 4 KiB at 10 places": _overwrite(data, rng, 10),
        "append 1 MiB": data + rng.randbytes(MiB),
        "delete 1 KiB at the start": data[1024:],
    }
    results = []
    for name, edited in edits.items():
        after = [bytes(c) for c in chunker.cut_buffer(edited)]
        results.append((name, sum(c not in before for c in after), len(after)))
    return results


def _overwrite(data: bytes, rng: random.Random, places: int) -> bytes:
    out = bytearray(data)
    for _ in range(places):
        pos = rng.randrange(len(out) - 4096)
        out[pos : pos + 4096] = rng.randbytes(4096)
    return bytes(out)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=1024, help="MiB of input")
    args = parser.parse_args()
    size = args.size * MiB
    identity = age.X25519Identity.generate()
    id_key = os.urandom(32)
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR", "/var/tmp")) as tmp:
        src, dst = os.path.join(tmp, "input"), os.path.join(tmp, "volume.tar.age")
        print(f"{'data':<16}{'MB/s':>10}{'ratio':>8}")
        for label, text in (("incompressible", False), ("text-like", True)):
            make_input(src, size, text)
            seconds = write_volume(src, dst, id_key, identity.recipient())
            ratio = os.path.getsize(dst) / size
            print(f"{label:<16}{size / seconds / 1e6:>10.0f}{ratio:>8.3f}")
        median = random_reads(dst, identity)
        print(f"random 4 KiB read from a {args.size} MiB encrypted volume: "
              f"median {median * 1000:.3f} ms")
    print("dedup of a 256 MiB random file after edits (chunks stored again / chunks):")
    for name, new, total in dedup_after_edits(256 * MiB, id_key):
        print(f"  {name:<32}{new:>4} / {total}")


if __name__ == "__main__":
    main()
