"""relay-deliver's SMTP client with --verbose: aiosmtplib's, logging each command and reply.

The arguments of AUTH and the lines that answer its 334 challenges are never shown; the
message content is not a command and is not logged (deliver.forward logs its size, and
the commands it pipelines). Writes only log lines.
"""

from __future__ import annotations

from typing import Any

import structlog
from aiosmtplib.response import SMTPResponse

from common.compat_aiosmtplib import GreetingSMTP
from common.logs import Logger

log: Logger = structlog.get_logger("relay-deliver")


class DialogueLoggingSMTP(GreetingSMTP):
    """aiosmtplib's client, logging each command and reply (aiosmtplib itself logs none).

    The arguments of AUTH and the lines that answer its 334 challenges are never shown.
    The message content is not a command and is not logged.
    """

    _in_auth = False

    async def execute_command(self, *args: bytes, **kwargs: Any) -> SMTPResponse:
        if args and args[0].upper() == b"AUTH":
            self._in_auth = True
            shown = b" ".join(args[:2]).decode("ascii", "replace") + (" ***" if args[2:] else "")
        elif self._in_auth:
            shown = "***"
        else:
            shown = b" ".join(args).decode("utf-8", "replace")
        log.debug("smtp_command", command=shown, server=self.hostname)
        response: SMTPResponse = await super().execute_command(*args, **kwargs)
        if response.code != 334:
            self._in_auth = False
        log.debug("smtp_reply", code=response.code,
                  text="***" if self._in_auth else response.message, server=self.hostname)
        return response
