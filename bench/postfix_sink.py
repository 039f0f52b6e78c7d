"""Postfix's smtp-sink as a sink, with bench's progress lines: `python -m bench.postfix_sink`.

smtp-sink (Debian package `postfix`) is a C server that answers every command and
forgets the mail, at a small fraction of the CPU of an aiosmtpd server (~0.4 ms per 4 KiB
message here), which on a 2-vCPU machine would otherwise take a large share of what relay
itself gets. The end-to-end benchmark's sustained part sends to it when it is installed
(the issue names it as a sink; bench says which sink it used). This wrapper runs
`smtp-sink -c` (a running counter on stdout) and turns the counter into the progress
lines `<count> <monotonic time>` that `bench.servers` prints, at the same moments (the 1st
message, every --progress, the --expect'th), so the harness times both sinks alike.

Stores nothing; writes only its progress lines.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import time

from bench.common import HOST

_COUNTER = re.compile(rb"mesg=(\d+)")


def smtp_sink() -> str | None:
    """The smtp-sink program, or None when Postfix's tools are not installed."""
    return shutil.which("smtp-sink") or next(
        (path for path in ("/usr/sbin/smtp-sink",) if os.access(path, os.X_OK)), None)


def relay_progress(counter_stream: int, progress: int, expect: int) -> None:
    """Read smtp-sink's counter updates and print progress lines until it ends."""
    printed = 0
    tail = b""
    while chunk := os.read(counter_stream, 65536):
        now = time.monotonic()
        tail = (tail + chunk)[-256:]
        found = _COUNTER.findall(tail)
        if not found:
            continue
        count = int(found[-1])
        due = [n for n in (1, expect) if printed < n <= count]
        if progress:
            due += range((printed // progress + 1) * progress, count + 1, progress)
        for number in sorted(set(due)):
            sys.stdout.write(f"{number} {now:.6f}\n")
        if due:
            sys.stdout.flush()
        printed = max(printed, count)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.postfix_sink", description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--progress", type=int, default=0, help="print every N messages")
    parser.add_argument("--expect", type=int, default=0, help="also print at this count")
    arguments = parser.parse_args(argv)
    program = smtp_sink()
    if program is None:
        print("smtp-sink is not installed (apt-get install postfix)", file=sys.stderr)
        return 69
    user = ["-u", "nobody"] if os.geteuid() == 0 else []  # it refuses to run as root
    sink = subprocess.Popen([program, *user, "-c", f"{HOST}:{arguments.port}", "256"],
                            stdout=subprocess.PIPE)
    signal.signal(signal.SIGTERM, lambda *_: sink.terminate())
    assert sink.stdout is not None
    try:
        relay_progress(sink.stdout.fileno(), arguments.progress, arguments.expect)
    finally:
        sink.terminate()
        sink.wait(10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
