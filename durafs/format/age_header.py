"""The age v1 header (age-encryption.org/v1): stanzas, canonical parsing and encoding.

The header is the version line, one stanza per recipient wrapping the 16-byte file
key, and a ``---`` line carrying an HMAC-SHA256 over everything before it. This
module holds the header data types, the parser, strict unpadded base64, and the
HKDF and header-MAC helpers shared by key wrapping (``age_keys``) and the payload
stream (``age``). The parser rejects non-canonical input, so one header has
exactly one byte form; errors are CryptoError or TruncatedError (read more, retry).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from dataclasses import dataclass
from typing import Protocol

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from durafs.errors import CryptoError, TruncatedError

VERSION_LINE = b"age-encryption.org/v1\n"
FILE_KEY_SIZE = 16
MAX_HEADER_SIZE = 1 << 20  # refuse headers beyond this instead of reading forever
_MAX_ARG_LINE = 1 << 16
_B64_CHARS = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")


def _p(name: str) -> str:
    return f"{name}: " if name else ""


def _b64encode(data: bytes) -> bytes:
    return base64.b64encode(data).rstrip(b"=")


def _b64decode(text: bytes, what: str) -> bytes:
    """Decode unpadded base64, rejecting padding, stray characters and non-zero spare bits."""
    if not _B64_CHARS.issuperset(text) or len(text) % 4 == 1:
        raise CryptoError(f"{what}: invalid base64")
    try:
        data = base64.b64decode(text + b"=" * (-len(text) % 4), validate=True)
    except binascii.Error:
        raise CryptoError(f"{what}: invalid base64") from None
    if _b64encode(data) != text:
        raise CryptoError(f"{what}: non-canonical base64")
    return data


def _hkdf(ikm: bytes, salt: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=info).derive(ikm)


def _header_mac(file_key: bytes, mac_input: bytes) -> bytes:
    return hmac.new(_hkdf(file_key, b"", b"header"), mac_input, hashlib.sha256).digest()


# --------------------------------------------------------------------------- header


@dataclass(frozen=True)
class Stanza:
    """One recipient stanza: ``args[0]`` is its type; ``body`` is the decoded body."""

    args: tuple[str, ...]
    body: bytes

    def marshal(self) -> bytes:
        """The canonical text form: arg line, body wrapped at 64 columns, short last line."""
        text = _b64encode(self.body)
        lines = [text[i : i + 64] for i in range(0, len(text), 64)]
        if not lines or len(lines[-1]) == 64:
            lines.append(b"")  # the body must end with a line shorter than 64 columns
        arg_line = b"-> " + " ".join(self.args).encode("ascii")
        return b"\n".join([arg_line, *lines]) + b"\n"


@dataclass(frozen=True)
class Header:
    """A parsed header; ``mac_input`` is the exact bytes the MAC covers (through ``---``)."""

    stanzas: tuple[Stanza, ...]
    mac: bytes
    mac_input: bytes


def _line(data: bytes, pos: int, max_len: int, what: str) -> tuple[bytes, int]:
    """The line at ``pos`` without its LF, and the position after it."""
    end = data.find(b"\n", pos, pos + max_len + 1)
    if end < 0:
        if len(data) - pos > max_len:
            raise CryptoError(f"{what}: line too long")
        raise TruncatedError(f"{what}: header is truncated")
    return data[pos:end], end + 1


def _parse_stanza(data: bytes, pos: int, what: str) -> tuple[Stanza, int]:
    line, pos = _line(data, pos, _MAX_ARG_LINE, what)
    raw_args = line[3:].split(b" ")
    if any(not arg or any(not 33 <= c <= 126 for c in arg) for arg in raw_args):
        raise CryptoError(f"{what}: malformed stanza argument line")
    parts = []
    while True:
        body_line, pos = _line(data, pos, 64, what)
        parts.append(body_line)
        if len(body_line) < 64:
            break
    body = _b64decode(b"".join(parts), f"{what}: stanza body")
    return Stanza(tuple(a.decode("ascii") for a in raw_args), body), pos


def parse_header(data: bytes, *, name: str = "") -> tuple[Header, int]:
    """Parse the header at the start of ``data``; return it and the bytes it spans.

    Raises TruncatedError if ``data`` ends inside the header (read more and retry)
    and CryptoError if it is not a well-formed, canonical v1 header.
    """
    what = f"{_p(name)}age header"
    if not data.startswith(VERSION_LINE):
        if VERSION_LINE.startswith(data):
            raise TruncatedError(f"{what} is truncated")
        if data.startswith(b"age-encryption.org/"):
            raise CryptoError(f"{what}: unsupported age format version")
        raise CryptoError(f"{_p(name)}not an age file")
    pos = len(VERSION_LINE)
    stanzas: list[Stanza] = []
    while True:
        mark = data[pos : pos + 3]
        if mark == b"---":
            line, end = _line(data, pos, 47, what)
            if not stanzas or len(line) != 47 or line[3:4] != b" ":
                raise CryptoError(f"{what}: malformed MAC line")
            mac = _b64decode(line[4:], f"{what} MAC")
            return Header(tuple(stanzas), mac, data[: pos + 3]), end
        if mark == b"-> ":
            stanza, pos = _parse_stanza(data, pos, what)
            stanzas.append(stanza)
        elif b"-> ".startswith(mark) or b"---".startswith(mark):
            raise TruncatedError(f"{what} is truncated")
        else:
            raise CryptoError(f"{what}: malformed line")


class Recipient(Protocol):
    def wrap(self, file_key: bytes) -> Stanza: ...


class Identity(Protocol):
    def unwrap(self, stanza: Stanza) -> bytes | None: ...
