"""The admin interface's connections: listening, a bounded number of clients, events to them.

`AdminServer` listens on one port (IPv4 and IPv6 addresses) and serves each accepted client
from a thread of its own, at most MAX_CONNECTIONS at once: one more is told
`error: too many connections` and closed, with no thread started for it. A client that
stops reading cannot hold the server: every write to it has a time limit (SEND_TIMEOUT),
after which that connection alone is dropped. Waiting for a command has none (E-MailRelay
has no idle timeout on the admin port either).

After `notify`, a connection gets the events that `publish` is given (from the `relay`
supervisor's event pipe, see `common.events`) through a queue of its own, at most
EVENT_QUEUE long, written by its own writer thread: `publish` never waits, and a client
that reads too slowly loses events (counted, logged once) rather than making anyone wait
or anything grow. The dialogue itself (what a line means, what an event looks like) is the
session's (`tools.admin.Session`); this module moves bytes. Reads and writes only sockets.
"""

from __future__ import annotations

import contextlib
import errno
import queue
import socket
import socketserver
import threading
from collections.abc import Callable
from typing import Protocol

from common.events import address_text
from common.logs import Logger

MAX_CONNECTIONS = 32  # admin clients served at once (a person or two, a few scripts)
SEND_TIMEOUT = 30.0  # seconds one write to a client may take before it is dropped
EVENT_QUEUE = 100  # events waiting for one client (E-MailRelay keeps 100 in its queue)
MAX_LINE = 10_000  # bytes of a line without its end before it is taken as a line
TOO_MANY = b"error: too many connections\r\n"

Event = tuple[str, ...]


class Dialogue(Protocol):
    """What a connection needs of its session (tools.admin.Session)."""

    closed: bool
    notifying: bool

    def line(self, raw: bytes) -> str: ...

    def error_reply(self, text: str) -> str: ...

    def event_text(self, event: Event) -> str: ...


class Connection:
    """One admin client: its reading thread, and (after notify) its event writer."""

    def __init__(self, sock: socket.socket, peer: str, hub: Hub) -> None:
        self.sock, self.peer, self.hub = sock, peer, hub
        self.session = hub.new_session()
        self._send_lock = threading.Lock()
        self._events: queue.Queue[Event | None] = queue.Queue(EVENT_QUEUE)
        self._subscribed = False
        self._gone = False
        self.dropped = 0

    def serve(self) -> None:
        """Read lines, answer them; until the client leaves, quits or is dropped."""
        self.sock.settimeout(self.hub.send_timeout)  # for writes; a read timing out reads on
        buffer = b""
        try:
            while not self.session.closed and not self._gone:
                try:
                    chunk = self.sock.recv(4096)
                except TimeoutError:
                    continue
                if not chunk:
                    break
                buffer += chunk
                while not self.session.closed and not self._gone:
                    end = buffer.find(b"\n")
                    if end < 0 and len(buffer) < MAX_LINE:
                        break
                    cut = end + 1 if 0 <= end < MAX_LINE else MAX_LINE
                    raw, buffer = buffer[:cut], buffer[cut:]
                    self._answer(raw)
        except OSError:
            pass  # reset by the client, or shut down by `drop`
        finally:
            self.close()

    def _answer(self, raw: bytes) -> None:
        try:
            reply = self.session.line(raw)
        except Exception as error:  # a spool that went away: say so, keep serving
            reply = self.session.error_reply(f"error: {error}")
        if reply:
            self.send(reply.encode("utf-8"))
        if self.session.notifying and not self._subscribed and not self._gone:
            self._subscribed = True
            threading.Thread(target=self._write_events, name="admin-events",
                             daemon=True).start()
            self.hub.subscribe(self)

    def send(self, data: bytes) -> bool:
        """Write *data* whole (False, and the connection dropped, if it cannot in time)."""
        with self._send_lock:
            if self._gone:
                return False
            try:
                self.sock.sendall(data)
            except TimeoutError:
                self.hub.log.warning("admin_client_dropped", client=self.peer,
                                     reason="not reading: a write took over"
                                            f" {self.hub.send_timeout:g} s")
                self._shut()
                return False
            except OSError:
                self._shut()
                return False
        return True

    def offer(self, event: Event) -> None:
        """Queue *event* for this client; never waits (a full queue loses it)."""
        try:
            self._events.put_nowait(event)
        except queue.Full:
            self.dropped += 1
            if self.dropped == 1:
                self.hub.log.warning("admin_events_dropped", client=self.peer,
                                     reason=f"client reads too slowly ({EVENT_QUEUE} waiting)")

    def _write_events(self) -> None:
        while (event := self._events.get()) is not None:
            if not self.send(self.session.event_text(event).encode("utf-8")):
                return

    def _shut(self) -> None:
        self._gone = True
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)  # the reading thread ends too

    def close(self) -> None:
        """Once, from the reading thread: leave the hub, stop the writer, close."""
        self.hub.leave(self)
        self._gone = True
        with contextlib.suppress(queue.Full):
            self._events.put_nowait(None)  # a full queue: the writer's next send fails
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()


