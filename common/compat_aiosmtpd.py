"""The one place relay touches aiosmtpd's private internals (aiosmtpd 1.4, `aiosmtpd.smtp.SMTP`).

aiosmtpd's hooks (`handle_MAIL`, `handle_DATA`, ...) are not enough for relay-intake: it
reads its connections itself (intake.engine, which replaces aiosmtpd's stream-and-task
command loop), decides before the greeting, parses everyday paths without the general
parser, reads DATA itself, and needs to know whether TLS is on. `SMTPBase` is aiosmtpd's
`SMTP` (its commands, replies, AUTH and hooks) with each internal relay relies on given a
public name here, so intake uses only these names and an aiosmtpd upgrade is checked in one
file (tests/test_compat_aiosmtpd.py fails loudly when one of them is gone or no longer
called, or when a check or reply of aiosmtpd's own loop that the engine copies changed):

| relay's name | aiosmtpd's internal |
|---|---|
| `stream_limit` (constructor) | `line_length_limit`: the most intake buffers unread |
| own `command_size_limits` | the class-level dict aiosmtpd grows on every EHLO |
| `command_method(command)` | `_smtp_methods` |
| `line_refusal(command, length)` | `_handle_client`'s checks, `_tls_handshake_okay` |
| `is_tls_setup_error()`, `BOGUS_LIMIT` | `TLSSetupException`, the unknown-command budget |
| `start_session()`, `tls_started()` | `connection_made` (new, after STARTTLS) |
| `end_session()` | `connection_lost` |
| `tls_active` | `_tls_protocol` |
| `is_new_connection(transport)` | `_original_transport` (set by STARTTLS) |
| `cancel()` | `_handler_coroutine` (QUIT cancels it: the engine's command) |
| `readline()` | `_reader` (challenge_auth reads the AUTH answer from it) |
| `idle_timeout` | `_timeout_duration` |
| `on_idle_timer()`, `restart_idle_timer()`, `drop_idle()` | `_timeout_cb`, `_timeout_handle` |
| `idle_timer_rechecks`, `first_idle_delay()` | `_reset_timeout` (at connect) |
| `command_read()` | `_reset_timeout` (per command) |
| `greeting` (constructor), `greeting_line` | `_handle_client`'s first `push`, the greeting |
| `log_line_read()` | `sanitized_log` (a command line for --verbose, AUTH masked) |
| `new_envelope()` | `_create_envelope` (called at connect, RSET, EHLO and after DATA) |
| `parse_path()`, `general_path()` | `_getaddr` (the parameters it returns end its argument) |
| `parse_params()` | `_getparams` |
| `end_data()` | `_set_post_data_state` |
| `call_hook()` | `_call_handler_hook` |
| `init_smtp()` (the constructor) | what `SMTP.__init__` sets, `_AuthMechAttr` |

Everything else intake uses (`push`, `session`, `envelope`, `transport`, `loop`,
`hostname`, `data_size_limit`, `local_part_limit`, `check_helo_needed`,
`check_auth_needed`, `challenge_auth`, `handle_exception`, `smtp_*`, `auth_*`, `MISSING`,
`syntax`, `AuthResult`, `LoginPassword`) is aiosmtpd's public API. Nothing here does I/O
of its own.

`init_smtp` is `SMTP.__init__` without its per-connection introspection: aiosmtpd builds
three tables on every connection by walking the object with `inspect.getmembers` and
`dir()` and checks the EHLO hook's signature, about a quarter of intake's event loop when
each message comes on a connection of its own (docs/performance.md). The names in those
tables depend only on the classes, so one full `SMTP.__init__` per (protocol class,
handler class, excluded mechanisms) finds them; later connections bind the same names to
their own objects and set every other attribute as `SMTP.__init__` would. Options relay
does not use (`command_call_limit`, `proxy_protocol_timeout`, `auth_callback`) and a
missing `hostname` take the full constructor. tests/test_compat_aiosmtpd_init.py builds
connections both ways and compares every attribute.

A protocol class with `idle_timer_rechecks` (relay's session, whose `on_idle_timer` re-arms
itself from its own idle clock) keeps the timer armed at connect instead of moving it (a
cancel and a new timer) on every command as aiosmtpd does. The handlers' hooks are bound
once per handler object (relay has one for all connections) and the AUTH mechanisms' and
commands' tables on demand. The stream attributes of asyncio.StreamReaderProtocol (which
aiosmtpd's SMTP derives from) are not set: the engine never uses them.

`_getaddr` re-serialises the address it parses; `general_path` returns it as the client
wrote it instead (common.smtppath).

aiosmtpd also logs two warnings of its own through its `mail.log` logger that say nothing
to a relay operator (`SPURIOUS_LOG_LINES`): one from each full `SMTP.__init__` when AUTH is
offered without TLS (relay says so once, at start: `auth_insecure`), and one on every successful
AUTH (aiosmtpd sets its deprecated `Session.login_data`; relay reads `Session.auth_data`).
Importing this module drops exactly those two lines; the test checks aiosmtpd still writes
them word for word, so that a change shows instead of the filter silently matching nothing.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import ssl
import weakref
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

from aiosmtpd import smtp as aiosmtpd_smtp
from aiosmtpd.smtp import MISSING, SMTP, AuthResult, Envelope, LoginPassword, syntax

from common.smtppath import path_as_written

__all__ = ["AIOSMTPD_LOGGER", "BOGUS_LIMIT", "MISSING", "SPURIOUS_LOG_LINES", "AuthResult",
           "Envelope", "LoginPassword", "SMTPBase", "log_line_read", "syntax"]

AIOSMTPD_LOGGER = "mail.log"
SPURIOUS_LOG_LINES = frozenset({
    "auth_required == True but auth_require_tls == False",
    "Session.login_data is deprecated and will be removed in version 2.0",
})


class _DropSpurious(logging.Filter):
    """Drops aiosmtpd's two lines above; lets every other record through."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() not in SPURIOUS_LOG_LINES


