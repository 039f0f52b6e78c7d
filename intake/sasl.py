"""AUTH on one connection: PLAIN and LOGIN (aiosmtpd's), the CRAM ones (relay's), the limits.

The CRAM mechanisms are E-MailRelay 2.6.1's: CRAM-SHA512, CRAM-SHA256, CRAM-SHA1 and
CRAM-MD5, one server-first exchange whose HMAC hash is the mechanism's.

`AuthSession` is the part of an intake session that answers AUTH. It offers and accepts
the mechanisms of `config.auth_lists` (intake.esmtp: --server-auth-config, or relay-intake's
default of every mechanism with TLS and none without): one not in the list for this
connection is refused before aiosmtpd sees it (538 when TLS would allow it). Credentials are checked
by `intake.auth.Authenticator` against the `--server-auth` secrets file, but never for an
address that `intake.limits.AuthFailures` has blocked (454, without looking at the
password: the check is made again just before the credentials are compared, so that
connections guessing at once get no more than the limit between them). Three refused AUTH
commands close the connection (421); the failure that reaches `--auth-failure-limit` for
the address closes it too and writes the one `auth_blocked` line fail2ban matches
(docs/intake.md). Writes replies and log lines only; never logs a password.
"""

from __future__ import annotations

import secrets
import time
from typing import TYPE_CHECKING, Any

from common.compat_aiosmtpd import MISSING, AuthResult, LoginPassword
from intake.engine import Engine
from intake.policy import MAX_AUTH_FAILURES

if TYPE_CHECKING:
    from intake.listener import IntakeServer

AUTH_BLOCKED_REPLY = ("454 4.7.0 Temporary authentication failure: too many failed attempts "
                      "from your address, try again later")


