"""The age v1 file format (age-encryption.org/v1), with random access to the payload.

An age file is a text header that wraps a random 16-byte *file key* once per
recipient (X25519 public key or scrypt passphrase), closed by an HMAC, followed by
a 16-byte nonce and the payload: 64 KiB plaintext chunks, each sealed with
ChaCha20-Poly1305 under a key derived from file key and nonce, with nonce
``counter(11 bytes, big endian) || last flag``.

Invariants this module keeps:
- Every encoding it writes is canonical and every parser rejects non-canonical
  input (base64, bech32, header layout), so one file has exactly one byte form.
- No plaintext is returned unless its chunk authenticated; the final chunk must
  carry the last flag, may be full size, and is empty only if the whole payload is.
- Errors are always durafs errors: CryptoError (malformed key material or header),
  NoIdentityError (nothing opens the header), IntegrityError (a tag or the header
  MAC fails), TruncatedError (the data ends early); messages name the volume.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import hashlib
import hmac
import io
import os
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from durafs.errors import CryptoError, IntegrityError, NoIdentityError, TruncatedError
from durafs.format import bech32

VERSION_LINE = b"age-encryption.org/v1\n"
CHUNK_SIZE = 64 * 1024  # plaintext bytes per STREAM chunk
TAG_SIZE = 16
CT_CHUNK_SIZE = CHUNK_SIZE + TAG_SIZE  # ciphertext bytes per full chunk
NONCE_SIZE = 16
FILE_KEY_SIZE = 16
MAX_HEADER_SIZE = 1 << 20  # refuse headers beyond this instead of reading forever
_MAX_ARG_LINE = 1 << 16
_OUT_BATCH = 64  # chunks (~4 MiB) per sink.write / dst.write
_HAS_INTO = hasattr(ChaCha20Poly1305, "decrypt_into")  # cryptography >= 45
_X25519_INFO = b"age-encryption.org/v1/X25519"
_SCRYPT_SALT_PREFIX = b"age-encryption.org/v1/scrypt"
_ZERO_NONCE = bytes(12)
_WORK_FACTOR_RE = re.compile(rb"[1-9][0-9]*")
_B64_CHARS = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")
_SECRET_HRP = "AGE-SECRET-KEY-"
_RECIPIENT_HRP = "age"

Buffer = bytes | bytearray | memoryview


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


def _payload_aead(file_key: bytes, nonce: bytes) -> ChaCha20Poly1305:
    return ChaCha20Poly1305(_hkdf(file_key, nonce, b"payload"))


def _chunk_nonce(index: int, last: bool) -> bytes:
    return ((index << 8) | last).to_bytes(12, "big")


def encrypted_size(header_len: int, plaintext_size: int) -> int:
    """Total age file size for a header of ``header_len`` bytes and that much plaintext."""
    chunks = max(1, -(-plaintext_size // CHUNK_SIZE))
    return header_len + NONCE_SIZE + plaintext_size + chunks * TAG_SIZE


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


# --------------------------------------------------------------------------- scrypt

_SCRYPT_CACHE: OrderedDict[tuple[bytes, bytes, int], bytes] = OrderedDict()
_SCRYPT_CACHE_MAX = 64
_SCRYPT_LOCK = threading.Lock()
_CACHE_PEPPER = os.urandom(32)  # cache keys must not be a plain hash of the passphrase


def _scrypt_wrap_key(passphrase: bytes, salt: bytes, work_factor: int) -> bytes:
    """scrypt(N=2**wf, r=8, p=1) of the passphrase; cached because it costs ~1 s at wf 18."""
    key = (hmac.new(_CACHE_PEPPER, passphrase, hashlib.sha256).digest(), salt, work_factor)
    with _SCRYPT_LOCK:
        if key in _SCRYPT_CACHE:
            _SCRYPT_CACHE.move_to_end(key)
            return _SCRYPT_CACHE[key]
    try:
        kdf = Scrypt(salt=_SCRYPT_SALT_PREFIX + salt, length=32, n=1 << work_factor, r=8, p=1)
        wrap_key = kdf.derive(passphrase)
    except (ValueError, MemoryError) as exc:
        raise CryptoError(f"scrypt with work factor {work_factor} failed: {exc}") from exc
    with _SCRYPT_LOCK:
        _SCRYPT_CACHE[key] = wrap_key
        while len(_SCRYPT_CACHE) > _SCRYPT_CACHE_MAX:
            _SCRYPT_CACHE.popitem(last=False)
    return wrap_key


class ScryptRecipient:
    """Encrypt to a passphrase. ``salt`` defaults to fresh random bytes (spec: per file)."""

    def __init__(self, passphrase: bytes, work_factor: int = 18, salt: bytes | None = None):
        if not passphrase:
            raise CryptoError("empty passphrase")
        if not 1 <= work_factor <= 40:
            raise CryptoError(f"scrypt work factor {work_factor} out of range 1..40")
        if salt is not None and len(salt) != 16:
            raise CryptoError("scrypt salt must be 16 bytes")
        self._passphrase = passphrase
        self.work_factor = work_factor
        self.salt = salt

    def wrap(self, file_key: bytes) -> Stanza:
        salt = self.salt if self.salt is not None else os.urandom(16)
        wrap_key = _scrypt_wrap_key(self._passphrase, salt, self.work_factor)
        body = ChaCha20Poly1305(wrap_key).encrypt(_ZERO_NONCE, file_key, None)
        return Stanza(("scrypt", _b64encode(salt).decode(), str(self.work_factor)), body)


class ScryptIdentity:
    """Decrypt with a passphrase; refuses work factors above ``max_work_factor``."""

    def __init__(self, passphrase: bytes, max_work_factor: int = 22):
        self._passphrase = passphrase
        self.max_work_factor = max_work_factor

    def unwrap(self, stanza: Stanza) -> bytes | None:
        """The file key, None if the stanza is not scrypt or the passphrase is wrong."""
        if stanza.args[0] != "scrypt":
            return None
        if len(stanza.args) != 3:
            raise CryptoError("malformed scrypt stanza: needs 3 arguments")
        salt = _b64decode(stanza.args[1].encode(), "scrypt stanza salt")
        wf_text = stanza.args[2].encode()
        if len(salt) != 16 or not _WORK_FACTOR_RE.fullmatch(wf_text) or len(wf_text) > 3:
            raise CryptoError("malformed scrypt stanza")
        work_factor = int(wf_text)
        if work_factor > self.max_work_factor:
            raise CryptoError(
                f"scrypt work factor {work_factor} exceeds the limit {self.max_work_factor}"
            )
        if len(stanza.body) != 32:  # checked before decrypting (partitioning oracles)
            raise CryptoError("malformed scrypt stanza body")
        wrap_key = _scrypt_wrap_key(self._passphrase, salt, work_factor)
        try:
            return ChaCha20Poly1305(wrap_key).decrypt(_ZERO_NONCE, stanza.body, None)
        except InvalidTag:
            return None


# --------------------------------------------------------------------------- X25519


class X25519Recipient:
    """An ``age1...`` public key."""

    def __init__(self, public: bytes):
        if len(public) != 32:
            raise CryptoError("X25519 recipient must be 32 bytes")
        self._public = public

    @classmethod
    def parse(cls, text: str) -> X25519Recipient:
        try:
            hrp, data = bech32.decode(text.strip())
        except bech32.Bech32Error as exc:
            raise CryptoError(f"invalid age recipient: {exc}") from None
        if hrp != _RECIPIENT_HRP or len(data) != 32:
            raise CryptoError("invalid age recipient: not an age1... X25519 public key")
        return cls(data)

    def to_str(self) -> str:
        return bech32.encode(_RECIPIENT_HRP, self._public)

    def __repr__(self) -> str:
        return f"X25519Recipient({self.to_str()})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, X25519Recipient) and other._public == self._public

    def __hash__(self) -> int:
        return hash(self._public)

    def wrap(self, file_key: bytes) -> Stanza:
        ephemeral = X25519PrivateKey.generate()
        share = ephemeral.public_key().public_bytes_raw()
        try:
            shared = ephemeral.exchange(X25519PublicKey.from_public_bytes(self._public))
        except ValueError:
            raise CryptoError("X25519 recipient is a low-order point") from None
        wrap_key = _hkdf(shared, share + self._public, _X25519_INFO)
        body = ChaCha20Poly1305(wrap_key).encrypt(_ZERO_NONCE, file_key, None)
        return Stanza(("X25519", _b64encode(share).decode()), body)


class X25519Identity:
    """An ``AGE-SECRET-KEY-1...`` private key (32 random bytes, kept as written)."""

    def __init__(self, secret: bytes):
        if len(secret) != 32:
            raise CryptoError("X25519 identity must be 32 bytes")
        self._secret = secret
        self._key = X25519PrivateKey.from_private_bytes(secret)
        self._public = self._key.public_key().public_bytes_raw()

    @classmethod
    def generate(cls) -> X25519Identity:
        return cls(os.urandom(32))

    @classmethod
    def parse(cls, text: str) -> X25519Identity:
        try:
            hrp, data = bech32.decode(text.strip())
        except bech32.Bech32Error as exc:  # the message never echoes the key text
            raise CryptoError(f"invalid age identity: {exc}") from None
        if hrp != _SECRET_HRP or len(data) != 32:
            raise CryptoError("invalid age identity: not an AGE-SECRET-KEY-1... X25519 key")
        return cls(data)

    def to_str(self) -> str:
        return bech32.encode(_SECRET_HRP, self._secret).upper()

    def recipient(self) -> X25519Recipient:
        return X25519Recipient(self._public)

    def __repr__(self) -> str:  # never show the secret
        return f"X25519Identity(public={self.recipient().to_str()})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, X25519Identity) and hmac.compare_digest(
            other._secret, self._secret
        )

    def __hash__(self) -> int:
        return hash(self._public)

    def unwrap(self, stanza: Stanza) -> bytes | None:
        """The file key, or None if the stanza is not X25519 or not addressed to us."""
        if stanza.args[0] != "X25519":
            return None
        if len(stanza.args) != 2:
            raise CryptoError("malformed X25519 stanza: needs 2 arguments")
        share = _b64decode(stanza.args[1].encode(), "X25519 stanza share")
        if len(share) != 32 or len(stanza.body) != 32:
            raise CryptoError("malformed X25519 stanza")
        try:
            shared = self._key.exchange(X25519PublicKey.from_public_bytes(share))
        except ValueError:  # OpenSSL refuses the all-zero shared secret of low-order points
            raise CryptoError("X25519 stanza has a low-order ephemeral share") from None
        if shared == bytes(32):
            raise CryptoError("X25519 stanza has a low-order ephemeral share")
        wrap_key = _hkdf(shared, share + self._public, _X25519_INFO)
        try:
            return ChaCha20Poly1305(wrap_key).decrypt(_ZERO_NONCE, stanza.body, None)
        except InvalidTag:
            return None


class Recipient(Protocol):
    def wrap(self, file_key: bytes) -> Stanza: ...


class Identity(Protocol):
    def unwrap(self, stanza: Stanza) -> bytes | None: ...


# --------------------------------------------------------------------------- key wrapping


def encrypt_header(
    recipients: Sequence[Recipient], file_key: bytes | None = None
) -> tuple[bytes, bytes]:
    """Build a header wrapping ``file_key`` (fresh if None); return (header, file_key)."""
    if not recipients:
        raise CryptoError("no recipients")
    if len(recipients) > 1 and any(isinstance(r, ScryptRecipient) for r in recipients):
        raise CryptoError("a passphrase (scrypt) recipient must be the only recipient")
    if file_key is None:
        file_key = os.urandom(FILE_KEY_SIZE)
    elif len(file_key) != FILE_KEY_SIZE:
        raise CryptoError("age file key must be 16 bytes")
    body = VERSION_LINE + b"".join(r.wrap(file_key).marshal() for r in recipients) + b"---"
    return body + b" " + _b64encode(_header_mac(file_key, body)) + b"\n", file_key


def _no_identity_message(header: Header, identities: Sequence[Identity]) -> str:
    has_passphrase = any(isinstance(i, ScryptIdentity) for i in identities)
    if header.stanzas[0].args[0] == "scrypt":
        if has_passphrase:
            return "wrong passphrase for this age file"
        return "this age file is passphrase-protected, but no passphrase was given"
    if identities and all(isinstance(i, ScryptIdentity) for i in identities):
        return "this age file is encrypted to keys, not a passphrase (no identity matches)"
    return "no identity matches this age file (wrong key?)"


def unwrap_file_key(header: Header, identities: Sequence[Identity], name: str = "") -> bytes:
    """Find the file key with the first identity that opens a stanza; verify the header MAC."""
    if len(header.stanzas) > 1 and any(s.args[0] == "scrypt" for s in header.stanzas):
        raise CryptoError(f"{_p(name)}age header mixes a passphrase stanza with others")
    for identity in identities:
        for stanza in header.stanzas:
            try:
                file_key = identity.unwrap(stanza)
            except CryptoError as exc:
                raise type(exc)(f"{_p(name)}{exc}") from exc
            if file_key is None:
                continue
            if not hmac.compare_digest(_header_mac(file_key, header.mac_input), header.mac):
                raise IntegrityError(f"{_p(name)}age header MAC mismatch (header damaged)")
            return file_key
    raise NoIdentityError(_p(name) + _no_identity_message(header, identities))


# --------------------------------------------------------------------------- writing


class _Sink(Protocol):
    def write(self, data: Buffer, /) -> object: ...


class _Source(Protocol):
    def read(self, size: int, /) -> bytes: ...


def _seal_into(aead: ChaCha20Poly1305, index: int, last: bool, chunk: Buffer, out: Buffer) -> None:
    # encrypt_into/decrypt_into release the GIL and skip a copy; plain encrypt() holds it
    if _HAS_INTO:
        aead.encrypt_into(_chunk_nonce(index, last), chunk, None, out)
    else:
        memoryview(out)[:] = aead.encrypt(_chunk_nonce(index, last), chunk, None)


def _open_into(aead: ChaCha20Poly1305, index: int, last: bool, piece: Buffer, out: Buffer) -> None:
    if _HAS_INTO:
        aead.decrypt_into(_chunk_nonce(index, last), piece, None, out)
    else:
        memoryview(out)[:] = aead.decrypt(_chunk_nonce(index, last), piece, None)


def _open_chunk(
    aead: ChaCha20Poly1305, index: int, piece: Buffer, last: bool, name: str, out: Buffer
) -> None:
    """Decrypt one chunk into ``out``; a full chunk failing as final is told as a truncation."""
    try:
        _open_into(aead, index, last, piece, out)
        return
    except InvalidTag:
        pass
    if last and len(piece) == CT_CHUNK_SIZE:
        try:
            aead.decrypt(_chunk_nonce(index, False), piece, None)
        except InvalidTag:
            pass
        else:
            raise TruncatedError(
                f"{_p(name)}age payload ends after chunk {index} without a final chunk"
            )
    raise IntegrityError(f"{_p(name)}age payload chunk {index} failed authentication")


def _check_piece(index: int, piece_len: int, last: bool, name: str) -> None:
    if piece_len < TAG_SIZE or (last and index > 0 and piece_len == TAG_SIZE):
        raise TruncatedError(f"{_p(name)}age payload ends inside chunk {index}")


class AgeWriter:
    """Streaming encryption to a binary sink (anything with ``.write(bytes)``).

    Memory is bounded: less than one chunk of plaintext is held between calls (a
    full chunk is held back until more data shows it is not the final one), and
    each call hands the sink at most ~4 MiB at a time, in fresh buffers it may keep.
    The header and payload nonce are written at construction. ``file_key`` is for
    callers that need the key up front; the spec forbids reusing one across files.
    """

    def __init__(
        self, sink: _Sink, recipients: Sequence[Recipient], *, file_key: bytes | None = None
    ):
        header, file_key = encrypt_header(recipients, file_key)
        nonce = os.urandom(NONCE_SIZE)
        self._aead = _payload_aead(file_key, nonce)
        self._sink = sink
        self._buf = bytearray()
        self._index = 0
        self._closed = False
        self.header_len = len(header)
        sink.write(header + nonce)

    def _seal(self, chunks: Sequence[Buffer], last: bool = False) -> bytearray:
        """Seal consecutive chunks into one new buffer (``last`` flags the final one)."""
        out = bytearray(sum(len(c) for c in chunks) + TAG_SIZE * len(chunks))
        view = memoryview(out)
        pos = 0
        for i, chunk in enumerate(chunks):
            end = pos + len(chunk) + TAG_SIZE
            final = last and i == len(chunks) - 1
            _seal_into(self._aead, self._index, final, chunk, view[pos:end])
            self._index += 1
            pos = end
        return out

    def write(self, data: Buffer) -> None:
        """Encrypt ``data``; full chunks are sealed now, the tail is buffered."""
        if self._closed:
            raise ValueError("write to a closed AgeWriter")
        view = memoryview(data).cast("B")
        size = len(view)
        pos = 0
        chunks: list[Buffer] = []
        if self._buf:
            pos = min(CHUNK_SIZE - len(self._buf), size)
            self._buf += view[:pos]
            if pos == size:
                return  # a full buffer may still be the final chunk: hold it
            chunks.append(self._buf)
            self._buf = bytearray()
        while size - pos > CHUNK_SIZE:  # keep 1..CHUNK_SIZE bytes back for the last chunk
            chunks.append(view[pos : pos + CHUNK_SIZE])
            pos += CHUNK_SIZE
        self._buf += view[pos:]
        for i in range(0, len(chunks), _OUT_BATCH):
            self._sink.write(self._seal(chunks[i : i + _OUT_BATCH]))

    def close(self) -> None:
        """Seal the final chunk (empty only if nothing was written). Idempotent."""
        if not self._closed:
            self._sink.write(self._seal([self._buf], last=True))
            self._buf = bytearray()
            self._closed = True

    def ciphertext_offset(self, plain_offset: int) -> int:
        """Where plaintext byte ``plain_offset`` lands in the file."""
        chunk, within = divmod(plain_offset, CHUNK_SIZE)
        return self.header_len + NONCE_SIZE + chunk * CT_CHUNK_SIZE + within

    def __enter__(self) -> AgeWriter:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:  # never seal a final chunk over a failed write
            self.close()


# --------------------------------------------------------------------------- reading


class AgeReader:
    """Random access to an age file through ``read_at(offset, length) -> bytes``.

    ``read_at`` must return exactly ``length`` bytes unless the file ends first.
    With ``size`` the chunk layout is known up front; without it the end is found
    by trial (a short chunk, or a full one that only opens with the last flag) and
    remembered. Only the chunks covering a read are fetched and decrypted; the last
    decrypted chunk is kept so sequential small reads decrypt each chunk once.
    Reads reaching the end verify the final chunk (spec). ``chunks_decrypted``
    counts chunk decryptions. Concurrent reads are safe: shared state is the key
    and idempotent caches.
    """

    def __init__(
        self,
        read_at: Callable[[int, int], Buffer],
        identities: Sequence[Identity],
        *,
        size: int | None = None,
        name: str = "",
    ):
        self._read_at = read_at
        self.name = name
        self.chunks_decrypted = 0
        self._cache: tuple[int, bytearray] | None = None
        self._n_chunks: int | None = None
        self._plaintext_size: int | None = None
        self._end_verified = False
        header, self.header_len, head = self._read_header(size)
        file_key = unwrap_file_key(header, identities, name)
        nonce = bytes(head[self.header_len : self.header_len + NONCE_SIZE])
        if len(nonce) < NONCE_SIZE:
            nonce = bytes(read_at(self.header_len, NONCE_SIZE))
        if len(nonce) < NONCE_SIZE:
            raise TruncatedError(f"{_p(name)}age file ends before its payload")
        self._aead = _payload_aead(file_key, nonce)
        self._start = self.header_len + NONCE_SIZE
        if size is not None:
            self._layout_from_size(size)

    def _read_header(self, size: int | None) -> tuple[Header, int, bytes]:
        want = 4096
        while True:
            if size is not None:
                want = min(want, size)
            head = bytes(self._read_at(0, want))
            try:
                header, header_len = parse_header(head, name=self.name)
                return header, header_len, head
            except TruncatedError:
                if len(head) < want or (size is not None and want >= size):
                    raise
            if want >= MAX_HEADER_SIZE:
                raise CryptoError(f"{_p(self.name)}age header longer than {MAX_HEADER_SIZE}")
            want *= 4

    def _layout_from_size(self, size: int) -> None:
        payload = size - self._start
        chunks = max(1, -(-payload // CT_CHUNK_SIZE))
        last_len = payload - (chunks - 1) * CT_CHUNK_SIZE
        if last_len < TAG_SIZE or (chunks > 1 and last_len == TAG_SIZE):
            raise TruncatedError(f"{_p(self.name)}age file size {size} cuts a chunk short")
        self._n_chunks = chunks
        self._plaintext_size = payload - chunks * TAG_SIZE

    @property
    def plaintext_size(self) -> int | None:
        """Plaintext length: known from ``size``, or once the final chunk was found."""
        return self._plaintext_size

    def _learn_end(self, index: int, piece_len: int) -> None:
        self._plaintext_size = index * CHUNK_SIZE + piece_len - TAG_SIZE
        self._n_chunks = index + 1
        self._end_verified = True

    def _open(self, index: int, piece: Buffer, last: bool) -> bytearray:
        _check_piece(index, len(piece), last, self.name)
        plain = bytearray(len(piece) - TAG_SIZE)
        _open_chunk(self._aead, index, piece, last, self.name, plain)
        self.chunks_decrypted += 1
        self._cache = (index, plain)
        return plain

    def read(self, offset: int, length: int) -> bytes:
        """Plaintext ``[offset, offset+length)``; shorter (maybe empty) past the end."""
        if offset < 0 or length < 0:
            raise ValueError("negative offset or length")
        if length == 0:
            return b""
        first = offset // CHUNK_SIZE
        last = (offset + length - 1) // CHUNK_SIZE
        parts: list[bytearray] = []
        cache = self._cache
        if cache is not None and cache[0] == first:
            parts.append(cache[1])
            first += 1
        if first <= last:
            if self._n_chunks is None:
                parts += self._read_unknown(first, last)
            else:
                parts += self._read_known(first, last)
        start = offset % CHUNK_SIZE
        data = parts[0] if len(parts) == 1 else b"".join(parts)
        return bytes(memoryview(data)[start : start + length])

    def _read_known(self, first: int, last: int) -> list[bytearray]:
        assert self._n_chunks is not None and self._plaintext_size is not None
        final = self._n_chunks - 1
        if first > final:
            if not self._end_verified:
                self._read_known(final, final)
            return []
        last = min(last, final)
        want = (last - first + 1) * CT_CHUNK_SIZE
        if last == final:  # the final chunk may be short
            want -= (final + 1) * CHUNK_SIZE - self._plaintext_size
        data = memoryview(self._read_at(self._start + first * CT_CHUNK_SIZE, want))
        if len(data) < want:
            raise TruncatedError(f"{_p(self.name)}age file is shorter than its stated size")
        parts = []
        for k, index in enumerate(range(first, last + 1)):
            piece = data[k * CT_CHUNK_SIZE : (k + 1) * CT_CHUNK_SIZE]
            parts.append(self._open(index, piece, index == final))
        if last == final:
            self._end_verified = True
        return parts

    def _read_unknown(self, first: int, last: int) -> list[bytearray]:
        """Decrypt chunks first..last while discovering where the payload ends."""
        pos = self._start + first * CT_CHUNK_SIZE
        data = memoryview(self._read_at(pos, (last - first + 1) * CT_CHUNK_SIZE))
        parts: list[bytearray] = []
        for k, index in enumerate(range(first, last + 1)):
            piece = data[k * CT_CHUNK_SIZE : (k + 1) * CT_CHUNK_SIZE]
            if not piece:
                if k == 0 and index > 0:
                    self._read_unknown(index - 1, index - 1)  # is chunk index-1 the final one?
                if self._n_chunks is None:
                    raise TruncatedError(
                        f"{_p(self.name)}age payload ends after chunk {index - 1} "
                        "without a final chunk"
                    )
                break
            if len(piece) < CT_CHUNK_SIZE:
                parts.append(self._open(index, piece, last=True))
                self._learn_end(index, len(piece))
                break
            try:
                parts.append(self._open(index, piece, last=False))
            except IntegrityError:
                parts.append(self._open(index, piece, last=True))  # a full final chunk
                tail_at = pos + (k + 1) * CT_CHUNK_SIZE
                if len(data) > (k + 1) * CT_CHUNK_SIZE or self._read_at(tail_at, 1):
                    raise IntegrityError(
                        f"{_p(self.name)}age payload has data after its final chunk {index}"
                    ) from None
                self._learn_end(index, len(piece))
                break
        return parts


def _read_stream_header(src: _Source, name: str) -> tuple[Header, int, bytes]:
    """Read from ``src`` until the header and the payload nonce are in the returned buffer."""
    buf = b""
    while True:
        try:
            header, header_len = parse_header(buf, name=name)
            break
        except TruncatedError:
            more = src.read(1 << 16)
            if not more:
                raise
            if len(buf) > MAX_HEADER_SIZE:
                raise CryptoError(f"{_p(name)}age header longer than {MAX_HEADER_SIZE}") from None
            buf += more
    while len(buf) < header_len + NONCE_SIZE:
        more = src.read(1 << 16)
        if not more:
            raise TruncatedError(f"{_p(name)}age file ends before its payload")
        buf += more
    return header, header_len, buf


def _open_batch(
    aead: ChaCha20Poly1305, index: int, data: memoryview, last: bool, name: str
) -> bytearray:
    """Decrypt consecutive chunks filling ``data``; ``last`` marks the final one."""
    count = max(1, -(-len(data) // CT_CHUNK_SIZE))
    _check_piece(index + count - 1, len(data) - (count - 1) * CT_CHUNK_SIZE, last, name)
    out = bytearray(len(data) - count * TAG_SIZE)
    view = memoryview(out)
    for k in range(count):
        piece = data[k * CT_CHUNK_SIZE : (k + 1) * CT_CHUNK_SIZE]
        final = last and k == count - 1
        plain = view[k * CHUNK_SIZE : k * CHUNK_SIZE + len(piece) - TAG_SIZE]
        _open_chunk(aead, index + k, piece, final, name, plain)
    return out


def decrypt_stream(
    src: _Source, dst: _Sink, identities: Sequence[Identity], name: str = ""
) -> None:
    """Decrypt a whole age file sequentially from ``src`` into ``dst`` (~4 MiB writes).

    Plaintext reaches ``dst`` only after its chunk authenticated, but an error in
    a later chunk leaves earlier plaintext written: callers discard ``dst`` on error.
    """
    header, header_len, buf = _read_stream_header(src, name)
    nonce = buf[header_len : header_len + NONCE_SIZE]
    aead = _payload_aead(unwrap_file_key(header, identities, name), nonce)
    pending = buf[header_len + NONCE_SIZE :]
    index = 0
    while True:
        block = src.read(_OUT_BATCH * CT_CHUNK_SIZE)
        if not block:
            break
        data = memoryview(pending + block if pending else block)
        whole = (len(data) - 1) // CT_CHUNK_SIZE  # keep the tail: it may be the final chunk
        if whole:
            dst.write(_open_batch(aead, index, data[: whole * CT_CHUNK_SIZE], False, name))
            index += whole
        pending = bytes(data[whole * CT_CHUNK_SIZE :])
    dst.write(_open_batch(aead, index, memoryview(pending), True, name))


# --------------------------------------------------------------------------- identity files


def parse_identities(text: str) -> list[X25519Identity]:
    """Parse an identity file: ``#`` comments, blank lines, one AGE-SECRET-KEY-1 per line."""
    identities = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if not line.startswith(_SECRET_HRP + "1"):  # never echo the line: it may be a key
            raise CryptoError(f"identity file line {number} is not an AGE-SECRET-KEY-1 key")
        identities.append(X25519Identity.parse(line))
    if not identities:
        raise CryptoError("identity file holds no identities")
    return identities


