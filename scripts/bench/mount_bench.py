#!/usr/bin/env python3
"""Browsing a checkpoint through FUSE: ``durafs mount`` against ``restic mount`` and ``borg mount``.

On the engine benchmark's corpus (``scripts/bench/corpus.py``, ~1.4 GB at ``--scale 1``),
backed up once by each tool the way ``engine_bench.py`` does it, every tool in turn:

1. mounts its repository (its own serving process, in the foreground, in a ``Popen``);
2. ``ls -lR`` of the checkpoint's own directory, timed twice: the first is cold for the
   mount's own caches, the second warm; then once more through the ``latest`` symbolic link
   (durafs and restic have one; borg's mount root is the archive). Through a link every
   path ``ls`` stats walks the link again, and a FUSE file system that cannot have the
   kernel cache link targets (pyfuse3 cannot ask for FUSE_CACHE_SYMLINKS) answers a
   READLINK each time: that row shows what it costs;
3. reads every file once (``find … -type f -print0 | xargs -0 cat > /dev/null``, in the
   checkpoint's own directory), timed; throughput = the corpus's bytes / that time;
4. peak RSS of the serving process (``VmHWM`` in ``/proc/PID/status``), then unmounts.

The repositories' files are read once before each mount, so every tool starts with its
repository in the page cache; nothing is dropped from the caches.

Then (``--tiny N``, default 200 000 × scale; 0 skips it) durafs alone: a checkpoint of N tiny
files, mounted and fully listed (``ls -lR``), and the mount's peak RSS.

Targets (the issue): ``ls -lR`` ≤ 0.2× the faster peer's time, read-all throughput ≥ 2× the
faster peer's, durafs mount RSS ≤ 150 MiB with the tiny checkpoint fully listed.

``--repeat N``: the tools take turns N times (a mount each per round); the first table
shows the median of each figure, the second the best (fastest times; peak RSS is the
highest of the rounds), so a burst of CPU stolen by the hypervisor during one tool's turn
does not decide the ratios.

Run (a shared machine: compare tools within one run, never across runs)::

    .venv/bin/python scripts/bench/mount_bench.py                 # ~1.4 GB corpus, 200 000 tiny
    .venv/bin/python scripts/bench/mount_bench.py --scale 0.1 --tiny 0
    .venv/bin/python scripts/bench/mount_bench.py --reuse         # keep corpus and backups
    .venv/bin/python scripts/bench/mount_bench.py --reuse --tiny 0 --repeat 3

A script, never a timed test.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import corpus
from engine_bench import Borg, Durafs, Restic, Tool, machine, stolen_seconds, table

MiB = 1024 * 1024
MARKER = ".durafs-mount-bench"
READY_TIMEOUT = 300.0
LS_RATIO = 0.2  # durafs ls -lR time ≤ LS_RATIO × the faster peer's
READ_RATIO = 2.0  # durafs read-all throughput ≥ READ_RATIO × the faster peer's
RSS_LIMIT_MIB = 150


class BenchError(Exception):
    pass


# -- mounting -----------------------------------------------------------------------------


class Mount:
    """One tool's mount of its latest backup, served by a foreground process of ours."""

    def __init__(self, tool: Tool, mnt: Path) -> None:
        self.tool = tool
        self.mnt = mnt
        self.proc: subprocess.Popen | None = None

    # Per tool: the command, the path that exists once the mount serves, the checkpoint's root.
    def argv(self) -> list[str]:
        t = self.tool
        if isinstance(t, Durafs):
            return t.cli("mount", str(self.mnt), "--foreground")
        if isinstance(t, Restic):
            return ["restic", "mount", str(self.mnt)]
        return ["borg", "mount", "-f", f"::b{max(1, t.backups)}", str(self.mnt)]

    def ready_path(self) -> Path:
        if isinstance(self.tool, Durafs):
            return self.mnt / "default"
        if isinstance(self.tool, Restic):
            return self.mnt / "snapshots" / "latest"
        return self.mnt / str(self.tool.source).lstrip("/")

    def latest(self) -> Path | None:
        """The tool's link to its newest checkpoint, if it has one."""
        if isinstance(self.tool, Durafs):
            return self.mnt / "default" / "latest"
        if isinstance(self.tool, Restic):
            return self.mnt / "snapshots" / "latest"
        return None

    def root(self) -> Path:
        """The checkpoint's own directory (listed by ``ls -lR``): `latest` resolved."""
        latest = self.latest()
        return self.mnt if latest is None else Path(os.path.realpath(latest))

    def data(self) -> Path:
        """The backed-up tree inside the mount."""
        return self.root() / str(self.tool.source).lstrip("/")

    def __enter__(self) -> Mount:
        self.mnt.mkdir(parents=True, exist_ok=True)
        log = open(self.tool.log, "a")
        log.write(f"$ {' '.join(self.argv())}  (mount, in the background)\n")
        log.flush()
        self.proc = subprocess.Popen(self.argv(), env=self.tool.env, stdout=log, stderr=log,
                                     stdin=subprocess.DEVNULL)
        log.close()
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            if self.proc.poll() is not None:
                raise BenchError(f"{self.tool.name} mount exited {self.proc.returncode} "
                                 f"(see {self.tool.log})")
            if os.path.ismount(self.mnt) and self.ready_path().exists():
                return self
            if time.monotonic() > deadline:
                raise BenchError(f"{self.tool.name} mount not ready in {READY_TIMEOUT:.0f} s")
            time.sleep(0.05)

    def peak_rss_kib(self) -> tuple[int, int]:
        """(VmHWM, VmRSS) of the serving process, KiB."""
        assert self.proc is not None
        values = {}
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in ("VmHWM", "VmRSS"):
                values[key] = int(rest.split()[0])
        return values.get("VmHWM", 0), values.get("VmRSS", 0)

    def __exit__(self, *exc: object) -> None:
        assert self.proc is not None
        t = self.tool
        try:
            if isinstance(t, Durafs):
                subprocess.run(t.cli("umount", str(self.mnt)), env=t.env, capture_output=True,
                               timeout=120)
            elif isinstance(t, Restic):
                self.proc.send_signal(signal.SIGINT)
            else:
                subprocess.run(["borg", "umount", str(self.mnt)], env=t.env,
                               capture_output=True, timeout=120)
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pass
        finally:
            if os.path.ismount(self.mnt):
                subprocess.run(["fusermount3", "-u", "-z", str(self.mnt)], capture_output=True)
            if self.proc.poll() is None:
                self.proc.kill()  # our own child only
                self.proc.wait()


