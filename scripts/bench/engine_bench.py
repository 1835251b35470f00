#!/usr/bin/env python3
"""End-to-end benchmark of durafs against restic and Borg on one generated corpus.

Phases, each timed (wall clock) per tool, every tool run in a fresh process under
``/usr/bin/time`` (peak RSS, CPU time), all data warm in the page cache (read again before
every timed run: Borg drops the files it reads from the cache):

1. first backup of the corpus (``scripts/bench/corpus.py``, ~1.4 GB at ``--scale 1``);
2. a backup with no change;
3. a backup after mutating ~1% of the files (appends, rewrites, an insertion in a 128 MiB
   file, new, deleted, a renamed directory);
4. a full restore of the latest snapshot into an empty directory — checked against the
   corpus (content hash of every file, modes and mtimes; durafs must match exactly or the
   run fails);
5. repository size on disk (``du -sb``) and the tools' local state (catalog, caches).

Then a memory check: durafs (and the others) backing up N/10 and N tiny files (``--tiny``,
default 200 000 × scale) — is peak RSS flat in the number of files?

Tools: durafs (``init`` with the default ``key`` encryption, a ``dir`` pool), restic with
its defaults (``RESTIC_PASSWORD``), Borg with ``--encryption=repokey-blake2`` and
``--compression zstd,3`` (``BORG_PASSPHRASE``). Nothing leaves this machine.

Run (the machine is noisy: compare tools within one run, never across runs)::

    .venv/bin/python scripts/bench/engine_bench.py --scale 0.1          # quick, ~2 min
    .venv/bin/python scripts/bench/engine_bench.py                      # full, ~8 min
    .venv/bin/python scripts/bench/engine_bench.py --repeat 5 --rev HEAD  # ~25 min
    .venv/bin/python scripts/bench/engine_bench.py --skip borg --tiny 0 --profile py-spy

``--rev`` benchmarks a commit (exported with ``git archive``) rather than the shared work
tree. Results and tables: docs/BENCHMARKS.md.

A script, never a timed test. Exit status 1 if durafs's restore differs from the corpus.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import corpus

REPO_ROOT = Path(__file__).resolve().parents[2]
MiB = 1024 * 1024
MARKER = ".durafs-engine-bench"
TIME = "/usr/bin/time"

#: Targets of the issue: (phase, ratio to tool, maximum ratio).
TARGETS = [
    ("first", "restic", 0.6),
    ("nochange", "restic", 0.5),
    ("mutated", "restic", 0.5),
    ("restore", "restic", 0.8),
    ("repo", "borg", 1.0),
]
RSS_LIMIT_MIB = 150


# -- running commands -------------------------------------------------------------------


@dataclass
class Run:
    wall: float
    rss_kib: int
    cpu: float
    stdout: str = ""
    stolen: float = 0.0  # CPU-seconds the hypervisor took from this machine meanwhile


def stolen_seconds() -> float:
    """CPU time stolen by the hypervisor since boot (all CPUs; /proc/stat's steal): the
    difference over a run tells how much of the machine another tenant had."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
        return int(fields[8]) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):  # pragma: no cover - not Linux
        return 0.0


class BenchError(Exception):
    pass


def run(argv: list[str], *, env: dict[str, str], log: Path, cwd: str | None = None,
        prefix: list[str] | None = None) -> Run:
    """Run *argv* in a fresh process; wall time, peak RSS and CPU time of it and its children.

    *prefix* (a profiler) goes between /usr/bin/time and the command.
    """
    os.sync()  # the previous run's dirty pages are not written back during this one
    with tempfile.NamedTemporaryFile("r", suffix=".time") as tf:
        full = list(prefix or []) + argv
        if os.path.exists(TIME):
            full = [TIME, "-f", "%e %M %U %S", "-o", tf.name, *full]
        start, steal = time.perf_counter(), stolen_seconds()
        proc = subprocess.run(full, env=env, cwd=cwd, capture_output=True, text=True)
        wall = time.perf_counter() - start
        stolen = stolen_seconds() - steal
        with open(log, "a") as f:
            f.write(f"$ {shlex.join(argv)}\n# rc={proc.returncode} wall={wall:.3f}s\n")
            f.write(proc.stdout[-20000:])
            f.write(proc.stderr[-20000:])
            f.write("\n")
        if proc.returncode != 0:
            raise BenchError(f"{shlex.join(argv)} exited {proc.returncode}:\n"
                             f"{proc.stderr[-3000:] or proc.stdout[-3000:]}")
        rss, cpu = 0, 0.0
        if os.path.exists(TIME):
            last = [ln for ln in Path(tf.name).read_text().splitlines() if ln.strip()][-1].split()
            rss, cpu = int(last[1]), float(last[2]) + float(last[3])
        else:  # pragma: no cover - no /usr/bin/time: children's peak so far (an upper bound)
            import resource
            ru = resource.getrusage(resource.RUSAGE_CHILDREN)
            rss = ru.ru_maxrss
        return Run(wall, rss, cpu, proc.stdout, stolen)


