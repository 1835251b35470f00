"""Tests of durafs.format.age and durafs.format.bech32, including interop with `age`."""

from __future__ import annotations

import io
import os
import pty
import random
import re
import select
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from durafs.errors import CryptoError, IntegrityError, NoIdentityError, TruncatedError
from durafs.format import age, bech32
from durafs.format.age import (
    CHUNK_SIZE,
    CT_CHUNK_SIZE,
    AgeReader,
    AgeWriter,
    ScryptIdentity,
    ScryptRecipient,
    Stanza,
    X25519Identity,
    X25519Recipient,
    decrypt_stream,
    encrypt_header,
    parse_header,
    parse_identities,
    read_identity_file,
    unwrap_file_key,
    write_identity_file,
)

IDENTITY = X25519Identity.generate()
RECIPIENT = IDENTITY.recipient()
PASSPHRASE = b"correct horse battery staple"
FAST_WF = 10  # scrypt work factor for most tests: 2**10 is ~1 ms
EDGE_SIZES = [0, 1, CHUNK_SIZE - 1, CHUNK_SIZE, CHUNK_SIZE + 1, 2 * CHUNK_SIZE, 3 * CHUNK_SIZE]
DAMAGE = (CryptoError, IntegrityError, TruncatedError)  # NoIdentityError is a CryptoError


def plaintext(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


def encrypt(data: bytes, recipients=(RECIPIENT,), splits: list[int] | None = None) -> bytes:
    out = io.BytesIO()
    writer = AgeWriter(out, list(recipients))
    pos = 0
    for n in splits or []:
        writer.write(data[pos : pos + n])
        pos += n
    writer.write(memoryview(data)[pos:])
    writer.close()
    return out.getvalue()


def reader(data: bytes, identities=(IDENTITY,), *, known: bool = True, name: str = "") -> AgeReader:
    return AgeReader(
        lambda off, n: data[off : off + n],
        list(identities),
        size=len(data) if known else None,
        name=name,
    )


def stream_decrypt(data: bytes, identities=(IDENTITY,), name: str = "") -> bytes:
    out = io.BytesIO()
    decrypt_stream(io.BytesIO(data), out, list(identities), name)
    return out.getvalue()


def decrypt_all_ways(data: bytes, identities=(IDENTITY,)) -> list[bytes]:
    """Decrypt via decrypt_stream, and AgeReader with and without the size."""
    results = [stream_decrypt(data, identities)]
    for known in (True, False):
        r = reader(data, identities, known=known)
        results.append(r.read(0, 1 << 40))
    return results


# --------------------------------------------------------------------------- age binary


@pytest.fixture(scope="module")
def age_bin() -> str:
    for tool in ("age", "age-keygen"):
        if shutil.which(tool) is None:
            pytest.fail(f"the `{tool}` command is missing: install it (apt-get install age)")
    return "age"


def run_with_pty(argv: list[str], passphrase: bytes, timeout: float = 60.0) -> tuple[int, bytes]:
    """Run ``argv`` on a pseudo-terminal, typing ``passphrase`` at every passphrase prompt.

    age reads passphrases from the controlling terminal, never from stdin, so a pty
    is the only way to drive it non-interactively.
    """
    pid, fd = pty.fork()
    if pid == 0:  # child: becomes session leader with the pty as controlling terminal
        try:
            os.execvp(argv[0], argv)
        finally:
            os._exit(127)
    out = b""
    answered = 0
    deadline = time.monotonic() + timeout
    try:
        while True:
            if time.monotonic() > deadline:
                os.kill(pid, 9)
                raise TimeoutError(f"{argv} hung; output so far: {out!r}")
            ready, _, _ = select.select([fd], [], [], 0.2)
            if not ready:
                continue
            try:
                data = os.read(fd, 4096)
            except OSError:  # EIO: the child closed the terminal
                data = b""
            if not data:
                break
            out += data
            prompts = out.lower().count(b"passphrase")
            while answered < prompts:
                os.write(fd, passphrase + b"\n")
                answered += 1
        _, status = os.waitpid(pid, 0)
    finally:
        os.close(fd)
    return os.waitstatus_to_exitcode(status), out


def keygen(tmp_path: Path) -> tuple[Path, str]:
    """Run age-keygen; return the key file and the public key it printed."""
    key = tmp_path / "key.txt"
    proc = subprocess.run(
        ["age-keygen", "-o", str(key)], capture_output=True, text=True, check=True
    )
    match = re.search(r"age1[0-9a-z]+", proc.stderr)
    assert match, proc.stderr
    return key, match.group(0)


# --------------------------------------------------------------------------- bech32

BIP173_VALID = [
    "A12UEL5L",
    "a12uel5l",
    "an83characterlonghumanreadablepartthatcontainsthenumber1andtheexcludedcharactersbio1tt5tgs",
    "abcdef1qpzry9x8gf2tvdw0s3jn54khce6mua7lmqqqxw",
    "11" + "q" * 82 + "c8247j",  # 90 characters: the BIP-173 maximum
    "split1checkupstagehandshakeupstreamerranterredcaperred2y9e3w",
    "?1ezyfcl",
]
BIP173_INVALID = [
    "\x201nwldj5",
    "\x7f1axkwrx",
    "\x801eym55h",
    "pzry9x0s0muk",
    "1pzry9x0s0muk",
    "x1b4n0q5v",
    "li1dgmt3",
    "de1lg7wt\xff",
    "A1G7SGD8",
    "10a06t8",
    "1qzzfhee",
    "tb1qrp33g0q5c5txsp9arysrx4k6zdkfs4nce4xj0gdcccefvpysxf3q0sL5k7",  # mixed case
]


@pytest.mark.parametrize("text", BIP173_VALID)
def test_bech32_bip173_valid(text: str) -> None:
    hrp, values = bech32.decode_5bit(text)
    assert bech32.encode_5bit(hrp, values) == text.lower()


@pytest.mark.parametrize("text", BIP173_INVALID)
def test_bech32_bip173_invalid(text: str) -> None:
    with pytest.raises(bech32.Bech32Error):
        bech32.decode_5bit(text)


def test_bech32_byte_padding_rules() -> None:
    assert bech32.decode(bech32.encode_5bit("a", [0, 0])) == ("a", b"\x00")
    with pytest.raises(bech32.Bech32Error):  # 15 bits: 7 bits of padding is too many
        bech32.decode(bech32.encode_5bit("a", [0, 0, 0]))
    with pytest.raises(bech32.Bech32Error):  # non-zero padding bits
        bech32.decode(bech32.encode_5bit("a", [0, 1]))


@given(
    hrp=st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), min_size=1),
    data=st.binary(max_size=200),
)
def test_bech32_roundtrip(hrp: str, data: bytes) -> None:
    encoded = bech32.encode(hrp, data)
    assert bech32.decode(encoded) == (hrp.lower(), data)
    assert bech32.decode(encoded.upper()) == (hrp.upper(), data)


