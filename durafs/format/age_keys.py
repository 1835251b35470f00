"""age v1 recipients and identities: X25519 keys, scrypt passphrases, key wrapping.

X25519 keys are ``age1...`` / ``AGE-SECRET-KEY-1...`` bech32 strings; a passphrase
stanza (scrypt) must be the only stanza of its header. ``encrypt_header`` wraps a
file key for recipients and MACs the header; ``unwrap_file_key`` finds it with the
first identity that opens a stanza and verifies the MAC. ``parse_identities`` reads
an identity file's text (the ``age`` module reads and writes encrypted ones).
Errors are CryptoError, IntegrityError (header MAC) or NoIdentityError.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import threading
from collections import OrderedDict
from collections.abc import Sequence

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from durafs.errors import CryptoError, IntegrityError, NoIdentityError
from durafs.format import bech32
from durafs.format.age_header import (
    FILE_KEY_SIZE,
    VERSION_LINE,
    Header,
    Identity,
    Recipient,
    Stanza,
    _b64decode,
    _b64encode,
    _header_mac,
    _hkdf,
    _p,
)

_X25519_INFO = b"age-encryption.org/v1/X25519"
_SCRYPT_SALT_PREFIX = b"age-encryption.org/v1/scrypt"
_ZERO_NONCE = bytes(12)
_WORK_FACTOR_RE = re.compile(rb"[1-9][0-9]*")
#: The scrypt work factors (log2 N) a passphrase recipient accepts.
MIN_WORK_FACTOR = 1
MAX_WORK_FACTOR = 40
#: The most a passphrase identity takes by default: age's own limit, so `age -d` refuses a
#: file made with more (and scrypt at 2**22 already needs 4 GiB of memory).
MAX_READ_WORK_FACTOR = 22
_SECRET_HRP = "AGE-SECRET-KEY-"
_RECIPIENT_HRP = "age"


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
        if not MIN_WORK_FACTOR <= work_factor <= MAX_WORK_FACTOR:
            raise CryptoError(f"scrypt work factor {work_factor} out of range "
                              f"{MIN_WORK_FACTOR}..{MAX_WORK_FACTOR}")
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

    def __init__(self, passphrase: bytes, max_work_factor: int = MAX_READ_WORK_FACTOR):
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
