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

The header (stanzas, parsing, MAC) lives in ``age_header`` and the recipients,
identities and key wrapping in ``age_keys``; this module holds the STREAM payload
(AgeWriter, AgeReader, decrypt_stream) and identity-file encryption, and re-exports
the whole API, so callers use ``from durafs.format import age`` and ``age.X``.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import io
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from durafs.errors import CryptoError, IntegrityError, NoIdentityError, TruncatedError
from durafs.format.age_header import (
    _B64_CHARS,
    _MAX_ARG_LINE,
    FILE_KEY_SIZE,
    MAX_HEADER_SIZE,
    VERSION_LINE,
    Header,
    Identity,
    Recipient,
    Stanza,
    _b64decode,
    _b64encode,
    _header_mac,
    _hkdf,
    _line,
    _p,
    _parse_stanza,
    parse_header,
)
from durafs.format.age_keys import (
    _CACHE_PEPPER,
    _RECIPIENT_HRP,
    _SCRYPT_CACHE,
    _SCRYPT_CACHE_MAX,
    _SCRYPT_LOCK,
    _SCRYPT_SALT_PREFIX,
    _SECRET_HRP,
    _WORK_FACTOR_RE,
    _X25519_INFO,
    _ZERO_NONCE,
    MAX_READ_WORK_FACTOR,
    ScryptIdentity,
    ScryptRecipient,
    X25519Identity,
    X25519Recipient,
    _no_identity_message,
    _scrypt_wrap_key,
    encrypt_header,
    parse_identities,
    unwrap_file_key,
)

__all__ = [
    "CHUNK_SIZE",
    "CT_CHUNK_SIZE",
    "FILE_KEY_SIZE",
    "MAX_HEADER_SIZE",
    "NONCE_SIZE",
    "TAG_SIZE",
    "VERSION_LINE",
    "_B64_CHARS",
    "_CACHE_PEPPER",
    "_HAS_INTO",
    "_MAX_ARG_LINE",
    "_OUT_BATCH",
    "_RECIPIENT_HRP",
    "_SCRYPT_CACHE",
    "_SCRYPT_CACHE_MAX",
    "_SCRYPT_LOCK",
    "_SCRYPT_SALT_PREFIX",
    "_SECRET_HRP",
    "_WORK_FACTOR_RE",
    "_X25519_INFO",
    "_ZERO_NONCE",
    "AgeReader",
    "AgeWriter",
    "Buffer",
    "Header",
    "Identity",
    "Recipient",
    "ScryptIdentity",
    "ScryptRecipient",
    "Stanza",
    "X25519Identity",
    "X25519Recipient",
    "_b64decode",
    "_b64encode",
    "_check_piece",
    "_chunk_nonce",
    "_header_mac",
    "_hkdf",
    "_line",
    "_no_identity_message",
    "_open_batch",
    "_open_chunk",
    "_open_into",
    "_p",
    "_parse_stanza",
    "_payload_aead",
    "_read_stream_header",
    "_scrypt_wrap_key",
    "_seal_into",
    "decrypt_stream",
    "encrypt_header",
    "encrypted_size",
    "parse_header",
    "parse_identities",
    "read_identity_file",
    "unwrap_file_key",
    "write_identity_file",
]

CHUNK_SIZE = 64 * 1024  # plaintext bytes per STREAM chunk
TAG_SIZE = 16
CT_CHUNK_SIZE = CHUNK_SIZE + TAG_SIZE  # ciphertext bytes per full chunk
NONCE_SIZE = 16
_OUT_BATCH = 64  # chunks (~4 MiB) per sink.write / dst.write
_HAS_INTO = hasattr(ChaCha20Poly1305, "decrypt_into")  # cryptography >= 45

Buffer = bytes | bytearray | memoryview


def _payload_aead(file_key: bytes, nonce: bytes) -> ChaCha20Poly1305:
    return ChaCha20Poly1305(_hkdf(file_key, nonce, b"payload"))


def _chunk_nonce(index: int, last: bool) -> bytes:
    return ((index << 8) | last).to_bytes(12, "big")