# --------------------------------------------------------------------------- keys


def test_spec_x25519_vector() -> None:
    identity = X25519Identity.parse(
        "AGE-SECRET-KEY-1GFPYYSJZGFPYYSJZGFPYYSJZGFPYYSJZGFPYYSJZGFPYYSJZGFPQ4EGAEX"
    )
    assert (
        identity.recipient().to_str()
        == "age1zvkyg2lqzraa2lnjvqej32nkuu0ues2s82hzrye869xeexvn73equnujwj"
    )


def test_age_keygen_identity_matches_public_key(age_bin: str, tmp_path: Path) -> None:
    key, public = keygen(tmp_path)
    text = key.read_text()
    [identity] = parse_identities(text)
    assert identity.recipient().to_str() == public
    assert f"# public key: {public}" in text
    assert identity.to_str() in text
    assert read_identity_file(key.read_bytes(), None) == [identity]


def test_key_round_trips() -> None:
    identity = X25519Identity.generate()
    assert X25519Identity.parse(identity.to_str()) == identity
    recipient = identity.recipient()
    assert X25519Recipient.parse(recipient.to_str()) == recipient
    assert identity.to_str().startswith("AGE-SECRET-KEY-1")
    assert recipient.to_str().startswith("age1")
    assert identity.to_str() not in repr(identity)


@pytest.mark.parametrize(
    "text",
    [
        IDENTITY.to_str().lower(),  # age identities are upper case
        IDENTITY.to_str()[:-1] + ("Q" if IDENTITY.to_str()[-1] != "Q" else "P"),
        RECIPIENT.to_str(),
        "AGE-SECRET-KEY-1",
        "",
    ],
)
def test_bad_identities_rejected(text: str) -> None:
    with pytest.raises(CryptoError):
        X25519Identity.parse(text)