# -- measuring ----------------------------------------------------------------------------


def timed_shell(script: str, env: dict[str, str] | None = None) -> float:
    start = time.perf_counter()
    proc = subprocess.run(["bash", "-o", "pipefail", "-c", script], env=env,
                          capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode:
        raise BenchError(f"{script!r} exited {proc.returncode}: {proc.stderr[-2000:]}")
    return wall


def q(path: Path | str) -> str:
    return "'" + str(path).replace("'", "'\\''") + "'"


def listing_counts(path: Path) -> tuple[int, int]:
    """(regular files, all entries) in an ``ls -lR`` output."""
    files = entries = 0
    with open(path, errors="replace") as f:
        for line in f:
            if line[:1] in "-dlcbps" and len(line) > 10 and line[1:10].strip("rwxsStT-") == "":
                entries += 1
                files += line[0] == "-"
    return files, entries


def warm_repository(tool: Tool) -> None:
    """Read the repository's files once so every mount starts with them in the page cache."""
    timed_shell(f"find {q(tool.repo())} -type f -print0 | xargs -0 -r cat > /dev/null")


def measure(tool: Tool, work: Path, read_all: bool = True, via_latest: bool = True) -> dict:
    mnt = work / "mnt" / tool.name
    out: dict = {}
    warm_repository(tool)
    steal = stolen_seconds()
    start = time.perf_counter()
    with Mount(tool, mnt) as m:
        out["mount_s"] = time.perf_counter() - start
        latest = m.latest()
        lists = [("ls1", m.root()), ("ls2", m.root())]
        if latest is not None and via_latest:
            lists.append(("ls_latest", latest))
        for i, (key, where) in enumerate(lists):
            listing = work / f"ls-{tool.name}-{i + 1}.txt"
            out[key] = timed_shell(f"ls -lR {q(where)}/ > {q(listing)}")
            out[key + "_files"], out[key + "_entries"] = listing_counts(listing)
            print(f"  {tool.name:<7} ls -lR #{i + 1} of {where.relative_to(m.mnt)}: "
                  f"{out[key]:8.2f} s ({out[key + '_files']} files, "
                  f"{out[key + '_entries']} entries)", flush=True)
        if read_all:
            out["read"] = timed_shell(
                f"find {q(m.data())} -type f -print0 | xargs -0 cat > /dev/null")
            print(f"  {tool.name:<7} read all: {out['read']:8.2f} s", flush=True)
        hwm, rss = m.peak_rss_kib()
        out["hwm_mib"], out["rss_mib"] = hwm / 1024, rss / 1024
        print(f"  {tool.name:<7} serving process peak RSS {hwm / 1024:.0f} MiB "
              f"(now {rss / 1024:.0f} MiB)", flush=True)
    out["stolen"] = stolen_seconds() - steal
    return out


# -- setting up ---------------------------------------------------------------------------


def prepare(work: Path, args: argparse.Namespace) -> tuple[list[Tool], dict]:
    """The corpus and one backup of it per tool (reused with ``--reuse`` if complete)."""
    state_file = work / "state.json"
    logs = work / "logs"
    source = work / "corpus"
    if args.reuse and state_file.exists():
        state = json.loads(state_file.read_text())
        if state.get("seed") == args.seed and state.get("scale") == args.scale:
            tools = make_tools(work, source, logs, args)
            for t in tools:
                t.backups = 1
            print(f"reusing the corpus and backups in {work}", flush=True)
            return tools, state
    if work.exists() and any(work.iterdir()) and not (work / MARKER).exists():
        raise SystemExit(f"{work}: exists, is not empty and is not a mount-benchmark directory")
    for mnt in (work / "mnt").glob("*") if (work / "mnt").exists() else []:
        if os.path.ismount(mnt):
            subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True)
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    (work / MARKER).write_text("created by scripts/bench/mount_bench.py; wiped on each run\n")
    logs.mkdir()
    print(f"generating the corpus in {source} (seed {args.seed}, scale {args.scale})", flush=True)
    summary = corpus.generate(str(source), args.seed, args.scale)
    print(f"  {summary}", flush=True)
    tools = make_tools(work, source, logs, args)
    for t in tools:
        t.setup()
        r = t.backup()
        print(f"  {t.name:<7} backup {r.wall:6.1f} s", flush=True)
    state = {"seed": args.seed, "scale": args.scale, "files": summary.files,
             "dirs": summary.dirs, "symlinks": summary.symlinks, "bytes": summary.bytes}
    state_file.write_text(json.dumps(state))
    return tools, state


