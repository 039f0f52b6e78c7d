"""SMTP AUTH for intake against the `--server-auth` secrets file (E-MailRelay's format).

`Authenticator` is aiosmtpd's authenticator callback for PLAIN and LOGIN; `check_cram`
verifies a CRAM-MD5 (RFC 2195), CRAM-SHA1, CRAM-SHA256 or CRAM-SHA512 response (the same
exchange with another HMAC hash), from a plain password, or for CRAM-MD5 from an `md5`
secret's stored MD5 state. Trust by `server none` lines is looked up with
`trusted_keyword`. Reads the secrets file only (through `common.secrets.SecretsFile`, which
rereads it when it changes); never logs a password.
"""

from __future__ import annotations

import hmac
from typing import Any

from aiosmtpd.smtp import AuthResult, LoginPassword

from common.secrets import CRAM_HASHES, SecretsFile


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

    def check_cram(self, mechanism: str, challenge: bytes, response: bytes) -> str | None:
        """The user name when *response* ('user hex-digest') answers *challenge* with the
        HMAC of *mechanism* (CRAM-MD5, CRAM-SHA1, ...), else None."""
        try:
            user_text, _, digest = response.decode("utf-8").rpartition(" ")
        except UnicodeDecodeError:
            return None
        hash_name = CRAM_HASHES[mechanism]
        expected = (self.secrets.get().cram_digest(hash_name, user_text, challenge)
                    if user_text else None)
        if expected is None:
            hmac.compare_digest(digest, digest)  # even out timing for unknown users
            return None
        return user_text if hmac.compare_digest(expected, digest.lower()) else None

    def trusted_keyword(self, ip: str) -> str | None:
        """The keyword of the `server none` line that trusts *ip*, or None."""
        return self.secrets.get().trusted_keyword(ip)
