"""common.compat_aiosmtpd.init_smtp: the cached constructor leaves a connection as aiosmtpd's own.

For relay's own protocol class and for plain aiosmtpd subclasses with and without AUTH
mechanisms, TLS and excluded mechanisms, one instance is built by `SMTP.__init__` and one
by `init_smtp` after the tables were learned; every attribute must match (bound methods:
the same function on the corresponding object). A new aiosmtpd that sets one more
attribute, or names one differently, fails here before it can misbehave.
"""

from __future__ import annotations

import asyncio
import inspect
import ssl
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.smtp import SMTP, AuthResult, auth_mechanism

from common import compat_aiosmtpd
from common.compat_aiosmtpd import init_smtp
from intake.listener import IntakeServer
from intake.main import prepare
from intake.session import Session


class Handler:
    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        return "250 OK"

    async def handle_EHLO(self, server: Any, session: Any, envelope: Any, hostname: str,
                          responses: list[str]) -> list[str]:
        return responses

    async def auth_HANDLERONE(self, server: Any, args: list[str]) -> AuthResult:
        return AuthResult(success=False)


class Protocol(SMTP):
    @auth_mechanism("X-NAMED")
    async def auth_named_one(self, server: Any, args: list[str]) -> AuthResult:
        return AuthResult(success=False)

    async def smtp_XTRA(self, arg: str) -> None:
        await self.push("250 extra")


def comparable(value: Any, own: object, handler: object) -> Any:
    """A value with per-instance objects replaced by what they must correspond to."""
    if inspect.ismethod(value):
        owner = ("self" if value.__self__ is own else "handler" if value.__self__ is handler
                 else value.__self__)
        return ("method", value.__func__, owner)
    if value is own:
        return "self"
    if value is handler:
        return "handler"
    if isinstance(value, Mapping):  # a dict, or init_smtp's commands bound on demand
        return {key: comparable(item, own, handler) for key, item in value.items()}
    if isinstance(value, tuple):
        return tuple(comparable(item, own, handler) for item in value)
    if value is None or isinstance(value, (str, int, float, bool, ssl.SSLContext,
                                           asyncio.AbstractEventLoop)):
        return value
    if callable(value) and not inspect.isroutine(value):
        return type(value)
    if inspect.isfunction(value) or inspect.isbuiltin(value):
        return value
    return type(value)  # a stream, a future, a weak reference: one of its own, same kind


# What asyncio.StreamReaderProtocol.__init__ sets: aiosmtpd's full constructor makes them,
# relay's engine reads the socket itself and init_smtp leaves them out.
_LOOP = asyncio.new_event_loop()
STREAM_STATE = frozenset(vars(asyncio.StreamReaderProtocol(
    asyncio.StreamReader(loop=_LOOP), client_connected_cb=print, loop=_LOOP)))
_LOOP.close()


def attributes(smtp: SMTP, handler: object) -> dict[str, Any]:
    return {key: comparable(value, smtp, handler) for key, value in vars(smtp).items()
            if key not in STREAM_STATE}


def pair(cls: type[SMTP], handler_factory: Any, learns: bool = True,
         **options: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """(attributes after SMTP.__init__, attributes after init_smtp once learned)."""

    async def build() -> tuple[dict[str, Any], dict[str, Any]]:
        loop = asyncio.get_running_loop()
        compat_aiosmtpd._tables.clear()
        first_handler, second_handler = handler_factory(), handler_factory()
        full = cls.__new__(cls)
        SMTP.__init__(full, first_handler, loop=loop, **options)
        learner = cls.__new__(cls)
        init_smtp(learner, first_handler, loop=loop, **options)  # learns the tables
        assert bool(compat_aiosmtpd._tables) is learns
        fast = cls.__new__(cls)
        init_smtp(fast, second_handler, loop=loop, **options)
        return attributes(full, first_handler), attributes(fast, second_handler)

    return asyncio.run(build())


@pytest.mark.parametrize("options", [
    {"hostname": "mx.test"},
    {"hostname": "mx.test", "auth_exclude_mechanism": ["LOGIN"], "data_size_limit": 1000,
     "enable_SMTPUTF8": True, "decode_data": True, "ident": "x", "timeout": 7.5},
    {"hostname": "mx.test", "auth_required": True, "auth_require_tls": False,
     "authenticator": lambda *args: AuthResult(success=True)},
    {"hostname": "mx.test", "tls_context": ssl.create_default_context(ssl.Purpose.CLIENT_AUTH),
     "require_starttls": True},
])
@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
def test_cached_constructor_matches_aiosmtpd(options: dict[str, Any]) -> None:
    """Every attribute of a connection is what aiosmtpd's own constructor would have set."""
    if "tls_context" in options:
        options["tls_context"].check_hostname = False
        options["tls_context"].verify_mode = ssl.CERT_NONE
    full, fast = pair(Protocol, Handler, **options)
    assert fast == full
    assert set(full["_auth_methods"]) >= {"X-NAMED", "HANDLERONE", "PLAIN"}
    assert "XTRA" in full["_smtp_methods"]


def test_unusual_options_take_the_full_constructor() -> None:
    """A command call limit (which relay does not use) is still honoured: the full path."""
    full, fast = pair(Protocol, Handler, learns=False, hostname="mx.test",
                      command_call_limit=5)
    assert fast == full and full["_enforce_call_limit"] is True


def test_relay_intake_connections_match(spool_dir: Path) -> None:
    """relay's Session: the second connection's attributes equal a fully built one's."""
    config, spool, log = prepare(["--spool-dir", str(spool_dir), "--port", "0",
                                  "--domain", "intake.test"])

    async def build() -> tuple[dict[str, Any], dict[str, Any]]:
        server = IntakeServer(config, spool, log)
        compat_aiosmtpd._tables.clear()
        server.new_connection()  # learns
        fast = server.new_connection()
        full = Session.__new__(Session)
        original = compat_aiosmtpd._tables.copy()
        compat_aiosmtpd._tables.clear()
        Session.__init__(full, server)  # the first of its kind again: the full path
        compat_aiosmtpd._tables.update(original)
        return (attributes(full, full.event_handler), attributes(fast, fast.event_handler))

    full, fast = asyncio.run(build())
    assert fast == full
