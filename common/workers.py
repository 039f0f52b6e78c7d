"""`--processes N`: one program as N worker processes under one parent (intake, deliver).

`run_workers` forks N children, each running the same work function with its index (0 to
N-1), and supervises them from the parent, which does nothing else: SIGTERM, SIGINT,
SIGUSR1 and SIGHUP are passed on to every child; when the parent is asked to stop it waits for them
all. A child that ends on its own while the parent was not asked to stop ends the whole
program (the others are stopped, and the parent exits with that child's code, or is
killed by the same signal that killed the child) unless the
children were meant to finish (`--once`): then the parent waits for them all. Either way
supervisord sees one program (the group stays `relay:*`), and a supervisor that restarts it
restarts all of it. Children die with the parent (PR_SET_PDEATHSIG), so a `kill -9` of the
parent leaves no worker behind holding the port or claims.

Whatever the children must share is made before the fork (intake's listening sockets);
nothing that runs threads or an event loop may exist then. Touches no files.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import traceback
from collections.abc import Callable
from types import FrameType

from common.logs import Logger, on_hangup, unit_key

FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGHUP)
HELD = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)  # until the worker's handlers are in
EX_SOFTWARE = 70
_PR_SET_PDEATHSIG = 1


def default_processes() -> int:
    """The number of CPUs this process may run on (at least 1)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _die_with_parent() -> None:
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def _start(index: int, work: Callable[[int], int], parent: int) -> int:
    pid = os.fork()
    if pid:
        return pid
    code = EX_SOFTWARE
    try:
        # Held until the worker has its own handlers (signals_ready): a SIGTERM passed on
        # while it starts up then stops it cleanly instead of killing it.
        signal.pthread_sigmask(signal.SIG_BLOCK, HELD)  # not SIGHUP: handled at once
        for signum in FORWARDED:
            signal.signal(signum, signal.SIG_DFL)
        signal.signal(signal.SIGHUP, on_hangup)  # reopen the log file, as the parent does
        _die_with_parent()
        if os.getppid() != parent:  # the parent died before the line above took effect
            os._exit(EX_SOFTWARE)
        code = work(index)
    except SystemExit as leaving:
        code = leaving.code if isinstance(leaving.code, int) else EX_SOFTWARE
    except BaseException:  # a child never returns into the parent's code
        traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)
    return 0  # not reached


def signals_ready(*signums: int) -> None:
    """A worker installed its handlers for *signums*: let them in (a no-op outside a worker).

    Signals that arrived meanwhile are delivered now; the others of SIGTERM, SIGINT and
    SIGUSR1 stay held (a worker that has no use for SIGUSR1 is not killed by one).
    """
    signal.pthread_sigmask(signal.SIG_UNBLOCK, signums)


def combined_exit_code(codes: list[int]) -> int:
    """One exit code for the children's: the first failure; else 75 if one had mail left."""
    failures = [code for code in codes if code not in (0, os.EX_TEMPFAIL)]
    if failures:
        return failures[0]
    return os.EX_TEMPFAIL if os.EX_TEMPFAIL in codes else 0


def _exit_code(status: int) -> int:
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.waitstatus_to_exitcode(status)


def run_workers(count: int, work: Callable[[int], int], log: Logger, *,
                finish: bool = False, stop_timeout: float = 60.0,
                usr1: bool = True, started: Callable[[], None] | None = None) -> int:
    """Run work(0) .. work(count - 1) in *count* child processes; the program's exit code.

    With *finish* (a `--once` run) the children are expected to end by themselves; without,
    a child ending before the parent was told to stop brings the others down. After a stop
    request the children get *stop_timeout* seconds before SIGKILL; SIGUSR1 is passed on
    only with *usr1*. *started* is called in the parent once every child has been forked
    (to close what only the children need). The parent sleeps in
    waitpid(2) meanwhile (signals interrupt it): it costs no CPU while the workers run.
    """
    parent = os.getpid()
    children: dict[int, int] = {}  # pid -> index
    codes: dict[int, int] = {}  # index -> exit code
    state = {"stopping": False}
    died_by: list[int] = []  # the signal that killed the first worker to end by itself

    def signal_children(signum: int) -> None:
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    def stop_all() -> None:
        if not state["stopping"]:
            state["stopping"] = True
            signal.setitimer(signal.ITIMER_REAL, stop_timeout)
        signal_children(signal.SIGTERM)

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        if signum == signal.SIGHUP:
            on_hangup(signum, _frame)
            signal_children(signum)
        elif signum == signal.SIGUSR1:
            if usr1:
                signal_children(signum)
        elif signum == signal.SIGALRM:  # the stop timeout
            signal_children(signal.SIGKILL)
        else:
            stop_all()

    previous = {signum: signal.signal(signum, on_signal)
                for signum in (*FORWARDED, signal.SIGALRM)}
    try:
        for index in range(count):
            children[_start(index, work, parent)] = index
        if started is not None:
            started()
        log.info("workers_started", processes=count, pids=sorted(children), **unit_key())
        while children:
            try:
                pid, status = os.waitpid(-1, 0)
            except ChildProcessError:
                break
            index = children.pop(pid, -1)
            if index < 0:
                continue
            codes[index] = _exit_code(status)
            expected = state["stopping"] or (finish and codes[index] in (0, os.EX_TEMPFAIL))
            if not expected:
                log.error("worker_ended", process=index, pid=pid, code=codes[index],
                          reason="a worker ended by itself: stopping the others")
                codes[index] = codes[index] or EX_SOFTWARE
                if os.WIFSIGNALED(status) and not died_by:
                    died_by.append(os.WTERMSIG(status))
                stop_all()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal_children(signal.SIGKILL)  # only still there after an exception in the parent
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if died_by:  # end as the worker did, so the supervisor sees a killed program
        sys.stdout.flush()
        sys.stderr.flush()
        if died_by[0] != signal.SIGKILL:
            signal.signal(died_by[0], signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, [died_by[0]])
        os.kill(os.getpid(), died_by[0])
    return combined_exit_code([codes[index] for index in sorted(codes)])
