"""The secrets file of `--server-auth` and `--client-auth`, E-MailRelay's format.

One record a line, `#` comments:

    server plain <user> <password>          (xtext: +XX escapes)
    server plain:b <base64-user> <base64-password>
    server none <address|CIDR|wildcard> <keyword>     (trusted: no AUTH needed)
    client plain <user> <password> [<account-selector>]

Pure parsing plus `SecretsFile`, which rereads the file when it changes. Reads only the
secrets file; never logs a password.
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

from common.xtext import XtextError, xtext_decode


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
class ClientAccount:
    """A `client` line: credentials for the smarthost, optionally chosen by a selector."""

    user: str
    password: str
    selector: str = ""


@dataclass
class Secrets:
    """The parsed secrets file."""

    server_users: dict[str, str] = field(default_factory=dict)
    trusted: list[TrustRule] = field(default_factory=list)
    clients: list[ClientAccount] = field(default_factory=list)

    def check_server(self, user: str, password: str) -> bool:
        """True if *user* with *password* may authenticate (constant-time comparison)."""
        expected = self.server_users.get(user)
        if expected is None:
            hmac.compare_digest(password.encode(), password.encode())  # even out timing
            return False
        return hmac.compare_digest(expected.encode("utf-8"), password.encode("utf-8"))

    def trusted_keyword(self, address: str) -> str | None:
        """The keyword of the first `server none` line matching *address*, else None."""
        for rule in self.trusted:
            if rule.matches(address):
                return rule.keyword
        return None

    def client_account(self, selector: str = "") -> ClientAccount | None:
        """Credentials for the smarthost: the account with this selector, or the default."""
        for account in self.clients:
            if account.selector == selector:
                return account
        return None


def _decode(value: str, encoding: str, line_number: int, path: str) -> str:
    try:
        if encoding == "b":
            return base64.b64decode(value, validate=True).decode("utf-8")
        return xtext_decode(value)
    except (XtextError, binascii.Error, UnicodeDecodeError):
        raise SecretsError(f"{path}, line {line_number}: badly encoded field") from None


def parse_secrets(text: str, path: str = "secrets") -> Secrets:
    """Parse a secrets file's text; SecretsError names the line of any problem."""
    secrets = Secrets()
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        words = line.split()
        if len(words) < 4:
            raise SecretsError(
                f"{path}, line {number}: expected '<side> <mechanism> <id> <secret>'"
            )
        side, mechanism = words[0].lower(), words[1].lower()
        if side not in ("server", "client"):
            raise SecretsError(f"{path}, line {number}: first word must be 'server' or 'client'")
        base, _, encoding = mechanism.partition(":")
        if side == "server" and base == "none":
            secrets.trusted.append(TrustRule(words[2], words[3]))
            continue
        if base not in ("plain", "login") or encoding not in ("", "b"):
            raise SecretsError(
                f"{path}, line {number}: unsupported mechanism {mechanism!r}"
                " (relay reads plain, plain:b and, for servers, none)"
            )
        user = _decode(words[2], encoding, number, path)
        password = _decode(words[3], encoding, number, path)
        if side == "server":
            secrets.server_users[user] = password
        else:
            selector = words[4] if len(words) > 4 else ""
            secrets.clients.append(ClientAccount(user, password, selector))
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
