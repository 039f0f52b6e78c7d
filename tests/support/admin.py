"""relay with its admin interface (`relay --admin PORT`) for the tests: starting and
stopping relay (and the real E-MailRelay) as child processes, and connecting to an admin
port while relay is still starting. Ports are free ones on 127.0.0.1; writes no files (the
caller gives the spool directory and, if it wants one, the file for relay's stderr).
"""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from support.emailrelay import EMAILRELAY
from support.programs import program_env
from support.sink import free_port

RELAY = str(Path(sys.executable).with_name("relay"))
# relay in the foreground and, when the tests run as root, as root (not --user daemon)
FOREGROUND = ["--no-daemon", "--user", "root"]
WAIT = 90.0  # seconds for relay to start or stop: generous, the machine may be busy

__all__ = ["EMAILRELAY", "FOREGROUND", "RELAY", "WAIT", "connect", "relay_with_admin",
           "start", "stop"]
Output = int | IO[bytes]


def start(command: list[str], stderr: Output = subprocess.PIPE) -> subprocess.Popen[bytes]:
    """*command* as a child process, stdout to /dev/null."""
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr,
                            env=program_env())


def stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL if it has not exited within WAIT."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        process.wait(WAIT)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def connect(port: int, rcvbuf: int | None = None) -> socket.socket:
    """A client of the admin port on 127.0.0.1, retrying while relay starts (it starts
    three Python programs before the port listens: under load that has taken over 15 s)."""
    deadline = time.monotonic() + WAIT
    while True:
        sock = socket.socket()
        if rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.settimeout(10)
        try:
            sock.connect(("127.0.0.1", port))
            return sock
        except OSError:
            sock.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


@contextlib.contextmanager
def relay_with_admin(spool_dir: Path, *switches: str, stderr: Output = subprocess.DEVNULL
                     ) -> Iterator[tuple[int, int, subprocess.Popen[bytes]]]:
    """relay in the foreground with *switches* (`--as-proxy HOST:PORT`, ...) on *spool_dir*,
    its SMTP and admin ports free ones: (SMTP port, admin port, the process), stopped on
    the way out."""
    smtp_port, admin_port = free_port(), free_port()
    process = start([RELAY, *FOREGROUND, *switches, "--port", str(smtp_port), "--spool-dir",
                     str(spool_dir), "--admin", str(admin_port)], stderr)
    try:
        yield smtp_port, admin_port, process
    finally:
        stop(process)
