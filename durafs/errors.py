"""Exception classes shared by every layer of durafs.

Library code raises these (``raise ... from exc``); only the CLI maps them to exit
codes and only the FUSE adapter maps them to errnos.
"""

from __future__ import annotations


class DurafsError(Exception):
    """Base class of every error durafs raises on purpose."""

    #: exit status the CLI uses when this error ends a command
    exit_code = 3


class UsageError(DurafsError):
    """Bad arguments or configuration: the user must change what they asked for."""

    exit_code = 2


class FormatError(DurafsError):
    """Bytes on a medium do not follow docs/FORMAT.md (damaged, truncated or foreign)."""


class UnsupportedVersionError(FormatError):
    """A volume, label or catalog declares a format version this reader does not know."""


class IntegrityError(FormatError):
    """Stored bytes do not match their hash or AEAD tag: corruption, never restored silently."""


class TruncatedError(FormatError):
    """A volume ends before its declared end."""


class CryptoError(DurafsError):
    """Encryption or decryption could not be done (bad key material, malformed age data)."""


class NoIdentityError(CryptoError):
    """None of the identities (keys or passphrase) given can open this age header."""


class ForeignCatalogError(FormatError):
    """A volume or medium belongs to another catalog than the one reading it."""


class MediumError(DurafsError):
    """A medium cannot be read or written."""


class MediumRefusedError(MediumError):
    """A path given for a new medium cannot become one (not a directory, not empty,
    another medium already): the user must give another path."""

    exit_code = 2


class VolumeMissingError(MediumError):
    """A volume the index records is not on its medium, which is online."""


class MediumOfflineError(MediumError):
    """The medium holding the data is not online (tape on the shelf, unplugged disk)."""


class MediumFullError(MediumError):
    """The medium has no room left for the volume being written."""


class MediumReadOnlyError(MediumError):
    """The medium is online but refuses writes (mounted read-only, as a file system with
    errors often is, or not writable by this user): it can be read, not given volumes."""


class CatalogError(DurafsError):
    """The catalog index is missing, locked, or inconsistent."""


class BusyError(DurafsError):
    """Another process is already doing this (a backup of the same plan)."""
