"""relay-intake's optional ESMTP behaviour: the AUTH mechanism lists and international addresses.

`auth_lists` turns E-MailRelay's `--server-auth-config` (`m:` and `x:` allow and deny the
mechanisms offered without TLS, `a:` and `d:` those offered with it; without `a:` or `d:`,
`m:` and `x:` apply to both) into the two lists relay-intake offers in EHLO and accepts in
AUTH, starting from the mechanisms the secrets file can serve (`available_mechanisms`).
`international_address` applies `--utf8-without-smtputf8` to one MAIL FROM or RCPT TO
address: a non-ASCII domain becomes A-labels (IDNA), a non-ASCII local part may need the
SMTPUTF8 parameter. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from common.secrets import CRAM_HASHES, MASKED_HASHES

# E-MailRelay 2.6.1's mechanisms in its order (built with OpenSSL): the CRAM ones strongest
# first, then PLAIN, LOGIN.
MECHANISMS = (*CRAM_HASHES, "PLAIN", "LOGIN")
UTF8_MODES = ("refuse", "domain", "accept")
NEEDS_SMTPUTF8 = "553 5.6.7 Non-ASCII address requires the SMTPUTF8 parameter"
BAD_IDN = "553 5.1.2 Invalid international domain name"


@dataclass(frozen=True)
class AuthLists:
    """The mechanisms offered and accepted on a connection without TLS and with it."""

    insecure: tuple[str, ...] = ()
    secure: tuple[str, ...] = MECHANISMS

    def offered(self, *, secure: bool) -> tuple[str, ...]:
        """What EHLO lists and AUTH accepts on a connection with or without TLS."""
        return self.secure if secure else self.insecure


def available_mechanisms(kinds: Collection[str]) -> tuple[str, ...]:
    """What a secrets file whose server secrets are of *kinds* (`plain`, `md5`, ...) can
    serve, as E-MailRelay 2.6.1 decides at start: every mechanism when one secret is a plain
    password, else the CRAM mechanism of each hashed kind there is (`md5`: CRAM-MD5)."""
    if "plain" in kinds:
        return MECHANISMS
    return tuple(name for name, hash_name in CRAM_HASHES.items()
                 if hash_name in MASKED_HASHES and hash_name in kinds)


def _names(text: str) -> tuple[str, ...]:
    return tuple(name.strip().upper() for name in text.split(",") if name.strip())


def _filter(mechanisms: tuple[str, ...], allow: tuple[str, ...] | None,
            deny: tuple[str, ...]) -> tuple[str, ...]:
    # An allow list keeps the available order (it does not reorder); an empty one allows none.
    kept = mechanisms if allow is None else tuple(m for m in mechanisms if m in allow)
    return tuple(m for m in kept if m not in deny)


def parse_auth_config(text: str) -> dict[str, tuple[str, ...]]:
    """`m:;a:plain,login` -> {'M': (), 'A': ('PLAIN', 'LOGIN')}: the first item of each key;
    items with other keys are ignored (as E-MailRelay does)."""
    found: dict[str, tuple[str, ...]] = {}
    for item in text.split(";"):
        key, colon, names = item.strip().partition(":")
        key = key.strip().upper()
        if colon and key in ("M", "X", "A", "D") and key not in found:
            found[key] = _names(names)
    return found


def auth_lists(config: str, available: tuple[str, ...]) -> AuthLists:
    """E-MailRelay's --server-auth-config applied to *available*.

    With TLS, PLAIN is offered even when the secrets serve nothing else (RFC 4954 4), before
    the lists filter it.
    """
    items = parse_auth_config(config)
    secure_base = available or ("PLAIN",)
    insecure = _filter(available, items.get("M"), items.get("X", ()))
    if "A" in items or "D" in items:
        secure = _filter(secure_base, items.get("A"), items.get("D", ()))
    else:
        secure = _filter(secure_base, items.get("M"), items.get("X", ()))
    return AuthLists(insecure=insecure, secure=secure)


def unknown_mechanisms(config: str) -> list[str]:
    """The names in a --server-auth-config that relay does not have (APOP, XOAUTH2, ...)."""
    names = [name for names in parse_auth_config(config).values() for name in names]
    return [name for name in dict.fromkeys(names) if name not in MECHANISMS]


def international_address(address: str, *, smtputf8: bool,
                          mode: str) -> tuple[str, bool] | str:
    """(the address to store, True when it makes the message SMTPUTF8), or the refusal.

    *mode* is --utf8-without-smtputf8: 'refuse' (any non-ASCII address needs SMTPUTF8, RFC
    6531), 'domain' (a non-ASCII domain is stored in A-labels; a non-ASCII local part needs
    SMTPUTF8: E-MailRelay's smtputf8strict) or 'accept' (a non-ASCII local part without
    SMTPUTF8 makes the message an SMTPUTF8 one: E-MailRelay's default).
    """
    if address.isascii():
        return address, False
    if mode == "refuse":
        return (address, False) if smtputf8 else NEEDS_SMTPUTF8
    local, at, domain = address.rpartition("@")
    if not at:
        local, domain = address, ""
    if not domain.isascii():
        try:
            domain = domain.encode("idna").decode("ascii")
        except UnicodeError:
            return BAD_IDN
    utf8_local = not local.isascii()
    if utf8_local and not smtputf8 and mode == "domain":
        return NEEDS_SMTPUTF8
    return (f"{local}@{domain}" if at else local), utf8_local and not smtputf8
