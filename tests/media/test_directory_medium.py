"""DirectoryMedium: layout, initialize, volumes, crash safety, offline, capacity, threads."""

from __future__ import annotations

import errno
import json
import os
import random
import re
import subprocess
import sys
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest

from durafs.errors import (
    FormatError,
    MediumError,
    MediumFullError,
    MediumOfflineError,
    UnsupportedVersionError,
    UsageError,
)
from durafs.format.keys import KEYS_FILE_ENCRYPTED, KEYS_FILE_PLAIN
from durafs.media.base import MediumMarker
from durafs.media.directory import MARKER_NAME, DirectoryMedium
from tests.support.oddtree import fill, tmpfs
from tests.support.straced import child_env, python_command, require_strace, run_traced

from .helpers import KEYS_BYTES, new_marker, new_medium, read_all, store, temp_files, write_pieces

REPO = Path(__file__).resolve().parents[2]
NAME_RE = re.compile(r"[0-9]{6}-(data|catalog|index)-[0-9a-f-]{36}\.tar(\.age)?")


# -- initialize and the marker ------------------------------------------------------------


def test_initialize_writes_the_spec_layout(tmp_path: Path) -> None:
    path = tmp_path / "disk"
    marker = new_marker("HDD-001")
    medium = DirectoryMedium(path)
    medium.initialize(marker, KEYS_FILE_ENCRYPTED, KEYS_BYTES)

    assert sorted(os.listdir(path)) == [MARKER_NAME, KEYS_FILE_ENCRYPTED, "volumes"]
    assert (path / MARKER_NAME).read_bytes() == marker.to_json()
    assert json.loads((path / MARKER_NAME).read_bytes())["magic"] == "durafs-medium"
    assert medium.marker() == marker
    assert medium.read_keys_file() == (KEYS_FILE_ENCRYPTED, KEYS_BYTES)
    assert medium.is_online() and medium.is_online(marker)
    assert medium.label == "HDD-001" and medium.medium_id == marker.medium_id
    # keys and volumes may hold data in the clear (mode none): only the owner reads them
    assert (path / KEYS_FILE_ENCRYPTED).stat().st_mode & 0o077 == 0
    assert DirectoryMedium(path).marker() == marker  # another instance reads the same


def test_a_medium_s_directories_are_never_writable_by_others(tmp_path: Path) -> None:
    """Under umask 000 the volumes directory was 0777: anyone could delete or swap the
    volumes (which are 0600, so read by nobody else)."""
    old = os.umask(0)
    try:
        medium = DirectoryMedium(tmp_path / "disk")
        medium.initialize(new_marker("HDD-001"), KEYS_FILE_ENCRYPTED, KEYS_BYTES)
        (tmp_path / "disk" / "volumes").rmdir()  # as on a disk whose volumes/ went missing
        store(medium, b"x" * 100)
    finally:
        os.umask(old)
    for path in (tmp_path / "disk", tmp_path / "disk" / "volumes"):
        assert path.stat().st_mode & 0o777 == 0o755, path


def test_plain_keys_file_in_mode_none(tmp_path: Path) -> None:
    medium = DirectoryMedium(tmp_path / "d")
    medium.initialize(new_marker(), KEYS_FILE_PLAIN, b'{"magic":"durafs-keys"}')
    assert medium.read_keys_file() == (KEYS_FILE_PLAIN, b'{"magic":"durafs-keys"}')


def test_initialize_again_with_its_own_marker_is_a_no_op(tmp_path: Path) -> None:
    marker = new_marker()
    medium = DirectoryMedium(tmp_path / "d")
    medium.initialize(marker, KEYS_FILE_ENCRYPTED, KEYS_BYTES)
    stored = store(medium, b"x" * 1000)
    DirectoryMedium(tmp_path / "d").initialize(marker, KEYS_FILE_ENCRYPTED, b"new keys")
    assert medium.read_keys_file() == (KEYS_FILE_ENCRYPTED, KEYS_BYTES)
    assert medium.list_volumes() == [stored]


