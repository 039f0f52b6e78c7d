"""A raw-socket SMTP smarthost (no SMTP library) run from a `Script`: it records the exact
bytes of each DATA as they came over the wire and can be told to answer, stall, hang up or
inject lines at any stage, STARTTLS included. Threads on 127.0.0.1; touches no files.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
import time
from dataclasses import dataclass, field


@dataclass
class Script:
    """How the scripted smarthost behaves. Replies are raw lines without CRLF.

    *replies* overrides the reply to a verb ("EHLO", "MAIL", "RCPT", "DATA", "DOT" for the
    reply after the final dot, "STARTTLS"); *hangup_at* closes the connection instead of
    answering that verb ("GREETING" right after connecting); *delay_at* sleeps before
    answering; *stall_in_data* stops reading after that many bytes of DATA;
    *starttls_extra* is sent in the same packet as the 220 to STARTTLS (response injection);
    *ehlo_extra* adds EHLO lines (AUTH, say); a *greeting* of None: the smarthost never
    greets (it answers the commands all the same). "DOT" is also the reply to BDAT LAST.
    """

    greeting: bytes | None = b"220 smarthost.test ESMTP scripted"  # None: never greets
    replies: dict[str, bytes] = field(default_factory=dict)
    hangup_at: str | None = None
    delay_at: dict[str, float] = field(default_factory=dict)
    stall_in_data: int | None = None
    starttls_extra: bytes = b""
    ehlo_extra: tuple[bytes, ...] = ()  # more EHLO lines, e.g. b"250-AUTH PLAIN LOGIN"


class ScriptedSmarthost:
    """A threaded raw-socket SMTP server on 127.0.0.1; `data` holds each DATA's wire bytes
    (dot-stuffed, up to and including the CRLF before the final dot) that got a 250."""

    def __init__(self, script: Script | None = None,
                 tls_context: ssl.SSLContext | None = None) -> None:
        self.script = script or Script()
        self.tls_context = tls_context
        self.data: list[bytes] = []
        self.attempts = 0  # DATA transfers that ended with the final dot
        self.commands: list[bytes] = []
        self.queued_behind: list[bytes] = []  # commands that came with more behind them
        self.resets = 0  # connections the client ended with a reset (RST), not a FIN
        self.ended = 0  # sessions over (closed by either side)
        self.lock = threading.Lock()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.address = f"127.0.0.1:{self.port}"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._connections: list[socket.socket] = []

    def __enter__(self) -> ScriptedSmarthost:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self.listener.close()
        for conn in self._connections:
            with contextlib.suppress(OSError):
                conn.close()
        self._thread.join(5)

    def _serve(self) -> None:
        self.listener.settimeout(0.2)
        while not self._stop.is_set():
            try:
                conn, _peer = self.listener.accept()
            except (TimeoutError, OSError):
                continue
            self._connections.append(conn)
            threading.Thread(target=self._session, args=(conn,), daemon=True).start()

    def _session(self, conn: socket.socket) -> None:
        try:
            _Session(self, conn).run()
        except ConnectionResetError:
            with self.lock:
                self.resets += 1
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                conn.close()
            with self.lock:
                self.ended += 1


class _Session:
    def __init__(self, server: ScriptedSmarthost, conn: socket.socket) -> None:
        self.server = server
        self.script = server.script
        self.conn: socket.socket = conn
        self.buffer = b""
        self.tls = False

    def send(self, *lines: bytes) -> None:
        self.conn.sendall(b"".join(line + b"\r\n" for line in lines))

    def recv(self) -> bool:
        chunk = self.conn.recv(65536)
        self.buffer += chunk
        return bool(chunk)

    def line(self) -> bytes | None:
        while b"\r\n" not in self.buffer:
            if not self.recv():
                return None
        line, self.buffer = self.buffer.split(b"\r\n", 1)
        return line

    def answer(self, verb: str, default: bytes) -> bool:
        """Reply to *verb* as scripted; False when the script hangs up here."""
        if self.script.hangup_at == verb:
            self.conn.close()
            return False
        delay = self.script.delay_at.get(verb, 0.0)
        if delay:
            time.sleep(delay)
        self.send(self.script.replies.get(verb, default))
        return True

    def run(self) -> None:
        if self.script.greeting is not None and not self.answer("GREETING",
                                                                 self.script.greeting):
            return
        while (line := self.line()) is not None:
            with self.server.lock:
                self.server.commands.append(line)
                if b"\r\n" in self.buffer:
                    self.server.queued_behind.append(line)
            verb = line.split(b" ", 1)[0].upper().decode("ascii", "replace")
            if verb == "EHLO":
                if self.script.hangup_at == "EHLO":
                    self.conn.close()
                    return
                reply = self.script.replies.get("EHLO")
                if reply is not None:
                    self.send(reply)
                    continue
                lines = [b"250-smarthost.test", b"250-8BITMIME", b"250-SIZE 100000000"]
                if self.server.tls_context is not None and not self.tls:
                    lines.append(b"250-STARTTLS")
                lines.extend(self.script.ehlo_extra)
                self.send(*lines, b"250 HELP")
            elif verb == "STARTTLS" and self.server.tls_context is not None and not self.tls:
                self.conn.sendall(b"220 2.0.0 go ahead\r\n" + self.script.starttls_extra)
                self.buffer = b""
                self.conn = self.server.tls_context.wrap_socket(self.conn, server_side=True)
                self.tls = True
            elif verb == "BDAT":
                if not self.read_bdat(line):
                    return
            elif verb == "DATA":
                if not self.answer("DATA", b"354 go ahead"):
                    return
                if not self.read_data():
                    return
            elif verb == "QUIT":
                self.send(b"221 bye")
                return
            elif not self.answer(verb, b"250 OK"):
                return

    def read_bdat(self, command: bytes) -> bool:
        """Read one `BDAT <size> LAST` chunk (the only kind relay sends); record its bytes."""
        size = int(command.split()[1])
        while len(self.buffer) < size:
            if not self.recv():
                return False
        raw, self.buffer = self.buffer[:size], self.buffer[size:]
        return self.take(raw)

    def read_data(self) -> bool:
        """Read up to the final dot; record the wire bytes; answer as scripted."""
        stall = self.script.stall_in_data
        while True:
            if self.buffer.startswith(b".\r\n"):
                raw, self.buffer = b"", self.buffer[3:]
                break
            end = self.buffer.find(b"\r\n.\r\n")
            if end >= 0:
                raw, self.buffer = self.buffer[: end + 2], self.buffer[end + 5 :]
                break
            if stall is not None and len(self.buffer) >= stall:
                time.sleep(3600)  # stop reading: the client's writes fill the socket buffers
            if not self.recv():
                return False
        return self.take(raw)

    def take(self, raw: bytes) -> bool:
        """A whole message came (DATA or BDAT): count the attempt, answer as scripted
        (`DOT`), and record *raw* if that answer accepted it. False if the client left."""
        with self.server.lock:
            self.server.attempts += 1
        if not self.answer("DOT", b"250 2.0.0 queued"):
            return False
        if self.script.replies.get("DOT", b"250")[:1] == b"2":
            with self.server.lock:
                self.server.data.append(raw)
        return True
