"""E-MailRelay's admin interface for the `relay` command: `--admin PORT`, `--admin-terminate`.

A line-based TCP server (threads, so it runs beside any main loop) that speaks E-MailRelay
2.6.1's admin dialogue: no greeting; each command's reply ends with the prompt
`E-MailRelay> `; line ends as the client's first line has them (CRLF when unknown);
commands are matched without regard to case on the first word. `flush` and `forward` do
what `relay-queue flush` does (every waiting message due now, deferred ones included, and
deliver woken); `list` and `failures` list ids as E-MailRelay does (names ending in
`.envelope`, and in `.envelope.bad`, sorted); `unfail-all` puts every failed message back.
Only loopback clients are served unless `remote_clients`. Reads the spool's directory
listing; changes messages only through `tools.queue_actions` and `spool` (claims and
renames). `terminate` calls the function it is given (the `relay` command stops itself).
`notify` marks the session: its connection (tools.admin_server, which also caps how many
there are) then writes each event of relay-intake and relay-deliver as E-MailRelay does
(`event_text`).
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import signal
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata

import structlog

from common.events import address_text
from common.logs import Logger
from spool import Spool, State, entries, unfail
from tools.admin_server import AdminServer, Hub
from tools.common import tools_lock
from tools.queue_actions import flush_all

PROMPT = "E-MailRelay> "
ERROR_LIMIT = 30  # unrecognised commands before E-MailRelay drops the connection
_MAX_LINE = 10_000


def is_local(address: str) -> bool:
    """Loopback, as relay's intake counts local clients (IPv4-mapped IPv6 included)."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def _version() -> str:
    try:
        return metadata.version("relay")
    except metadata.PackageNotFoundError:
        return "unknown"


INFO = {
    "copyright": "relay, a store-and-forward SMTP relay; MIT licence",
    "credit": "relay is written in Python with aiosmtpd, aiosmtplib, watchdog, structlog"
              " and prometheus_client",
    "version": _version(),
    "warranty": "relay comes with no warranty (MIT licence)",
}


@dataclass
class AdminSettings:
    """What the interface needs to know about the relay it administers."""

    spool: Spool
    forward_to: str | None  # None: flush and forward say no remote server is configured
    with_terminate: bool = False
    remote_clients: bool = False
    terminate: Callable[[], None] = lambda: None
    wake: Callable[[], None] | None = None  # after a flush; default: the trigger file
    # When no relay-deliver runs (relay --as-server): forward what is due now, in the
    # foreground, as E-MailRelay's flush does; None when done, else the error to show.
    forward_once: Callable[[], str | None] | None = None
    listening: list[str] = field(default_factory=list)  # for `status`
    log: Logger = field(default_factory=lambda: structlog.get_logger("relay"))