def test_initialize_refuses_another_durafs_medium(tmp_path: Path) -> None:
    first = new_medium(tmp_path / "d", "HDD-001")
    store(first, b"precious")
    before = (tmp_path / "d" / MARKER_NAME).read_bytes()
    with pytest.raises(MediumError, match="already holds durafs medium HDD-001"):
        DirectoryMedium(tmp_path / "d").initialize(new_marker("HDD-002"), KEYS_FILE_ENCRYPTED, b"k")
    assert (tmp_path / "d" / MARKER_NAME).read_bytes() == before
    assert read_all(first, first.list_volumes()[0].name) == b"precious"


def test_foreign_medium_is_not_the_one_asked_for(tmp_path: Path) -> None:
    medium = new_medium(tmp_path / "d", "HDD-001")
    wanted = new_marker("HDD-002")
    assert DirectoryMedium(tmp_path / "d").is_online() is True
    assert DirectoryMedium(tmp_path / "d").is_online(wanted) is False
    assert medium.is_online(medium.marker()) is True
    status = DirectoryMedium(tmp_path / "d").status(wanted)
    assert (status.online, status.absent) == (False, False)
    assert status.reason == (f"{tmp_path / 'd'} holds medium HDD-001 "
                             f"({medium.medium_id}), not HDD-002")


def test_initialize_refuses_a_non_empty_unrelated_directory(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "thesis.tex").write_text("do not lose me")
    with pytest.raises(MediumError, match=r"not empty.*thesis\.tex"):
        DirectoryMedium(tmp_path / "d").initialize(new_marker(), KEYS_FILE_ENCRYPTED, KEYS_BYTES)
    assert os.listdir(tmp_path / "d") == ["thesis.tex"]


def test_initialize_accepts_a_fresh_file_system_and_an_interrupted_initialize(
    tmp_path: Path,
) -> None:
    path = tmp_path / "d"
    (path / "lost+found").mkdir(parents=True)
    (path / "volumes").mkdir()
    (path / "volumes" / ".tmp-DURAFS-MEDIUM.json").write_bytes(b"{")
    (path / KEYS_FILE_PLAIN).write_bytes(b"from a crashed initialize in mode none")
    medium = DirectoryMedium(path)
    medium.initialize(new_marker(), KEYS_FILE_ENCRYPTED, KEYS_BYTES)
    assert medium.read_keys_file() == (KEYS_FILE_ENCRYPTED, KEYS_BYTES)
    assert not (path / KEYS_FILE_PLAIN).exists()


def test_initialize_refuses_volumes_without_a_marker(tmp_path: Path) -> None:
    medium = new_medium(tmp_path / "d")
    store(medium, b"data")
    (tmp_path / "d" / MARKER_NAME).unlink()
    with pytest.raises(MediumError, match="not empty"):
        DirectoryMedium(tmp_path / "d").initialize(new_marker(), KEYS_FILE_ENCRYPTED, KEYS_BYTES)


def test_initialize_never_creates_a_missing_mount_point(tmp_path: Path) -> None:
    with pytest.raises(MediumError, match="cannot create"):
        medium = DirectoryMedium(tmp_path / "no" / "such")
        medium.initialize(new_marker(), KEYS_FILE_ENCRYPTED, b"k")
    assert not (tmp_path / "no").exists()


def test_initialize_checks_its_arguments(tmp_path: Path) -> None:
    medium = DirectoryMedium(tmp_path / "d")
    tape = MediumMarker("id", "BUP-1", "tapes", "cat", "tape", 0)
    with pytest.raises(UsageError, match="kind"):
        medium.initialize(tape, KEYS_FILE_ENCRYPTED, b"k")
    with pytest.raises(UsageError, match="keys file"):
        medium.initialize(new_marker(), "keys.txt", b"k")
    assert not (tmp_path / "d").exists()


