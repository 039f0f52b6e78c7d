"""How long a client may take: the idle timeout with a minimum data rate (pure, no I/O).

Each request (a command line, or the whole of DATA after the 354) starts with an allowance
of `--idle-timeout` seconds. Time spent waiting for the client uses it up; every byte that
arrives gives back 1/`--min-data-rate` seconds, never more than the full allowance. A client
that sends at the minimum rate or faster never runs out; a silent one runs out after the
idle timeout, as before; and one that trickles a byte every few seconds (a slowloris) runs
out after about the idle timeout too, however steadily it trickles. This is Postfix's
smtpd_per_request_deadline with smtpd_min_data_rate. Time while relay itself is working
(storing, a filter, the address verifier) is not counted. With a rate of 0, any byte
restores the full allowance (a pure idle timeout).

The session drives a `Pace` with a monotonic clock and asks `remaining` when its timer
fires; nothing here touches a socket or a timer.
"""

from __future__ import annotations


class Pace:
    """The time a client has left for its current request."""

    def __init__(self, allowance: float, rate: float, now: float) -> None:
        self.allowance = allowance
        self.rate = rate
        self._left = allowance
        self._since = now
        self._held = False
        self.last_byte = now

    def _settle(self, now: float) -> None:
        if not self._held:
            self._left -= now - self._since
        self._since = now

    def received(self, size: int, now: float) -> None:
        """*size* bytes arrived from the client."""
        self._settle(now)
        self.last_byte = now
        if self.rate <= 0:
            self._left = self.allowance
        else:
            self._left = min(self.allowance, self._left + size / self.rate)

    def new_request(self, now: float) -> None:
        """A reply went out: the client's next request starts with the full allowance."""
        self._settle(now)
        self._left = self.allowance

    def hold(self, now: float, held: bool) -> None:
        """relay works (True) or waits for the client again (False)."""
        self._settle(now)
        self._held = held

    def remaining(self, now: float) -> float:
        """Seconds the client has left (infinite while relay itself works)."""
        self._settle(now)
        return float("inf") if self._held else self._left

    def silent_for(self, now: float) -> float:
        """Seconds since the last byte from the client."""
        return now - self.last_byte