class Session:
    """One admin connection's dialogue: feed it lines, it returns what to send."""

    def __init__(self, settings: AdminSettings) -> None:
        self.settings = settings
        self.eol: str | None = None
        self.errors = 0
        self.closed = False
        self.notifying = False

    def _reply(self, text: str) -> str:
        eol = self.eol or "\r\n"
        if text:
            text = text.replace("\n", eol) + eol
        return text + PROMPT

    def line(self, raw: bytes) -> str:
        """The reply to one line (its line end included in *raw*); may set `closed`."""
        if self.eol is None:
            self.eol = "\r\n" if raw.endswith(b"\r\n") else "\n"
        text = raw.decode("utf-8", errors="replace").strip(" \t\r\n")
        words = text.split()
        command = words[0].lower() if words else ""
        if not command:
            return self._reply("")
        handler = getattr(self, "cmd_" + command.replace("-", "_"), None)
        if command == "terminate" and not self.settings.with_terminate:
            handler = None
        if handler is None:
            self.errors += 1
            if self.errors >= ERROR_LIMIT:
                self.closed = True
            return self._reply("error: unrecognised command")
        result: str = handler(words[1:])
        return result

    # -- the commands --------------------------------------------------------------

    def cmd_help(self, _args: list[str]) -> str:
        names = ["failures", "flush", "forward", "help", "info", "list", "notify", "pid", "quit",
                 "status"]
        if self.settings.with_terminate:
            names.append("terminate")
        names.append("unfail-all")
        return self._reply("commands: " + ", ".join(names))

    def _ids(self, state: State) -> list[str]:
        return sorted(e.message_id for e in entries(self.settings.spool) if e.state is state)

    def _id_list(self, state: State) -> str:
        ids = self._ids(state)
        # E-MailRelay joins the ids with the line end and then turns every LF of the reply
        # into the line end again: with CRLF each id but the last ends in CR CR LF. Kept,
        # byte for byte, for the scripts written against it.
        return self._reply((self.eol or "\r\n").join(ids) if ids else "<none>")

    def cmd_list(self, _args: list[str]) -> str:
        return self._id_list(State.READY)

    def cmd_failures(self, _args: list[str]) -> str:
        return self._id_list(State.BAD)

    def _flush(self) -> int:
        spool = self.settings.spool
        with tools_lock(spool):
            count = flush_all(spool, self._ids(State.READY))
        if self.settings.wake is not None:
            self.settings.wake()
        else:
            spool.trigger_scan()
        self.settings.log.info("admin_flush", count=count)
        return count

    def cmd_flush(self, _args: list[str]) -> str:
        if not self.settings.forward_to:
            return self._reply("error: no remote server configured: use --forward-to")
        if not self._ids(State.READY):
            return self._reply("error: no messages to send")
        try:
            self._flush()
        except OSError as error:
            return self._reply(f"error: {error.strerror or error}")
        if self.settings.forward_once is not None:
            problem = self.settings.forward_once()
            if problem is not None:
                return self._reply(f"error: {problem}")
        return self._reply("OK")

    def cmd_forward(self, _args: list[str]) -> str:
        if not self.settings.forward_to:
            return self._reply("error: no remote server configured: use --forward-to")
        reply = self._reply("OK")  # E-MailRelay says OK first, then tries
        with contextlib.suppress(OSError):
            self._flush()
        if self.settings.forward_once is not None:
            threading.Thread(target=self.settings.forward_once, daemon=True).start()
        return reply

    def cmd_unfail_all(self, _args: list[str]) -> str:
        spool = self.settings.spool
        with tools_lock(spool):
            for message_id in self._ids(State.BAD):
                unfail(spool, message_id)  # a lost race is ignored, as E-MailRelay does
        return self._reply("")

    def cmd_pid(self, _args: list[str]) -> str:
        return self._reply(str(os.getpid()))

    def cmd_status(self, _args: list[str]) -> str:
        lines = [f"LISTEN: {where}" for where in self.settings.listening]
        counts: dict[State, int] = {}
        for entry in entries(self.settings.spool):
            if entry.state is not None:
                counts[entry.state] = counts.get(entry.state, 0) + 1
        for state in (State.READY, State.BUSY, State.BAD, State.HELD, State.NEW):
            lines.append(f"QUEUE {state.name.lower()}: {counts.get(state, 0)}")
        return self._reply((self.eol or "\r\n").join(lines))  # as E-MailRelay's status

    def cmd_info(self, args: list[str]) -> str:
        key = args[0].lower() if args else ""
        if key not in INFO:
            return self._reply("usage: info {" + "|".join(sorted(INFO)) + "}")
        return self._reply(INFO[key])

    def cmd_notify(self, _args: list[str]) -> str:
        self.notifying = True  # the connection sends events from now on (tools.admin_server)
        return ""  # E-MailRelay answers nothing, not even a prompt

    def event_text(self, event: tuple[str, ...]) -> str:
        """An event as E-MailRelay 2.6.1 writes it: the line end first, then `EVENT: ` and
        the non-empty words joined with `: `, control characters escaped, two spaces."""
        words = ": ".join(word for word in event if word)
        return (self.eol or "\r\n") + "EVENT: " + printable(words) + "  "

    def error_reply(self, text: str) -> str:
        return self._reply(text)

    def cmd_quit(self, _args: list[str]) -> str:
        self.closed = True
        return ""

    def cmd_terminate(self, _args: list[str]) -> str:
        self.settings.log.warning("admin_terminate")
        self.closed = True
        self.settings.terminate()
        return ""


