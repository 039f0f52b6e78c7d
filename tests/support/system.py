"""End-to-end runs: the shipped supervisord.conf (and relay.toml) in a private folder, with
intake on a free port; and `wait_until`, for polling what such a system does.

Writes only in that folder, which `System.stop()` removes. The folder is short
(/tmp/rl-XXXX) because a unix socket path is limited to ~100 bytes.
"""

from __future__ import annotations

import shutil
import smtplib
import subprocess
import tempfile
import time
from pathlib import Path

from support.programs import BIN, program_env
from support.sink import free_port

REPO = Path(__file__).resolve().parents[2]


class System:
    """supervisord running the shipped configuration, with intake on a free port."""

    def __init__(self, forward_to: str, **settings: str) -> None:
        self.base = Path(tempfile.mkdtemp(prefix="rl-", dir="/tmp"))
        self.sink_port = free_port()
        conf = (REPO / "supervisord.conf").read_text()
        conf = conf.replace("127.0.0.1:10026", f"127.0.0.1:{self.sink_port}")
        (self.base / "supervisord.conf").write_text(conf)
        shutil.copy(REPO / "relay.toml", self.base / "relay.toml")
        for sub in ("var/log", "var/maildir/tmp", "var/maildir/new", "var/maildir/cur"):
            (self.base / sub).mkdir(parents=True)
        (self.base / "var/spool").mkdir(mode=0o700)
        self.port = free_port()
        self.env = program_env(
            RELAY_PORT=str(self.port), RELAY_FORWARD_TO=forward_to, **settings
        )
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def spool(self) -> Path:
        return self.base / "var/spool"

    def start(self) -> System:
        self.process = subprocess.Popen(
            [str(BIN / "supervisord"), "-n", "-c", str(self.base / "supervisord.conf")],
            env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        self.wait_running(["relay:intake", "relay:deliver"])
        self.wait_port()
        return self

    def ctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(BIN / "supervisorctl"), "-c", str(self.base / "supervisord.conf"), *args],
            env=self.env, capture_output=True, text=True, timeout=60,
        )

    def wait_running(self, names: list[str], timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        status = ""
        while time.monotonic() < deadline:
            status = self.ctl("status").stdout
            lines = [line for line in status.splitlines() if line.split()[:1]]
            if all(any(line.startswith(name) and "RUNNING" in line for line in lines)
                   for name in names):
                return
            time.sleep(0.2)
        raise AssertionError(f"not running after {timeout}s:\n{status}\n{self.logs()}")

    def wait_port(self, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with smtplib.SMTP("127.0.0.1", self.port, timeout=5) as client:
                    client.noop()
                    return
            except OSError:
                time.sleep(0.1)
        raise AssertionError(f"intake not listening on {self.port}\n{self.logs()}")

    def logs(self) -> str:
        parts = []
        for path in sorted((self.base / "var/log").glob("*.log")):
            parts.append(f"--- {path.name}\n{path.read_text(errors='replace')[-3000:]}")
        return "\n".join(parts)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=40)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.base, ignore_errors=True)


def wait_until(predicate: object, timeout: float = 20.0, interval: float = 0.05) -> bool:
    """Poll *predicate* (a callable) until it is true or *timeout* passes."""
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())
