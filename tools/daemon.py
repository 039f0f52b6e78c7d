"""`relay` as a daemon: detach, start relay-intake and relay-deliver, watch them, pass signals.

`detach()` is E-MailRelay's start-up: fork; the child calls setsid() and carries on, the
parent waits on a pipe and returns (exit 0) only once the child says that everything is
listening and the pid file is written, or returns the child's failure code. `Supervisor`
starts each program by module with `python -I` (isolated: neither the working directory nor
PYTHON* variables reach sys.path, so a folder named `spool` in the cwd shadows nothing),
hands each a pipe to say it is ready on (`--ready-fd`), and then runs until SIGTERM/SIGINT
(passed on; it waits for them), SIGUSR1 (a flush: passed to relay-deliver), SIGHUP (passed
on: every program reopens its log file) or a child ending on its own (the others are
stopped; the exit code is that child's). Writes the pid file (mode 0644, the --user's
group, its parent directory made if missing) and removes it at exit; touches nothing else.
With `with_events` (relay --admin) every program also gets the write end of one pipe
(`--event-fd`, see common.events); the supervisor reads it in the same loop as the
programs' stderr and hands each event to `on_event` (the admin interface's `publish`).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

from common.events import EventReader
from common.logs import Logger, reopen
from common.pidfile import remove_pid_file, write_pid_file

READY_TIMEOUT = 60.0  # seconds a program may take to say it is ready
STOP_TIMEOUT = 40.0  # after SIGTERM, before SIGKILL (intake's stop timeout is 20 s)
EX_SOFTWARE = 70
_PR_SET_PDEATHSIG = 1
HANDLED: tuple[int, ...] = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGHUP)


@dataclass
class Program:
    """One program to run: its name, module and arguments; the running process."""

    name: str
    module: str
    args: list[str]
    process: subprocess.Popen[bytes] | None = None

    def command(self, ready_fd: int, event_fd: int | None = None) -> list[str]:
        events = [] if event_fd is None else ["--event-fd", str(event_fd)]
        return [sys.executable, "-I", "-m", self.module, *self.args, "--ready-fd", str(ready_fd),
                *events]


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM when `relay` dies, even by SIGKILL (no orphans
    holding the port or the spool's claims); each program then stops cleanly."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def detach() -> int | None:
    """Fork into the background. In the parent: wait for the child's word, return the exit
    code (0 once it is ready). In the child (a new session): None, with READY_FD set."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        os.setsid()
        global READY_FD  # noqa: PLW0603 (set once, in the child only)
        READY_FD = write_end
        return None
    os.close(write_end)
    chunks: list[bytes] = []
    while chunk := os.read(read_end, 256):
        chunks.append(chunk)
    os.close(read_end)
    word = b"".join(chunks).decode("ascii", "replace").strip()
    if word == "ready":
        return 0
    if word.isdigit():
        return int(word)
    _done, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status) or EX_SOFTWARE


READY_FD: int | None = None  # the daemon child's pipe to its waiting parent


def tell_parent(word: str) -> None:
    """Say "ready" (or a failure code) to the parent waiting in `detach` (if there is one)."""
    global READY_FD  # noqa: PLW0603
    if READY_FD is None:
        return
    with contextlib.suppress(OSError):
        os.write(READY_FD, word.encode() + b"\n")
    with contextlib.suppress(OSError):
        os.close(READY_FD)
    READY_FD = None


def quiet_stdio(close_stderr: bool) -> None:
    """Point stdin and stdout (and, with *close_stderr*, stderr) at /dev/null."""
    devnull = os.open(os.devnull, os.O_RDWR)
    try:
        for fd in (0, 1, 2) if close_stderr else (0, 1):
            os.dup2(devnull, fd)
    finally:
        os.close(devnull)


