"""xtext (RFC 3461 section 4) encoding, used by envelope fields and secrets files.

Pure functions; reads and writes nothing.
"""

from __future__ import annotations

_HEX = "0123456789ABCDEF"


class XtextError(ValueError):
    """A string is not valid xtext."""


def xtext_encode(text: str) -> str:
    """Encode *text*: '+', '=', controls, space and non-ASCII become +XX (UTF-8 octets)."""
    out: list[str] = []
    for char in text:
        code = ord(char)
        if 33 <= code <= 126 and char not in "+=":
            out.append(char)
        else:
            out.extend(f"+{octet:02X}" for octet in char.encode("utf-8"))
    return "".join(out)


def xtext_decode(text: str) -> str:
    """Decode xtext; a malformed +XX escape raises XtextError."""
    if "+" not in text:
        return text
    octets = bytearray()
    index = 0
    while index < len(text):
        char = text[index]
        if char == "+":
            pair = text[index + 1 : index + 3].upper()
            if len(pair) != 2 or any(c not in _HEX for c in pair):
                raise XtextError(f"bad xtext escape at offset {index}: {text[index:index + 3]!r}")
            octets.append(int(pair, 16))
            index += 3
        else:
            octets.extend(char.encode("utf-8"))
            index += 1
    try:
        return octets.decode("utf-8")
    except UnicodeDecodeError as error:
        raise XtextError(f"xtext does not decode to UTF-8: {error}") from None
