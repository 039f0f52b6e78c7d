"""relay-intake's listening sockets and the state every connection shares.

`IntakeServer` holds the configuration, the spool, the group committer (intake.commit), the
connection limits and AUTH failure counts (intake.limits), the free-space check, and the set
of open sessions; it listens on every `--interface` and makes one `intake.session.Session`
per connection on the sockets it is given (bound beforehand by `intake.sockets`, so that
worker processes can share a port). `stop` closes idle sessions at once and lets
transactions finish, bounded by `--stop-timeout`. Writes message files only through the
committer; reads nothing itself.
"""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Any

from common.logs import Logger
from common.metrics import IntakeMetrics
from intake.commit import GroupCommitter
from intake.handler import Handler
from intake.limits import AuthFailures, ConnectionLimits, network_test
from intake.policy import SHUTTING_DOWN, SpaceCheck
from intake.session import COMMAND_SIZE_LIMIT, STREAM_LIMIT, Session
from intake.settings import IntakeConfig
from spool import Spool


def session_options(config: IntakeConfig) -> dict[str, Any]:
    """What every connection's aiosmtpd protocol is built with (intake.session), but its
    authenticator and loop: worked out once, not per connection."""
    anonymous = "server" in config.anonymous
    return {
        "stream_limit": STREAM_LIMIT,
        "command_size_limit": COMMAND_SIZE_LIMIT,
        "data_size_limit": config.size or None,
        "enable_SMTPUTF8": True,
        "decode_data": False,
        # without a hostname every connection does a blocking lookup; --anonymous=server
        # names neither this host nor the software
        "hostname": "smtp" if anonymous else config.domain,
        "ident": "ESMTP relay",
        "greeting": "greeting" if anonymous else None,  # E-MailRelay's anonymous greeting
        "tls_context": None if config.tls_connection else config.tls_context,
        "require_starttls": config.tls_required and not config.tls_connection,
        "timeout": config.idle_timeout,
        "auth_required": config.authenticator is not None,
        "auth_require_tls": False,  # intake.sasl offers and checks config.auth_lists
    }


class IntakeServer:
    """The listening sockets and the state every connection shares."""

    def __init__(self, config: IntakeConfig, spool: Spool, log: Logger) -> None:
        self.config = config
        self.spool = spool
        self.log = log
        self.committer = GroupCommitter(spool, sync=config.sync)
        self.limits = ConnectionLimits(config.max_connections, config.reserved_connections,
                                       config.max_connections_per_client,
                                       config.max_connections_per_network)
        self.auth_failures = AuthFailures(config.auth_failure_limit, config.auth_failure_window)
        self.space = SpaceCheck(spool, config.min_free_space)
        self.exempt = network_test(config.exempt_networks)  # --exempt-networks
        self.sessions: set[Session] = set()
        self.stopping = False
        self.metrics: IntakeMetrics | None = None  # --metrics
        self.loop: asyncio.AbstractEventLoop | None = None
        self._servers: list[asyncio.Server] = []
        self.handler = Handler(self)  # it keeps nothing per connection: one for them all
        self.session_options = session_options(config)

    def health(self) -> str | None:
        """None while intake serves; else why not (for /healthz)."""
        if self.stopping:
            return "stopping"
        if not self.committer.running:
            return "the storage process is not running"
        return None

    def new_connection(self) -> Session:
        """The protocol factory for asyncio."""
        return Session(self)

    async def start(self, sockets: list[socket.socket]) -> None:
        """Start the committer and serve on *sockets* (bound and listening, one per
        interface: `intake.sockets.bind_listeners`)."""
        await self.committer.start()
        self.loop = loop = asyncio.get_running_loop()
        for sock in sockets:
            # The backlog again: asyncio (and uvloop) call listen() once more with it.
            server = await loop.create_server(
                self.new_connection, sock=sock, backlog=self.config.listen_backlog,
                # --server-tls-connection: TLS from the first byte (port 465)
                ssl=self.config.tls_context if self.config.tls_connection else None,
            )
            self._servers.append(server)

    @property
    def addresses(self) -> list[tuple[str, int]]:
        """Where the server listens (host, port), after start()."""
        found = []
        for server in self._servers:
            for sock in server.sockets:
                name = sock.getsockname()
                found.append((str(name[0]), int(name[1])))
        return found

    async def close_listeners(self) -> None:
        """Stop accepting new connections."""
        # No Server.wait_closed(): on Python 3.12+ it waits for every connection; stop()
        # drains the sessions with its own bound instead.
        for server in self._servers:
            server.close()
        self._servers.clear()

    async def stop(self) -> None:
        """Stop accepting; let open transactions finish (bounded); then drain the committer."""
        self.stopping = True
        await self.close_listeners()
        for session in list(self.sessions):
            if not session.in_transaction:
                session.close_with(SHUTTING_DOWN)
        deadline = time.monotonic() + self.config.stop_timeout
        while self.sessions and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for session in list(self.sessions):
            self.log.warning("session_aborted", client=session.client_ip,
                             reason="still in a transaction at the stop timeout")
            session.close_with(SHUTTING_DOWN)
        await asyncio.sleep(0)
        await self.committer.stop()
