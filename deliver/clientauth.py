"""AUTH to the smarthost with one client account of the secrets file, as E-MailRelay does.

The mechanisms are chosen as E-MailRelay 2.6.1's client chooses them (`mechanisms`): for
an account with a password, CRAM-SHA512, CRAM-SHA256, CRAM-SHA1, CRAM-MD5, PLAIN, LOGIN;
for an `md5` secret (a stored MD5 state, which can do nothing else) CRAM-MD5 only; for
an account with only secrets relay cannot use (`sha256`, `oauth`) none, so that its mail
waits instead of going without AUTH (E-MailRelay fails it); then
`--client-auth-config` keeps the ones its `m:` list names and drops the ones its `x:` list
names (the order stays the one above, whatever the order of the list), and only those the
smarthost offers are tried, one after the other until one is accepted, as E-MailRelay
tries the next one after a refusal. An account without a secret (`client plain:b = =
SELECTOR`) does not authenticate. Talks to the smarthost through aiosmtplib only; never
logs a secret. Reads nothing itself.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from dataclasses import dataclass

import aiosmtplib

from common.md5state import hmac_md5
from common.secrets import ClientAccount

# E-MailRelay's list with OpenSSL, strongest first (XOAUTH2 needs an `oauth` secret,
# which relay's secrets file does not have).
WITH_PASSWORD = ("CRAM-SHA512", "CRAM-SHA256", "CRAM-SHA1", "CRAM-MD5", "PLAIN", "LOGIN")
WITH_MD5_STATE = ("CRAM-MD5",)
_DIGESTS = {"CRAM-SHA512": "sha512", "CRAM-SHA256": "sha256", "CRAM-SHA1": "sha1",
            "CRAM-MD5": "md5"}


class NoMechanism(aiosmtplib.SMTPException):
    """The smarthost offers no mechanism this account can use."""


@dataclass(frozen=True)
class AuthConfig:
    """`--client-auth-config`, parsed: the mechanisms to keep (empty: all) and to avoid."""

    keep: tuple[str, ...] = ()
    avoid: tuple[str, ...] = ()
    simple: str = ""  # the whole value, when it is one mechanism name (E-MailRelay: 'plain')


def parse_auth_config(text: str | None) -> AuthConfig:
    """E-MailRelay's client syntax: `m:A,B;x:C` (keys case-insensitive). Items of other
    keys (`a:`, `d:`, which E-MailRelay's server reads) are ignored, as its client does;
    so is everything after the first `m:` and the first `x:` item."""
    if not text:
        return AuthConfig()
    upper = text.upper()
    items = [item.strip() for item in upper.split(";") if item.strip()]

    def first(key: str) -> tuple[str, ...]:
        for item in items:
            if item.startswith(key):
                return tuple(word.strip() for word in item[len(key):].split(",")
                             if word.strip())
        return ()

    return AuthConfig(first("M:"), first("X:"), upper.strip())


def mechanisms(account: ClientAccount, config: AuthConfig, offered: list[str]) -> list[str]:
    """The mechanisms to try for *account*, in order, of those the smarthost *offered*."""
    if account.password is not None:
        ours = list(WITH_PASSWORD)
    else:  # an account with only secrets relay cannot use has no mechanism at all
        ours = list(WITH_MD5_STATE if account.md5_state is not None else ())
    keep = (config.simple,) if config.simple in ours else config.keep
    if keep:
        ours = [name for name in ours if name in keep]
    ours = [name for name in ours if name not in config.avoid]
    offered_upper = {name.upper() for name in offered}
    return [name for name in ours if name in offered_upper]


async def authenticate(smtp: aiosmtplib.SMTP, account: ClientAccount,
                       config: AuthConfig | None = None) -> str | None:
    """Authenticate as *account*; the mechanism that worked (None: the account has no
    secret). Raises NoMechanism, or aiosmtplib's exception (with the reply code) for the
    last mechanism refused."""
    if not account.authenticates:
        return None
    offered = smtp.server_auth_methods
    config = config or AuthConfig()
    usable = mechanisms(account, config, offered)
    if not usable:
        if account.password is not None:
            have = "a password"
        elif account.md5_state is not None:
            have = "an md5 secret (CRAM-MD5 only)"
        else:
            have = f"only {', '.join(account.unusable)} secrets, which relay cannot use"
        listed = "" if config == AuthConfig() else ", and --client-auth-config leaves none"
        raise NoMechanism(f"the account has {have}; the smarthost offers "
                          f"{' '.join(offered).upper() or 'no AUTH'}{listed}")
    for number, name in enumerate(usable, 1):
        try:
            await _one(smtp, account, name)
        except aiosmtplib.SMTPAuthenticationError:
            if number == len(usable):
                raise
        else:
            return name
    raise AssertionError("unreachable")  # pragma: no cover


async def _one(smtp: aiosmtplib.SMTP, account: ClientAccount, name: str) -> None:
    if name in _DIGESTS:
        await _cram(smtp, account, name)
    elif name == "PLAIN":
        assert account.password is not None
        await smtp.auth_plain(account.user, account.password)
    else:
        assert account.password is not None
        await smtp.auth_login(account.user, account.password)


async def _cram(smtp: aiosmtplib.SMTP, account: ClientAccount, name: str) -> None:
    reply = await smtp.execute_command(b"AUTH", name.encode("ascii"))
    if reply.code != 334:
        raise aiosmtplib.SMTPAuthenticationError(reply.code, reply.message)
    try:
        challenge = base64.b64decode(reply.message.strip(), validate=True)
    except (binascii.Error, ValueError):
        await smtp.execute_command(b"*")
        raise aiosmtplib.SMTPAuthenticationError(reply.code, f"bad {name} challenge") from None
    if account.password is None:
        assert account.md5_state is not None
        digest = hmac_md5(account.md5_state, challenge).hex()
    else:
        digest = hmac.new(account.password.encode("utf-8"), challenge,
                          _DIGESTS[name]).hexdigest()
    answer = base64.b64encode(f"{account.user} {digest}".encode())
    reply = await smtp.execute_command(answer)
    if reply.code != 235:
        raise aiosmtplib.SMTPAuthenticationError(reply.code, reply.message)