def test_unknown_marker_version_is_refused(tmp_path: Path) -> None:
    medium = new_medium(tmp_path / "d")
    record = json.loads((tmp_path / "d" / MARKER_NAME).read_bytes())
    record["format"] = 2
    (tmp_path / "d" / MARKER_NAME).write_text(json.dumps(record))
    fresh = DirectoryMedium(tmp_path / "d")
    with pytest.raises(UnsupportedVersionError, match="version 2"):
        fresh.marker()
    assert fresh.is_online() is False
    status = fresh.status()
    assert not status.absent
    assert status.reason is not None and status.reason.startswith(
        f"{tmp_path / 'd' / MARKER_NAME}: format version 2 is not supported")
    with pytest.raises(UnsupportedVersionError):
        fresh.list_volumes()
    with pytest.raises(UnsupportedVersionError):
        fresh.initialize(new_marker(), KEYS_FILE_ENCRYPTED, b"k")
    with pytest.raises(UnsupportedVersionError):
        medium.create_volume("data", "abc", True)


def test_damaged_marker(tmp_path: Path) -> None:
    new_medium(tmp_path / "d")
    (tmp_path / "d" / MARKER_NAME).write_bytes(b'{"magic": "durafs-med')
    with pytest.raises(FormatError, match=MARKER_NAME):
        DirectoryMedium(tmp_path / "d").marker()
    assert DirectoryMedium(tmp_path / "d").is_online() is False
    # what is wrong is said, naming the file: not the same as a medium simply not there
    status = DirectoryMedium(tmp_path / "d").status()
    assert (status.online, status.absent) == (False, False)
    assert status.reason is not None
    assert status.reason.startswith(f"{tmp_path / 'd' / MARKER_NAME} is damaged (not valid JSON")


def test_an_unreadable_marker_is_named_with_its_reason(tmp_path: Path) -> None:
    new_medium(tmp_path / "d")
    os.remove(tmp_path / "d" / MARKER_NAME)
    (tmp_path / "d" / MARKER_NAME).mkdir()  # EISDIR on read: unreadable, not missing
    status = DirectoryMedium(tmp_path / "d").status()
    assert (status.online, status.absent) == (False, False)
    assert status.reason == f"{tmp_path / 'd' / MARKER_NAME} cannot be read (Is a directory)"


def test_missing_keys_file_is_a_format_error(tmp_path: Path) -> None:
    medium = new_medium(tmp_path / "d")
    (tmp_path / "d" / KEYS_FILE_ENCRYPTED).unlink()
    with pytest.raises(FormatError, match="no keys file"):
        medium.read_keys_file()


# -- writing and reading volumes ----------------------------------------------------------


def test_volume_round_trip_in_many_small_writes(tmp_path: Path) -> None:
    medium = new_medium(tmp_path / "d")
    data = random.Random(1).randbytes(3 * 1024 * 1024 + 12345)
    volume_id = str(uuid.uuid4())
    sink = medium.create_volume("data", volume_id, True)
    write_pieces(sink, data)
    sink.write(b"")
    assert sink.written == len(data)
    assert medium.list_volumes() == []  # not visible before commit
    stored = sink.commit()

    assert stored.name == f"000001-data-{volume_id}.tar.age"
    assert (stored.kind, stored.volume_id, stored.seq) == ("data", volume_id, 1)
    assert stored.stored_size == len(data) and stored.tape_file is None
    assert medium.list_volumes() == [stored]
    assert temp_files(medium) == []
    rng = random.Random(2)
    with medium.open_volume(stored.name) as handle:
        assert handle.size == len(data)
        for _ in range(300):
            off = rng.randrange(len(data))
            n = rng.randrange(200_000)
            assert handle.read_at(off, n) == data[off : off + n]
        assert handle.read_at(len(data) - 10, 100) == data[-10:]  # short only at the end
        assert handle.read_at(len(data) + 5, 10) == b""