def encrypted_size(header_len: int, plaintext_size: int) -> int:
    """Total age file size for a header of ``header_len`` bytes and that much plaintext."""
    chunks = max(1, -(-plaintext_size // CHUNK_SIZE))
    return header_len + NONCE_SIZE + plaintext_size + chunks * TAG_SIZE


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
    each call hands the sink at most ~4 MiB at a time, in one buffer the writer reuses
    (a sink must be done with it when ``write`` returns, as files are).
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
        self._out = memoryview(bytearray())
        self._index = 0
        self._closed = False
        self.header_len = len(header)
        sink.write(header + nonce)

    def _seal(self, chunks: Sequence[Buffer], last: bool = False) -> memoryview:
        """Seal consecutive chunks into the output buffer (``last`` flags the final one);
        valid until the next call. Reused because a fresh megabyte buffer costs a zero
        fill and, once malloc has given its pages back, a page fault per 4 KiB."""
        size = sum(len(c) for c in chunks) + TAG_SIZE * len(chunks)
        if len(self._out) < size:
            self._out = memoryview(bytearray(size))
        view = self._out
        pos = 0
        for i, chunk in enumerate(chunks):
            end = pos + len(chunk) + TAG_SIZE
            final = last and i == len(chunks) - 1
            _seal_into(self._aead, self._index, final, chunk, view[pos:end])
            self._index += 1
            pos = end
        return view[:size]

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


class PayloadEndsError(TruncatedError):
    """A read lies wholly past the payload's last chunk, which is itself damaged or cut
    short (*cause*): the file was cut before the chunk asked for."""

    def __init__(self, name: str, first: int, cause: str) -> None:
        self.cause = cause
        super().__init__(f"{_p(name)}age payload ends before chunk {first}: {cause}")


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
        if not parts:  # all past the end
            return b""
        if len(parts) == 1:
            return bytes(memoryview(parts[0])[start : start + length])
        # one copy of just the bytes asked for (joining whole chunks, then slicing, was two)
        views = [memoryview(part) for part in parts]
        surplus = sum(map(len, views)) - start - length
        if surplus > 0:
            views[-1] = views[-1][: len(views[-1]) - surplus]
        views[0] = views[0][start:]
        return b"".join(views)

    def _read_known(self, first: int, last: int) -> list[bytearray]:
        assert self._n_chunks is not None and self._plaintext_size is not None
        final = self._n_chunks - 1
        if first > final:
            if not self._end_verified:
                with self._asked_past_end(first):
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

    @contextmanager
    def _asked_past_end(self, first: int) -> Iterator[None]:
        """Around checking the chunk before *first*, the one asked for, which lies past the
        payload's end: what is wrong there is told as the payload ending before *first*.
        Without this every read past a cut would blame the same last chunk alone, as if
        the data asked for were in it."""
        try:
            yield
        except PayloadEndsError as exc:  # found by checking further back
            raise PayloadEndsError(self.name, first, exc.cause) from exc
        except (IntegrityError, TruncatedError) as exc:
            cause = str(exc).removeprefix(_p(self.name))
            raise PayloadEndsError(self.name, first, cause) from exc

    def _read_unknown(self, first: int, last: int) -> list[bytearray]:
        """Decrypt chunks first..last while discovering where the payload ends."""
        pos = self._start + first * CT_CHUNK_SIZE
        data = memoryview(self._read_at(pos, (last - first + 1) * CT_CHUNK_SIZE))
        parts: list[bytearray] = []
        for k, index in enumerate(range(first, last + 1)):
            piece = data[k * CT_CHUNK_SIZE : (k + 1) * CT_CHUNK_SIZE]
            if not piece:
                if k == 0 and index > 0:
                    with self._asked_past_end(index):  # is chunk index-1 the final one?
                        self._read_unknown(index - 1, index - 1)
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


#: The lines around an age file in ASCII armor (`age -a`, `age -p -a`): PEM, base64 body.
ARMOR_BEGIN = b"-----BEGIN AGE ENCRYPTED FILE-----"
ARMOR_END = b"-----END AGE ENCRYPTED FILE-----"


def dearmor(data: bytes) -> bytes:
    """The binary age file inside ASCII armor; *data* itself when it is not armored."""
    text = data.strip()
    if not text.startswith(ARMOR_BEGIN):
        return data
    if not text.endswith(ARMOR_END):
        raise CryptoError(f"an armored age file without its last line ({ARMOR_END.decode()})")
    body = text[len(ARMOR_BEGIN) : -len(ARMOR_END)]
    try:
        return base64.b64decode(b"".join(body.split()), validate=True)
    except binascii.Error as exc:
        raise CryptoError(f"an armored age file whose body is not base64 ({exc})") from None


def read_identity_file(
    data: bytes, passphrase: bytes | None, *, max_work_factor: int = MAX_READ_WORK_FACTOR
) -> list[X25519Identity]:
    """Parse an identity file, decrypting it first if it is passphrase-protected (binary
    or armored, as `age -p` and `age -p -a` write it)."""
    data = dearmor(data)
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
