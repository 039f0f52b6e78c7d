"""`relay` or the real `emailrelay` in the foreground for a test: started with `--no-daemon`
and the test's switches (as root also `--user root`, so that it can read the test's files),
waited for until each of its ports answers, stopped with SIGTERM to its own pid (SIGKILL if
it does not end). Its stderr, where both log with `--no-daemon`, goes to an unnamed
temporary file that the test reads. Writes nothing else.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from support.programs import program_env
from support.system import wait_until

AS_ROOT = ["--user", "root"] if os.geteuid() == 0 else []


def listening(host: str, port: int) -> bool:
    """Whether something accepts a TCP connection on host:port."""
    with contextlib.suppress(OSError), socket.create_connection((host, port), 2):
        return True
    return False


@contextlib.contextmanager
def foreground(program: str, *args: str, cwd: Path,
               ports: Sequence[int]) -> Iterator[Callable[[], str]]:
    """*program* with --no-daemon and *args*, in *cwd*, until every one of *ports* answers
    on 127.0.0.1 (at most 90 s; an early exit fails with its stderr). Yields a function
    that returns its stderr so far; the program is stopped on the way out."""
    with tempfile.TemporaryFile() as stderr:

        def log() -> str:  # pread: the offset is the program's too, it must not move
            size = os.fstat(stderr.fileno()).st_size
            return os.pread(stderr.fileno(), size, 0).decode("utf-8", "replace")

        process = subprocess.Popen([program, "--no-daemon", *AS_ROOT, *args], cwd=cwd,
                                   env=program_env(), stdout=subprocess.DEVNULL,
                                   stderr=stderr)
        try:
            assert wait_until(lambda: all(listening("127.0.0.1", p) for p in ports)
                              or process.poll() is not None, 90)
            assert process.poll() is None, log()
            yield log
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