def warm(root: Path) -> None:
    """Read every file under *root* into the page cache. Borg drops what it reads from the
    cache (``posix_fadvise(DONTNEED)`` on its input files), so without this the tool that
    runs after it reads the corpus from the disk (durafs's first backups took 8-9 s there
    against 5-6 s after the others)."""
    buf = bytearray(1024 * 1024)
    for dirpath, _, names in os.walk(root):
        for name in names:
            path = os.path.join(dirpath, name)
            if not os.path.isfile(path) or os.path.islink(path):
                continue
            with open(path, "rb", buffering=0) as f:
                while f.readinto(buf):
                    pass


def du(path: Path) -> int:
    if not path.exists():
        return 0
    out = subprocess.run(["du", "-sb", str(path)], capture_output=True, text=True, check=True)
    return int(out.stdout.split()[0])


def version(argv: list[str], env: dict[str, str] | None = None) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    return (out.stdout or out.stderr).strip().splitlines()[0] if (out.stdout or out.stderr) else "?"


# -- the tools ------------------------------------------------------------------------


class Trash:
    """Deleting a 1.4 GB tree slows the next runs' file creation for a while (ext4 frees
    and discards its blocks): with room enough, trees are moved aside and deleted only
    between phases, so no timed run follows a deletion."""

    def __init__(self, root: Path, keep: bool) -> None:
        self.root = root
        self.keep = keep
        self.n = 0

    def discard(self, path: Path) -> None:
        if not path.exists():
            return
        if self.keep:
            self.root.mkdir(exist_ok=True)
            self.n += 1
            path.rename(self.root / f"{self.n:04d}-{path.name}")
        else:
            shutil.rmtree(path)

    def empty(self) -> None:
        if self.root.exists():
            shutil.rmtree(self.root)
        os.sync()


class Tool:
    name = ""
    trash: Trash | None = None

    def __init__(self, base: Path, source: Path, logs: Path) -> None:
        self.base = base
        self.source = source
        self.log = logs / f"{self.name}.log"
        self.env = dict(os.environ)
        self.env["HOME"] = str(base / "home")
        self.env["XDG_CACHE_HOME"] = str(base / "home" / ".cache")
        self.backups = 0
        base.mkdir(parents=True, exist_ok=True)

    def discard(self, path: Path) -> None:
        if self.trash is not None:
            self.trash.discard(path)
        elif path.exists():
            shutil.rmtree(path)

    def reset(self) -> None:
        """Forget everything: an empty repository, as before `setup`."""
        self.discard(self.base)
        self.base.mkdir(parents=True)
        self.backups = 0

    def save_state(self) -> None:
        """Copy the repository and local state aside (`load_state` puts it back)."""
        self._saved = (self.backups, self.base.with_name(self.base.name + ".saved"))
        subprocess.run(["cp", "-a", "--reflink=auto", str(self.base), str(self._saved[1])],
                       check=True)

    def load_state(self) -> None:
        backups, saved = self._saved
        self.discard(self.base)
        subprocess.run(["cp", "-a", "--reflink=auto", str(saved), str(self.base)], check=True)
        self.backups = backups

    def drop_state(self) -> None:
        shutil.rmtree(self._saved[1], ignore_errors=True)

    def run(self, argv: list[str], cwd: str | None = None, profile: str | None = None) -> Run:
        prefix = self.profile_prefix(profile) if profile else None
        return run(argv, env=self.env, log=self.log, cwd=cwd, prefix=prefix)

    def profile_prefix(self, label: str) -> list[str] | None:
        return None

    def setup(self) -> None:
        raise NotImplementedError

    def backup(self, profile: str | None = None) -> Run:
        raise NotImplementedError

    def restore(self, target: Path, profile: str | None = None) -> Run:
        raise NotImplementedError

    def restored_root(self, target: Path) -> Path:
        """Where the corpus's root lands inside *target*."""
        return target / str(self.source).lstrip("/")

    def repo(self) -> Path:
        raise NotImplementedError

    def local(self) -> Path:
        raise NotImplementedError

    def version(self) -> str:
        raise NotImplementedError