def test_big_writes_pass_straight_through(tmp_path: Path) -> None:
    medium = new_medium(tmp_path / "d")
    data = os.urandom(3 * 1024 * 1024)
    with medium.create_volume("index", "big", False) as sink:
        sink.write(data[:100])
        sink.write(memoryview(data)[100 : 100 + 2 * 1024 * 1024])  # larger than the buffer
        sink.write(data[100 + 2 * 1024 * 1024 :])
        stored = sink.commit()
    assert read_all(medium, stored.name) == data


def test_sequence_numbers_names_and_order(tmp_path: Path) -> None:
    medium = new_medium(tmp_path / "d")
    kinds = ["data", "data", "catalog", "index", "data"]
    stored = [
        store(medium, bytes([i]) * 100, kind=k, encrypted=i % 2 == 0) for i, k in enumerate(kinds)
    ]
    assert [v.seq for v in stored] == [1, 2, 3, 4, 5]
    assert all(NAME_RE.fullmatch(v.name) for v in stored)
    assert [v.name.endswith(".tar.age") for v in stored] == [True, False, True, False, True]
    assert medium.list_volumes() == stored
    # a new instance (the next run) continues the numbering from what is on the medium
    assert store(DirectoryMedium(tmp_path / "d"), b"later").seq == 6


def test_seq_is_assigned_at_commit_across_instances(tmp_path: Path) -> None:
    # two writers (think: two processes) with sinks open at the same time
    a = new_medium(tmp_path / "d")
    b = DirectoryMedium(tmp_path / "d")
    sink_a = a.create_volume("data", "aaa", False)
    sink_b = b.create_volume("data", "bbb", False)
    sink_a.write(b"A" * 10)
    sink_b.write(b"B" * 20)
    first = sink_b.commit()
    second = sink_a.commit()
    assert (first.seq, second.seq) == (1, 2)
    assert [v.volume_id for v in a.list_volumes()] == ["bbb", "aaa"]


def test_files_that_are_not_volumes_are_ignored(tmp_path: Path) -> None:
    medium = new_medium(tmp_path / "d")
    stored = store(medium, b"real")
    vdir = Path(medium.volumes_path)
    (vdir / "README").write_text("hi")
    (vdir / "000009-data-x.tar.gz").write_text("no")
    (vdir / "000010-data-dir.tar").mkdir()
    (vdir / "000011-data-link.tar").symlink_to(vdir / stored.name)
    assert medium.list_volumes() == [stored]
    assert store(medium, b"next").seq == 12  # numbers are never reused, even by strays


def test_sink_life_cycle(tmp_path: Path) -> None:
    medium = new_medium(tmp_path / "d")
    sink = medium.create_volume("data", "v1", True)
    sink.write(b"abc")
    stored = sink.commit()
    assert sink.commit() == stored and sink.committed
    sink.abort()  # after commit: nothing happens
    assert read_all(medium, stored.name) == b"abc"
    with pytest.raises(MediumError, match="already committed"):
        sink.write(b"more")


def test_abort_removes_the_data_and_is_idempotent(tmp_path: Path) -> None:
    medium = new_medium(tmp_path / "d")
    sink = medium.create_volume("data", "v1", True)
    sink.write(os.urandom(3 * 1024 * 1024))
    assert temp_files(medium) == [".tmp-v1"]
    sink.abort()
    sink.abort()
    assert temp_files(medium) == [] and medium.list_volumes() == []
    with pytest.raises(MediumError, match="aborted"):
        sink.commit()


def test_leaving_the_with_block_without_commit_aborts(tmp_path: Path) -> None:
    medium = new_medium(tmp_path / "d")
    with pytest.raises(RuntimeError), medium.create_volume("data", "v1", True) as sink:
        sink.write(b"partial")
        raise RuntimeError("writer failed")
    with medium.create_volume("data", "v2", True) as sink:
        sink.write(b"forgotten")
    assert temp_files(medium) == [] and medium.list_volumes() == []


