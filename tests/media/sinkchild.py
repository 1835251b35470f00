"""A directory sink driven in a child process, for tests that run it under strace (which
fails its writes or fsyncs with a chosen errno): ``python -m tests.media.sinkchild STEP
MEDIUM [OTHER]`` prints what happened as JSON.

Steps, each on volume v1 of the initialized medium at MEDIUM:

- ``commit``: a few bytes (buffered), then commit.
- ``unplugged``: the medium's directory is renamed to MEDIUM + "-gone" (the disk went away),
  then 2 MiB written (straight through, not buffered).
- ``keep-commit``: a sink asked to keep what it wrote if the medium fills, a few bytes,
  commit; then a copy of it to a volume on OTHER.

Printed: {"error": [class name, message] or null, "kept": bool, "copy_error": message or
null}.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable

from durafs.errors import DurafsError
from durafs.media.base import VolumeSink
from durafs.media.directory import DirectoryMedium


def _attempt(action: Callable[[], object]) -> list[str] | None:
    """Run *action*; [class name, message] of the durafs error it raised, or None."""
    try:
        action()
    except DurafsError as exc:
        return [type(exc).__name__, str(exc)]
    return None


def main(step: str, path: str, other: str | None = None) -> dict[str, object]:
    medium = DirectoryMedium(path)
    sink: VolumeSink = medium.create_volume("data", "v1", True)
    copy_error = None
    if step == "commit":
        sink.write(b"buffered, written at commit")
        error = _attempt(sink.commit)
    elif step == "unplugged":
        os.rename(path, path + "-gone")
        error = _attempt(lambda: sink.write(b"x" * (2 * 1024 * 1024)))
    elif step == "keep-commit":
        sink.keep_if_full()
        sink.write(b"written, then the fsync finds no room")
        error = _attempt(sink.commit)
        assert other is not None
        with DirectoryMedium(other).create_volume("data", "v2", True) as moved:
            found = _attempt(lambda: sink.copy_to(moved))
            copy_error = found and found[1]
    else:
        raise SystemExit(f"unknown step {step!r}")
    return {"error": error, "kept": sink.kept, "copy_error": copy_error}


if __name__ == "__main__":
    print(json.dumps(main(*sys.argv[1:])))
