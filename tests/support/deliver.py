"""relay-deliver as a background process for tests (`Deliver`, with FAST timeouts and JSON
logs, its stderr in a file beside the spool), and numbered messages stored straight into a
spool for it to send (`body`, `store`), with `files` and `wait_until_empty` to watch the
spool drain. Writes only through `Spool.store` and the log file.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time

from spool import Envelope, Spool
from support.programs import DELIVER, program_env

FAST = ["--retry-first", "30", "--response-timeout", "2", "--connection-timeout", "2",
        "--log-format", "json"]


def body(number: int) -> bytes:
    """The content of message *number*: unique per number, no Received line."""
    return f"Subject: process test {number}\r\n\r\nbody {number}\r\n".encode()


def store(spool: Spool, number: int) -> str:
    """Store message *number* for b@x.test; its id."""
    return spool.store(body(number), Envelope(sender="a@example.com", to_remote=("b@x.test",)))


def files(spool: Spool) -> list[str]:
    """Every name in the spool directory, hidden ones included, sorted."""
    return sorted(os.listdir(spool.path))


def wait_until_empty(spool: Spool, timeout: float = 10) -> None:
    """The spool empties soon after the last message_forwarded (removal is asynchronous)."""
    deadline = time.monotonic() + timeout
    while files(spool) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert files(spool) == []


class Deliver:
    """relay-deliver running in the background, its stderr in a file."""

    def __init__(self, spool: Spool, forward_to: str, *extra: str) -> None:
        self.log_path = spool.path.parent / f"deliver-{time.monotonic_ns()}.log"
        self.log_file = open(self.log_path, "wb")  # closed in stop() or close()
        self.process = subprocess.Popen(
            [DELIVER, "--spool-dir", str(spool.path), "--forward-to", forward_to, *FAST, *extra],
            stdout=subprocess.DEVNULL, stderr=self.log_file, env=program_env(),
        )
        self.wait_for_log("deliver_started")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_log(self, text: str, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.log():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"no {text!r} in the log:\n{self.log()}")
            time.sleep(0.02)

    def stop(self, signum: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        """Send *signum* (if still running) and the exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signum)
        try:
            return self.process.wait(timeout)
        finally:
            self.log_file.close()

    def close(self) -> None:
        """Kill the process if it still runs; reap it; close the log."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        self.log_file.close()


ONCE = ["--retry-first", "30", "--response-timeout", "2", "--connection-timeout", "2",
        "--data-timeout", "5", "--content-grace", "0", "--log-format", "json"]


def run_once(spool: Spool, forward_to: str, *extra: str) -> int:
    """relay-deliver --once in this process (deliver.main.main) with short timeouts; its
    exit code."""
    from deliver.main import main  # noqa: PLC0415 (only the tests that run it need it)

    return main(["--once", "--spool-dir", str(spool.path), "--forward-to", forward_to,
                 *ONCE, *extra])