def test_bad_volume_arguments(tmp_path: Path) -> None:
    medium = new_medium(tmp_path / "d")
    with pytest.raises(UsageError):
        medium.create_volume("junk", "v1", True)
    with pytest.raises(UsageError):
        medium.create_volume("data", "../escape", True)
    with pytest.raises(UsageError):
        medium.open_volume("../DURAFS-MEDIUM.json")
    with pytest.raises(MediumError, match="not on it"):
        medium.open_volume("000007-data-gone.tar")


def test_one_volume_id_is_written_once(tmp_path: Path) -> None:
    medium = new_medium(tmp_path / "d")
    sink = medium.create_volume("data", "v1", True)
    with pytest.raises(MediumError, match="already being written"):
        medium.create_volume("data", "v1", True)
    sink.write(b"one")
    sink.commit()
    with pytest.raises(MediumError, match="already on it"):
        medium.create_volume("data", "v1", True)
    assert temp_files(medium) == [] and len(medium.list_volumes()) == 1


def test_commit_refuses_a_volume_id_that_appeared_meanwhile(tmp_path: Path) -> None:
    medium = new_medium(tmp_path / "d")
    sink = medium.create_volume("data", "v1", True)
    sink.write(b"mine")
    # e.g. copied there by hand (or an older tool) while this sink was writing
    (Path(medium.volumes_path) / "000005-data-v1.tar.age").write_bytes(b"theirs")
    with pytest.raises(MediumError, match="already on it"):
        sink.commit()
    assert temp_files(medium) == []
    assert [v.name for v in medium.list_volumes()] == ["000005-data-v1.tar.age"]


# -- crash safety -------------------------------------------------------------------------

_CRASH = """
import os, sys
from durafs.media.directory import DirectoryMedium
sink = DirectoryMedium(sys.argv[1]).create_volume("data", sys.argv[2], True)
sink.write(b"half a volume" * 100000)
sink._flush()
os._exit(9)  # like kill -9: no abort, no cleanup
"""


def _crash_while_writing(path: Path, volume_id: str) -> None:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    result = subprocess.run([sys.executable, "-c", _CRASH, str(path), volume_id], env=env)
    assert result.returncode == 9


def test_a_crashed_writer_leaves_no_volume_and_cleanup_removes_its_temp(tmp_path: Path) -> None:
    medium = new_medium(tmp_path / "d")
    kept = store(medium, b"committed before the crash")
    _crash_while_writing(tmp_path / "d", "crashed")
    assert temp_files(medium) == [".tmp-crashed"]
    assert medium.list_volumes() == [kept]

    live = medium.create_volume("data", "live", True)  # a writer that is still running
    live.write(b"in progress")
    assert medium.cleanup_temp() == [".tmp-crashed"]
    assert temp_files(medium) == [".tmp-live"]
    assert medium.cleanup_temp() == []
    stored = live.commit()
    assert read_all(medium, stored.name) == b"in progress"
    assert [v.volume_id for v in medium.list_volumes()] == [kept.volume_id, "live"]


def test_a_stale_temp_of_the_same_volume_is_replaced(tmp_path: Path) -> None:
    medium = new_medium(tmp_path / "d")
    _crash_while_writing(tmp_path / "d", "again")
    with medium.create_volume("data", "again", True) as sink:
        sink.write(b"fresh")
        stored = sink.commit()
    assert read_all(medium, stored.name) == b"fresh"


# -- offline ------------------------------------------------------------------------------


