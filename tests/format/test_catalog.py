"""Catalog volumes: full trees and deltas, their checkpoint records and versions."""

from __future__ import annotations

import io
import uuid

import pytest

from durafs.errors import FormatError, UnsupportedVersionError
from durafs.format.catalog import (
    DELETED_MEMBER,
    XATTRS_UNREAD,
    BaseRef,
    CheckpointRecord,
    TreeEntry,
    read_catalog,
    read_checkpoint,
    read_deleted,
    write_catalog,
)
from durafs.format.header import dumps, loads
from durafs.format.reader import VolumeReader
from durafs.format.writer import VolumeWriter, new_header
from tests.format.volumes import CATALOG, ID_KEY, identities, recipients


def catalog_volume(record: CheckpointRecord, entries: list[TreeEntry],
                   deleted: list[bytes]) -> VolumeReader:
    out = io.BytesIO()
    header = new_header(CATALOG, uuid.uuid4().hex, "catalog", "pool", "key", ID_KEY)
    writer = VolumeWriter(out, header, recipients("key"))
    write_catalog(writer, record, entries, deleted)
    writer.finish()
    data = out.getvalue()
    return VolumeReader(lambda o, n: data[o : o + n], identities=identities("key"),
                        size=len(data), name="vol")


def test_a_delta_round_trips_with_its_base_and_deleted_paths() -> None:
    base = BaseRef("2026-01-01T000000Z", uuid.uuid4().hex)
    record = CheckpointRecord("default", "2026-01-02T000000Z", 1, 2, [b"/src"], base=base,
                              depth=3)
    entries = [TreeEntry(b"/src/new", "f", mode=0o644, size=0)]
    reader = catalog_volume(record, entries, [b"/src/old", b"/src/\xff odd"])
    assert read_checkpoint(reader) == record
    got, tree = read_catalog(reader)
    assert got.base == base and got.depth == 3
    assert [e.path for e in tree] == [b"/src/new"]
    assert read_deleted(reader) == [b"/src/old", b"/src/\xff odd"]


def test_a_full_tree_has_no_base_and_no_deleted_member() -> None:
    record = CheckpointRecord("default", "n", 1, 2, [b"/src"])
    reader = catalog_volume(record, [TreeEntry(b"/", "d")], [b"/ignored"])
    assert DELETED_MEMBER not in {m.name for m in reader.read_manifest().members}
    assert read_deleted(reader) == []
    assert loads(record.to_json(), "r")["base"] is None


def test_version_1_records_are_full_trees() -> None:
    v1 = {"format": 1, "plan": "default", "name": "n", "created_ns": 1, "finished_ns": 2,
          "sources": ["/src"], "host": "h", "stats": {}}
    record = CheckpointRecord.from_json(dumps(v1), "v1")
    assert record.base is None and record.depth == 0
    # a base in a version 1 record means nothing: version 1 had no deltas
    v1["base"] = {"checkpoint": "x", "volume_id": "y"}
    assert CheckpointRecord.from_json(dumps(v1), "v1").base is None


@pytest.mark.parametrize("version", [0, 3, "2", True, None])
def test_unknown_catalog_versions_are_refused(version: object) -> None:
    data = CheckpointRecord("default", "n", 1, 2, []).to_json()
    record = loads(data, "r") | {"format": version}
    with pytest.raises(UnsupportedVersionError, match="reads version 1, 2"):
        CheckpointRecord.from_json(dumps(record), "r")


@pytest.mark.parametrize("change", [{"depth": 0}, {"depth": -1}, {"base": None, "depth": 2}])
def test_base_and_depth_must_agree(change: dict[str, object]) -> None:
    base = BaseRef("b", "v")
    record = loads(CheckpointRecord("default", "n", 1, 2, [], base=base, depth=1).to_json(),
                   "r")
    with pytest.raises(FormatError, match="depth"):
        CheckpointRecord.from_json(dumps(record | change), "r")


def test_paths_whose_xattrs_were_not_read_round_trip_in_the_stats() -> None:
    record = CheckpointRecord("default", "n", 1, 2, [b"/src"], stats={"files": 3},
                              xattrs_unread=[b"/src/locked", b"/src/\xff odd"])
    stats = loads(record.to_json(), "r")["stats"]
    assert stats == {"files": 3, XATTRS_UNREAD: ["/src/locked", "/src/\udcff odd"]}
    assert CheckpointRecord.from_json(record.to_json(), "r") == record
    # none unread: no key at all, as records written before had
    assert loads(CheckpointRecord("default", "n", 1, 2, []).to_json(), "r")["stats"] == {}


def test_stats_a_reader_does_not_know_are_left_out_unless_counts() -> None:
    data = loads(CheckpointRecord("default", "n", 1, 2, []).to_json(), "r")
    data["stats"] = {"files": 1, "later_count": 2, "later_fact": "x", "flag": True}
    assert CheckpointRecord.from_json(dumps(data), "r").stats == {"files": 1, "later_count": 2}


@pytest.mark.parametrize("unread", ["/src/a", [1], {"/src/a": 1}])
def test_a_malformed_unread_list_is_refused(unread: object) -> None:
    data = loads(CheckpointRecord("default", "n", 1, 2, []).to_json(), "r")
    data["stats"] = {XATTRS_UNREAD: unread}
    with pytest.raises(FormatError, match=XATTRS_UNREAD):
        CheckpointRecord.from_json(dumps(data), "r")
