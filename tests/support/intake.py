"""relay-intake for tests, two ways, and a raw SMTP client.

`IntakeThread` runs the real `intake.main.run` (the code behind the console script) in a
thread on a free port; `IntakeProcess` runs the `relay-intake` console script as a child
process (the fault hooks of spool.testhooks are read from its environment), its JSON log
in a file beside the spool. Both start again on another free port when someone else bound
theirs first (`support.sink.free_port`: a port is only found free, then told to intake).
`RawClient` speaks SMTP byte by byte. Each writes only what intake writes, in the spool
directory it is given (and IntakeProcess its log file).
"""

from __future__ import annotations

import asyncio
import re
import signal
import smtplib
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

from intake.listener import IntakeServer
from intake.main import prepare, run
from intake.policy import is_loopback
from support.programs import INTAKE, program_env
from support.sink import free_port

EX_BIND = 2  # relay-intake could not bind its port
BIND_ATTEMPTS = 3  # a free port someone else bound first: start again on another one
MESSAGE = (
    b"From: a@example.org\r\nTo: b@example.com\r\nSubject: test\r\n\r\n"
    b"Hello,\r\n..a line that starts with a dot\r\n\tand one with a tab\r\n"
)


class IntakeThread:
    """The real relay-intake (intake.main.run) serving in a background thread."""

    def __init__(self, spool_dir: Path, *args: str) -> None:
        self.spool_dir = spool_dir
        self.args = args
        self._prepare()

    def _prepare(self) -> None:
        """A free port, intake's configuration for it, the thread that will serve it."""
        self.port = free_port()
        argv = ["--spool-dir", str(self.spool_dir), "--port", str(self.port),
                "--domain", "intake.test", *self.args]
        self.config, self.spool, self.log = prepare(argv)
        self.server: IntakeServer | None = None
        self._stop: Callable[[], None] | None = None
        self._ready = threading.Event()
        self.exit_code: int | None = None
        self._thread = threading.Thread(target=self._main, daemon=True)

    def _on_ready(self, server: IntakeServer, stop: Callable[[], None]) -> None:
        self.server, self._stop = server, stop
        self._ready.set()

    def _main(self) -> None:
        try:
            self.exit_code = asyncio.run(run(self.config, self.spool, self.log,
                                             install_signals=False, on_ready=self._on_ready))
        finally:
            self._ready.set()

    def __enter__(self) -> IntakeThread:
        for attempt in range(BIND_ATTEMPTS):
            self._thread.start()
            assert self._ready.wait(10), "intake did not start"
            if self.server is not None:
                return self
            self._thread.join(10)
            # The free port was bound by someone else before intake bound it: another one.
            assert self.exit_code == EX_BIND and attempt + 1 < BIND_ATTEMPTS, \
                "intake did not start"
            self._prepare()
        raise AssertionError("not reached")

    def __exit__(self, *exc: object) -> None:
        if self._stop is not None:
            self._stop()
        self._thread.join(30)
        assert not self._thread.is_alive()

    def smtp(self, timeout: float = 10) -> smtplib.SMTP:
        return smtplib.SMTP("127.0.0.1", self.port, local_hostname="client.test",
                            timeout=timeout)