def make_tools(work: Path, source: Path, logs: Path, args: argparse.Namespace) -> list[Tool]:
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    tools: list[Tool] = [Durafs(work / "durafs", source, logs, None)]
    if "restic" not in skip:
        tools.append(Restic(work / "restic", source, logs))
    if "borg" not in skip:
        tools.append(Borg(work / "borg", source, logs))
    return tools


def tiny_check(work: Path, n: int, seed: int) -> dict:
    print(f"durafs mount of a checkpoint of {n} tiny files", flush=True)
    base = work / "tiny"
    if base.exists():
        shutil.rmtree(base)
    tree = base / "tree"
    s = corpus.tiny(str(tree), n, seed)
    print(f"  {s}", flush=True)
    tool = Durafs(base / "durafs", tree, work / "logs", None)
    tool.setup()
    r = tool.backup()
    print(f"  durafs  backup {r.wall:6.1f} s, peak RSS {r.rss_kib / 1024:.0f} MiB", flush=True)
    out = measure(tool, base, read_all=False, via_latest=False)
    out["files"] = n
    return out


def combine(rounds: list[dict], best: bool) -> dict:
    """Per tool, each figure's median over the rounds, or its best (the lowest time, the
    highest peak RSS); stolen CPU time is summed, counts come from the first round."""
    out: dict = {}
    for name in rounds[0]:
        runs = [r[name] for r in rounds]
        merged: dict = {}
        for key, first in runs[0].items():
            values = [run[key] for run in runs]
            if key == "stolen":
                merged[key] = sum(values)
            elif key.endswith(("_files", "_entries")):
                merged[key] = first
            elif key.endswith("_mib"):
                merged[key] = max(values) if best else statistics.median(values)
            else:
                merged[key] = min(values) if best else statistics.median(values)
        out[name] = merged
    return out


# -- the report ---------------------------------------------------------------------------


