"""The secrets file of `--server-auth` and `--client-auth`: E-MailRelay 2.6.1's grammar.

One record a line, `#` comments, four or five fields separated by spaces or tabs (a fifth
field that starts with `#` is a comment; more fields are ignored):

    server plain <user> <password>          (xtext: +XX escapes; `login` means `plain`)
    server plain:b <base64-user> <base64-password>
    server md5 <user> <base64 MD5 state>    (emailrelay-passwd / relay-passwd; CRAM-MD5 only)
    server none <address|CIDR|wildcard> <keyword>     (trusted: no AUTH needed)
    client plain <user> <password> [<account-selector>]
    client md5 <user> <base64 MD5 state> [<account-selector>]
    client plain:b = = <account-selector>   (a selector whose mail is sent without AUTH)

`cram-md5` and `apop` mean `md5`; an `md5` secret may also be E-MailRelay's old dotted
form. Other types (`sha1`, `oauth`, ...) are read and kept, but relay authenticates with
none of them (a client account with only such secrets cannot authenticate, and its mail
waits rather than go without AUTH). A duplicate server secret, trust address or client
secret is an error, as are too few fields, a first field that is not `server`/`client`,
an empty or badly encoded id or secret. Pure parsing plus `SecretsFile`, which rereads
the file when it changes.
Reads only the secrets file; never logs a password.
"""

from __future__ import annotations

import base64
import binascii
import fnmatch
import hmac
import ipaddress
import os
from dataclasses import dataclass, field
from pathlib import Path

from common.md5state import hmac_md5, is_dotted, undotted
from common.xtext import XtextError, xtext_decode

# The CRAM mechanisms and their hash functions, strongest first: E-MailRelay 2.6.1's list
# when built with OpenSSL (its client and server offer them in this order).
CRAM_HASHES = {"CRAM-SHA512": "sha512", "CRAM-SHA256": "sha256", "CRAM-SHA1": "sha1",
               "CRAM-MD5": "md5"}
# The hash functions whose hashed secrets (a stored HMAC state) relay can use.
MASKED_HASHES = ("md5",)


class SecretsError(ValueError):
    """A secrets file that cannot be used; names the file and line (never the secret)."""


@dataclass(frozen=True)
class TrustRule:
    """A `server none` line: clients matching *pattern* need no AUTH."""

    pattern: str
    keyword: str

    def matches(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address.split("%", maxsplit=1)[0])
        except ValueError:
            return fnmatch.fnmatchcase(address, self.pattern)
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        if "*" in self.pattern or "?" in self.pattern:
            return fnmatch.fnmatchcase(str(ip), self.pattern)
        try:
            return ip in ipaddress.ip_network(self.pattern, strict=False)
        except ValueError:
            return False


@dataclass(frozen=True)
class Secret:
    """One decoded secret: a plain password (text) or an MD5 state (32 bytes)."""

    user: str
    password: str | None = None
    md5_state: bytes | None = None
    line: int = 0


@dataclass(frozen=True)
class ClientAccount:
    """What to send the smarthost for one account selector; `authenticates` False: no AUTH."""

    selector: str
    user: str = ""
    password: str | None = None
    md5_state: bytes | None = None
    # The account's secret types relay cannot use (`sha256`, `oauth`, ...), when it has
    # no other: it must authenticate and cannot, so its mail never goes without AUTH.
    unusable: tuple[str, ...] = ()

    @property
    def authenticates(self) -> bool:
        return self.password is not None or self.md5_state is not None or bool(self.unusable)


@dataclass
class Secrets:
    """The parsed secrets file."""

    server: dict[tuple[str, str], Secret] = field(default_factory=dict)  # (type, user)
    trusted: list[TrustRule] = field(default_factory=list)
    client: dict[tuple[str, str], Secret] = field(default_factory=dict)  # (type, selector)
    selectors: dict[str, int] = field(default_factory=dict)  # selector -> secrets it has

    def check_server(self, user: str, password: str) -> bool:
        """True if *user* with *password* may authenticate (PLAIN, LOGIN; constant time)."""
        secret = self.server.get(("plain", user))
        expected = secret.password if secret is not None else None
        if expected is None:
            hmac.compare_digest(password.encode(), password.encode())  # even out timing
            return False
        return hmac.compare_digest(expected.encode("utf-8"), password.encode("utf-8"))

    def cram_digest(self, hash_name: str, user: str, challenge: bytes) -> str | None:
        """The hex HMAC a CRAM-<hash_name> client with *user* must send, or None (no secret).

        As E-MailRelay 2.6.1: the user's secret of the mechanism's own type first (an `md5`
        secret for CRAM-MD5), else the plain password, which serves every hash function.
        """
        if hash_name == "md5":
            masked = self.server.get(("md5", user))
            if masked is not None and masked.md5_state is not None:
                return hmac_md5(masked.md5_state, challenge).hex()
        plain = self.server.get(("plain", user))
        if plain is not None and plain.password is not None:
            return hmac.new(plain.password.encode("utf-8"), challenge, hash_name).hexdigest()
        return None

    def trusted_keyword(self, address: str) -> str | None:
        """The keyword of the first `server none` line matching *address*, else None."""
        for rule in self.trusted:
            if rule.matches(address):
                return rule.keyword
        return None

    def client_account(self, selector: str = "") -> ClientAccount | None:
        """The account for *selector*: None when no line names it (the message must not go).

        The empty selector is no exception: with no default `client` line there is no
        account for a message without a selector, and it fails, as in E-MailRelay 2.6.1.
        """
        if selector not in self.selectors:
            return None
        plain = self.client.get(("plain", selector))
        if plain is not None:
            return ClientAccount(selector, plain.user, password=plain.password)
        masked = self.client.get(("md5", selector))
        if masked is not None:
            return ClientAccount(selector, masked.user, md5_state=masked.md5_state)
        unusable = sorted(kind for kind, named in self.client if named == selector)
        return ClientAccount(selector, unusable=tuple(unusable))