@pytest.mark.parametrize("text", [RECIPIENT.to_str().upper(), IDENTITY.to_str(), "age1xyz"])
def test_bad_recipients_rejected(text: str) -> None:
    with pytest.raises(CryptoError):
        X25519Recipient.parse(text)


def test_parse_identities_comments_and_errors() -> None:
    other = X25519Identity.generate()
    text = f"# comment\n\n{IDENTITY.to_str()}\n  # indented comment\n{other.to_str()}\n"
    assert parse_identities(text) == [IDENTITY, other]
    with pytest.raises(CryptoError) as info:
        parse_identities(f"{IDENTITY.to_str()}\nAGE-PLUGIN-FOO-1XYZ\n")
    assert "line 2" in str(info.value)
    with pytest.raises(CryptoError):
        parse_identities("# nothing here\n")


# --------------------------------------------------------------------------- round trips


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    size=st.sampled_from(EDGE_SIZES) | st.integers(0, 5 * CHUNK_SIZE),
    splits=st.lists(st.integers(0, 3 * CHUNK_SIZE), max_size=6),
)
def test_roundtrip_x25519(size: int, splits: list[int]) -> None:
    data = plaintext(size, seed=size)
    encrypted = encrypt(data, splits=splits)
    chunks = max(1, -(-size // CHUNK_SIZE))
    assert len(encrypted) == age.encrypted_size(parse_header(encrypted)[1], size)
    assert len(encrypted) == parse_header(encrypted)[1] + 16 + size + 16 * chunks
    assert decrypt_all_ways(encrypted) == [data] * 3
    r = reader(encrypted)
    assert r.plaintext_size == size


@settings(max_examples=15, deadline=None)
@given(size=st.sampled_from(EDGE_SIZES) | st.integers(0, 4 * CHUNK_SIZE))
def test_roundtrip_scrypt(size: int) -> None:
    data = plaintext(size, seed=size)
    encrypted = encrypt(data, [ScryptRecipient(PASSPHRASE, FAST_WF)])
    assert decrypt_all_ways(encrypted, [ScryptIdentity(PASSPHRASE)]) == [data] * 3


def test_roundtrip_scrypt_default_work_factor() -> None:
    data = plaintext(100_000)
    encrypted = encrypt(data, [ScryptRecipient(PASSPHRASE)])
    assert b"-> scrypt " in encrypted[:100] and b" 18\n" in encrypted[:100]
    age._SCRYPT_CACHE.clear()  # derive for real at N=2**18 (256 MiB) once
    assert stream_decrypt(encrypted, [ScryptIdentity(PASSPHRASE)]) == data
    start = time.perf_counter()
    assert reader(encrypted, [ScryptIdentity(PASSPHRASE)]).read(5, 10) == data[5:15]
    assert time.perf_counter() - start < 0.1  # the cached key makes the second open instant


def test_multiple_recipients_and_unknown_stanzas_ignored() -> None:
    other = X25519Identity.generate()
    data = plaintext(70_000)
    encrypted = encrypt(data, [Grease(), other.recipient(), RECIPIENT])
    assert stream_decrypt(encrypted) == data
    assert stream_decrypt(encrypted, [other]) == data


def test_writer_batches_output() -> None:
    sizes: list[int] = []

    class Sink:
        def write(self, data: bytes) -> None:
            sizes.append(len(data))

    writer = AgeWriter(Sink(), [RECIPIENT])
    writer.write(bytes(40 << 20))
    writer.close()
    assert max(sizes) <= 64 * CT_CHUNK_SIZE
    assert len(sizes) <= (40 << 20) // (64 * CHUNK_SIZE) + 3
    assert writer.ciphertext_offset(CHUNK_SIZE + 5) == writer.header_len + 16 + CT_CHUNK_SIZE + 5


def test_header_layout_and_file_key() -> None:
    header, file_key = encrypt_header([RECIPIENT], file_key=bytes(range(16)))
    assert file_key == bytes(range(16))
    parsed, consumed = parse_header(header + b"payload")
    assert consumed == len(header)
    assert unwrap_file_key(parsed, [IDENTITY]) == file_key
    lines = header.split(b"\n")
    assert lines[0] == b"age-encryption.org/v1"
    assert lines[1].startswith(b"-> X25519 ") and len(lines[2]) == 43
    assert lines[3].startswith(b"--- ") and len(lines[3]) == 47
    with pytest.raises(CryptoError):
        encrypt_header([RECIPIENT, ScryptRecipient(PASSPHRASE, FAST_WF)])


def test_non_canonical_base64_rejected() -> None:
    header, _ = encrypt_header([RECIPIENT])
    mac_line = header.rstrip(b"\n").rsplit(b"\n", 1)[1]
    last = mac_line[-1:]
    alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    # 32 bytes in 43 chars leave 2 spare bits in the last char; setting one is non-canonical
    twin = alphabet[alphabet.index(last) ^ 1 : (alphabet.index(last) ^ 1) + 1]
    bad = header[:-2] + twin + b"\n"
    with pytest.raises(CryptoError, match="non-canonical"):
        parse_header(bad)
    with pytest.raises(CryptoError):
        parse_header(header[:-2] + b"=\n")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300) | st.builds(lambda b: b"age-encryption.org/v1\n" + b, st.binary()))
