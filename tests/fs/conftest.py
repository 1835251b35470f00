# SPDX-License-Identifier: GPL-3.0-or-later
"""Fixtures of the FUSE-free tree tests: a catalog with two checkpoints of a small tree."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from durafs.fs.vfs import Tree
from durafs.index.catalog import open_catalog

from .catalogs import Catalog, make_catalog, make_model_tree


@dataclass
class Backed:
    """Two checkpoints (``first``, ``second``) of the model tree; ``second`` also has
    ``added`` and a changed ``small``."""

    cat: Catalog
    contents: dict[str, bytes]
    first: str
    second: str


@pytest.fixture(scope="module")
def backed(tmp_path_factory: pytest.TempPathFactory) -> Backed:
    tmp = tmp_path_factory.mktemp("fs")
    source = tmp / "src"
    source.mkdir()
    contents = make_model_tree(source)
    cat = make_catalog(tmp, source)
    first = cat.backup()
    (source / "added").write_bytes(b"new in the second checkpoint\n")
    (source / "small").write_bytes(b"changed\n")
    second = cat.backup()
    return Backed(cat, contents, first, second)


@pytest.fixture
def tree(backed: Backed) -> Iterator[Tree]:
    catalog = open_catalog(backed.cat.index, readonly=True)
    yield Tree(catalog)
    catalog.close()
