"""SMTP AUTH for intake against the `--server-auth` secrets file (E-MailRelay's format).

`Authenticator` is aiosmtpd's authenticator callback for PLAIN and LOGIN; `check_cram_md5`
verifies a CRAM-MD5 response (RFC 2195), from a plain password or from an `md5` secret's
stored MD5 state. Trust by `server none` lines is looked up with
`trusted_keyword`. Reads the secrets file only (through `common.secrets.SecretsFile`, which
rereads it when it changes); never logs a password.
"""

from __future__ import annotations

import hmac
from typing import Any

from aiosmtpd.smtp import AuthResult, LoginPassword

from common.secrets import SecretsFile

MECHANISMS = ("PLAIN", "LOGIN", "CRAM-MD5")


class Authenticator:
    """Checks PLAIN/LOGIN credentials; on success the identity is the user name."""

    def __init__(self, secrets: SecretsFile) -> None:
        self.secrets = secrets

    def __call__(
        self, server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any
    ) -> AuthResult:
        if not isinstance(auth_data, LoginPassword):
            return AuthResult(success=False, handled=False)
        try:
            user = auth_data.login.decode("utf-8")
            password = auth_data.password.decode("utf-8")
        except UnicodeDecodeError:
            return AuthResult(success=False, handled=False)
        if self.secrets.get().check_server(user, password):
            return AuthResult(success=True, auth_data=LoginPassword(auth_data.login, b""))
        return AuthResult(success=False, handled=False)

    def check_cram_md5(self, challenge: bytes, response: bytes) -> str | None:
        """The user name when *response* ('user hex-digest') answers *challenge*, else None."""
        try:
            user_text, _, digest = response.decode("utf-8").rpartition(" ")
        except UnicodeDecodeError:
            return None
        expected = self.secrets.get().cram_md5_digest(user_text, challenge) if user_text else None
        if expected is None:
            hmac.compare_digest(digest, digest)  # even out timing for unknown users
            return None
        return user_text if hmac.compare_digest(expected, digest.lower()) else None

    def trusted_keyword(self, ip: str) -> str | None:
        """The keyword of the `server none` line that trusts *ip*, or None."""
        return self.secrets.get().trusted_keyword(ip)