logging.getLogger(AIOSMTPD_LOGGER).addFilter(_DropSpurious())

_aiosmtpd_log = logging.getLogger(AIOSMTPD_LOGGER)
# Unknown commands a connection may send; the next one closes it (aiosmtpd's limit).
BOGUS_LIMIT: int = aiosmtpd_smtp.BOGUS_LIMIT


def log_line_read(peer: Any, line: bytes) -> None:
    """aiosmtpd's `%r >> %r` line for a command read (relay's --verbose dialogue), AUTH
    secrets masked by aiosmtpd's own `sanitized_log`; nothing is built when it is off."""
    if _aiosmtpd_log.isEnabledFor(logging.INFO):
        aiosmtpd_smtp.sanitized_log(_aiosmtpd_log.info, "%r >> %r", peer, line)


# Given at all (relay never passes them), these take the full constructor.
_FULL_ONLY = frozenset({"command_call_limit", "proxy_protocol_timeout", "auth_callback"})


@dataclass(frozen=True)
class _Tables:
    """The names aiosmtpd's introspection found: (mechanism, method name, on the protocol)."""

    auth: tuple[tuple[str, str, bool], ...]
    hooks: tuple[str, ...]  # handle_* names of the handler, without the prefix
    commands: tuple[str, ...]  # smtp_* names of the protocol, without the prefix
    ehlo_hook_ver: str | None


_tables: dict[tuple[type, type, tuple[str, ...]], _Tables] = {}
# The handle_* hooks bound to one handler object: relay serves every connection with one
# handler, so the table is the same for all of them (aiosmtpd only reads it).
_hooks: weakref.WeakKeyDictionary[Any, dict[str, Any]] = weakref.WeakKeyDictionary()


class _Commands(Mapping[str, Any]):
    """`_smtp_methods` bound on demand: aiosmtpd looks up one command per line read (and
    lists them all for HELP), so building the whole dict per connection is wasted."""

    __slots__ = ("_names", "_owner")

    def __init__(self, owner: SMTP, names: tuple[str, ...]) -> None:
        self._owner = owner
        self._names = names

    def __getitem__(self, name: str) -> Any:
        if name not in self._names:
            raise KeyError(name)
        return getattr(self._owner, "smtp_" + name)

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