def forward_once_with(command: list[str],
                      event_fd: int | None = None) -> Callable[[], str | None]:
    """A `forward_once` that runs *command* (relay-deliver --once ...) and reads its exit;
    its events go to *event_fd* when one is given."""

    lock = threading.Lock()
    fds: tuple[int, ...] = ()
    if event_fd is not None:
        command, fds = [*command, "--event-fd", str(event_fd)], (event_fd,)

    def run() -> str | None:
        if not lock.acquire(blocking=False):
            return "still working"
        try:
            completed = subprocess.run(command, stdin=subprocess.DEVNULL,
                                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                       pass_fds=fds, check=False, timeout=3600)
        except (OSError, subprocess.TimeoutExpired) as error:
            return f"cannot run relay-deliver: {error}"
        finally:
            lock.release()
        if completed.returncode == 0:
            return None
        if completed.returncode == os.EX_TEMPFAIL:
            return "some messages are still waiting (relay-queue list says why)"
        lines = completed.stderr.decode("utf-8", "replace").strip().splitlines()
        return f"relay-deliver exited {completed.returncode}" + (f": {lines[-1]}" if lines else "")

    return run


_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\0": "\\0", "\\": "\\\\"}


def printable(text: str) -> str:
    """E-MailRelay's G::Str::printable: backslash doubled, control characters escaped
    (\\n, \\r, \\t, \\0, else \\xHH), the rest as it is."""
    out = []
    for char in text:
        if char in _ESCAPES:
            out.append(_ESCAPES[char])
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\x{ord(char):02x}")
        else:
            out.append(char)
    return "".join(out)


def start_for_relay(port_text: str, *, spool_dir: str, forward_to: str | None,
                    with_terminate: bool, remote_clients: bool,
                    deliver_command: list[str] | None,
                    smtp_listening: tuple[tuple[str, str], ...] = (),
                    interfaces: tuple[str, ...] = (),
                    event_fd: int | None = None) -> AdminServer:
    """The admin interface for the `relay` command; ValueError for a bad port, OSError when
    it cannot listen. Terminate sends this process SIGTERM (relay stops as on a signal).
    *deliver_command*: run for a flush when no relay-deliver runs (--as-server), given
    *event_fd* (the supervisor's event pipe) so that its events reach `notify` too.
    *smtp_listening*: relay-intake's addresses, listed by `status` after the admin ones.
    *interfaces*: the addresses to listen on (--interface's unqualified and `admin=` ones,
    as E-MailRelay's admin server); none given: loopback, or every address with
    *remote_clients*."""
    if not (port_text.isascii() and port_text.isdigit() and 0 < int(port_text) < 65536):
        raise ValueError(f"--admin: {port_text!r} is not a port number")
    settings = AdminSettings(
        spool=Spool(os.path.expanduser(spool_dir)),
        forward_to=forward_to,
        with_terminate=with_terminate,
        remote_clients=remote_clients,
        terminate=lambda: os.kill(os.getpid(), signal.SIGTERM),
        forward_once=None if deliver_command is None else
        forward_once_with(deliver_command, event_fd),
    )
    defaults = ("0.0.0.0", "::") if remote_clients else ("127.0.0.1", "::1")
    return serve(int(port_text), settings, interfaces or defaults,
                 tuple(address_text(host, port) for host, port in smtp_listening),
                 ipv6_optional=not interfaces)


def serve(port: int, settings: AdminSettings, interfaces: tuple[str, ...],
          listed_after: tuple[str, ...] = (), *, ipv6_optional: bool = True) -> AdminServer:
    """The admin interface with *settings* on *port* (0: any free one) of *interfaces*;
    `status` lists its addresses, then *listed_after* (E-MailRelay's order). With
    *ipv6_optional* an IPv6 address is skipped where there is no IPv6 (the defaults)."""
    hub = Hub(lambda: Session(settings),
              lambda peer: settings.remote_clients or is_local(peer), settings.log)
    return AdminServer(port, hub, interfaces, settings.listening, listed_after,
                       ipv6_optional=ipv6_optional)
