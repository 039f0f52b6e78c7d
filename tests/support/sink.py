"""A real aiosmtpd SMTP sink for tests, which can be told how to misbehave.

Runs in its own thread on 127.0.0.1, on a port the kernel chose when the sink was made
(its socket is bound from then on, listening once started). It records every message it
accepts, and can answer 4xx/5xx per recipient or per stage, hang up after the dot, or
stall before replying. `authenticator` and `client_auth_file` are one account, for
the sink's AUTH and relay-deliver's --client-auth. `free_port` is a port for a program
that must be told one (below the kernel's ephemeral range).
"""

from __future__ import annotations

import asyncio
import errno
import random
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword

EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
LOWEST_FREE_PORT = 10000
# Every port free_port gave in this test run: never given twice, so that two taken one
# after the other for one test (an SMTP and an admin port) differ even before either is
# bound, and a port handed to a program that is still starting is not handed out again.
_GIVEN: set[int] = set()


def _ephemeral_low() -> int:
    """The first port of the kernel's ephemeral range (32768 if it cannot be read)."""
    try:
        return int(EPHEMERAL_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _unused(port: int) -> bool:
    """Nothing on 127.0.0.1 (nor on ::1, where there is IPv6) has *port*, not even a
    connection in TIME_WAIT (the probes do not set SO_REUSEADDR)."""
    for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
        try:
            probe = socket.socket(family)
        except OSError:
            continue  # no IPv6 here
        with probe:
            try:
                probe.bind((host, port))
            except OSError as error:
                if family == socket.AF_INET6 and error.errno in (errno.EADDRNOTAVAIL,
                                                                 errno.EAFNOSUPPORT):
                    continue
                return False
    return True


def free_port() -> int:
    """A TCP port that nothing on 127.0.0.1 or ::1 uses now, for a program told its port.

    Below the kernel's ephemeral range: a port found free inside it was the kernel's to
    hand out, and any bind(2) to port 0 (a sink, a scripted smarthost, another program)
    could be given it before the program bound it. Below, only someone who asks for that
    very number can take it. Never the same port twice in one run. A server that can
    bind port 0 itself and report its port (`Sink`) needs none of this.
    """
    high = max(_ephemeral_low(), LOWEST_FREE_PORT + 1000)
    for _ in range(1000):
        port = random.randrange(LOWEST_FREE_PORT, high)
        if port not in _GIVEN and _unused(port):
            _GIVEN.add(port)
            return port
    raise AssertionError(f"no free port in {LOWEST_FREE_PORT}-{high - 1}")


class _BoundController(Controller):
    """aiosmtpd's Controller serving on a socket bound before it starts.

    A port only found free (`free_port`) can be given to another bind before the server
    binds it; a socket bound to port 0 keeps the kernel's choice. Bound, not yet
    listening: a connection before `start()` is refused, as for a port nothing uses."""

    def __init__(self, handler: Any, sock: socket.socket, **kwargs: Any) -> None:
        self.sock = sock
        host, port = sock.getsockname()[:2]
        super().__init__(handler, hostname=host, port=port, **kwargs)

    def _create_server(self) -> Any:  # aiosmtpd's hook for how the server is made
        return self.loop.create_server(self._factory_invoker, sock=self.sock,
                                       ssl=self.ssl_context)


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes
    mail_options: list[str]
    peer: Any = None
    ehlo: str | None = None  # what the client said in EHLO/HELO


@dataclass
class Behaviour:
    """What the sink answers. Replies are full SMTP reply strings like '451 try later'."""

    mail_reply: str | None = None
    rcpt_replies: dict[str, str] = field(default_factory=dict)
    data_reply: str | None = None
    hangup_after_data: bool = False
    stall_after_data: float = 0.0
    stall_at_rcpt: float = 0.0
    # Answer the first N messages' DATA with data_reply, then accept.
    data_reply_count: int | None = None
    # EHLO keywords the sink does not advertise (e.g. "8BITMIME"; MAIL still takes them).
    ehlo_without: tuple[str, ...] = ()
    ehlo_extra: tuple[str, ...] = ()  # more EHLO keywords, e.g. "PIPELINING"


class _Handler:
    def __init__(self, sink: Sink) -> None:
        self.sink = sink

    async def handle_EHLO(self, server: SMTP, session: Any, envelope: Any, hostname: str,
                          responses: list[str]) -> list[str]:
        session.host_name = hostname
        hidden = self.sink.behaviour.ehlo_without
        kept = [line for line in responses if line[4:].split(" ")[0] not in hidden]
        kept[-1:-1] = [f"250-{word}" for word in self.sink.behaviour.ehlo_extra]
        return [*(f"250-{line[4:]}" for line in kept[:-1]), f"250 {kept[-1][4:]}"]

    async def handle_MAIL(self, server: SMTP, session: Any, envelope: Any, address: str,
                          mail_options: list[str]) -> str:
        behaviour = self.sink.behaviour
        if behaviour.mail_reply:
            return behaviour.mail_reply
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(self, server: SMTP, session: Any, envelope: Any, address: str,
                          rcpt_options: list[str]) -> str:
        behaviour = self.sink.behaviour
        if behaviour.stall_at_rcpt:
            await asyncio.sleep(behaviour.stall_at_rcpt)
        reply = behaviour.rcpt_replies.get(address)
        if reply:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Any, envelope: Any) -> str:
        sink = self.sink
        behaviour = sink.behaviour
        with sink.lock:
            sink.data_attempts += 1
            attempt = sink.data_attempts
            sink.data_in_progress += 1
            sink.most_data_at_once = max(sink.most_data_at_once, sink.data_in_progress)
        try:
            if behaviour.stall_after_data:
                await asyncio.sleep(behaviour.stall_after_data)
        finally:
            with sink.lock:
                sink.data_in_progress -= 1
        if behaviour.hangup_after_data:
            assert server.transport is not None
            server.transport.close()
            return "421 closing"
        if behaviour.data_reply and (
            behaviour.data_reply_count is None or attempt <= behaviour.data_reply_count
        ):
            return behaviour.data_reply
        with sink.lock:
            sink.messages.append(
                Received(envelope.mail_from, list(envelope.rcpt_tos), bytes(envelope.content),
                         list(envelope.mail_options), session.peer, session.host_name)
            )
            sink.connections_seen.add(id(session))
        return "250 OK queued"