class _AuthMethods(Mapping[str, Any]):
    """`_auth_methods` bound on demand: most connections never send AUTH."""

    __slots__ = ("_handler", "_methods", "_owner")

    def __init__(self, owner: SMTP, handler: Any,
                 methods: tuple[tuple[str, str, bool], ...]) -> None:
        self._owner = owner
        self._handler = handler
        self._methods = methods

    def __getitem__(self, mechanism: str) -> Any:
        for name, method, own in self._methods:
            if name == mechanism:
                return aiosmtpd_smtp._AuthMechAttr(
                    getattr(self._owner if own else self._handler, method), own)
        raise KeyError(mechanism)

    def __iter__(self) -> Iterator[str]:
        return (name for name, _method, _own in self._methods)

    def __len__(self) -> int:
        return len(self._methods)


def _learn(smtp: SMTP, handler: Any) -> _Tables:
    auth = []
    for mechanism, attribute in smtp._auth_methods.items():
        owner = smtp if attribute.is_builtin else handler
        auth.append((mechanism, attribute.method.__name__, owner is smtp))
    return _Tables(
        auth=tuple(auth),
        hooks=tuple(smtp._handle_hooks),
        commands=tuple(smtp._smtp_methods),
        ehlo_hook_ver=smtp._ehlo_hook_ver,
    )


def _bound_hooks(handler: Any, names: tuple[str, ...]) -> dict[str, Any]:
    """The handler's hooks by name, bound once per handler object."""
    try:
        hooks = _hooks.get(handler)
    except TypeError:  # a handler that cannot be weakly referenced: bind them every time
        return {name: getattr(handler, "handle_" + name) for name in names}
    if hooks is None:
        hooks = _hooks[handler] = {name: getattr(handler, "handle_" + name) for name in names}
    return hooks


def init_smtp(smtp: SMTP, handler: Any, **options: Any) -> None:
    """`SMTP.__init__(smtp, handler, **options)`, the class introspection done only once."""
    # Unused options, and no hostname (aiosmtpd then looks it up): the full constructor.
    if not options.get("hostname") or not _FULL_ONLY.isdisjoint(options):
        SMTP.__init__(smtp, handler, **options)
        return
    exclude = tuple(options.get("auth_exclude_mechanism") or ())
    key = (type(smtp), type(handler), exclude)
    tables = _tables.get(key)
    if tables is None:
        SMTP.__init__(smtp, handler, **options)
        _tables[key] = _learn(smtp, handler)
        return
    loop = options.get("loop") or aiosmtpd_smtp.make_loop()
    smtp.__ident__ = options.get("ident") or aiosmtpd_smtp.__ident__
    smtp.loop = loop
    # No asyncio.StreamReaderProtocol.__init__: relay-intake's engine reads the socket
    # itself (intake.engine); the stream attributes it would set are never used.
    smtp.event_handler = handler
    smtp.data_size_limit = options.get("data_size_limit", aiosmtpd_smtp.DATA_SIZE_DEFAULT)
    smtp.enable_SMTPUTF8 = options.get("enable_SMTPUTF8", False)
    smtp._decode_data = options.get("decode_data", False)
    smtp.command_size_limits.clear()
    smtp.hostname = options["hostname"]
    tls_context: ssl.SSLContext | None = options.get("tls_context")
    smtp.tls_context = tls_context
    smtp.require_starttls = tls_context and options.get("require_starttls", False)
    smtp._timeout_duration = options.get("timeout", 300)
    smtp._timeout_handle = None
    smtp._tls_handshake_okay = True
    smtp._tls_protocol = None
    smtp._original_transport = None
    smtp.session = None
    smtp.envelope = None
    smtp.transport = None
    smtp._handler_coroutine = None
    smtp._auth_require_tls = options.get("auth_require_tls", True)
    smtp._proxy_timeout = None
    authenticator = options.get("authenticator")
    if authenticator is not None:
        smtp._authenticator, smtp._auth_callback = authenticator, None
    else:
        smtp._authenticator, smtp._auth_callback = None, aiosmtpd_smtp.login_always_fail
    smtp._auth_required = options.get("auth_required", False)
    # Typed a dict by aiosmtpd, which only lists its keys (EHLO) and looks one up (AUTH).
    smtp._auth_methods = cast("dict[str, Any]", _AuthMethods(smtp, handler, tables.auth))
    smtp._handle_hooks = _bound_hooks(handler, tables.hooks)
    smtp._ehlo_hook_ver = tables.ehlo_hook_ver
    # Typed a dict by aiosmtpd, which only calls .get() and .items() on it.
    smtp._smtp_methods = cast("dict[str, Any]", _Commands(smtp, tables.commands))
    smtp._enforce_call_limit = False