class Durafs(Tool):
    name = "durafs"

    #: (source tree, description) of the durafs under test: set by `use_revision`.
    code: tuple[Path, str] | None = None

    def __init__(self, base: Path, source: Path, logs: Path, profiler: str | None) -> None:
        super().__init__(base, source, logs)
        if self.code is not None:  # the exported revision shadows the editable install
            self.env["PYTHONPATH"] = str(self.code[0])
        self.env["DURAFS_HOME"] = str(base / "home" / "catalog")
        self.python = str(REPO_ROOT / ".venv" / "bin" / "python")
        self.profiler = profiler
        self.profiles = logs.parent / "profiles"
        self.last_stats: dict = {}

    def cli(self, *args: str, label: str | None = None) -> list[str]:
        if label and self.profiler == "cprofile":
            self.profiles.mkdir(exist_ok=True)
            out = self.profiles / f"durafs-{label}.pstats"
            return [self.python, "-P", "-m", "cProfile", "-o", str(out), "-m", "durafs.cli.main",
                    *args]
        return [self.python, "-P", "-m", "durafs.cli.main", *args]  # -P: not ./durafs

    def profile_prefix(self, label: str) -> list[str] | None:
        if self.profiler != "py-spy":
            return None
        self.profiles.mkdir(exist_ok=True)
        out = self.profiles / f"durafs-{label}.txt"
        return [pyspy(), "record", "--idle", "--threads", "--format", "raw", "-r", "100",
                "-o", str(out), "--"]

    def setup(self) -> None:
        if self.code is not None:  # the exported tree, never the work tree, is imported
            where = self.run([self.python, "-P", "-c", "import durafs; print(durafs.__file__)"])
            if not where.stdout.strip().startswith(str(self.code[0])):
                raise BenchError(f"durafs imported from {where.stdout.strip()}")
        else:
            # Byte-compiled as an install is: with PYTHONDONTWRITEBYTECODE set (as on these
            # machines), every run of the work tree would compile its sources again (~0.1 s).
            self.run([self.python, "-m", "compileall", "-q", str(REPO_ROOT / "durafs")])
        self.run(self.cli("init"))
        self.run(self.cli("pool", "add", "p", "--kind", "dir", "--path", str(self.repo())))

    def backup(self, profile: str | None = None) -> Run:
        self.backups += 1
        r = self.run(self.cli("backup", str(self.source), "--pool", "p", "--json", label=profile),
                     profile=profile)
        try:  # a profiler may print around the JSON
            start = r.stdout.index("{")
            self.last_stats = json.JSONDecoder().raw_decode(r.stdout[start:])[0]["stats"]
        except (ValueError, KeyError):
            self.last_stats = {}
        return r

    def restore(self, target: Path, profile: str | None = None) -> Run:
        return self.run(self.cli("restore", f"default/latest{self.source}", str(target),
                                 label=profile), profile=profile)

    def restored_root(self, target: Path) -> Path:
        return target

    def repo(self) -> Path:
        return self.base / "pool"

    def local(self) -> Path:
        return self.base / "home" / "catalog"

    @classmethod
    def use_revision(cls, rev: str, dest: Path) -> None:
        """Run durafs as of git revision *rev* (exported to *dest*), not the work tree."""
        full = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "--verify",
                               f"{rev}^{{commit}}"], capture_output=True, text=True)
        if full.returncode:
            raise SystemExit(f"--rev {rev}: not a commit")
        commit = full.stdout.strip()
        dest.mkdir(parents=True)
        archive = subprocess.run(["git", "-C", str(REPO_ROOT), "archive", commit, "durafs"],
                                 capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
        # Byte-compiled as an installed package is (pip compiles on install): else, with
        # PYTHONDONTWRITEBYTECODE set, every durafs run would compile its sources again.
        subprocess.run([sys.executable, "-m", "compileall", "-q", str(dest / "durafs")],
                       check=True)
        short = version(["git", "-C", str(REPO_ROOT), "log", "-1", "--format=%h", commit,
                         "--", "durafs"])
        cls.code = (dest, f"durafs {short} (exported from commit {commit[:7]})")

    def version(self) -> str:
        if self.code is not None:
            return self.code[1]
        rev = version(["git", "-C", str(REPO_ROOT), "log", "-1", "--format=%h", "--",
                       "durafs"])
        dirty = subprocess.run(["git", "-C", str(REPO_ROOT), "status", "--porcelain",
                                "durafs"], capture_output=True, text=True).stdout.strip()
        return f"durafs {rev}{' + uncommitted changes in durafs/' if dirty else ''}"


class Restic(Tool):
    name = "restic"

    def __init__(self, base: Path, source: Path, logs: Path) -> None:
        super().__init__(base, source, logs)
        self.env.update(RESTIC_PASSWORD="durafs-bench", RESTIC_REPOSITORY=str(self.repo()),
                        RESTIC_CACHE_DIR=str(self.local()))

    def setup(self) -> None:
        self.run(["restic", "init"])

    def backup(self, profile: str | None = None) -> Run:
        self.backups += 1
        return self.run(["restic", "backup", str(self.source)])

    def restore(self, target: Path, profile: str | None = None) -> Run:
        return self.run(["restic", "restore", "latest", "--target", str(target)])

    def repo(self) -> Path:
        return self.base / "repo"

    def local(self) -> Path:
        return self.base / "cache"

    def version(self) -> str:
        v = version(["restic", "version"])
        cfg = subprocess.run(["restic", "cat", "config"], capture_output=True, text=True,
                             env=self.env)
        try:
            v += f" (repository version {json.loads(cfg.stdout)['version']})"
        except (ValueError, KeyError):
            pass
        return v


class Borg(Tool):
    name = "borg"

    def __init__(self, base: Path, source: Path, logs: Path) -> None:
        super().__init__(base, source, logs)
        self.env.update(BORG_PASSPHRASE="durafs-bench", BORG_REPO=str(self.repo()),
                        BORG_BASE_DIR=str(self.local()), BORG_DISPLAY_PASSPHRASE="no",
                        BORG_RELOCATED_REPO_ACCESS_IS_OK="yes")
        self.encryption = "repokey-blake2"

    def setup(self) -> None:
        help_text = subprocess.run(["borg", "init", "--help"], capture_output=True,
                                   text=True).stdout
        if "repokey-blake2" not in help_text:
            self.encryption = "repokey"
        self.run(["borg", "init", f"--encryption={self.encryption}"])

    def backup(self, profile: str | None = None) -> Run:
        self.backups += 1
        return self.run(["borg", "create", "--compression", "zstd,3",
                         f"::b{self.backups}", str(self.source)])

    def restore(self, target: Path, profile: str | None = None) -> Run:
        target.mkdir(parents=True, exist_ok=True)
        return self.run(["borg", "extract", f"::b{self.backups}"], cwd=str(target))

    def repo(self) -> Path:
        return self.base / "repo"

    def local(self) -> Path:
        return self.base / "base"

    def version(self) -> str:
        return f"{version(['borg', '--version'])} ({self.encryption}, zstd,3)"


def pyspy() -> str:
    for cand in (REPO_ROOT / ".venv" / "bin" / "py-spy", shutil.which("py-spy")):
        if cand and os.path.exists(cand):
            return str(cand)
    raise SystemExit("py-spy not found: .venv/bin/pip install py-spy")


# -- profiles ---------------------------------------------------------------------------


def _short(path: str) -> str:
    return path.split("site-packages/")[-1].split("lib/python3.11/")[-1]


#: Frames every sample goes through (interpreter start, thread start): left out of the top.
_WRAPPERS = ("_run_module_as_main ", "_run_code ", "<module> (durafs/cli/main.py)",
             "main (durafs/cli/main.py)", "Thread.run ", "Thread._bootstrap")


def summarize_pyspy(path: Path, rate: int = 100, top: int = 25) -> str:
    """From py-spy's raw stacks, per thread kind (main, workers): the top functions by
    cumulative (inclusive) time, and the top lines by self time. Idle time is included
    (a thread waiting shows where it waits)."""
    if not path.exists():
        return f"(no profile at {path})"
    incl: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    self_: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    lines: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    totals: collections.Counter[str] = collections.Counter()
    for line in path.read_text().splitlines():
        stack, _, count_s = line.rpartition(" ")
        if not stack or not count_s.isdigit():
            continue
        count = int(count_s)
        frames = stack.split(";")
        thread = frames[0]
        kind = "worker threads" if ("durafs-" in thread or "ThreadPool" in thread) \
            else "main thread"
        funcs = []
        for fr in frames[1:]:
            name, _, loc = fr.partition(" (")
            funcs.append(f"{name} ({_short(loc.rsplit(':', 1)[0])})")
        totals[kind] += count
        for fn in set(funcs):
            incl[kind][fn] += count
        if funcs:
            self_[kind][funcs[-1]] += count
            name, _, loc = frames[-1].partition(" (")
            lines[kind][f"{name} ({_short(loc.rstrip(')'))})"] += count
    out = []
    for kind in sorted(incl):
        out.append(f"  {kind}: {totals[kind] / rate:.1f} thread-seconds sampled (idle included)")
        out.append(f"    {'cumulative s':>12} {'self s':>8}  function")
        for fn, c in [(f, c) for f, c in incl[kind].most_common()
                      if not f.startswith(_WRAPPERS)][:top]:
            out.append(f"    {c / rate:>12.2f} {self_[kind][fn] / rate:>8.2f}  {fn}")
        out.append(f"    {'self s':>12}           line")
        for ln, c in lines[kind].most_common(12):
            out.append(f"    {c / rate:>12.2f}           {ln}")
    return "\n".join(out)


def summarize_cprofile(path: Path, top: int = 25) -> str:
    import io
    import pstats
    if not path.exists():
        return f"(no profile at {path})"
    buf = io.StringIO()
    stats = pstats.Stats(str(path), stream=buf)
    stats.sort_stats("cumulative").print_stats(top)
    return buf.getvalue()


# -- the benchmark ---------------------------------------------------------------------


@dataclass
class Results:
    meta: dict = field(default_factory=dict)
    corpus: dict = field(default_factory=dict)
    mutation: dict = field(default_factory=dict)
    runs: dict = field(default_factory=lambda: collections.defaultdict(dict))
    sizes: dict = field(default_factory=lambda: collections.defaultdict(dict))
    verify: dict = field(default_factory=dict)
    tiny: dict = field(default_factory=lambda: collections.defaultdict(dict))
    durafs_stats: dict = field(default_factory=dict)


def prepare_workdir(path: Path) -> None:
    if path.exists() and any(path.iterdir()) and not (path / MARKER).exists():
        raise SystemExit(f"{path}: exists, is not empty and is not a benchmark directory")
    if path.exists():
        for child in path.iterdir():
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()
    path.mkdir(parents=True, exist_ok=True)
    (path / MARKER).write_text("created by scripts/bench/engine_bench.py; wiped on each run\n")


def record(res: Results, phase: str, tool: str, runs: list[Run]) -> None:
    res.runs[phase][tool] = {
        "wall": statistics.median(r.wall for r in runs),
        "best": min(r.wall for r in runs),
        "walls": [round(r.wall, 3) for r in runs],
        "rss_mib": max(r.rss_kib for r in runs) / 1024,
        "cpu": statistics.median(r.cpu for r in runs),
        "stolen": [round(r.stolen, 2) for r in runs],
    }
    r = res.runs[phase][tool]
    print(f"  {phase:<9} {tool:<7} {r['wall']:8.2f} s  (cpu {r['cpu']:7.2f} s, peak RSS "
          f"{r['rss_mib']:6.1f} MiB){'  runs: ' + str(r['walls']) if len(runs) > 1 else ''}"
          f"  stolen: {r['stolen']}", flush=True)


def check_restore(tool: Tool, target: Path, expected: dict, res: Results) -> list[str]:
    got = corpus.manifest(str(tool.restored_root(target)))
    diffs = corpus.compare(expected, got, metadata=True)
    sparse = tool.restored_root(target) / "big" / "sparse.img"
    allocated = os.lstat(sparse).st_blocks * 512 if sparse.exists() else -1
    content = [d for d in diffs if not d.startswith(("mode", "mtime"))]
    res.verify[tool.name] = {"differences": len(diffs), "content_differences": len(content),
                             "first": diffs[:10], "sparse_allocated_mib": allocated / MiB}
    status = "identical (content, modes, mtimes)" if not diffs else \
        f"{len(diffs)} DIFFERENCES ({len(content)} in content)"
    apparent = os.lstat(sparse).st_size / MiB if sparse.exists() else 0
    print(f"  verify    {tool.name:<7} {status}; big/sparse.img allocated "
          f"{allocated / MiB:.1f} MiB of {apparent:.0f}", flush=True)
    for d in diffs[:10]:
        print(f"      {d}")
    return diffs


def main_bench(args: argparse.Namespace) -> int:
    work = Path(args.workdir).resolve()
    prepare_workdir(work)
    logs = work / "logs"
    logs.mkdir()
    res = Results()
    res.meta = machine_info(args)
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    src = corpus.Source(args.seed)

    source = work / "corpus"
    print(f"generating the corpus in {source} (seed {args.seed}, scale {args.scale})", flush=True)
    summary = corpus.generate(str(source), args.seed, args.scale, src)
    res.corpus = asdict(summary)
    print(f"  {summary}", flush=True)
    corpus.manifest(str(source))  # reads everything once: warm page cache for every tool

    if args.rev:
        Durafs.use_revision(args.rev, work / "durafs-src")
    tools: list[Tool] = [Durafs(work / "durafs", source, logs, args.profile)]
    if "restic" not in skip:
        tools.append(Restic(work / "restic", source, logs))
    if "borg" not in skip:
        tools.append(Borg(work / "borg", source, logs))
    need = (args.repeat + 1) * len(tools) * 2 * summary.bytes + 4 * 2**30
    trash = Trash(work / "trash", shutil.disk_usage(work).free > need)
    res.meta["deletions_between_phases"] = trash.keep
    if not trash.keep:
        print(f"  note: less than {need / 2**30:.0f} GiB free: trees are deleted between "
              "runs, which slows the next run's file creation", flush=True)
    for tool in tools:
        tool.trash = trash
        tool.setup()
    for tool in tools:
        res.meta["versions"][tool.name] = tool.version()
        print(f"  {res.meta['versions'][tool.name]}")

    repeat = args.repeat
    print(f"first backup{f' (x{repeat}, a fresh repository each time)' if repeat > 1 else ''}",
          flush=True)
    runs: dict[str, list[Run]] = collections.defaultdict(list)
    for i in range(repeat):
        for tool in tools:
            if i:
                tool.reset()
                tool.setup()
            warm(source)
            runs[tool.name].append(tool.backup(profile="first" if i == 0 else None))
    for tool in tools:
        record(res, "first", tool.name, runs[tool.name])
    res.durafs_stats["first"] = tools[0].last_stats
    trash.empty()

    print("no-change backup", flush=True)
    runs.clear()
    for i in range(repeat):
        for tool in tools:
            warm(source)
            runs[tool.name].append(tool.backup(profile="nochange" if i == 0 else None))
    for tool in tools:
        record(res, "nochange", tool.name, runs[tool.name])
    res.durafs_stats["nochange"] = tools[0].last_stats

    print("mutating ~1% of the files", flush=True)
    res.mutation = corpus.mutate(str(source), args.seed, args.scale, src)
    print(f"  {res.mutation}", flush=True)
    expected = corpus.manifest(str(source))
    how = f" (x{repeat}, from a copy of the state before)" if repeat > 1 else ""
    print(f"backup after the mutation{how}", flush=True)
    if repeat > 1:
        for tool in tools:
            tool.save_state()
        subprocess.run(["sync"], check=False)
    runs.clear()
    for i in range(repeat):
        if i:
            for tool in tools:
                tool.load_state()
            subprocess.run(["sync"], check=False)
        for tool in tools:
            warm(source)
            runs[tool.name].append(tool.backup(profile="mutated" if i == 0 else None))
    for tool in tools:
        record(res, "mutated", tool.name, runs[tool.name])
        if repeat > 1:
            tool.drop_state()
    res.durafs_stats["mutated"] = tools[0].last_stats
    trash.empty()

    print("full restore of the latest snapshot", flush=True)
    failed = False
    runs.clear()
    for i in range(repeat):
        for tool in tools:
            target = work / "restore" / tool.name
            trash.discard(target)
            target.parent.mkdir(exist_ok=True)
            if tool.name != "borg":
                target.mkdir()
            warm(tool.repo())
            runs[tool.name].append(tool.restore(target, profile="restore" if i == 0 else None))
            if i == 0:
                diffs = check_restore(tool, target, expected, res)
                if diffs and tool.name == "durafs":
                    failed = True
            trash.discard(target)
    for tool in tools:
        record(res, "restore", tool.name, runs[tool.name])
    trash.empty()

    for tool in tools:
        res.sizes["repo"][tool.name] = du(tool.repo())
        res.sizes["local"][tool.name] = du(tool.local())
    res.sizes["corpus_apparent"] = summary.bytes
    res.sizes["corpus_disk"] = du(source)

    tiny_n = args.tiny if args.tiny is not None else int(200_000 * args.scale)
    if tiny_n:
        tiny_check(work, tiny_n, args, skip, res)

    report = render(res)
    print()
    print(report)
    if args.profile:
        print(profiles_report(work, args.profile))
    (work / "results.json").write_text(json.dumps(res, default=_json, indent=1))
    (work / "results.md").write_text(report + "\n")
    print(f"\nresults: {work / 'results.json'}, {work / 'results.md'}; logs: {logs}")
    if failed:
        print("\n*** FAILED: durafs's restore differs from the corpus (see above) ***",
              file=sys.stderr)
        return 1
    return 0


def _json(o):
    if isinstance(o, Results):
        return {k: _plain(v) for k, v in vars(o).items()}
    return str(o)


def _plain(o):
    if isinstance(o, dict):
        return {k: _plain(v) for k, v in o.items()}
    if isinstance(o, list):
        return [_plain(v) for v in o]
    return o


def tiny_check(work: Path, n: int, args: argparse.Namespace, skip: set[str],
               res: Results) -> None:
    print(f"memory check: backups of {n // 10} and {n} tiny files", flush=True)
    for count in (n // 10, n):
        tree = work / "tiny" / f"tree-{count}"
        s = corpus.tiny(str(tree), count, args.seed)
        print(f"  {s}", flush=True)
        logs = work / "logs"
        tools: list[Tool] = [Durafs(work / "tiny" / f"durafs-{count}", tree, logs, None)]
        if "restic" not in skip:
            tools.append(Restic(work / "tiny" / f"restic-{count}", tree, logs))
        if "borg" not in skip:
            tools.append(Borg(work / "tiny" / f"borg-{count}", tree, logs))
        for tool in tools:
            tool.setup()
            warm(tree)
            first = tool.backup()
            warm(tree)
            again = tool.backup()
            res.tiny[tool.name][count] = {
                "first_wall": first.wall, "first_rss_mib": first.rss_kib / 1024,
                "nochange_wall": again.wall, "nochange_rss_mib": again.rss_kib / 1024,
            }
            print(f"  {count:>7} tiny files {tool.name:<7} first {first.wall:7.2f} s "
                  f"{first.rss_kib / 1024:6.1f} MiB; no change {again.wall:7.2f} s "
                  f"{again.rss_kib / 1024:6.1f} MiB", flush=True)
            shutil.rmtree(tool.base)
        shutil.rmtree(tree)


def machine() -> dict:
    """Date, CPU, memory, kernel and Python of this machine, for the reports."""
    cpu, mem = "?", 0
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem = int(line.split()[1]) // 1024
    except OSError:
        pass
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": os.cpu_count(), "cpu": cpu, "mem_mib": mem,
        "kernel": platform.release(), "python": platform.python_version(), "versions": {},
    }


def machine_info(args: argparse.Namespace) -> dict:
    return {**machine(), "seed": args.seed, "scale": args.scale, "repeat": args.repeat,
            "profile": args.profile}


# -- the report -------------------------------------------------------------------------


def render(res: Results) -> str:
    names = list(res.runs["first"])
    m = res.meta
    lines = [
        f"{m['date']}; {m['nproc']} × {m['cpu']}, {m['mem_mib'] // 1024} GiB RAM, Linux "
        f"{m['kernel']}, Python {m['python']}; seed {m['seed']}, scale {m['scale']}, "
        f"median of {m['repeat']} run(s) per phase, tools taking turns"
        + ("; PROFILED (durafs times inflated)" if m["profile"] else ""),
        "; ".join(m["versions"].values()),
        f"corpus: {res.corpus.get('files')} files, {res.corpus.get('dirs')} directories, "
        f"{res.corpus.get('symlinks')} symlinks, {res.sizes['corpus_apparent'] / 1e9:.2f} GB "
        f"apparent ({res.sizes['corpus_disk'] / 1e9:.2f} GB on disk); mutation: "
        + ", ".join(f"{k} {v}" for k, v in res.mutation.items() if k != "renamed_dir"),
        "",
    ]
    header = ["phase", *names]
    if "restic" in names:
        header.append("durafs/restic")
    if "borg" in names:
        header.append("durafs/borg")
    header += ["target", "met"]
    rows = []
    phases = [("first", "first backup (s)"), ("nochange", "no-change backup (s)"),
              ("mutated", "backup after mutation (s)"), ("restore", "full restore (s)")]
    targets = {p: (t, x) for p, t, x in TARGETS}

    def ratio_cells(values: dict[str, float], key: str) -> list[str]:
        out = []
        for other in ("restic", "borg"):
            if other in names:
                v = values.get(other)
                out.append(f"{values['durafs'] / v:.2f}" if v else "-")
        target, met = "", ""
        if key in targets:
            other, limit = targets[key]
            target = f"≤ {limit}× {other}"
            if other in names and values.get(other):
                met = "yes" if values["durafs"] / values[other] <= limit else "**no**"
            else:
                met = "n/a"
        return [*out, target, met]

    for key, label in phases:
        values = {n: res.runs[key][n]["wall"] for n in names}
        rows.append([label, *(f"{values[n]:.2f}" for n in names), *ratio_cells(values, key)])
    for key, label in (("first", "CPU time, first backup (s)"),
                       ("mutated", "CPU time, after mutation (s)"),
                       ("restore", "CPU time, restore (s)")):
        values = {n: res.runs[key][n]["cpu"] for n in names}
        rows.append([label, *(f"{values[n]:.1f}" for n in names), *ratio_cells(values, "")])
    values = {n: res.sizes["repo"][n] for n in names}
    rows.append(["repository size (MiB)", *(f"{values[n] / MiB:.1f}" for n in names),
                 *ratio_cells(values, "repo")])
    values = {n: res.sizes["local"][n] for n in names}
    rows.append(["local catalog / cache (MiB)", *(f"{values[n] / MiB:.1f}" for n in names),
                 *ratio_cells(values, "")])
    values = {n: res.runs["first"][n]["rss_mib"] for n in names}
    cells = ratio_cells(values, "")
    cells[-2:] = [f"≤ {RSS_LIMIT_MIB} MiB",
                  "yes" if values["durafs"] <= RSS_LIMIT_MIB else "**no**"]
    rows.append(["peak RSS, first backup (MiB)", *(f"{values[n]:.0f}" for n in names), *cells])
    values = {n: max(res.runs[p][n]["rss_mib"] for p, _ in phases) for n in names}
    cells = ratio_cells(values, "")
    cells[-2:] = [f"≤ {RSS_LIMIT_MIB} MiB",
                  "yes" if values["durafs"] <= RSS_LIMIT_MIB else "**no**"]
    rows.append(["peak RSS, any phase (MiB)", *(f"{values[n]:.0f}" for n in names), *cells])
    lines += table(header, rows)
    if all("stolen" in res.runs[p][n] for p, _ in phases for n in names):  # (older reports)
        stolen = {n: sum(sum(res.runs[p][n]["stolen"]) for p, _ in phases) for n in names}
        lines.append("")
        lines.append("CPU time stolen by the hypervisor during the timed runs (s; a noisy "
                     "run shows here): " + ", ".join(f"{n} {stolen[n]:.1f}" for n in names))

    if m["repeat"] > 1:
        lines.append("")
        lines.append(f"Best of {m['repeat']} runs (the machine is shared: noise only adds time):")
        lines.append("")
        rows = []
        for key, label in phases:
            values = {n: min(res.runs[key][n]["walls"]) for n in names}
            rows.append([label, *(f"{values[n]:.2f}" for n in names),
                         *ratio_cells(values, key)])
        lines += table(header, rows)

    if res.tiny:
        lines.append("")
        counts = sorted({int(c) for t in res.tiny.values() for c in t})
        tiny = {n: {int(c): v for c, v in t.items()} for n, t in res.tiny.items()}
        header = ["tiny files", *(f"{n} {what}" for n in names for what in ("s", "RSS MiB"))]
        rows = []
        for c in counts:
            for phase in ("first", "nochange"):
                row = [f"{c} ({'first' if phase == 'first' else 'no change'})"]
                for n in names:
                    t = tiny.get(n, {}).get(c)
                    row += [f"{t[phase + '_wall']:.2f}", f"{t[phase + '_rss_mib']:.0f}"] \
                        if t else ["-", "-"]
                rows.append(row)
        lines += table(header, rows)
        d = tiny.get("durafs", {})
        if len(counts) == 2 and all(c in d for c in counts):
            lo, hi = counts
            growth = max(d[hi]["first_rss_mib"] - d[lo]["first_rss_mib"],
                         d[hi]["nochange_rss_mib"] - d[lo]["nochange_rss_mib"])
            flat = growth <= max(16.0, 0.1 * d[lo]["first_rss_mib"])
            peak = max(d[hi]["first_rss_mib"], d[hi]["nochange_rss_mib"])
            lines.append("")
            lines.append(f"durafs peak RSS {lo} → {hi} tiny files: +{growth:.0f} MiB "
                         f"(flat: {'yes' if flat else '**no**'}, target ≤ +16 MiB or 10%); "
                         f"peak {peak:.0f} MiB (≤ {RSS_LIMIT_MIB} MiB: "
                         f"{'yes' if peak <= RSS_LIMIT_MIB else '**no**'})")
    lines.append("")
    for phase, stats in res.durafs_stats.items():
        keep = {k: v for k, v in stats.items() if k not in ("pool", "problems")}
        lines.append(f"durafs {phase}: {keep}")
    for name, v in res.verify.items():
        lines.append(f"restore check {name}: {v['differences']} differences "
                     f"({v['content_differences']} in content); sparse.img allocated "
                     f"{v['sparse_allocated_mib']:.1f} MiB")
    return "\n".join(lines)


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def fmt(r: list[str]) -> str:
        return "| " + " | ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w)
                                 for i, (c, w) in enumerate(zip(r, widths, strict=True))) + " |"

    sep = "|" + "|".join("-" * (w + 1) + (":" if i else "-") for i, w in enumerate(widths)) + "|"
    return [fmt(header), sep, *(fmt(r) for r in rows)]