def test_parse_header_fuzz(data: bytes) -> None:
    try:
        parse_header(data)
    except (CryptoError, TruncatedError):
        pass


# --------------------------------------------------------------------------- random access

RA_SIZES = [0, 1, CHUNK_SIZE, 2 * CHUNK_SIZE, 5 * CHUNK_SIZE + 1234]
RA_FILES = {size: (plaintext(size, size), encrypt(plaintext(size, size))) for size in RA_SIZES}


def covered_chunks(offset: int, length: int, size: int) -> int:
    end = min(offset + length, size)
    if end <= offset:
        return 0
    return (end - 1) // CHUNK_SIZE - offset // CHUNK_SIZE + 1


@settings(max_examples=150, deadline=None)
@given(
    size=st.sampled_from(RA_SIZES),
    offset=st.integers(0, 6 * CHUNK_SIZE),
    length=st.integers(0, 3 * CHUNK_SIZE),
    known=st.booleans(),
)
def test_random_access(size: int, offset: int, length: int, known: bool) -> None:
    data, encrypted = RA_FILES[size]
    fetched: list[int] = []

    def read_at(off: int, n: int) -> bytes:
        got = encrypted[off : off + n]
        fetched.append(len(got))
        return got

    r = AgeReader(read_at, [IDENTITY], size=len(encrypted) if known else None)
    fetched.clear()
    assert r.read(offset, length) == data[offset : offset + length]
    needed = covered_chunks(offset, length, size)
    past_end = length > 0 and offset + length > size  # reading at the end proves the end
    assert needed <= r.chunks_decrypted <= needed + past_end
    assert sum(fetched) <= (needed + past_end) * CT_CHUNK_SIZE


@pytest.mark.parametrize("known", [True, False])
def test_sequential_small_reads_decrypt_each_chunk_once(known: bool) -> None:
    data, encrypted = RA_FILES[5 * CHUNK_SIZE + 1234]
    r = reader(encrypted, known=known)
    got = b"".join(r.read(off, 4096) for off in range(0, len(data) + 8192, 4096))
    assert got == data
    assert r.chunks_decrypted == 6
    assert r.plaintext_size == len(data)


def test_reader_handles_long_headers() -> None:
    recipients = [X25519Identity.generate().recipient() for _ in range(60)] + [RECIPIENT]
    data = plaintext(1000)
    encrypted = encrypt(data, recipients)
    assert parse_header(encrypted)[1] > 4096
    assert reader(encrypted).read(0, 2000) == data
    assert reader(encrypted, known=False).read(10, 20) == data[10:30]


# --------------------------------------------------------------------------- failures


def test_wrong_key() -> None:
    encrypted = encrypt(b"secret")
    with pytest.raises(NoIdentityError, match="wrong key") as info:
        reader(encrypted, [X25519Identity.generate()], name="vol-0007.age")
    assert "vol-0007.age" in str(info.value)
    with pytest.raises(NoIdentityError):
        stream_decrypt(encrypted, [ScryptIdentity(PASSPHRASE)])