class SMTPBase(SMTP):
    """aiosmtpd's SMTP server protocol (its commands, replies and hooks), its internals
    under the public names above. It reads and writes nothing itself: relay-intake's
    engine (intake.engine) owns the socket and runs the commands."""

    def __init__(self, handler: Any, *, stream_limit: int, command_size_limit: int,
                 greeting: str | None = None, **options: Any) -> None:
        # The most a connection buffers unread before the engine stops reading its socket.
        self.line_length_limit = stream_limit
        # aiosmtpd's greeting is always '220 HOSTNAME IDENT'; *greeting* replaces it whole.
        self._greeting = greeting
        init_smtp(self, handler, **options)  # SMTP.__init__, its introspection done once
        # aiosmtpd's QUIT cancels "the handler task" (SMTPBase.cancel: the engine's command),
        # and challenge_auth reads the AUTH answer from `_reader` (the engine's readline).
        self._handler_coroutine = self  # type: ignore[assignment]
        self._reader = self  # type: ignore[assignment]
        # aiosmtpd keeps this dict on the class and grows it on every EHLO: keep our own.
        self.command_size_limits: collections.defaultdict[str, int] = collections.defaultdict(
            lambda: command_size_limit
        )

    # -- state --------------------------------------------------------------------------

    @property
    def greeting_line(self) -> str:
        """The 220 greeting: the one given, or aiosmtpd's `220 HOSTNAME IDENT`."""
        if self._greeting is not None:
            return "220 " + self._greeting
        return f"220 {self.hostname} {self.__ident__}"

    @property
    def tls_active(self) -> bool:
        """True once STARTTLS has completed."""
        return self._tls_protocol is not None

    def is_new_connection(self, transport: asyncio.BaseTransport) -> bool:
        """In connection_made: True for a new connection, False for the STARTTLS upgrade."""
        return self._original_transport is None and self.transport is None

    def cancel(self) -> None:
        """aiosmtpd's QUIT and timeouts cancel "the handler task": the engine's command."""
        self.cancel_handler()

    def cancel_handler(self) -> None:
        """Stop reading and answering commands (the connection is being closed)."""

    # -- one command line, as aiosmtpd's loop checks it ---------------------------------

    def command_method(self, command: str) -> Callable[[str | None], Awaitable[None]] | None:
        """The `smtp_<COMMAND>` coroutine method, or None for an unknown command."""
        method: Callable[[str | None], Awaitable[None]] | None = \
            self._smtp_methods.get(command)
        return method

    def line_refusal(self, command: str, length: int) -> str | None:
        """The reply aiosmtpd gives a command line before looking at its command (too long,
        TLS refused or required), or None."""
        assert self.session is not None
        limit = (self.command_size_limits[command] if self.session.extended_smtp
                 else self.command_size_limit)
        if length > limit:
            return "500 Command line too long"
        if not self._tls_handshake_okay and command != "QUIT":
            return "554 Command refused due to lack of security"
        if self.require_starttls and not self._tls_protocol \
                and command not in aiosmtpd_smtp.ALLOWED_BEFORE_STARTTLS:
            return "530 Must issue a STARTTLS command first"
        return None

    @staticmethod
    def is_tls_setup_error(error: BaseException) -> bool:
        """STARTTLS's handshake failed (aiosmtpd then drops the connection)."""
        return isinstance(error, aiosmtpd_smtp.TLSSetupException)

    # -- the connection's life, in aiosmtpd's terms --------------------------------------

    def start_session(self, transport: asyncio.BaseTransport) -> None:
        """A new connection: aiosmtpd's state for it (session, envelope, idle timer)."""
        self._set_rset_state()  # type: ignore[no-untyped-call]
        self.session = self._create_session()
        self.session.peer = transport.get_extra_info("peername")
        self.transport = transport
        self._reset_timeout()

    def tls_started(self, transport: asyncio.BaseTransport) -> None:
        """STARTTLS's handshake is done: *transport* is the encrypted one (RFC 3207 4.2:
        the state is reset, the hook may refuse the client's certificate)."""
        self._set_rset_state()  # type: ignore[no-untyped-call]
        self.session = self._create_session()
        self.session.peer = transport.get_extra_info("peername")
        self._reset_timeout()
        self.transport = transport
        assert self._tls_protocol is not None
        self.session.ssl = self._tls_protocol._extra
        hook = self._handle_hooks.get("STARTTLS")
        self._tls_handshake_okay = True if hook is None else hook(self, self.session,
                                                                  self.envelope)

    def end_session(self) -> None:
        """The connection is gone: the idle timer stops, the plain transport under TLS is
        closed (else its eof would reach this protocol after connection_lost)."""
        handle: asyncio.TimerHandle | None = self._timeout_handle
        if handle is not None:
            handle.cancel()
        if self._original_transport is not None:
            self._original_transport.close()
        self.transport = None

    @property
    def over_tls(self) -> bool:
        """The session runs over STARTTLS's transport (eof then closes, never half-opens)."""
        return self.session is not None and self.session.ssl is not None

    # -- the idle timer -----------------------------------------------------------------

    @property
    def idle_timeout(self) -> float:
        """The `timeout` given to the constructor."""
        return float(self._timeout_duration)

    # True: on_idle_timer checks the session's own idle clock and re-arms itself for what is
    # left, so the timer armed at connect need not be moved on every command (aiosmtpd
    # cancels it and schedules a new one for each line read).
    idle_timer_rechecks = False

    def command_read(self) -> None:
        """A valid command was read: aiosmtpd restarts its idle timer."""
        self._reset_timeout()

    def _reset_timeout(self, duration: float | None = None) -> None:
        handle: asyncio.TimerHandle | None = self._timeout_handle
        if self.idle_timer_rechecks and duration is None:
            if handle is not None and not handle.cancelled():
                return
            duration = self.first_idle_delay()
        super()._reset_timeout(duration)

    def first_idle_delay(self) -> float:
        """With `idle_timer_rechecks`: when the timer armed at connect first fires."""
        return self.idle_timeout

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

    # -- replies and the hooks aiosmtpd has no public name for ---------------------------

    async def push(self, status: str | bytes) -> None:
        """Every reply aiosmtpd and relay send."""
        await self.send_reply(status)

    async def send_reply(self, status: str | bytes) -> None:
        """Write one reply (the engine's)."""
        raise NotImplementedError

    async def readline(self) -> bytes:
        """The client's next line (an AUTH challenge's answer; the engine's)."""
        raise NotImplementedError

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
        """aiosmtpd's own path parser (the standard library's address grammar), the address
        as the client wrote it (not as the parser re-serialises it)."""
        try:
            address, rest = super()._getaddr(arg)
        except (IndexError, AttributeError):  # the parser's own bugs ("<", "+@[", ...):
            return None, None  # a malformed address (553), not a local error (451)
        if not address or address == "<>" or rest is None:
            return address, rest
        if not arg.endswith(rest):  # aiosmtpd no longer returns what follows the path
            raise RuntimeError("aiosmtpd's _getaddr returned parameters that are not the end"
                               " of its argument (common/compat_aiosmtpd.py)")
        written = path_as_written(arg[: len(arg) - len(rest)])
        if written is None:
            return None, None  # the grammar and the client's text disagree: malformed (553)
        return written, rest

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