def write_identity_file(
    identity: X25519Identity, passphrase: bytes | None, *, work_factor: int = 18
) -> bytes:
    """The identity file age-keygen writes, age-encrypted to ``passphrase`` if one is given.

    The encrypted form is what ``age -p`` makes of it, so ``age -d -i FILE`` asks
    for the passphrase and uses the key inside.
    """
    created = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    text = (
        f"# created: {created}\n"
        f"# public key: {identity.recipient().to_str()}\n"
        f"{identity.to_str()}\n"
    ).encode()
    if passphrase is None:
        return text
    out = io.BytesIO()
    with AgeWriter(out, [ScryptRecipient(passphrase, work_factor)]) as writer:
        writer.write(text)
    return out.getvalue()


def read_identity_file(
    data: bytes, passphrase: bytes | None, *, max_work_factor: int = 22
) -> list[X25519Identity]:
    """Parse an identity file, decrypting it first if it is passphrase-protected."""
    if data.startswith(b"age-encryption.org/"):
        if passphrase is None:
            raise NoIdentityError("the identity file is passphrase-protected: need a passphrase")
        out = io.BytesIO()
        decrypt_stream(io.BytesIO(data), out, [ScryptIdentity(passphrase, max_work_factor)])
        data = out.getvalue()
    try:
        return parse_identities(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise CryptoError("identity file is not UTF-8 text") from None
