"""Bech32 (BIP-173, not bech32m) as age uses it for keys and recipients.

Differences from BIP-173 that age needs: no 90-character length limit (age
recipients are longer), and helpers that convert whole byte strings.

Invariants:
- ``encode`` always produces the lowercase form; callers upper-case it if they want
  (the checksum is defined over the lowercase string, so both forms stay valid).
- ``decode`` accepts an all-lowercase or all-uppercase string (never mixed), and
  returns the HRP in the case it had in the input, so callers can insist on one.
- Byte conversion rejects padding of 5 bits or more and non-zero padding bits, so
  every byte string has exactly one encoding.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

CHARSET = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
_CHARSET_INDEX = {c: i for i, c in enumerate(CHARSET)}
_GENERATOR = (0x3B6A57B2, 0x26508E6D, 0x1EA119FA, 0x3D4233DD, 0x2A1462B3)
_CHECKSUM_LEN = 6


class Bech32Error(ValueError):
    """The text is not valid Bech32, or its data part is not a whole byte string."""


def _polymod(values: Iterable[int]) -> int:
    chk = 1
    for value in values:
        top = chk >> 25
        chk = ((chk & 0x1FFFFFF) << 5) ^ value
        for i, gen in enumerate(_GENERATOR):
            if (top >> i) & 1:
                chk ^= gen
    return chk


def _hrp_expand(hrp: str) -> list[int]:
    codes = [ord(c) for c in hrp]
    return [c >> 5 for c in codes] + [0] + [c & 31 for c in codes]


def _check_hrp(hrp: str) -> None:
    if not hrp:
        raise Bech32Error("empty human-readable part")
    if any(not 33 <= ord(c) <= 126 for c in hrp):
        raise Bech32Error("human-readable part has a character outside US-ASCII 33..126")


def encode_5bit(hrp: str, values: Sequence[int]) -> str:
    """Encode 5-bit ``values`` under ``hrp``; the result is lowercase."""
    _check_hrp(hrp)
    hrp = hrp.lower()
    if any(not 0 <= v < 32 for v in values):
        raise Bech32Error("data value out of the 5-bit range")
    poly = _polymod([*_hrp_expand(hrp), *values, 0, 0, 0, 0, 0, 0]) ^ 1
    checksum = [(poly >> 5 * (5 - i)) & 31 for i in range(_CHECKSUM_LEN)]
    return hrp + "1" + "".join(CHARSET[v] for v in [*values, *checksum])


def decode_5bit(text: str) -> tuple[str, list[int]]:
    """Decode ``text`` into (hrp as written, 5-bit data values without the checksum)."""
    if any(not 33 <= ord(c) <= 126 for c in text):
        raise Bech32Error("character outside US-ASCII 33..126")
    if text.lower() != text and text.upper() != text:
        raise Bech32Error("mixed upper and lower case")
    sep = text.rfind("1")
    if sep < 1:
        raise Bech32Error("missing separator or empty human-readable part")
    if len(text) - sep - 1 < _CHECKSUM_LEN:
        raise Bech32Error("checksum too short")
    hrp = text[:sep]
    lower = text.lower()
    try:
        values = [_CHARSET_INDEX[c] for c in lower[sep + 1 :]]
    except KeyError:
        raise Bech32Error("invalid data character") from None
    if _polymod([*_hrp_expand(lower[:sep]), *values]) != 1:
        raise Bech32Error("invalid checksum")
    return hrp, values[:-_CHECKSUM_LEN]


def _convert_bits(values: Iterable[int], from_bits: int, to_bits: int, pad: bool) -> list[int]:
    """Regroup a bit string; with ``pad=False`` leftover bits must be < from_bits and zero."""
    acc = 0
    bits = 0
    out: list[int] = []
    max_value = (1 << to_bits) - 1
    for value in values:
        acc = (acc << from_bits) | value
        bits += from_bits
        while bits >= to_bits:
            bits -= to_bits
            out.append((acc >> bits) & max_value)
        acc &= (1 << bits) - 1  # keep only the unconsumed bits so acc stays small
    if pad:
        if bits:
            out.append((acc << (to_bits - bits)) & max_value)
    elif bits >= from_bits or acc:
        raise Bech32Error("invalid padding in data part")
    return out


def encode(hrp: str, data: bytes) -> str:
    """Encode a byte string under ``hrp``; the result is lowercase."""
    return encode_5bit(hrp, _convert_bits(data, 8, 5, pad=True))


def decode(text: str) -> tuple[str, bytes]:
    """Decode into (hrp as written, bytes); raise Bech32Error if invalid."""
    hrp, values = decode_5bit(text)
    return hrp, bytes(_convert_bits(values, 5, 8, pad=False))