class Sink:
    """Start with `with Sink() as sink:`; `sink.port`, `sink.messages`, `sink.behaviour`."""

    def __init__(self, behaviour: Behaviour | None = None, handler_mixin: object = None,
                 **controller_kwargs: Any) -> None:
        """*handler_mixin*: an object whose `auth_*` methods (aiosmtpd's handler AUTH
        mechanisms: auth_CRAM__SHA256 is CRAM-SHA256) the sink offers too."""
        self.behaviour = behaviour or Behaviour()
        self.messages: list[Received] = []
        self.connections_seen: set[int] = set()
        self.data_attempts = 0
        # Transactions between the final dot and the reply right now, and the most ever:
        # how many connections a client really used in parallel.
        self.data_in_progress = 0
        self.most_data_at_once = 0
        self.lock = threading.Lock()
        handler = _Handler(self)
        for name in dir(handler_mixin) if handler_mixin is not None else ():
            if name.startswith("auth_"):  # aiosmtpd finds them on the handler object
                setattr(handler, name, getattr(handler_mixin, name))
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        self.controller = _BoundController(
            handler,
            listener,
            server_hostname="sink.test",
            decode_data=False,
            **controller_kwargs,
        )

    @property
    def port(self) -> int:
        return int(self.controller.port)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> Sink:
        self.controller.start()
        return self

    def stop(self) -> None:
        self.controller.stop()

    def __enter__(self) -> Sink:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def wait_for(self, count: int, timeout: float = 10.0) -> list[Received]:
        """Wait until at least *count* messages have arrived; return them."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.messages) >= count:
                    return list(self.messages)
            time.sleep(0.02)
        with self.lock:
            raise AssertionError(f"sink got {len(self.messages)} messages, wanted {count}")


def authenticator(_server: Any, _session: Any, _envelope: Any, _mechanism: str,
                  auth_data: Any) -> AuthResult:
    """The sink's AUTH check (Sink(authenticator=...)): user "relay", password "s3cret pw"."""
    ok = isinstance(auth_data, LoginPassword) and (auth_data.login, auth_data.password) == (
        b"relay", b"s3cret pw")
    return AuthResult(success=ok, handled=False)


def client_auth_file(directory: Path, password: str = "s3cret+20pw") -> str:
    """A --client-auth secrets file (mode 0600) for the account `authenticator` accepts;
    the default password is "s3cret pw" in xtext."""
    path = directory / "client.auth"
    path.write_text(f"# smarthost account\nclient plain relay {password}\n")
    path.chmod(0o600)
    return str(path)
