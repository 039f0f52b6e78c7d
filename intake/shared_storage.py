"""`relay-intake --processes N`: the one storage process that all N intake workers share.

The parent starts it before forking the workers, with a connected socket pair per worker:
the storage process holds one end of each (`intake.storage_process`), worker *i* gets the
other end of pair *i* (`for_worker`) and talks the same frames over it as over a storage
process of its own (`intake.commit`). One batch then takes what every worker sent, so the
workers share one syncfs and one directory fsync per batch instead of paying for one each
(less CPU and fewer flushes per message; docs/performance.md has the figures).

If the shared process ends (it never should), each worker fails what it was waiting for
(451, nothing accepted) and starts a storage process of its own. It ends when every worker
has closed its socket, after its last batch. Writes nothing itself.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys

from common.process import USER_ENV
from spool import Spool

STOP_SECONDS = 30  # for its last batch, once the workers have ended


class SharedStorage:
    """The shared storage process, and each worker's socket to it."""

    def __init__(self, spool: Spool, sync: str, workers: int, user: str | None) -> None:
        pairs = [socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM) for _ in range(workers)]
        self.worker_ends = [ours for ours, _theirs in pairs]
        theirs = [their for _ours, their in pairs]
        environment = dict(os.environ)
        environment["RELAY_TEST_CRASH_PARENT"] = "1"  # a test crash there is intake's crash
        if user:
            environment[USER_ENV] = user  # it switches before reading a message
        descriptors = [end.fileno() for end in theirs]
        try:
            # -P: the working directory is not put on sys.path (see intake.commit).
            self.process = subprocess.Popen(
                [sys.executable, "-P", "-m", "intake.storage_process", str(spool.path), sync,
                 ",".join(map(str, descriptors))],
                stdin=subprocess.DEVNULL, pass_fds=descriptors, env=environment)
        except BaseException:
            self.close_worker_ends()
            raise
        finally:
            for end in theirs:
                end.close()

    def for_worker(self, index: int) -> socket.socket:
        """In worker *index* (after the fork): its socket; the others' are closed."""
        for number, end in enumerate(self.worker_ends):
            if number != index:
                end.close()
        return self.worker_ends[index]

    def close_worker_ends(self) -> None:
        """In the parent, once the workers have theirs: a worker's end then closes with it."""
        for end in self.worker_ends:
            end.close()

    def wait(self) -> None:
        """After the workers: let the process finish its last batch (killed if it hangs)."""
        with contextlib.suppress(ChildProcessError):  # already reaped by the workers' wait
            try:
                self.process.wait(STOP_SECONDS)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
