"""Per-destination connections for messages routed by their envelope (ForwardToAddress).

A worker's `RoutePool` keeps one `SmarthostConnection` per destination (host, port and
client account), so that messages for different destinations (the default smarthost and
the addresses `mx:` or a filter wrote into ForwardToAddress) each reuse their own
connection instead of closing and reopening one; the least recently used is closed when a
worker has more than `MAX_ROUTES`. `DestinationHealth`, shared by the workers, remembers a
routed destination (not the `--forward-to` smarthost, which every message tries as before)
that could not be reached: for `down_for` seconds the messages for it are
deferred at once, with a reason that names it and the failure, instead of each waiting for
its own connect timeout; other destinations are not held up. A flush (SIGUSR1, the
trigger file, `relay-queue flush`) forgets them: every message is tried. Talks SMTP only through
`SmarthostConnection`; touches no file.
"""

from __future__ import annotations

import ssl
import time
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field

from deliver.forward import ForwardSettings, Route, SmarthostConnection
from deliver.outcome import Attempt, Reply, Stage
from spool import Envelope

MAX_ROUTES = 4


@dataclass
class DestinationHealth:
    """Destinations that could not be reached lately: (host, port) -> (until, reason)."""

    down_for: float = 60.0
    down: dict[tuple[str, int], tuple[float, str]] = field(default_factory=dict)

    def reason(self, route: Route) -> str | None:
        """Why *route*'s destination is not tried now, or None."""
        key = (route.host, route.port)
        entry = self.down.get(key)
        if entry is None:
            return None
        if entry[0] <= time.monotonic():
            del self.down[key]
            return None
        return entry[1]

    def forget(self) -> None:
        """A flush: every destination is tried again now (the operator says it is back)."""
        self.down.clear()

    def record(self, route: Route, attempt: Attempt) -> None:
        """Remember whether the destination answered at all."""
        key = (route.host, route.port)
        if attempt.stage is Stage.CONNECT and attempt.reply.code is None:
            self.down[key] = (time.monotonic() + self.down_for, attempt.reply.text)
        else:
            self.down.pop(key, None)


class RoutePool(SmarthostConnection):
    """One worker's connections, one per destination (the SmarthostConnection interface)."""

    def __init__(self, settings: ForwardSettings, tls_context: ssl.SSLContext | None,
                 health: DestinationHealth, default: tuple[str, int]) -> None:
        # The pool is a SmarthostConnection only by its interface (it does not call the
        # base __init__): its state is the connections it holds, each a real one.
        self.settings = settings
        self._context = tls_context
        self.health = health
        self.default = default  # --forward-to: tried for every message, as before
        self._routes: OrderedDict[Route, SmarthostConnection] = OrderedDict()
        self._opened_before = 0

    @property
    def connections_opened(self) -> int:
        return self._opened_before + sum(c.connections_opened for c in self._routes.values())

    @connections_opened.setter
    def connections_opened(self, _value: int) -> None:
        """The count is the connections' own; nothing to set."""

    @property
    def connected(self) -> bool:
        return any(connection.connected for connection in self._routes.values())

    async def transact(self, route: Route, envelope: Envelope,
                       content: bytes | Iterable[bytes], size: int | None = None, *,
                       stored_size: int | None = None) -> Attempt:
        routed = (route.host, route.port) != self.default
        down = self.health.reason(route) if routed else None
        if down is not None:
            return Attempt(Stage.CONNECT, Reply(None, f"{route.host}:{route.port} was not "
                                                      f"reachable moments ago: {down}"))
        connection = self._routes.get(route)
        if connection is None:
            while len(self._routes) >= MAX_ROUTES:
                _old_route, old = self._routes.popitem(last=False)
                self._opened_before += old.connections_opened
                await old.close()
            connection = SmarthostConnection(self.settings, self._context)
            self._routes[route] = connection
        self._routes.move_to_end(route)
        attempt = await connection.transact(route, envelope, content, size,
                                            stored_size=stored_size)
        if not routed:
            return attempt
        self.health.record(route, attempt)
        if attempt.stage is Stage.CONNECT and attempt.reply.code is None:
            text = attempt.reply.text
            if f"{route.host}:{route.port}" not in text:
                attempt = Attempt(attempt.stage, Reply(None, f"{route.host}:{route.port}: {text}"),
                                  attempt.accepted, attempt.refused,
                                  attempt.line_ends_normalised)
        return attempt

    async def close(self) -> None:
        for connection in self._routes.values():
            self._opened_before += connection.connections_opened
            await connection.close()
        self._routes.clear()