class AuthSession(Engine):
    """An SMTP session's AUTH command and its bookkeeping."""

    server: IntakeServer
    client_ip: str
    close_after_reply: bool

    def init_auth(self) -> None:
        """The AUTH state of a new connection."""
        self.auth_mechanism = ""
        self.auth_name = ""
        self.auth_failures = 0  # refused AUTH commands on this connection
        self._auth_checked = False  # the last AUTH had its credentials checked
        self._auth_blocked = False  # the last AUTH was refused unchecked (address blocked)

    def _blocked(self) -> bool:
        if self.server.auth_failures.blocked(self.client_ip, self.loop.time()):
            self._auth_blocked = True
            return True
        return False

    @property
    def secure(self) -> bool:
        """The connection is encrypted (STARTTLS done, or --server-tls-connection)."""
        return self.tls_active or self.server.config.tls_connection

    def auth_mechanisms(self) -> tuple[str, ...]:
        """The mechanisms EHLO offers and AUTH accepts on this connection now."""
        if self.server.config.authenticator is None:
            return ()
        return self.server.config.auth_lists.offered(secure=self.secure)

    def _not_offered(self, arg: str) -> str | None:
        """The refusal of an AUTH whose mechanism this connection does not offer, or None."""
        assert self.session is not None
        if not arg or not self.session.extended_smtp or self.session.authenticated:
            return None  # aiosmtpd's own answers (501, 500, 503)
        offered = self.auth_mechanisms()
        mechanism = arg.split(maxsplit=1)[0].upper()
        if mechanism in offered:
            return None
        if not self.secure and mechanism in self.server.config.auth_lists.secure:
            return "538 5.7.11 Encryption required for requested authentication mechanism"
        if not offered:
            return "502 5.5.1 AUTH not available"
        return "504 5.5.4 Unrecognized authentication type"

    async def smtp_AUTH(self, arg: str) -> None:
        if self.server.config.authenticator is None:
            await self.push("502 5.5.1 AUTH not available")
            return
        assert self.session is not None
        refusal = self._not_offered(arg)
        if refusal is not None:  # a strike like any refused AUTH (a guesser before TLS too)
            self._auth_checked = self._auth_blocked = False
            await self.push(refusal)
            await self._refused()
            return
        already = bool(self.session.authenticated)
        self._auth_checked = self._auth_blocked = False
        if not already and self._blocked():
            await self.push(AUTH_BLOCKED_REPLY)
        else:
            await super().smtp_AUTH(arg)
        if already:
            return
        if self.session.authenticated:
            self.auth_mechanism = (arg or "").split()[0].upper()
            # what the mechanism returned (aiosmtpd's login_data is deprecated)
            data = self.session.auth_data
            login = data.login if isinstance(data, LoginPassword) else None
            self.auth_name = login.decode("utf-8", "replace") if isinstance(login, bytes) else ""
            self.server.log.info("client_authenticated", client=self.client_ip,
                                 mechanism=self.auth_mechanism, user=self.auth_name)
            return
        await self._refused()

    async def _refused(self) -> None:
        self.auth_failures += 1  # every refused AUTH is a strike on this connection
        if self.server.metrics is not None:
            self.server.metrics.auth_failures.inc()
        if not self._auth_blocked:
            self.server.log.warning("auth_failed", client=self.client_ip,
                                    failures=self.auth_failures)
        if self._auth_checked and self.server.auth_failures.failed(self.client_ip,
                                                                   self.loop.time()):
            config = self.server.config
            self.server.log.warning(
                "auth_blocked", client=self.client_ip, failures=config.auth_failure_limit,
                window=config.auth_failure_window,
                reason="too many failed AUTH attempts from this address")
            self.close_after_reply = True
            await self.push("421 4.7.0 Too many failed authentication attempts from your "
                            "address, closing connection")
        elif self.auth_failures >= MAX_AUTH_FAILURES:
            self.close_after_reply = True
            await self.push("421 4.7.0 Too many failed authentication attempts")

    async def _cram(self, mechanism: str, args: list[str]) -> AuthResult:
        """CRAM-MD5 (RFC 2195) and its SHA kin: a challenge, answered 'user HMAC(password)'."""
        authenticator = self.server.config.authenticator
        if authenticator is None or len(args) > 1:
            await self.push(f"501 5.5.4 {mechanism} takes no initial response")
            return AuthResult(success=False, handled=True)
        challenge = f"<{secrets.token_hex(8)}.{int(time.time())}@{self.hostname}>".encode()
        response = await self.challenge_auth(challenge)
        if response is MISSING:
            return AuthResult(success=False, handled=True)
        if self._blocked():  # another connection reached the limit meanwhile
            return AuthResult(success=False, handled=False, message=AUTH_BLOCKED_REPLY)
        self._auth_checked = True
        user = authenticator.check_cram(mechanism, challenge, response)
        if user is None:  # handled=False: aiosmtpd answers 535 (the default sends nothing)
            return AuthResult(success=False, handled=False)
        return AuthResult(success=True, auth_data=LoginPassword(user.encode("utf-8"), b""))

    # aiosmtpd finds a mechanism by its method's name: auth_CRAM__SHA256 is CRAM-SHA256.
    async def auth_CRAM__MD5(self, _: Any, args: list[str]) -> AuthResult:
        """CRAM-MD5: HMAC-MD5, from a plain password or an `md5` secret's stored state."""
        return await self._cram("CRAM-MD5", args)

    async def auth_CRAM__SHA1(self, _: Any, args: list[str]) -> AuthResult:
        """CRAM-SHA1: HMAC-SHA1 of the challenge, from a plain password."""
        return await self._cram("CRAM-SHA1", args)

    async def auth_CRAM__SHA256(self, _: Any, args: list[str]) -> AuthResult:
        """CRAM-SHA256: HMAC-SHA256 of the challenge, from a plain password."""
        return await self._cram("CRAM-SHA256", args)

    async def auth_CRAM__SHA512(self, _: Any, args: list[str]) -> AuthResult:
        """CRAM-SHA512: HMAC-SHA512 of the challenge, from a plain password."""
        return await self._cram("CRAM-SHA512", args)

    def check_credentials(self, *args: Any) -> AuthResult:
        """aiosmtpd's authenticator for PLAIN and LOGIN: never checks for a blocked address."""
        authenticator = self.server.config.authenticator
        if authenticator is None:
            return AuthResult(success=False, handled=False)
        if self._blocked():  # another connection reached the limit meanwhile
            return AuthResult(success=False, handled=False, message=AUTH_BLOCKED_REPLY)
        self._auth_checked = True
        result: AuthResult = authenticator(*args)
        return result