def test_wrong_passphrase() -> None:
    encrypted = encrypt(b"secret", [ScryptRecipient(PASSPHRASE, FAST_WF)])
    with pytest.raises(NoIdentityError, match="passphrase"):
        stream_decrypt(encrypted, [ScryptIdentity(b"not it")])
    with pytest.raises(NoIdentityError, match="passphrase"):
        reader(encrypted, [IDENTITY])


def test_scrypt_work_factor_limit() -> None:
    encrypted = encrypt(b"x", [ScryptRecipient(PASSPHRASE, 12)])
    with pytest.raises(CryptoError, match="work factor"):
        stream_decrypt(encrypted, [ScryptIdentity(PASSPHRASE, max_work_factor=11)])


def test_chunk_error_names_volume_and_index() -> None:
    data, encrypted = RA_FILES[5 * CHUNK_SIZE + 1234]
    header_len = parse_header(encrypted)[1]
    damaged = bytearray(encrypted)
    damaged[header_len + 16 + 3 * CT_CHUNK_SIZE + 100] ^= 1
    r = AgeReader(lambda o, n: bytes(damaged[o : o + n]), [IDENTITY], name="vol-9")
    assert r.read(0, 3 * CHUNK_SIZE) == data[: 3 * CHUNK_SIZE]
    with pytest.raises(IntegrityError, match="vol-9: age payload chunk 3 failed authentication"):
        r.read(3 * CHUNK_SIZE, 10)


def tamper_positions(encrypted: bytes) -> list[int]:
    """Every header byte, the nonce, every tag byte region, chunk edges, and a sample."""
    header_len = parse_header(encrypted)[1]
    positions = set(range(header_len + 16))
    rng = random.Random(1)
    payload = range(header_len + 16, len(encrypted))
    positions.update(rng.sample(payload, 150))
    for start in range(header_len + 16, len(encrypted), CT_CHUNK_SIZE):
        end = min(start + CT_CHUNK_SIZE, len(encrypted))
        positions.update([start, start + 1, end - 17, end - 16, end - 8, end - 1])
    return sorted(positions)


@pytest.mark.parametrize("kind", ["x25519", "scrypt"])
def test_tamper_every_position(kind: str) -> None:
    data = plaintext(150 * 1024, seed=7)
    if kind == "x25519":
        recipients, identities = [RECIPIENT], [IDENTITY]
    else:
        recipients, identities = (
            [ScryptRecipient(PASSPHRASE, FAST_WF)],
            [ScryptIdentity(PASSPHRASE)],
        )
    encrypted = encrypt(data, recipients)
    assert decrypt_all_ways(encrypted, identities) == [data] * 3
    for pos in tamper_positions(encrypted):
        for mask in (0x01, 0x80):
            damaged = bytearray(encrypted)
            damaged[pos] ^= mask
            damaged = bytes(damaged)
            for attempt in (
                lambda d=damaged: stream_decrypt(d, identities),
                lambda d=damaged: reader(d, identities).read(0, len(data) + 1),
                lambda d=damaged: reader(d, identities, known=False).read(0, len(data) + 1),
            ):
                with pytest.raises(DAMAGE):
                    attempt()
                    pytest.fail(f"flipping byte {pos} with {mask:#x} went unnoticed")


def test_truncation_everywhere() -> None:
    data = plaintext(150 * 1024, seed=8)
    encrypted = encrypt(data)
    header_len = parse_header(encrypted)[1]
    cuts = set(range(header_len + 17))
    cuts.update(range(header_len + 16, len(encrypted), 997))
    for start in range(header_len + 16, len(encrypted) + 1, CT_CHUNK_SIZE):
        cuts.update(c for c in range(start - 17, start + 18) if c < len(encrypted))
    cuts.update(range(len(encrypted) - 20, len(encrypted)))
    for cut in sorted(cuts):
        short = encrypted[:cut]
        for attempt in (
            lambda s=short: stream_decrypt(s),
            lambda s=short: reader(s).read(0, len(data)),
            lambda s=short: reader(s, known=False).read(0, len(data)),
            lambda s=short: reader(s, known=False).read(len(data) - 10, 100),
        ):
            with pytest.raises((TruncatedError, IntegrityError)):
                attempt()
                pytest.fail(f"truncation to {cut} bytes went unnoticed")