def write_daemon_pid_file(path: str, gid: int | None) -> None:
    """The pid file, as E-MailRelay writes it: 0644, parent directory made if missing."""
    parent = os.path.dirname(path)
    if parent and not os.path.isdir(parent):
        os.makedirs(parent, 0o755, exist_ok=True)
    write_pid_file(path)
    os.chmod(path, 0o644)
    if gid is not None and os.geteuid() == 0:
        with contextlib.suppress(OSError):
            os.chown(path, -1, gid)


@dataclass
class Supervisor:
    """The programs of one `relay`, and what is done to them."""

    programs: list[Program]
    pid_file: str | None = None
    pid_group: int | None = None
    stopping: bool = False
    _signals: list[int] = field(default_factory=list)  # received, not yet handled
    _errors: list[int] = field(default_factory=list)  # the programs' stderr pipes
    log: Logger | None = None  # relay's own logger (common.logs): where the supervisor's lines go
    # --admin: the programs' events (common.events) come through a pipe to this callback
    # (set once the admin interface runs; until then they are read and dropped).
    with_events: bool = False
    on_event: Callable[[tuple[str, ...]], None] | None = None
    event_fd: int | None = None  # the pipe's write end (for a one-off relay-deliver too)
    _event_read: int | None = None
    _event_reader: EventReader = field(default_factory=EventReader)

    def say(self, event: str, **fields: Any) -> None:
        """One error line of relay's own: to its log (file, syslog) and, while open, stderr."""
        if self.log is not None:
            self.log.error(event, **fields)
        else:
            details = " ".join(f"{key}={value}" for key, value in fields.items())
            sys.stderr.write(f"relay: {event} {details}\n")

    def start(self, *, detached: bool = False) -> int:
        """Start every program and wait until each is ready; 0, or the failing one's code.

        Their stderr comes through a pipe that this process copies to its own stderr (and,
        after `quiet_stdio`, to /dev/null), so that --close-stderr closes the terminal for
        every process of the daemon, the programs' own children too. The signal handlers are
        in place from here on: a SIGTERM during the start is acted on by `run`."""
        for signum in HANDLED:
            signal.signal(signum, self._on_signal)
        if self.with_events and self.event_fd is None:
            self._event_read, self.event_fd = os.pipe()
            os.set_blocking(self._event_read, False)
            os.set_blocking(self.event_fd, False)  # a program never waits to tell an event
        events = () if self.event_fd is None else (self.event_fd,)
        for program in self.programs:
            read_end, write_end = os.pipe()
            try:
                program.process = subprocess.Popen(
                    program.command(write_end, self.event_fd), pass_fds=(write_end, *events),
                    stderr=subprocess.PIPE,
                    preexec_fn=_die_with_parent,  # noqa: PLW1509 (no thread runs yet)
                    stdin=subprocess.DEVNULL if detached else None,
                    stdout=subprocess.DEVNULL if detached else None)
            except OSError as error:
                self.say("program_not_started", program=program.name, reason=str(error))
                os.close(read_end)
                return EX_SOFTWARE
            finally:
                os.close(write_end)
            assert program.process.stderr is not None
            self._errors.append(program.process.stderr.fileno())
            code = self._wait_ready(program, read_end)
            if code != 0:
                self.stop()
                return code
        if self.pid_file:
            try:
                write_daemon_pid_file(self.pid_file, self.pid_group)
            except OSError as error:
                self.say("pid_file_failed", path=self.pid_file, reason=error.strerror or "")
                self.stop()
                return os.EX_CANTCREAT
        return 0

    def pump(self, timeout: float, also: int | None = None) -> bool:
        """Copy what the programs wrote to stderr (waiting up to *timeout*); True if *also*
        became readable."""
        watched = [*self._errors, *([also] if also is not None else []),
                   *([self._event_read] if self._event_read is not None else [])]
        if not watched:
            time.sleep(timeout)
            return False
        try:
            readable, _, _ = select.select(watched, [], [], timeout)
        except InterruptedError:
            return False
        for fd in readable:
            if fd == also:
                continue
            if fd == self._event_read:
                self._pass_events()
                continue
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                chunk = b""
            if not chunk:
                self._errors.remove(fd)
                continue
            with contextlib.suppress(OSError):
                os.write(2, chunk)
        return also is not None and also in readable

    def _pass_events(self) -> None:
        """Read what the event pipe holds and hand each event on (never blocks)."""
        assert self._event_read is not None
        try:
            chunk = os.read(self._event_read, 65536)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if not chunk:  # cannot happen while this process holds the write end
            os.close(self._event_read)
            self._event_read = None
            return
        for event in self._event_reader.feed(chunk):
            if self.on_event is not None:
                with contextlib.suppress(Exception):  # the admin interface's own fault
                    self.on_event(event)

    def _wait_ready(self, program: Program, read_end: int) -> int:
        """Read the program's ready line; its exit code if it ends first (70 on a timeout)."""
        assert program.process is not None
        deadline = time.monotonic() + READY_TIMEOUT
        data = b""
        try:
            while b"\n" not in data:
                left = deadline - time.monotonic()
                if left <= 0:
                    self.say("program_not_ready", program=program.name,
                             reason=f"not listening after {READY_TIMEOUT:.0f} s")
                    return EX_SOFTWARE
                if self.pump(min(left, 0.5), also=read_end):
                    chunk = os.read(read_end, 64)
                    if not chunk:  # it closed the pipe without a word: it ended
                        code = program.process.wait()
                        self.pump(0.1)  # what it said on the way out
                        return code if code > 0 else EX_SOFTWARE
                    data += chunk
        finally:
            os.close(read_end)
        return 0

    def flush(self) -> None:
        """Try every queued message now (SIGUSR1 to relay-deliver): the admin `flush`."""
        self._send(signal.SIGUSR1, modules=("deliver.main",))

    def _send(self, signum: int, modules: Sequence[str] | None = None) -> None:
        for program in self.programs:
            if modules is not None and program.module not in modules:
                continue
            if program.process is not None and program.process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    program.process.send_signal(signum)

    def stop(self) -> None:
        """SIGTERM to every program; wait (SIGKILL after STOP_TIMEOUT), copying their stderr."""
        self.stopping = True
        self._send(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        for program in self.programs:
            if program.process is None:
                continue
            while program.process.poll() is None and time.monotonic() < deadline:
                self.pump(0.1)
            if program.process.poll() is None:
                program.process.kill()
                program.process.wait()
        while self._errors:
            self.pump(0.5)  # the rest, up to the end of each pipe
            if not any(p.process is not None and p.process.poll() is None
                       for p in self.programs):
                break

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self._signals.append(signum)

    def run(self) -> int:
        """Until asked to stop or a program ends; the exit code (0 after SIGTERM)."""
        for signum in HANDLED:
            signal.signal(signum, self._on_signal)
        status = 0
        try:
            while True:
                while self._signals:
                    signum = self._signals.pop(0)
                    if signum in (signal.SIGTERM, signal.SIGINT):
                        self.stop()
                        return 0
                    if signum == signal.SIGUSR1:
                        self.flush()
                    else:  # SIGHUP: every program reopens its log file, and so does relay
                        reopen()
                        self._send(signum)
                ended = [p for p in self.programs
                         if p.process is not None and p.process.poll() is not None]
                if ended:
                    code = ended[0].process.returncode if ended[0].process else 1
                    self.say("program_ended", program=ended[0].name, code=code,
                             reason="it ended by itself: relay stops the others and exits")
                    status = code if code and code > 0 else EX_SOFTWARE
                    self.stop()
                    return status
                self.pump(0.1)
        finally:
            for signum in HANDLED:  # on the way out: a late signal must not kill the exit
                signal.signal(signum, signal.SIG_IGN)
            if self.pid_file:
                remove_pid_file(self.pid_file)

