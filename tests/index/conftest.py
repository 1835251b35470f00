# SPDX-License-Identifier: GPL-3.0-or-later
"""Fixtures of the index tests: a fresh catalog and an entry builder."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from durafs.index.catalog import Catalog, open_catalog

from .support import EntryFactory, make_entry


@pytest.fixture
def entry() -> EntryFactory:
    return make_entry


@pytest.fixture
def index_path(tmp_path: Path) -> Path:
    return tmp_path / "index.sqlite"


@pytest.fixture
def catalog(index_path: Path) -> Iterator[Catalog]:
    cat = open_catalog(index_path)
    yield cat
    cat.close()
