"""relay-intake's processes as real subprocesses: the storage process wherever intake runs.

relay-intake started in a working directory that holds a folder named `spool` (the spool
itself, as `cd /var && relay-intake --spool-dir spool` would have) still stores mail: the
storage process is not fooled into importing that folder as the spool package.
"""

from __future__ import annotations

import smtplib
import socket
import subprocess
import time
from pathlib import Path

from sink import free_port
from system import BIN, program_env
from test_intake_server import MESSAGE

INTAKE = str(BIN / "relay-intake")


def start_intake(spool_dir: Path, *args: str, cwd: Path | None = None
                 ) -> tuple[subprocess.Popen[bytes], int]:
    """relay-intake on a free port, listening; (the process, its port)."""
    port = free_port()
    process = subprocess.Popen(
        [INTAKE, "--spool-dir", str(spool_dir), "--port", str(port), "--domain", "intake.test",
         "--log-format", "json", *args],
        env=program_env(), cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(process.communicate()[1].decode(errors="replace"))
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return process, port
        except OSError:
            time.sleep(0.05)
    process.kill()
    raise AssertionError("relay-intake did not start listening")


def stop(process: subprocess.Popen[bytes]) -> str:
    if process.poll() is None:
        process.terminate()
    return process.communicate(timeout=30)[1].decode(errors="replace")


def test_a_spool_folder_in_the_working_directory_is_not_imported(tmp_path: Path) -> None:
    """cwd holds `spool/` (the spool itself): messages are still stored (250, two files)."""
    spool_dir = tmp_path / "spool"
    spool_dir.mkdir(mode=0o700)
    process, port = start_intake(Path("spool"), cwd=tmp_path)
    try:
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
            client.sendmail("a@example.org", ["b@example.com"], MESSAGE)
    finally:
        log = stop(process)
    names = sorted(path.suffix for path in spool_dir.iterdir())
    assert names == [".content", ".envelope"], log
