"""HMAC-MD5 from a stored MD5 state, as E-MailRelay's `md5` secrets hold it (pure functions).

emailrelay-passwd (and relay-passwd) store not the password but the MD5 states after the
HMAC key's inner and outer pads: 16 + 16 bytes (four little-endian words each), base64
encoded. `masked_key(password)` makes those bytes; `hmac_md5(state, message)` finishes
HMAC-MD5 from them, so that CRAM-MD5 works on both sides without the password. hashlib
cannot start from a given state, so the MD5 compression function is written out here
(RFC 1321); it is checked against hashlib and hmac in the tests. Reads and writes nothing.
"""

from __future__ import annotations

import hashlib
import math
import struct

BLOCK = 64
_SHIFTS = [7, 12, 17, 22] * 4 + [5, 9, 14, 20] * 4 + [4, 11, 16, 23] * 4 + [6, 10, 15, 21] * 4
_SINES = [int(abs(math.sin(i + 1)) * 2**32) & 0xFFFFFFFF for i in range(64)]
_INITIAL = (0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476)
_MASK = 0xFFFFFFFF


def _rotate(value: int, count: int) -> int:
    return ((value << count) | (value >> (32 - count))) & _MASK


def _compress(state: tuple[int, int, int, int], block: bytes) -> tuple[int, int, int, int]:
    words = struct.unpack("<16I", block)
    a, b, c, d = state
    for i in range(64):
        if i < 16:
            mixed, index = (b & c) | (~b & d), i
        elif i < 32:
            mixed, index = (d & b) | (~d & c), (5 * i + 1) % 16
        elif i < 48:
            mixed, index = b ^ c ^ d, (3 * i + 5) % 16
        else:
            mixed, index = c ^ (b | ~d), (7 * i) % 16
        mixed = (mixed + a + _SINES[i] + words[index]) & _MASK
        a, d, c = d, c, b
        b = (b + _rotate(mixed, _SHIFTS[i])) & _MASK
    return (
        (state[0] + a) & _MASK, (state[1] + b) & _MASK,
        (state[2] + c) & _MASK, (state[3] + d) & _MASK,
    )


def _finish(state: tuple[int, int, int, int], data: bytes, done: int) -> bytes:
    """MD5 of (*done* bytes already in *state*) + *data*."""
    total = done + len(data)
    padded = data + b"\x80" + b"\x00" * ((55 - total) % 64) + struct.pack("<Q", total * 8)
    for start in range(0, len(padded), BLOCK):
        state = _compress(state, padded[start : start + BLOCK])
    return struct.pack("<4I", *state)


def masked_key(password: bytes) -> bytes:
    """The 32 bytes an `md5` secret stores for *password* (its base64 is the secret)."""
    key = hashlib.md5(password).digest() if len(password) > BLOCK else password  # noqa: S324
    key = key.ljust(BLOCK, b"\x00")
    inner = _compress(_INITIAL, bytes(byte ^ 0x36 for byte in key))
    outer = _compress(_INITIAL, bytes(byte ^ 0x5C for byte in key))
    return struct.pack("<4I", *inner) + struct.pack("<4I", *outer)


def hmac_md5(state: bytes, message: bytes) -> bytes:
    """HMAC-MD5(password, *message*) from the password's masked key *state*."""
    if len(state) != 32:
        raise ValueError("an MD5 state pair is 32 bytes")
    inner: tuple[int, int, int, int] = struct.unpack("<4I", state[:16])
    outer: tuple[int, int, int, int] = struct.unpack("<4I", state[16:])
    return _finish(outer, _finish(inner, message, BLOCK), BLOCK)


def dotted(state: bytes) -> str:
    """The old dotted-decimal form of a masked key (`emailrelay-passwd --dotted`)."""
    return ".".join(str(word) for word in struct.unpack("<8I", state))


def undotted(text: str) -> bytes:
    """A masked key from its dotted-decimal form; ValueError when it is not one."""
    parts = text.split(".")
    if len(parts) != 8 or not all(part.isdigit() and int(part) <= _MASK for part in parts):
        raise ValueError("not eight dotted 32-bit numbers")
    return struct.pack("<8I", *(int(part) for part in parts))


def is_dotted(text: str) -> bool:
    """E-MailRelay's test: at least 15 characters of digits and dots, eight fields."""
    return len(text) >= 15 and all(c in "0123456789." for c in text) and text.count(".") == 7
