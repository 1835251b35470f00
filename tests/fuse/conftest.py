# SPDX-License-Identifier: GPL-3.0-or-later
"""Real FUSE mounts: skipped, with the reason, where they cannot run (not root, no FUSE)."""

from __future__ import annotations

import pytest

from .mounting import fuse_skip_reason


@pytest.fixture(autouse=True, scope="module")
def _needs_fuse() -> None:
    reason = fuse_skip_reason()
    if reason:
        pytest.skip(reason)
