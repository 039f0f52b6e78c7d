"""AUTH to the smarthost with one client account of the secrets file, as E-MailRelay does.

The mechanism is chosen as E-MailRelay 2.6.1 chooses it: CRAM-MD5 when the smarthost
offers it (from the plain password, or from an `md5` secret's stored MD5 state, which can
do nothing else), else PLAIN, else LOGIN. One mechanism only: trying the next ones after a
refusal gains nothing and some servers answer a second mechanism badly. An account without
a secret (`client plain:b = = SELECTOR`) does not authenticate. Talks to the smarthost
through aiosmtplib only; never logs a secret.
"""

from __future__ import annotations

import base64
import binascii
import hmac

import aiosmtplib

from common.md5state import hmac_md5
from common.secrets import ClientAccount


class NoMechanism(aiosmtplib.SMTPException):
    """The smarthost offers no mechanism this account can use."""


async def authenticate(smtp: aiosmtplib.SMTP, account: ClientAccount) -> None:
    """Authenticate as *account*; aiosmtplib's exceptions (with the reply code) on refusal."""
    if not account.authenticates:
        return
    offered = smtp.server_auth_methods
    if "cram-md5" in offered:
        await _cram_md5(smtp, account)
    elif account.md5_state is not None:
        raise NoMechanism("the account has an md5 secret, which needs CRAM-MD5, and the "
                          f"smarthost offers {' '.join(offered).upper() or 'no AUTH'}")
    elif account.password is None:
        raise NoMechanism("the account has no usable secret")
    elif "plain" in offered:
        await smtp.auth_plain(account.user, account.password)
    elif "login" in offered:
        await smtp.auth_login(account.user, account.password)
    else:
        raise NoMechanism(f"the smarthost offers no usable AUTH ({' '.join(offered) or 'none'})")


async def _cram_md5(smtp: aiosmtplib.SMTP, account: ClientAccount) -> None:
    reply = await smtp.execute_command(b"AUTH", b"CRAM-MD5")
    if reply.code != 334:
        raise aiosmtplib.SMTPAuthenticationError(reply.code, reply.message)
    try:
        challenge = base64.b64decode(reply.message.strip(), validate=True)
    except (binascii.Error, ValueError):
        await smtp.execute_command(b"*")
        raise aiosmtplib.SMTPAuthenticationError(reply.code, "bad CRAM-MD5 challenge") from None
    if account.md5_state is not None:
        digest = hmac_md5(account.md5_state, challenge).hex()
    else:
        assert account.password is not None
        digest = hmac.new(account.password.encode("utf-8"), challenge, "md5").hexdigest()
    answer = base64.b64encode(f"{account.user} {digest}".encode())
    reply = await smtp.execute_command(answer)
    if reply.code != 235:
        raise aiosmtplib.SMTPAuthenticationError(reply.code, reply.message)