def test_offline_when_the_directory_goes_away_and_back(tmp_path: Path) -> None:
    medium = new_medium(tmp_path / "d", "HDD-007")
    marker = medium.marker()
    stored = store(medium, b"payload")
    os.rename(tmp_path / "d", tmp_path / "elsewhere")

    assert medium.marker() is None
    assert medium.is_online() is False and medium.is_online(marker) is False
    status = medium.status(marker)
    assert (status.online, status.absent) == (False, True)
    assert status.reason == f"{tmp_path / 'd'} does not exist"
    with pytest.raises(MediumOfflineError, match="HDD-007") as info:
        medium.open_volume(stored.name)
    assert str(tmp_path / "d") in str(info.value)
    for call in (
        medium.list_volumes,
        medium.read_keys_file,
        medium.free_bytes,
        medium.used_bytes,
        medium.cleanup_temp,
        lambda: medium.create_volume("data", "x", True),
    ):
        with pytest.raises(MediumOfflineError, match="HDD-007"):
            call()

    os.rename(tmp_path / "elsewhere", tmp_path / "d")
    assert medium.is_online(marker)
    assert read_all(medium, stored.name) == b"payload"


def test_an_empty_mount_point_is_offline(tmp_path: Path) -> None:
    (tmp_path / "mnt").mkdir()
    medium = DirectoryMedium(tmp_path / "mnt", label="HDD-003")
    assert medium.marker() is None and not medium.is_online()
    status = medium.status()
    assert status.absent and status.reason == f"{tmp_path / 'mnt'} has no {MARKER_NAME}"
    with pytest.raises(MediumOfflineError, match=r"HDD-003.*no DURAFS-MEDIUM\.json"):
        medium.open_volume("000001-data-abc.tar")


def test_a_swapped_disk_is_not_this_medium(tmp_path: Path) -> None:
    medium = new_medium(tmp_path / "mnt", "HDD-001")
    os.rename(tmp_path / "mnt", tmp_path / "hdd1")
    other = new_medium(tmp_path / "mnt", "HDD-002")  # another disk mounted at the same place
    assert medium.is_online() is False
    with pytest.raises(MediumOfflineError, match="holds another medium, HDD-002"):
        medium.create_volume("data", "x", True)
    assert os.listdir(tmp_path / "mnt" / "volumes") == []
    # asked for HDD-002 explicitly, the instance follows: the caller confirmed the medium
    assert medium.is_online(other.marker()) is True
    assert store(medium, b"to HDD-002").seq == 1


def test_reads_of_an_open_handle_survive_and_close_is_final(tmp_path: Path) -> None:
    medium = new_medium(tmp_path / "d")
    stored = store(medium, b"0123456789")
    handle = medium.open_volume(stored.name)
    assert handle.read_at(3, 4) == b"3456"
    handle.close()
    handle.close()
    with pytest.raises(MediumError, match="after close"):
        handle.read_at(0, 1)
    with pytest.raises(UsageError):
        medium.open_volume(stored.name).read_at(-1, 1)


# -- space --------------------------------------------------------------------------------


def test_capacity_limits_free_bytes_and_writes(tmp_path: Path) -> None:
    capacity = 5 * 1024 * 1024
    medium = new_medium(tmp_path / "d", capacity=capacity)
    overhead = medium.used_bytes()
    assert overhead == len(KEYS_BYTES) + len(medium.marker().to_json())  # type: ignore[union-attr]
    assert medium.free_bytes() == capacity - overhead

    frees = [medium.free_bytes()]
    kept = []
    for i in range(3):
        data = os.urandom(1024 * 1024 + i)
        kept.append((store(medium, data), data))
        frees.append(medium.free_bytes())
    assert frees == sorted(frees, reverse=True) and len(set(frees)) == 4
    assert medium.used_bytes() == overhead + sum(len(d) for _, d in kept)
    assert frees[-1] == capacity - medium.used_bytes()

    sink = medium.create_volume("data", "too-big", True)
    with pytest.raises(MediumFullError, match=r"HDD-001.*capacity"):
        write_pieces(sink, os.urandom(3 * 1024 * 1024), largest=100_000)
    assert temp_files(medium) == []
    assert [read_all(medium, v.name) for v, _ in kept] == [d for _, d in kept]
    with pytest.raises(MediumError, match="aborted"):
        sink.write(b"x")


def test_free_bytes_keeps_a_safety_margin(tmp_path: Path) -> None:
    medium = new_medium(tmp_path / "d")
    st = os.statvfs(tmp_path)
    free = medium.free_bytes()
    assert free <= max(0, st.f_bavail * st.f_frsize - 1024 * 1024)
    assert medium.capacity is None