def _decode(value: str, encoding: str, what: str, where: str) -> str | bytes:
    if not value:
        raise SecretsError(f"{where}: empty {what}")
    try:
        if encoding == "base64":
            decoded = base64.b64decode(value, validate=True)
            return decoded
        if encoding == "dotted":
            return undotted(value)
        return xtext_decode(value)
    except (XtextError, binascii.Error, ValueError):
        raise SecretsError(f"{where}: invalid {encoding} encoding of {what}") from None


def _text(value: str | bytes, what: str, where: str) -> str:
    if isinstance(value, str):
        return value
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        raise SecretsError(f"{where}: the {what} is not UTF-8") from None


_CANONICAL = {"cram-md5": "md5", "apop": "md5", "login": "plain"}


def parse_secrets(text: str, path: str = "secrets") -> Secrets:
    """Parse a secrets file's text; SecretsError names the line of the first problem."""
    secrets = Secrets()
    trusts: set[str] = set()
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        where = f"{path}, line {number}"
        words = line.split()
        if len(words) < 4:
            raise SecretsError(f"{where}: too few fields")
        side, type_in, user_field, secret_field = words[:4]
        selector = words[4] if len(words) > 4 and not words[4].startswith("#") else ""
        head, _, decoration = type_in.partition(":")
        kind = _CANONICAL.get(head.lower(), head.lower())
        is_server, is_client = side.lower() == "server", side.lower() == "client"
        if is_server and kind == "none":
            if user_field in trusts:
                raise SecretsError(f"{where}: duplicate server trust address")
            trusts.add(user_field)
            secrets.trusted.append(TrustRule(user_field, secret_field))
            continue
        if not (is_server or is_client):
            raise SecretsError(f"{where}: invalid value in first field: [{side}]")
        if is_client and type_in.lower() == "plain:b" and user_field == secret_field == "=":
            secrets.selectors.setdefault(selector, 0)
            continue
        if kind[:5] == "plain":
            kind = "plain"
            encoding = "base64" if decoration.lower() == "b" else "xtext"
            secret_encoding = encoding
        elif kind == "md5" and is_dotted(secret_field):
            encoding, secret_encoding = "xtext", "dotted"
        else:
            encoding, secret_encoding = "xtext", "base64"
        user = _text(_decode(user_field, encoding, "id", where), "id", where)
        decoded = _decode(secret_field, secret_encoding, "secret", where)
        if kind == "plain":
            secret = Secret(user, password=_text(decoded, "secret", where), line=number)
        elif kind == "md5":
            if not isinstance(decoded, bytes) or len(decoded) != 32:
                raise SecretsError(f"{where}: an md5 secret is a 32-byte MD5 state "
                                   "(made by relay-passwd or emailrelay-passwd)")
            secret = Secret(user, md5_state=decoded, line=number)
        else:
            secret = Secret(user, line=number)  # read, never used: relay has no such mechanism
        if is_server:
            if (kind, user) in secrets.server:
                raise SecretsError(f"{where}: duplicate server secret")
            secrets.server[(kind, user)] = secret
        else:
            if (kind, selector) in secrets.client:
                raise SecretsError(f"{where}: duplicate client secret")
            secrets.client[(kind, selector)] = secret
            secrets.selectors[selector] = secrets.selectors.get(selector, 0) + 1
    return secrets


class SecretsFile:
    """A secrets file that is reread whenever it changes (mtime, size or inode)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._signature: tuple[int, int, int] | None = None
        self._secrets = Secrets()
        self.get()  # fail early on a missing or malformed file

    def get(self) -> Secrets:
        """The current secrets; a file that became unreadable keeps the last good ones."""
        try:
            info = os.stat(self.path)
        except OSError as error:
            if self._signature is None:
                raise SecretsError(f"{self.path}: {error.strerror}") from None
            return self._secrets
        signature = (info.st_mtime_ns, info.st_size, info.st_ino)
        if signature != self._signature:
            try:
                text = self._read_text()
                self._secrets = parse_secrets(text, str(self.path))
            except SecretsError:
                if self._signature is None:
                    raise
                return self._secrets
            self._signature = signature
        return self._secrets

    def _read_text(self) -> str:
        try:
            return self.path.read_text(encoding="utf-8")
        except UnicodeDecodeError as error:
            line = error.object[: error.start].count(b"\n") + 1
            raise SecretsError(f"{self.path}, line {line}: not UTF-8") from None
        except OSError as error:
            raise SecretsError(f"{self.path}: {error.strerror}") from None