class Hub:
    """What every listening socket of one admin port shares: the connections, the cap."""

    def __init__(self, new_session: Callable[[], Dialogue], allowed: Callable[[str], bool],
                 log: Logger, max_connections: int = MAX_CONNECTIONS,
                 send_timeout: float = SEND_TIMEOUT) -> None:
        self.new_session, self.allowed, self.log = new_session, allowed, log
        self.max_connections, self.send_timeout = max_connections, send_timeout
        self._lock = threading.Lock()
        self.connections: set[Connection] = set()
        self._subscribers: set[Connection] = set()

    def accept(self, sock: socket.socket, peer: str) -> None:
        """A new client (in the listening thread): refuse it or start its thread."""
        if not self.allowed(peer):
            self.log.warning("admin_client_refused", client=peer,
                             reason="not a local client (see --remote-clients)")
            _refuse(sock, b"")
            return
        connection: Connection | None = None
        with self._lock:
            if len(self.connections) < self.max_connections:
                connection = Connection(sock, peer, self)
                self.connections.add(connection)
        if connection is None:
            self.log.warning("admin_client_refused", client=peer,
                             reason=f"too many admin connections (limit {self.max_connections})")
            _refuse(sock, TOO_MANY)
            return
        self.log.info("admin_connection", client=peer)
        self.publish(("network", "in", "start"))  # as E-MailRelay counts admin clients too
        threading.Thread(target=connection.serve, name="admin", daemon=True).start()

    def subscribe(self, connection: Connection) -> None:
        with self._lock:
            if connection in self.connections:
                self._subscribers.add(connection)

    def leave(self, connection: Connection) -> None:
        with self._lock:
            if connection not in self.connections:
                return
            self.connections.discard(connection)
            self._subscribers.discard(connection)
        self.publish(("network", "in", "stop"))

    def publish(self, event: Event) -> None:
        """Hand *event* to every client that asked for events; never blocks."""
        with self._lock:
            subscribers = list(self._subscribers)
        for connection in subscribers:
            connection.offer(event)

    def drop_all(self) -> None:
        with self._lock:
            connections = list(self.connections)
        for connection in connections:
            connection._shut()


def _refuse(sock: socket.socket, line: bytes) -> None:
    """Say *line* if the client can take it at once, then close (never waits)."""
    with contextlib.suppress(OSError):
        sock.setblocking(False)
        if line:
            sock.send(line)
        sock.shutdown(socket.SHUT_WR)
    sock.close()


class _Listener(socketserver.TCPServer):
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], family: socket.AddressFamily,
                 hub: Hub) -> None:
        self.address_family = family
        self.hub = hub
        super().__init__(address, socketserver.BaseRequestHandler)

    def server_bind(self) -> None:
        if self.address_family == socket.AF_INET6:  # "::" beside "0.0.0.0" on the same port
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        super().server_bind()

    def process_request(self, request: socket.socket,  # type: ignore[override]
                        client_address: tuple[str, int]) -> None:
        self.hub.accept(request, str(client_address[0]))


class AdminServer:
    """The admin interface on one port, served from daemon threads until `stop()`."""

    def __init__(self, port: int, hub: Hub, interfaces: tuple[str, ...],
                 listening: list[str], listed_after: tuple[str, ...] = (), *,
                 ipv6_optional: bool = True) -> None:
        """Listen on each of *interfaces* (with *ipv6_optional*, an IPv6 one is skipped
        where there is no IPv6); each address is added to *listening* (what `status`
        lists), then *listed_after* (the SMTP ones), before the first client can ask.
        OSError when it cannot listen."""
        self.hub = hub
        self._listeners: list[_Listener] = []
        self.addresses: list[str] = []  # where it listens, as `status` lists them
        for host in interfaces:
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            try:
                listener = _Listener((host, port), family, hub)
            except OSError as error:
                if ipv6_optional and ":" in host and \
                        error.errno in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT):
                    continue  # no IPv6 here
                self.stop()
                raise OSError(error.errno, f"admin: cannot listen on {host} port {port}:"
                                           f" {error.strerror}") from None
            self._listeners.append(listener)
            port = port or int(listener.server_address[1])  # port 0: the same one for all
            self.addresses.append(address_text(host, int(listener.server_address[1])))
        listening.extend(self.addresses)
        self.port = port
        listening.extend(listed_after)
        for listener in self._listeners:
            threading.Thread(target=listener.serve_forever, name="admin-listen",
                             daemon=True).start()

    def publish(self, event: Event) -> None:
        """An event for the clients that sent `notify` (from any thread; never blocks)."""
        self.hub.publish(event)

    def stop(self) -> None:
        for listener in self._listeners:
            listener.shutdown()
            listener.server_close()
        self._listeners = []
        self.hub.drop_all()