def test_negative_capacity_is_refused(tmp_path: Path) -> None:
    with pytest.raises(UsageError):
        DirectoryMedium(tmp_path, capacity=-1)


# -- threads ------------------------------------------------------------------------------


def test_eight_threads_read_one_handle(tmp_path: Path) -> None:
    medium = new_medium(tmp_path / "d")
    data = random.Random(7).randbytes(4 * 1024 * 1024)
    stored = store(medium, data)
    errors: list[str] = []
    start = threading.Barrier(8)

    with medium.open_volume(stored.name) as handle:

        def reader(seed: int) -> None:
            rng = random.Random(seed)
            start.wait()
            for _ in range(300):
                off = rng.randrange(len(data))
                n = rng.randrange(1, 100_000)
                if handle.read_at(off, n) != data[off : off + n]:
                    errors.append(f"thread {seed}: wrong bytes at {off}+{n}")

        threads = [threading.Thread(target=reader, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert errors == []


def test_close_waits_for_reads_in_flight(tmp_path: Path) -> None:
    medium = new_medium(tmp_path / "d")
    data = os.urandom(1024 * 1024)
    stored = store(medium, data)
    handle = medium.open_volume(stored.name)
    stop = threading.Event()
    bad: list[BaseException] = []

    def reader() -> None:
        while not stop.is_set():
            try:
                assert handle.read_at(100, 50_000) == data[100:50_100]
            except MediumError:
                return  # closed: refused cleanly, never wrong bytes
            except BaseException as exc:  # pragma: no cover - the failure being tested for
                bad.append(exc)
                return

    threads = [threading.Thread(target=reader) for _ in range(4)]
    for t in threads:
        t.start()
    handle.close()
    stop.set()
    for t in threads:
        t.join()
    assert bad == []


# -- errors from the file system ----------------------------------------------------------


def _sink_under_strace(
    tmp_path: Path, fail: str, on: Path, *args: str | os.PathLike[str]
) -> dict[str, Any]:
    """`tests.media.sinkchild ARGS…` in a child under strace, every *fail* system call
    (``write:error=EIO``, say) on the file *on* failing as told; what the child printed."""
    require_strace("failing a sink's writes or fsyncs with a chosen errno")
    call = fail.split(":", 1)[0]
    run = run_traced(tmp_path / "strace.log",
                     ["-P", os.fspath(on), "-e", f"trace={call}", "-e", f"inject={fail}"],
                     python_command("-m", "tests.media.sinkchild", *args), env=child_env())
    assert run.returncode == 0, run.stderr
    found: dict[str, Any] = json.loads(run.stdout)
    return found


@pytest.mark.parametrize(
    ("code", "error", "text"),
    [
        (errno.ENOSPC, MediumFullError, "full"),
        (errno.EDQUOT, MediumFullError, "full"),
        (errno.EFBIG, MediumError, "too large"),
        (errno.EIO, MediumError, "Input/output error"),
    ],
)
def test_write_errors_abort_and_are_named(
    tmp_path: Path, code: int, error: type, text: str
) -> None:
    medium = new_medium(tmp_path / "d", "HDD-009")
    fail = f"write:error={errno.errorcode[code]}"
    found = _sink_under_strace(tmp_path, fail, Path(medium.volumes_path, ".tmp-v1"),
                               "commit", medium.path)
    # the child's commit met the errno in its write of what it had buffered
    name, message = found["error"]
    assert name == error.__name__  # EIO on a present medium is not "offline"
    assert re.search(f"HDD-009.*{text}", message), message
    assert temp_files(medium) == [] and medium.list_volumes() == []


def test_a_sink_asked_to_keep_if_full_keeps_what_it_accepted(tmp_path: Path) -> None:
    # a real ENOSPC: the medium is on a small tmpfs that another file fills meanwhile,
    # all but 64 KiB, so the write that meets it first writes a part (as a disk would)
    with tmpfs(tmp_path / "small", size="16m") as small:
        medium = new_medium(small / "d", "HDD-009")
        other = new_medium(tmp_path / "e", "HDD-010")
        sink = medium.create_volume("data", "v1", True)
        assert sink.keep_if_full()
        written = os.urandom(3 * 1024 * 1024 + 5)
        write_pieces(sink, written, largest=100_000)
        fill(small / "filler")
        os.truncate(small / "filler", (small / "filler").stat().st_size - 64 * 1024)
        with pytest.raises(MediumFullError, match=r"HDD-009.*full"):
            sink.write(os.urandom(2 * 1024 * 1024))  # not accepted
        assert sink.kept and sink.written == len(written)
        with pytest.raises(MediumError, match="full"):
            sink.write(b"x")
        moved = other.create_volume("data", "v1", True)
        sink.copy_to(moved)  # on the full file system: reading it back needs no room
        assert sink.kept  # still holds it until aborted
        sink.abort()
        assert not sink.kept and temp_files(medium) == []
        assert read_all(other, moved.commit().name) == written


def test_a_kept_sink_whose_fsync_failed_drops_its_volume(tmp_path: Path) -> None:
    # after a failed fsync the file may not read back what was written: never copied
    medium = new_medium(tmp_path / "d", "HDD-009")
    new_medium(tmp_path / "e", "HDD-010")
    found = _sink_under_strace(tmp_path, "fsync:error=ENOSPC", Path(medium.volumes_path, ".tmp-v1"),
                               "keep-commit", medium.path, tmp_path / "e")
    name, message = found["error"]
    assert name == "MediumFullError" and re.search(r"HDD-009.*full", message), message
    assert not found["kept"] and temp_files(medium) == []
    assert "not kept" in found["copy_error"]


def test_a_sink_kept_beyond_its_capacity_can_be_copied(tmp_path: Path) -> None:
    medium = new_medium(tmp_path / "d", "HDD-001", capacity=2 * 1024 * 1024)
    other = new_medium(tmp_path / "e", "HDD-002")
    data = os.urandom(3 * 1024 * 1024)
    sink = medium.create_volume("data", "v1", True)
    sink.keep_if_full()
    with pytest.raises(MediumFullError, match="capacity"):
        write_pieces(sink, data, largest=100_000)
    moved = other.create_volume("data", "v1", True)
    sink.copy_to(moved)
    sink.abort()
    write_pieces(moved, data[moved.written :])
    assert read_all(other, moved.commit().name) == data
    assert temp_files(medium) == []


def test_an_error_while_the_medium_vanished_means_offline(tmp_path: Path) -> None:
    medium = new_medium(tmp_path / "d", "HDD-010")
    gone = tmp_path / "d-gone"
    # the child renames the medium away (unplugged), then its write fails with EIO
    found = _sink_under_strace(tmp_path, "write:error=EIO", gone / "volumes" / ".tmp-v1",
                               "unplugged", medium.path)
    name, message = found["error"]
    assert name == "MediumOfflineError" and "HDD-010" in message, message
    # abort could not reach the medium; the leftover goes at the next cleanup_temp
    os.rename(gone, tmp_path / "d")
    assert medium.cleanup_temp() == [".tmp-v1"]


def test_an_instance_told_its_medium_id_refuses_others(tmp_path: Path) -> None:
    medium = new_medium(tmp_path / "d", "HDD-001")
    right = DirectoryMedium(tmp_path / "d", medium_id=medium.medium_id, label="HDD-001")
    wrong = DirectoryMedium(tmp_path / "d", medium_id=str(uuid.uuid4()), label="HDD-004")
    assert right.is_online() and not wrong.is_online()
    assert right.list_volumes() == []
    with pytest.raises(MediumOfflineError, match=r"HDD-004.*holds another medium, HDD-001"):
        wrong.list_volumes()