def test_chunk_boundary_truncation_is_reported_as_truncation() -> None:
    encrypted = RA_FILES[5 * CHUNK_SIZE + 1234][1]
    cut = encrypted[: parse_header(encrypted)[1] + 16 + 2 * CT_CHUNK_SIZE]
    with pytest.raises(TruncatedError, match="without a final chunk"):
        stream_decrypt(cut, name="v")
    with pytest.raises(TruncatedError, match="without a final chunk"):
        reader(cut).read(0, 10 * CHUNK_SIZE)
    with pytest.raises(TruncatedError, match="without a final chunk"):
        reader(cut, known=False).read(CHUNK_SIZE, 10 * CHUNK_SIZE)


def test_a_read_past_a_cut_names_the_chunk_asked_for() -> None:
    """Each read lying past the cut says the payload ends before its own chunk: the last
    chunk's damage alone would blame that chunk for data that is not in it."""
    encrypted = RA_FILES[5 * CHUNK_SIZE + 1234][1]
    cut = encrypted[: parse_header(encrypted)[1] + 16 + 2 * CT_CHUNK_SIZE + 100]
    for known in (True, False):
        r = reader(cut, known=known, name="vol-3")
        with pytest.raises(IntegrityError, match=r"^vol-3: age payload chunk 2 failed"):
            r.read(2 * CHUNK_SIZE, 10)  # in the chunk the cut left short
        for index in (3, 4):
            with pytest.raises(TruncatedError) as info:
                reader(cut, known=known, name="vol-3").read(index * CHUNK_SIZE + 5, 10)
            assert str(info.value) == (f"vol-3: age payload ends before chunk {index}: "
                                       "age payload chunk 2 failed authentication")


def crafted(chunks: list[tuple[bytes, bool]]) -> bytes:
    """An age file whose payload chunks are sealed as given (plaintext, last flag)."""
    header, file_key = encrypt_header([RECIPIENT])
    nonce = os.urandom(16)
    aead = age._payload_aead(file_key, nonce)
    body = b"".join(
        aead.encrypt(age._chunk_nonce(i, last), plain, None)
        for i, (plain, last) in enumerate(chunks)
    )
    return header + nonce + body


@pytest.mark.parametrize(
    "chunks",
    [
        [(bytes(CHUNK_SIZE), False), (b"", True)],  # empty final chunk after a full one
        [(b"abc", True), (b"def", True)],  # data after the final chunk
        [(bytes(CHUNK_SIZE), True), (b"def", True)],  # full final chunk then more
        [(bytes(CHUNK_SIZE), False)],  # no final chunk at all
        [(b"abc", False)],  # short chunk without the last flag
    ],
)
def test_malformed_streams_rejected(chunks: list[tuple[bytes, bool]]) -> None:
    encrypted = crafted(chunks)
    for attempt in (
        lambda: stream_decrypt(encrypted),
        lambda: reader(encrypted).read(0, 1 << 20),
        lambda: reader(encrypted, known=False).read(0, 1 << 20),
    ):
        with pytest.raises((TruncatedError, IntegrityError)):
            attempt()


def test_empty_payload_is_one_empty_final_chunk() -> None:
    encrypted = crafted([(b"", True)])
    assert decrypt_all_ways(encrypted) == [b""] * 3
    assert len(encrypt(b"")) == len(encrypted)


# --------------------------------------------------------------------------- age interop


