"""The real E-MailRelay 2.6.1 beside relay: its binary (EMAILRELAY_BIN, default the build in
/work/scratch), `needs_emailrelay` to skip a test without it, `EmailRelayServer` (its
`--as-server` on a free 127.0.0.1 port, its log in a file), `emailrelay_client` (its
`--as-client` run once) and `spool_in` (an empty spool directory for either program).

Starts only the processes it is asked for and stops them by their own pid; writes only its
pid and log files, in the directory it is given, and the spool directory `spool_in` makes.
"""

from __future__ import annotations

import os
import smtplib
import subprocess
import time
from pathlib import Path

import pytest

from support.sink import free_port

EMAILRELAY = Path(os.environ.get("EMAILRELAY_BIN", "/work/scratch/emailrelay-bin/emailrelay"))
needs_emailrelay = pytest.mark.skipif(not os.access(EMAILRELAY, os.X_OK),
                                      reason="no E-MailRelay binary here")


def _as_user() -> list[str]:
    # Started as root, E-MailRelay drops to `daemon`, which cannot read the test's files.
    return ["--user", "root"] if os.geteuid() == 0 else []


class EmailRelayServer:
    """`emailrelay --as-server --no-daemon` with *switches*, spooling into *spool*; `port`,
    `log()`. Use as `with EmailRelayServer(work, spool, ...) as server:`."""

    def __init__(self, work: Path, spool: Path, *switches: str) -> None:
        self.port = free_port()
        self.log_path = work / f"emailrelay-{self.port}.log"
        argv = [str(EMAILRELAY), "--as-server", "--no-daemon", "--port", str(self.port),
                "--interface", "127.0.0.1", "--spool-dir", str(spool), "--log-file",
                str(self.log_path), "--pid-file", str(work / f"emailrelay-{self.port}.pid"),
                *_as_user(), *switches]
        self.process = subprocess.Popen(argv, cwd=work, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 15
        while True:
            try:
                smtplib.SMTP("127.0.0.1", self.port, timeout=2).quit()
                break
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise AssertionError(f"emailrelay did not start: {self.log()}") from None
                time.sleep(0.1)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
        self.process.wait(15)

    def __enter__(self) -> EmailRelayServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def emailrelay_client(work: Path, spool: Path, forward_to: str,
                      *switches: str) -> subprocess.CompletedProcess[str]:
    """`emailrelay --as-client FORWARD_TO --spool-dir SPOOL SWITCHES`, run to its end; its
    log is in work/emailrelay-client.log."""
    argv = [str(EMAILRELAY), "--as-client", forward_to, "--spool-dir", str(spool),
            "--log-file", str(work / "emailrelay-client.log"), *_as_user(), *switches]
    return subprocess.run(argv, cwd=work, capture_output=True, text=True, timeout=60,
                          check=False)


def spool_in(work: Path) -> Path:
    """An empty spool directory, work/spool, mode 0700."""
    spool = work / "spool"
    spool.mkdir(mode=0o700)
    return spool
