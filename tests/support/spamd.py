"""A real SpamAssassin spamd on 127.0.0.1 for the tests of `spam:`/`spam-edit:` (Debian's
package `spamd`, which .ci/run installs): `SPAMD` is its path or None, `running_spamd` a
context manager yielding its HOST:PORT. Writes only its log and pid file in the directory
it is given.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from support.sink import free_port

SPAMD = shutil.which("spamd") or ("/usr/sbin/spamd" if os.path.exists("/usr/sbin/spamd") else None)
GTUBE = (b"Subject: test\r\nFrom: a@example.org\r\n\r\n"
         b"XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X\r\n")
CLEAN = b"Subject: hello\r\nFrom: a@example.org\r\n\r\nSee you at five.\r\n"


@contextlib.contextmanager
def running_spamd(work: Path) -> Iterator[str]:
    """spamd with local tests only (-L) and one child, until the block ends."""
    assert SPAMD is not None, "spamd is not installed"
    port = free_port()
    argv = [SPAMD, "-L", "-i", "127.0.0.1", "-A", "127.0.0.1", "-p", str(port), "-m", "1",
            "--syslog=stderr", "--pidfile", str(work / "spamd.pid")]
    if os.geteuid() == 0:
        argv += ["-u", "nobody"]
    with (work / "spamd.log").open("wb") as log:
        process = subprocess.Popen(argv, stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert process.poll() is None, (work / "spamd.log").read_text()
                assert time.monotonic() < deadline, "spamd did not start"
                time.sleep(0.2)
        yield f"127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(20)
