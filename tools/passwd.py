"""relay-passwd: a password as a secrets file's `md5` secret, as emailrelay-passwd makes it.

Reads the password from the first line of standard input (spaces, tabs and line endings
trimmed) or from `--password`, and prints the base64 of its HMAC-MD5 masked key (the
`server md5 <user> <secret>` and `client md5 ...` lines of `--server-auth` and
`--client-auth`), byte for byte what E-MailRelay 2.6.1's emailrelay-passwd prints.
`--hash none` prints the password xtext-encoded (for `plain` lines), `--dotted` the old
dotted-decimal form, `--base64` reads the password base64-encoded. Exit 0, or 1 with a
message on standard error (as emailrelay-passwd). Reads standard input; writes standard
output only.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import sys
from collections.abc import Sequence

from common.md5state import dotted, masked_key

PROGRAM = "relay-passwd"


def xtext_bytes(data: bytes) -> str:
    """xtext (RFC 3461) of raw bytes: `+XX` for `+`, `=`, controls, space and non-ASCII."""
    return "".join(chr(byte) if 33 <= byte <= 126 and byte not in b"+=" else f"+{byte:02X}"
                   for byte in data)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROGRAM, description="Print a password as a secrets file's md5 secret "
        "(the password is read from the standard input).")
    parser.add_argument("-H", "--hash", default="MD5", metavar="FUNCTION",
                        help="MD5 (the default) or NONE (xtext encoding, for plain lines)")
    parser.add_argument("-p", "--password", metavar="PWD",
                        help="the password on the command line (visible in the process table)")
    parser.add_argument("-b", "--base64", action="store_true",
                        help="the password is base64-encoded")
    parser.add_argument("-d", "--dotted", action="store_true",
                        help="the old dotted decimal format (E-MailRelay before 2.0)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of relay-passwd."""
    parser = _parser()
    arguments, extra = parser.parse_known_args(argv)
    if extra:
        print(f"{PROGRAM}: too many command-line arguments (the password is read from the "
              f"standard input)\nusage: {PROGRAM}", file=sys.stderr)
        return 1
    function = arguments.hash.upper()
    if function not in ("MD5", "NONE"):
        print(f"{PROGRAM}: exception: invalid hash function", file=sys.stderr)
        return 1
    if arguments.dotted and function != "MD5":
        print(f"{PROGRAM}: exception: --dotted only works for md5", file=sys.stderr)
        return 1
    if arguments.password is not None:
        password = arguments.password.encode("utf-8", "surrogateescape")
    else:
        password = sys.stdin.buffer.readline().strip(b" \t\n\r")
    if not password:
        print(f"{PROGRAM}: invalid password", file=sys.stderr)
        return 1
    if arguments.base64:
        try:
            password = base64.b64decode(password, validate=True)
        except (binascii.Error, ValueError):
            print(f"{PROGRAM}: exception: invalid base64 encoding", file=sys.stderr)
            return 1
    if function == "NONE":
        print(xtext_bytes(password))
    elif arguments.dotted:
        print(dotted(masked_key(password)))
    else:
        print(base64.b64encode(masked_key(password)).decode("ascii"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