def profiles_report(work: Path, profiler: str) -> str:
    out = [f"\nprofiles of durafs ({profiler}) in {work / 'profiles'}:"]
    for label in ("first", "nochange", "mutated", "restore"):
        if profiler == "py-spy":
            out.append(f"\n== {label} ==\n" + summarize_pyspy(work / "profiles" /
                                                        f"durafs-{label}.txt"))
        else:
            out.append(f"\n== {label} ==\n" + summarize_cprofile(work / "profiles" /
                                                          f"durafs-{label}.pstats"))
    return "\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", default="/var/tmp/durafs-engine-bench",
                        help="scratch directory (wiped at start; needs ~6 GB at scale 1)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--scale", type=float, default=1.0,
                        help="corpus size factor (0.1 for a quick run)")
    parser.add_argument("--skip", default="", help="tools to leave out: restic,borg")
    parser.add_argument("--tiny", type=int, default=None,
                        help="memory check with N/10 and N tiny files (default 200000 × "
                             "scale; 0 skips it)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="runs of every phase, tools taking turns (median kept); the "
                             "first backup starts from an empty repository each time and "
                             "the post-mutation one from a copy of the state before it")
    parser.add_argument("--profile", choices=("py-spy", "cprofile"),
                        help="profile durafs's phases (its times are then inflated)")
    parser.add_argument("--rev", help="benchmark durafs as of this git revision (exported "
                        "from the repository) instead of the work tree, e.g. HEAD")
    parser.add_argument("--report", metavar="RESULTS_JSON",
                        help="only print the tables of a saved results.json")
    args = parser.parse_args()
    if args.report:
        data = json.loads(Path(args.report).read_text())
        print(render(Results(**data)))
        return 0
    if args.profile and args.repeat > 1:
        parser.error("--profile runs each phase once (--repeat 1)")
    try:
        return main_bench(args)
    except BenchError as exc:
        print(f"\n*** FAILED: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
