"""The one place relay touches aiosmtpd's private internals (aiosmtpd 1.4, `aiosmtpd.smtp.SMTP`).

aiosmtpd's hooks (`handle_MAIL`, `handle_DATA`, ...) are not enough for relay-intake: it
needs to decide before the greeting, count any bytes against its own idle clock, parse
everyday paths without the general parser, read DATA itself, and know whether TLS is on.
`SMTPBase` is aiosmtpd's `SMTP` with each internal it relies on given a public name here,
so intake's session uses only these names and an aiosmtpd upgrade is checked in one file
(tests/test_compat.py fails loudly when one of them is gone or no longer called):

| relay's name | aiosmtpd's internal |
|---|---|
| `stream_limit` (constructor) | class attribute `line_length_limit`, the StreamReader limit |
| own `command_size_limits` | the class-level dict aiosmtpd grows on every EHLO |
| `reader`, `writer` | `_reader`, `_writer` |
| `tls_active` | `_tls_protocol` |
| `is_new_connection(transport)` | `_original_transport` (set by STARTTLS) |
| `cancel_handler()` | `_handler_coroutine` |
| `idle_timeout` | `_timeout_duration` |
| `on_idle_timer()`, `restart_idle_timer()`, `drop_idle()` | `_timeout_cb`, `_timeout_handle` |
| `before_greeting()` | `_handle_client` (runs before it; False ends the session) |
| `new_envelope()` | `_create_envelope` (called at connect, RSET, EHLO and after DATA) |
| `parse_path()`, `general_path()` | `_getaddr` |
| `parse_params()` | `_getparams` |
| `end_data()` | `_set_post_data_state` |
| `call_hook()` | `_call_handler_hook` |

Everything else intake uses (`push`, `session`, `envelope`, `transport`, `loop`,
`hostname`, `data_size_limit`, `local_part_limit`, `check_helo_needed`,
`check_auth_needed`, `challenge_auth`, `smtp_*`, `auth_*`, `MISSING`, `syntax`,
`AuthResult`, `LoginPassword`) is aiosmtpd's public API. Nothing here does I/O of its own.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Sequence
from typing import Any

from aiosmtpd.smtp import MISSING, SMTP, AuthResult, Envelope, LoginPassword, syntax

__all__ = ["MISSING", "AuthResult", "Envelope", "LoginPassword", "SMTPBase", "syntax"]


class SMTPBase(SMTP):
    """aiosmtpd's SMTP server protocol, its internals under the public names above."""

    def __init__(self, handler: Any, *, stream_limit: int, command_size_limit: int,
                 **options: Any) -> None:
        # aiosmtpd's __init__ creates the StreamReader with limit=self.line_length_limit.
        self.line_length_limit = stream_limit
        super().__init__(handler, **options)
        # aiosmtpd keeps this dict on the class and grows it on every EHLO: keep our own.
        self.command_size_limits: collections.defaultdict[str, int] = collections.defaultdict(
            lambda: command_size_limit
        )

    # -- state --------------------------------------------------------------------------

    @property
    def reader(self) -> asyncio.StreamReader:
        """The connection's stream reader (the plain text, after STARTTLS too)."""
        reader: asyncio.StreamReader = self._reader
        return reader

    @property
    def writer(self) -> asyncio.StreamWriter:
        """The connection's stream writer."""
        writer: asyncio.StreamWriter = self._writer
        return writer

    @property
    def tls_active(self) -> bool:
        """True once STARTTLS has completed."""
        return self._tls_protocol is not None

    def is_new_connection(self, transport: asyncio.BaseTransport) -> bool:
        """In connection_made: True for a new connection, False for the STARTTLS upgrade."""
        return self._original_transport is None and self.transport is None

    def cancel_handler(self) -> None:
        """Stop the task that reads and answers commands (the connection is being closed)."""
        if self._handler_coroutine is not None:
            self._handler_coroutine.cancel()

    # -- the idle timer -----------------------------------------------------------------

    @property
    def idle_timeout(self) -> float:
        """The `timeout` given to the constructor."""
        return float(self._timeout_duration)

    def _timeout_cb(self) -> None:
        self.on_idle_timer()

    def on_idle_timer(self) -> None:
        """aiosmtpd's idle timer fired (it restarts it on every command): drop by default."""
        self.drop_idle()

    def restart_idle_timer(self, delay: float) -> None:
        """Run on_idle_timer again in *delay* seconds (aiosmtpd cancels this handle itself)."""
        self._timeout_handle = self.loop.call_later(delay, self._timeout_cb)

    def drop_idle(self) -> None:
        """aiosmtpd's own reaction to the idle timer: close the transport."""
        super()._timeout_cb()  # type: ignore[no-untyped-call]

    # -- the session's life and the hooks aiosmtpd has no public name for ----------------

    async def _handle_client(self) -> None:
        if await self.before_greeting():
            await super()._handle_client()

    async def before_greeting(self) -> bool:
        """Runs first in the session's task; False ends it (the session said why)."""
        return True

    def _create_envelope(self) -> Envelope:
        return self.new_envelope()

    def new_envelope(self) -> Envelope:
        """A fresh aiosmtpd envelope: at connect, RSET, HELO/EHLO and after DATA."""
        return Envelope()

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        return self.parse_path(arg)

    def parse_path(self, arg: str) -> tuple[str | None, str | None]:
        """MAIL/RCPT's `<path> params` -> (address, the parameters as sent); None: malformed."""
        return self.general_path(arg)

    def general_path(self, arg: str) -> tuple[str | None, str | None]:
        """aiosmtpd's own path parser (the standard library's address grammar)."""
        try:
            address, rest = super()._getaddr(arg)
        except (IndexError, AttributeError):  # the parser's own bugs ("<", "+@[", ...):
            return None, None  # a malformed address (553), not a local error (451)
        return address, rest

    def _getparams(self, params: Sequence[str]) -> dict[str, str | bool] | None:
        return self.parse_params(params)

    def parse_params(self, params: Sequence[str]) -> dict[str, str | bool] | None:
        """aiosmtpd's MAIL/RCPT parameter syntax check (upper-cased words -> dict)."""
        result: dict[str, str | bool] | None = super()._getparams(params)
        return result

    def end_data(self) -> None:
        """The transaction is over (stored, refused or failed): a new envelope."""
        self._set_post_data_state()  # type: ignore[no-untyped-call]

    async def call_hook(self, command: str, *args: Any) -> Any:
        """The handler's handle_<command> hook's reply, or MISSING when it has none."""
        return await self._call_handler_hook(command, *args)