def render(res: dict) -> str:
    m = res["meta"]
    names = list(res["runs"])
    peers = [n for n in names if n != "durafs"]
    c = res["corpus"]
    lines = [
        f"{m['date']}; {m['nproc']} × {m['cpu']}, {m['mem_mib'] // 1024} GiB RAM, Linux "
        f"{m['kernel']}, Python {m['python']}; seed {c['seed']}, scale {c['scale']}",
        "; ".join(m["versions"].values()),
        f"corpus: {c['files']} files, {c['dirs']} directories, {c['symlinks']} symlinks, "
        f"{c['bytes'] / 1e9:.2f} GB",
        "",
    ]
    header = ["", *names, *(f"durafs/{p}" for p in peers), "target", "met"]
    rows = []
    runs = res["runs"]

    def row(label: str, key: str, fmt: str, kind: str) -> None:
        if key == "read_s":
            vals = {n: runs[n]["read"] for n in names}
        elif key == "read_mbs":
            vals = {n: c["bytes"] / 1e6 / runs[n]["read"] for n in names}
        else:
            vals = {n: runs[n].get(key) for n in names}  # None: the tool has no such thing
        ratios = [f"{vals['durafs'] / vals[p]:.2f}" if vals.get(p) else "-" for p in peers]
        target = met = ""
        if peers and kind == "ls":
            best = min(vals[p] for p in peers)
            target, met = f"≤ {LS_RATIO}× faster peer", vals["durafs"] <= LS_RATIO * best
        elif peers and kind == "read":
            best = max(vals[p] for p in peers)
            target, met = f"≥ {READ_RATIO}× faster peer", vals["durafs"] >= READ_RATIO * best
        if target:
            met = "yes" if met else "**no**"
        cells = ["-" if vals[n] is None else format(vals[n], fmt) for n in names]
        rows.append([label, *cells, *ratios, target, met])

    row("mount until ready (s)", "mount_s", ".2f", "")
    row("ls -lR, first (s)", "ls1", ".2f", "ls")
    row("ls -lR, second (s)", "ls2", ".2f", "ls")
    if any("ls_latest" in runs[n] for n in names):
        row("ls -lR via latest link (s)", "ls_latest", ".2f", "")
    if all("read" in runs[n] for n in names):
        row("read all (s)", "read_s", ".2f", "")
        row("read all (MB/s)", "read_mbs", ".0f", "read")
    row("peak RSS of the mount (MiB)", "hwm_mib", ".0f", "")
    lines += table(header, rows)
    lines.append("")
    lines.append("files seen by ls -lR: " + ", ".join(
        f"{n} {runs[n]['ls1_files']}" for n in names) + f" (corpus: {c['files']})")
    if all("stolen" in runs[n] for n in names):  # (older reports)
        lines.append("CPU time stolen by the hypervisor while each tool was mounted (s; a "
                     "noisy run shows here): "
                     + ", ".join(f"{n} {runs[n]['stolen']:.1f}" for n in names))
    if res.get("tiny"):
        t = res["tiny"]
        ok = t["hwm_mib"] <= RSS_LIMIT_MIB
        lines.append("")
        lines.append(f"durafs, checkpoint of {t['files']} tiny files: ls -lR {t['ls1']:.2f} s "
                     f"then {t['ls2']:.2f} s ({t['ls1_files']} files listed); mount peak RSS "
                     f"{t['hwm_mib']:.0f} MiB (target ≤ {RSS_LIMIT_MIB} MiB: "
                     f"{'yes' if ok else '**no**'})")
    return "\n".join(lines)


def report_of(res: dict) -> str:
    """The table (medians when there were several rounds), then the bests."""
    rounds = res.get("rounds") or []
    if len(rounds) < 2:
        return render(res)
    best = render({**res, "runs": combine(rounds, best=True), "tiny": None})
    return (f"Median of {len(rounds)} rounds (the tools taking turns):\n\n{render(res)}"
            f"\n\nBest of the {len(rounds)} rounds:\n\n{best}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", default="/var/tmp/durafs-mount-bench",
                        help="scratch directory (wiped at start unless --reuse; ~5 GB)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--skip", default="", help="tools to leave out: restic,borg")
    parser.add_argument("--tiny", type=int, default=None,
                        help="files in the tiny-file checkpoint (default 200000 × scale; 0 "
                             "skips it)")
    parser.add_argument("--reuse", action="store_true",
                        help="keep the corpus and backups of a previous run with the same "
                             "seed and scale")
    parser.add_argument("--repeat", type=int, default=1,
                        help="rounds of the tools taking turns (medians and bests shown)")
    parser.add_argument("--report", metavar="RESULTS_JSON", help="only print a saved run")
    args = parser.parse_args()
    if args.report:
        print(report_of(json.loads(Path(args.report).read_text())))
        return 0
    work = Path(args.workdir).resolve()
    try:
        tools, state = prepare(work, args)
        res: dict = {"meta": machine(), "corpus": state, "runs": {}}
        for t in tools:
            res["meta"]["versions"][t.name] = t.version()
            print(f"  {res['meta']['versions'][t.name]}", flush=True)
        rounds = []
        for n in range(max(1, args.repeat)):
            print(f"mounts, one tool at a time (round {n + 1} of {max(1, args.repeat)})",
                  flush=True)
            rounds.append({t.name: measure(t, work) for t in tools})
        res["rounds"] = rounds
        res["runs"] = combine(rounds, best=False)
        tiny_n = args.tiny if args.tiny is not None else int(200_000 * args.scale)
        if tiny_n:
            res["tiny"] = tiny_check(work, tiny_n, args.seed)
    except BenchError as exc:
        print(f"\n*** FAILED: {exc}", file=sys.stderr)
        return 2
    report = report_of(res)
    print()
    print(report)
    (work / "results.json").write_text(json.dumps(res, indent=1))
    (work / "results.md").write_text(report + "\n")
    print(f"\nresults: {work / 'results.json'}, {work / 'results.md'}; logs: {work / 'logs'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
