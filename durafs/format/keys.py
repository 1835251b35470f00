"""A catalog's key material and the keys file every medium carries.

Three encryption modes (docs/FORMAT.md, "Encryption"):

- ``key``: volumes are age-encrypted to an X25519 recipient; reading needs the identity.
- ``password``: volumes are age-encrypted with an scrypt passphrase stanza. One salt per
  catalog, so the expensive scrypt derivation runs once per process, not once per volume.
- ``none``: volumes are plain tar streams.

The chunk-id key (32 random bytes) keys BLAKE3 for chunk ids. It is written on every
medium in the keys file, encrypted like the volumes, so the medium plus the identity or
passphrase is all a recovery needs.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass, field

from durafs.errors import ForeignCatalogError, FormatError, NoIdentityError
from durafs.format import age
from durafs.format.header import ENCRYPTIONS, FORMAT_VERSION, check_version, dumps, loads

KEYS_MAGIC = "durafs-keys"
#: File names of the keys file on a directory medium, by whether it is encrypted.
KEYS_FILE_ENCRYPTED = "durafs-keys.age"
KEYS_FILE_PLAIN = "durafs-keys.json"

Recipient = age.X25519Recipient | age.ScryptRecipient
Identity = age.X25519Identity | age.ScryptIdentity


@dataclass
class CatalogKeys:
    """Everything needed to write (recipients, id key) and read (identities) volumes."""

    catalog_id: str
    encryption: str
    id_key: bytes
    recipients: list[Recipient] = field(default_factory=list)
    identities: list[Identity] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.encryption not in ENCRYPTIONS:
            raise ValueError(f"unknown encryption mode {self.encryption!r}")
        if len(self.id_key) != 32:
            raise ValueError("the chunk-id key must be 32 bytes")

    @property
    def keys_file_name(self) -> str:
        return KEYS_FILE_PLAIN if self.encryption == "none" else KEYS_FILE_ENCRYPTED

    def keys_file(self) -> bytes:
        """The keys file's bytes: JSON, age-encrypted to the recipients unless mode is none."""
        record = dumps(
            {
                "magic": KEYS_MAGIC,
                "format": FORMAT_VERSION,
                "catalog_id": self.catalog_id,
                "encryption": self.encryption,
                "id_key": self.id_key.hex(),
            }
        )
        if self.encryption == "none":
            return record + b"\n"
        out = io.BytesIO()
        writer = age.AgeWriter(out, self.recipients)
        writer.write(record)
        writer.close()
        return out.getvalue()


def read_keys_file(
    data: bytes, identities: Sequence[Identity], *, name: str = KEYS_FILE_ENCRYPTED
) -> CatalogKeys:
    """Open a medium's keys file; the result carries *identities* for reading volumes."""
    if data.startswith(b"age-encryption.org/v1\n"):
        if not identities:
            raise NoIdentityError(f"{name}: encrypted; the identity or passphrase is needed")
        plain = io.BytesIO()
        age.decrypt_stream(io.BytesIO(data), plain, list(identities), name=name)
        data = plain.getvalue()
    record = loads(data, name)
    if record.get("magic") != KEYS_MAGIC:
        raise FormatError(f"{name}: not a durafs keys file")
    check_version(record, name)
    try:
        return CatalogKeys(
            catalog_id=str(record["catalog_id"]),
            encryption=str(record["encryption"]),
            id_key=bytes.fromhex(record["id_key"]),
            identities=list(identities),
        )
    except (KeyError, ValueError) as exc:
        raise FormatError(f"{name}: incomplete keys file ({exc})") from exc


def check_same_catalog(keys: CatalogKeys, catalog_id: str, what: str) -> None:
    """Refuse a medium whose keys file belongs to another catalog."""
    if keys.catalog_id != catalog_id:
        raise ForeignCatalogError(f"{what}: belongs to catalog {keys.catalog_id}, not {catalog_id}")