class IntakeProcess:
    """relay-intake as a child process on *interface*:<free port> (started in *cwd* if
    given), its JSON log in a file beside the spool directory.

    Ready once it logged intake_started (every worker process of --processes, when it has
    several). `stop()` sends SIGTERM and returns the exit status; `finish(sig)` sends *sig*
    (if given) and returns the log; `close()` (or leaving the `with` block) kills what is
    still running.
    """

    def __init__(self, spool_dir: Path, *args: str, env: dict[str, str] | None = None,
                 interface: str = "127.0.0.1", cwd: Path | None = None) -> None:
        self.spool_dir = spool_dir  # as given: relative to *cwd* when that is given
        self.host = interface
        where = (cwd or Path.cwd()) / spool_dir
        for attempt in range(BIND_ATTEMPTS):
            self.port = free_port()
            self.log_path = where.resolve().parent / f"intake-{time.monotonic_ns()}.log"
            self._log_file = open(self.log_path, "wb")  # closed in stop(), finish(), close()
            self.process = subprocess.Popen(
                [INTAKE, "--spool-dir", str(spool_dir), "--port", str(self.port),
                 "--interface", interface, "--domain", "intake.test", "--log-format", "json",
                 *args],
                stdout=subprocess.DEVNULL, stderr=self._log_file,
                env=program_env(**(env or {})), cwd=cwd,
            )
            try:
                self._wait_until_ready()
                return
            except AssertionError:
                self.close()
                if attempt + 1 == BIND_ATTEMPTS or not self._port_was_taken():
                    raise

    def _port_was_taken(self) -> bool:
        """It ended because its free port was bound by someone else meanwhile."""
        return self.process.returncode == EX_BIND and "Address already in use" in self.log()

    def _wait_until_ready(self) -> None:
        """intake_started; with worker processes, that of every one of them (a test that
        went on after the first one's raced the others' start: a crash or a stop in the
        first then waited for them to finish starting)."""
        started = self._wait_for_lines("intake_started", 1)
        if not re.search(r'"process": |\bprocess=', started[0]):
            return  # one process: no workers
        (line,) = self._wait_for_lines("workers_started", 1)[:1]
        workers = re.search(r'"processes": (\d+)|\bprocesses=(\d+)', line)
        assert workers is not None, line
        self._wait_for_lines("intake_started", int(workers[1] or workers[2]))

    def _wait_for_lines(self, event: str, count: int, timeout: float = 20.0) -> list[str]:
        """*count* complete log lines of *event* (JSON or logfmt, as --log-format says)."""
        deadline = time.monotonic() + timeout
        pattern = re.compile(rf'"event": "{event}"|\bevent={event}\b')
        while True:
            found = [line for line in self.log().splitlines(keepends=True)
                     if line.endswith("\n") and pattern.search(line)]
            if len(found) >= count:
                return found
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"not {count} {event!r} in the intake log:\n{self.log()}")
            time.sleep(0.02)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_log(self, text: str, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.log():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"no {text!r} in the intake log:\n{self.log()}")
            time.sleep(0.02)

    def smtp(self, timeout: float = 10) -> smtplib.SMTP:
        return smtplib.SMTP(self.host, self.port, local_hostname="client.test", timeout=timeout)

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM (if still running) and the exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        finally:
            self._log_file.close()

    def finish(self, sig: int | None = None, timeout: float = 30.0) -> str:
        """Send *sig* (if given and still running), wait for the exit; the whole log."""
        if sig is not None and self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            self.process.wait(timeout)
        finally:
            self._log_file.close()
        return self.log()

    def close(self) -> None:
        """Kill the process if it still runs; reap it; close the log."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        self._log_file.close()

    def __enter__(self) -> IntakeProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class RawClient:
    """A socket that sends bytes and reads whole SMTP replies."""

    def __init__(self, port: int, host: str = "127.0.0.1", greeting: bool = True,
                 source: str | None = None) -> None:
        self.sock = socket.create_connection((host, port), timeout=10,
                                             source_address=(source, 0) if source else None)
        self.buffer = b""
        self.greeting = self.reply() if greeting else ""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def reply(self) -> str:
        """One complete reply (all its lines), e.g. '250-a\\n250 b'; '' at end of stream."""
        lines: list[str] = []
        while True:
            while b"\r\n" not in self.buffer:
                chunk = self.sock.recv(65536)
                if not chunk:
                    return "\n".join(lines)
                self.buffer += chunk
            line, self.buffer = self.buffer.split(b"\r\n", 1)
            lines.append(line.decode("utf-8", "replace"))
            if len(line) < 4 or line[3:4] != b"-":
                return "\n".join(lines)

    def command(self, line: bytes) -> str:
        self.send(line + b"\r\n")
        return self.reply()

    def start_data(self) -> None:
        """EHLO, MAIL FROM:<a@example.org>, RCPT TO:<b@example.com>, DATA: ready for content."""
        self.command(b"EHLO client.test")
        self.command(b"MAIL FROM:<a@example.org>")
        self.command(b"RCPT TO:<b@example.com>")
        assert self.command(b"DATA")[:3] == "354"

    def closed(self, timeout: float = 5) -> bool:
        """True when the server closes the connection (any pending replies are skipped)."""
        self.sock.settimeout(timeout)
        try:
            while self.sock.recv(65536):
                pass
        except (TimeoutError, OSError) as error:
            return not isinstance(error, TimeoutError)
        return True

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def non_loopback_address() -> str | None:
    """An address of this host that is not loopback (None when it has none)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))
            address = str(probe.getsockname()[0])
        except OSError:
            return None
    return None if is_loopback(address) or address == "0.0.0.0" else address
