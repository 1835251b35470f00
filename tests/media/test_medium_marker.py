"""MediumMarker JSON (docs/FORMAT.md §7.2/§7.3) and volume file names (§7.2)."""

from __future__ import annotations

import json

import pytest

from durafs.errors import ForeignCatalogError, FormatError, UnsupportedVersionError, UsageError
from durafs.media.base import MediumMarker
from durafs.media.naming import check_volume_id, parse_volume_file_name, volume_file_name

from .helpers import new_marker


def test_marker_json_has_exactly_the_spec_fields() -> None:
    marker = new_marker("HDD-001")
    record = json.loads(marker.to_json())
    assert record == {
        "magic": "durafs-medium",
        "format": 1,
        "medium_id": marker.medium_id,
        "label": "HDD-001",
        "pool": "usb-disks",
        "catalog_id": "cat-1",
        "kind": "dir",
        "created_ns": 1_763_700_000_000_000_000,
    }
    assert MediumMarker.from_json(marker.to_json(), "m") == marker


def test_extra_fields_are_top_level_and_round_trip() -> None:
    # a tape label is the marker fields plus barcode and record_size (FORMAT.md §7.3)
    marker = new_marker("BUP-00012", barcode="BUP-00012L9", record_size=524288)
    record = json.loads(marker.to_json())
    assert record["barcode"] == "BUP-00012L9" and record["record_size"] == 524288
    assert MediumMarker.from_json(marker.to_json(), "label") == marker


def test_extra_may_not_shadow_standard_fields() -> None:
    marker = MediumMarker("id", "L", "pool", "cat", "dir", 0, {"label": "other"})
    with pytest.raises(UsageError, match="label"):
        marker.to_json()


def test_marker_is_ascii_json_even_for_non_ascii_labels() -> None:
    marker = new_marker("Sicherung-Müller")
    data = marker.to_json()
    assert data.isascii()
    assert MediumMarker.from_json(data, "m").label == "Sicherung-Müller"


def _record(**changes: object) -> bytes:
    record = json.loads(new_marker().to_json())
    record.update(changes)
    return json.dumps({k: v for k, v in record.items() if v is not None}).encode()


def test_unknown_format_version_is_refused_naming_it() -> None:
    with pytest.raises(UnsupportedVersionError, match="version 2"):
        MediumMarker.from_json(_record(format=2), "DURAFS-MEDIUM.json")


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"not json",
        b"[1, 2]",
        _record(magic="durafs-volume"),
        _record(label=None),
        _record(created_ns="yesterday"),
        _record(created_ns=True),
        _record(medium_id=7),
    ],
)
def test_damaged_markers_are_format_errors(data: bytes) -> None:
    with pytest.raises(FormatError):
        MediumMarker.from_json(data, "DURAFS-MEDIUM.json")


def test_volume_file_names_follow_the_spec() -> None:
    vid = "0b6f5c1e-8d0a-4c8e-9a57-2f1d3c4b5a69"
    assert volume_file_name(1, "data", vid, True) == f"000001-data-{vid}.tar.age"
    assert volume_file_name(42, "catalog", vid, False) == f"000042-catalog-{vid}.tar"
    assert volume_file_name(1234567, "index", vid, False) == f"1234567-index-{vid}.tar"
    parsed = parse_volume_file_name(f"000002-catalog-{vid}.tar.age")
    assert parsed is not None
    assert tuple(parsed) == (2, "catalog", vid, True)


@pytest.mark.parametrize(
    "name",
    [
        ".tmp-abc",
        "1-data-abc.tar",
        "000001-stuff-abc.tar",
        "000001-data-abc.tar.gz",
        "000001-data-abc.tar.age.part",
        "000001-data-.tar",
        "000001-data-../x.tar",
        "README",
    ],
)
def test_other_names_are_not_volumes(name: str) -> None:
    assert parse_volume_file_name(name) is None


@pytest.mark.parametrize("volume_id", ["", "a/b", "../x", ".hidden", "x.tar", "a b"])
def test_unsafe_volume_ids_are_refused(volume_id: str) -> None:
    with pytest.raises(UsageError):
        check_volume_id(volume_id)
    with pytest.raises(UsageError):
        volume_file_name(1, "data", volume_id, False)


def test_unknown_kinds_and_bad_seq_are_refused() -> None:
    with pytest.raises(UsageError, match="kind"):
        volume_file_name(1, "junk", "abc", False)
    with pytest.raises(UsageError, match="sequence"):
        volume_file_name(0, "data", "abc", False)


def test_check_catalog() -> None:
    marker = new_marker("HDD-001", catalog_id="cat-1")
    marker.check_catalog("cat-1")
    with pytest.raises(ForeignCatalogError, match=r"HDD-001.*cat-1.*not cat-2"):
        marker.check_catalog("cat-2")