@pytest.mark.parametrize("size", [0, 1, CHUNK_SIZE, 2 * CHUNK_SIZE, 200_000])
def test_age_decrypts_agewriter_output(age_bin: str, tmp_path: Path, size: int) -> None:
    data = plaintext(size, seed=size)
    (tmp_path / "id.txt").write_bytes(write_identity_file(IDENTITY, None))
    (tmp_path / "f.age").write_bytes(encrypt(data, splits=[7, CHUNK_SIZE]))
    proc = subprocess.run(
        [age_bin, "-d", "-i", str(tmp_path / "id.txt"), str(tmp_path / "f.age")],
        capture_output=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == data


class Grease:
    """A recipient of an unknown type, whose body fills exactly one 64-column line."""

    def wrap(self, file_key: bytes) -> Stanza:
        return Stanza(("example.com/grease", "a", "b-c"), os.urandom(48))


def test_age_ignores_unknown_stanzas(age_bin: str, tmp_path: Path) -> None:
    data = plaintext(1000)
    (tmp_path / "id.txt").write_bytes(write_identity_file(IDENTITY, None))
    (tmp_path / "f.age").write_bytes(encrypt(data, [Grease(), RECIPIENT, Grease()]))
    proc = subprocess.run(
        [age_bin, "-d", "-i", str(tmp_path / "id.txt"), str(tmp_path / "f.age")],
        capture_output=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == data


def test_age_decrypts_scrypt_agewriter_output(age_bin: str, tmp_path: Path) -> None:
    data = plaintext(100_000)
    (tmp_path / "f.age").write_bytes(encrypt(data, [ScryptRecipient(PASSPHRASE, FAST_WF)]))
    out = tmp_path / "out"
    rc, tty = run_with_pty([age_bin, "-d", "-o", str(out), str(tmp_path / "f.age")], PASSPHRASE)
    assert rc == 0, tty
    assert out.read_bytes() == data


@pytest.mark.parametrize("size", [0, 1, CHUNK_SIZE, 2 * CHUNK_SIZE, 300_001])
def test_agereader_reads_age_x25519_files(age_bin: str, tmp_path: Path, size: int) -> None:
    data = plaintext(size, seed=size)
    (tmp_path / "plain").write_bytes(data)
    subprocess.run(
        [age_bin, "-r", RECIPIENT.to_str(), "-o", str(tmp_path / "f.age"), str(tmp_path / "plain")],
        check=True,
    )
    encrypted = (tmp_path / "f.age").read_bytes()
    assert decrypt_all_ways(encrypted) == [data] * 3
    check_random_reads(encrypted, data, [IDENTITY])


def check_random_reads(encrypted: bytes, data: bytes, identities: list) -> None:
    rng = random.Random(len(data))
    for known in (True, False):
        for _ in range(40):
            r = reader(encrypted, identities, known=known)
            offset = rng.randrange(0, len(data) + 100)
            length = rng.randrange(0, 3 * CHUNK_SIZE)
            assert r.read(offset, length) == data[offset : offset + length]


def test_agereader_reads_age_passphrase_files(age_bin: str, tmp_path: Path) -> None:
    data = plaintext(3 * CHUNK_SIZE + 77, seed=3)
    (tmp_path / "plain").write_bytes(data)
    rc, tty = run_with_pty(
        [age_bin, "-p", "-o", str(tmp_path / "f.age"), str(tmp_path / "plain")], PASSPHRASE
    )
    assert rc == 0, tty
    encrypted = (tmp_path / "f.age").read_bytes()
    assert encrypted.startswith(b"age-encryption.org/v1\n-> scrypt ")
    identities = [ScryptIdentity(PASSPHRASE)]
    assert decrypt_all_ways(encrypted, identities) == [data] * 3
    check_random_reads(encrypted, data, identities)
    with pytest.raises(NoIdentityError, match="passphrase"):
        reader(encrypted, [ScryptIdentity(b"wrong")])


def test_age_uses_passphrase_protected_identity_file(age_bin: str, tmp_path: Path) -> None:
    identity = X25519Identity.generate()
    protected = write_identity_file(identity, PASSPHRASE)
    assert protected.startswith(b"age-encryption.org/v1\n-> scrypt ")
    assert read_identity_file(protected, PASSPHRASE) == [identity]
    with pytest.raises(NoIdentityError, match="passphrase"):
        read_identity_file(protected, b"wrong")
    with pytest.raises(NoIdentityError, match="passphrase"):
        read_identity_file(protected, None)
    (tmp_path / "id.age").write_bytes(protected)
    data = plaintext(90_000)
    (tmp_path / "f.age").write_bytes(encrypt(data, [identity.recipient()]))
    out = tmp_path / "out"
    argv = [age_bin, "-d", "-i", str(tmp_path / "id.age"), "-o", str(out), str(tmp_path / "f.age")]
    rc, tty = run_with_pty(argv, PASSPHRASE)
    assert rc == 0, tty
    assert out.read_bytes() == data


def test_read_identity_file_encrypted_by_age(age_bin: str, tmp_path: Path) -> None:
    key, public = keygen(tmp_path)
    rc, tty = run_with_pty([age_bin, "-p", "-o", str(tmp_path / "key.age"), str(key)], PASSPHRASE)
    assert rc == 0, tty
    [identity] = read_identity_file((tmp_path / "key.age").read_bytes(), PASSPHRASE)
    assert identity.recipient().to_str() == public
