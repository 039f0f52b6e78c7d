"""Shared pieces of the benchmarks: sizes, processes, ports, memory figures, message bytes, rows.

Runs programs (relay's console scripts and bench's own helper processes) as subprocesses on
127.0.0.1, reads their memory from /proc/<pid>/status, and creates scratch spool directories
on the real disk (under --work-dir, /var/tmp by default, never tmpfs). Writes nothing
outside the work directory; touches no repository file.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

HOST = "127.0.0.1"
SENDER = "bench-sender@example.com"
RECIPIENT = "bench-rcpt@example.net"
TOKEN_HEADER = b"Message-ID: <"


@dataclass(frozen=True)
class Sizes:
    """How big each benchmark is; --quick shrinks everything to check that the code works."""

    runs: int = 3
    intake_messages: int = 5000
    intake_sessions: int = 20
    message_size: int = 4096
    drain_messages: int = 10_000
    concurrency: int = 4
    e2e_messages: int = 5000
    e2e_rate: float = 100.0
    e2e_seconds: float = 10.0
    big_spool_messages: int = 100_000
    big_spool_window: int = 10_000  # messages measured per round; 3 rounds: the first 30k
    big_message_size: int = 50 * 1024 * 1024
    idle_seconds: float = 3.0
    warmup_messages: int = 2000  # one untimed run first: see docs/performance.md, "warm-up"
    peers_messages: int = 5000
    sequential_messages: int = 1000
    burst_connections: int = 1000

    @classmethod
    def quick(cls) -> Sizes:
        return cls(
            runs=3,
            intake_messages=500,
            drain_messages=1000,
            e2e_messages=500,
            e2e_seconds=2.0,
            big_spool_messages=6000,
            big_spool_window=1000,
            big_message_size=5 * 1024 * 1024,
            idle_seconds=1.0,
            warmup_messages=200,
            peers_messages=300,
            sequential_messages=100,
            burst_connections=200,
        )


@dataclass
class Context:
    """What every benchmark gets: sizes, the scratch directory, and options."""

    sizes: Sizes
    work_dir: Path
    uvloop: bool = False
    loadgen_processes: int = 1
    profile: str | None = None  # "py-spy" or "cprofile": profile relay's processes
    notes: list[str] = field(default_factory=list)
    session: Path | None = None
    _spools: int = 0

    def scratch(self, prefix: str) -> Path:
        """A fresh 0700 directory on the real disk, for log files and results."""
        return Path(tempfile.mkdtemp(prefix=f"{prefix}-", dir=self._session()))

    def spool(self, name: str) -> Path:
        """A new, empty 0700 spool directory for one run of benchmark *name*.

        Nothing is deleted until the whole bench run ends (`close`): on ext4 without a
        journal (this machine's root file system) every file created within a few minutes
        after many deletions pays for a scan past the recently deleted inodes
        (`recently_deleted()` in the inode allocator), so one run's cleanup would slow the
        next run down. See docs/performance.md.
        """
        self._spools += 1
        path = self._session() / f"spool-{name}-{self._spools}"
        path.mkdir(mode=0o700)
        return path

    def file_creation_us(self, files: int = 1000) -> float:
        """Microseconds to create and write one 4 KiB file in a fresh spool right now.

        ~20-60 us normally; several hundred when the block group is full of recently
        deleted inodes (see `spool`), which makes intake's figures several times lower.
        """
        directory = self.spool("probe")
        data = b"x" * 4096
        started = time.perf_counter()
        for number in range(files):
            fd = os.open(directory / f"p{number}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            os.write(fd, data)
            os.close(fd)
        return 1e6 * (time.perf_counter() - started) / files

    def _session(self) -> Path:
        if self.session is None:
            self.session = Path(tempfile.mkdtemp(prefix="relay-bench-", dir=self.work_dir))
            if not mark_top_directory(self.session):
                self.notes.append(f"{self.session}: cannot set the top-directory flag (chattr"
                                  " +T); spools share the work directory's block group")
        return self.session

    def close(self, keep: bool = False) -> None:
        """Remove everything this run wrote under the work directory (unless *keep*)."""
        if self.session is not None and keep:
            print(f"kept for inspection: {self.session}")
        elif self.session is not None:
            shutil.rmtree(self.session, ignore_errors=True)
            self.session = None

    def helper_flags(self) -> list[str]:
        return ["--uvloop"] if self.uvloop else []

    def relay_flags(self) -> list[str]:
        """relay's programs run on the same event loop as bench's servers and clients."""
        return ["--event-loop", "uvloop" if self.uvloop else "asyncio"]


@dataclass
class Row:
    """One line of the result table: relay's figure, its baseline's, and their ratio.

    The ratio is the median of the per-round ratios (not the ratio of the medians).
    """

    bench: str
    figure: str
    relay: float | None
    baseline: float | None
    unit: str
    ratio: float | None = None
    target: str = ""
    met: bool | None = None
    note: str = ""


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile (fraction in 0..1) of a non-empty sequence."""
    ordered = sorted(values)
    index = max(0, min(len(ordered) - 1, round(fraction * len(ordered) + 0.5) - 1))
    return ordered[index]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


def message_bytes(token: str, size: int) -> bytes:
    """A plain RFC 5322 message of about *size* bytes, CRLF line ends, no line starting '.'.

    The token (unique per message) is in the Message-ID header, where sinks look for it.
    """
    head = (
        f"From: <{SENDER}>\r\nTo: <{RECIPIENT}>\r\nSubject: relay benchmark\r\n"
        f"Message-ID: <{token}@bench.relay>\r\nDate: Tue, 24 Nov 2026 12:00:00 +0000\r\n"
        "MIME-Version: 1.0\r\nContent-Type: text/plain\r\n\r\n"
    ).encode()
    return head + body_bytes(max(0, size - len(head)))


_LINE = b"x" * 76 + b"\r\n"


def body_bytes(size: int) -> bytes:
    """About *size* bytes (a byte or two less) of 78-byte text lines, ending with CRLF."""
    full, rest = divmod(max(size, 2), len(_LINE))
    tail = b"y" * (rest - 2) + b"\r\n" if rest >= 3 else b""
    return _LINE * full + tail or b"\r\n"


def token_of(content: bytes) -> str | None:
    """The token of a benchmark message (from its Message-ID), or None."""
    start = content.find(TOKEN_HEADER)
    if start < 0:
        return None
    start += len(TOKEN_HEADER)
    end = content.find(b"@", start, start + 200)
    return content[start:end].decode("ascii", "replace") if end > 0 else None


def script(name: str) -> str:
    """Path to a console script of this virtualenv (relay-intake, relay-deliver)."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(f"{name} is not installed (run make bench, or pip install -e .)")
    return found


def relay_available(name: str) -> str | None:
    """None when the console script *name* runs (`--help` exits 0), else the reason why not."""
    try:
        path = script(name)
    except FileNotFoundError as error:
        return str(error)
    try:
        done = subprocess.run(
            [path, "--help"], capture_output=True, timeout=30, check=False
        )
    except subprocess.TimeoutExpired:
        return f"{name} --help did not answer in 30 s"
    if done.returncode != 0:
        last = done.stderr.decode(errors="replace").strip().splitlines()[-1:]
        return f"{name} --help failed ({done.returncode}): {' '.join(last)}"
    return None


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of one live process, in KiB."""
    values: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0])
    return values


def cpu_times(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds one live process (all its threads) has used so far."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / ticks, int(fields[12]) / ticks


def process_tree(pid: int) -> list[int]:
    """*pid* and its live descendants (a program may run helper processes of its own)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                parent = int(stat.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(parent, []).append(int(entry))
    tree, queue = [], [pid]
    while queue:
        current = queue.pop()
        tree.append(current)
        queue.extend(children.get(current, []))
    return tree


def tree_memory_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM summed over *pid* and its descendants ("processes": how many)."""
    total = {"VmRSS": 0, "VmHWM": 0, "processes": 0}
    for member in process_tree(pid):
        with contextlib.suppress(OSError, KeyError):
            values = memory_kib(member)
            total["VmRSS"] += values["VmRSS"]
            total["VmHWM"] += values["VmHWM"]
            total["processes"] += 1
    return total


def tree_cpu_times(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of *pid* and its live descendants."""
    user = system = 0.0
    for member in process_tree(pid):
        with contextlib.suppress(OSError, IndexError, ValueError):
            member_user, member_system = cpu_times(member)
            user += member_user
            system += member_system
    return user, system


class Process:
    """A subprocess with its stderr in a log file; stopped by SIGTERM, then SIGKILL."""

    def __init__(
        self,
        argv: Sequence[str],
        log_path: Path,
        *,
        stdout_lines: bool = False,
        env: dict[str, str] | None = None,
        sample_memory: bool = False,
    ) -> None:
        self.argv = list(argv)
        self.log_path = log_path
        self._log: TextIO = open(log_path, "w")  # noqa: SIM115 - closed in stop()
        self.started = time.monotonic()
        self.popen = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE if stdout_lines else subprocess.DEVNULL,
            stderr=self._log,
            text=True,
            env=env,
        )
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._reader: threading.Thread | None = None
        if stdout_lines:
            self._reader = threading.Thread(target=self._read_lines, daemon=True)
            self._reader.start()
        # Peak RSS and CPU of a process that exits by itself (--once) cannot be read
        # afterwards: sample them while it runs and keep the last values.
        self.peak_kib = 0
        self.last_cpu = (0.0, 0.0)
        if sample_memory:
            threading.Thread(target=self._sample_memory, daemon=True).start()

    def _sample_memory(self) -> None:
        members: list[int] = []
        refreshed = 0.0
        while self.popen.poll() is None:
            now = time.monotonic()
            if now - refreshed > 1.0:  # a /proc walk costs a few ms: not every sample
                members, refreshed = process_tree(self.pid), now
            peak = 0
            user = system = 0.0
            for member in members:
                with contextlib.suppress(OSError, KeyError, IndexError, ValueError):
                    peak += memory_kib(member)["VmHWM"]
                    member_user, member_system = cpu_times(member)
                    user, system = user + member_user, system + member_system
            self.peak_kib = max(self.peak_kib, peak)
            if user + system >= sum(self.last_cpu):
                self.last_cpu = (user, system)
            time.sleep(0.1)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def _read_lines(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def wait_line(self, predicate: Any, timeout: float) -> str:
        """The first stdout line (old or new) for which predicate(line) is true."""
        deadline = time.monotonic() + timeout
        seen = 0
        with self._changed:
            while True:
                while seen < len(self.lines):
                    line = self.lines[seen]
                    seen += 1
                    if predicate(line):
                        return line
                remaining = deadline - time.monotonic()
                if remaining <= 0 or (self.popen.poll() is not None and seen == len(self.lines)):
                    raise BenchError(
                        f"{self.name()}: no expected output line within {timeout:.0f} s"
                        f" (exit {self.popen.poll()}); see {self.log_path}\n{self.log_tail()}"
                    )
                self._changed.wait(min(remaining, 0.2))

    def name(self) -> str:
        return Path(self.argv[0]).name if "-m" not in self.argv else self.argv[2]

    def log_tail(self, lines: int = 8) -> str:
        self._log.flush()
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(text[-lines:])

    def memory_kib(self) -> dict[str, int]:
        """VmRSS and VmHWM summed over the process and its descendants."""
        return tree_memory_kib(self.pid)

    def cpu_times(self) -> tuple[float, float]:
        """CPU (user, system) of the process and its live descendants."""
        return tree_cpu_times(self.pid)

    def check_alive(self) -> None:
        code = self.popen.poll()
        if code is not None:
            raise BenchError(f"{self.name()} exited with {code}; see {self.log_path}\n"
                             f"{self.log_tail()}")

    def wait(self, timeout: float) -> int:
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            raise BenchError(f"{self.name()} did not finish within {timeout:.0f} s; "
                             f"see {self.log_path}") from None

    def stop(self, timeout: float = 15.0) -> int | None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
        if self._reader is not None:
            self._reader.join(5)
        self._log.close()
        return self.popen.returncode


class BenchError(Exception):
    """A benchmark could not be measured (a process failed, a count did not add up)."""


def wait_for_port(port: int, process: Process | None, timeout: float = 20.0,
                  name: str = "") -> None:
    """Wait until something accepts connections on 127.0.0.1:*port* (and read its greeting).

    *process* (when bench started the server itself) must stay alive meanwhile.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None:
            process.check_alive()
        try:
            with socket.create_connection((HOST, port), timeout=2) as connection:
                connection.recv(512)  # the 220 greeting: the server is really serving
                connection.sendall(b"QUIT\r\n")
                return
        except OSError:
            time.sleep(0.05)
    raise BenchError(f"{process.name() if process else name} did not listen on {port}"
                     f" within {timeout:.0f} s")


def helper(module: str, *args: str) -> list[str]:
    """argv running one of bench's helper modules with this interpreter."""
    return [sys.executable, "-m", f"bench.{module}", *args]


def count_files(directory: Path, suffix: str) -> int:
    with os.scandir(directory) as listing:
        return sum(1 for item in listing if item.name.endswith(suffix))


_FS_IOC_GETFLAGS, _FS_IOC_SETFLAGS, _FS_TOPDIR_FL = 0x80086601, 0x40086602, 0x00020000


def mark_top_directory(path: Path) -> bool:
    """`chattr +T`: ext4 places each new subdirectory in a block group of its own.

    Each benchmark's spool then starts in an inode table that nobody else has just freed
    inodes in; in a block group where other programs deleted many files in the last
    minutes, every file creation on ext4 without a journal is several times slower (see
    docs/performance.md). False where the file system does not support the flag.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return False
    try:
        current = fcntl.ioctl(fd, _FS_IOC_GETFLAGS, struct.pack("l", 0))
        flags = struct.unpack("l", current)[0]
        fcntl.ioctl(fd, _FS_IOC_SETFLAGS, struct.pack("l", flags | _FS_TOPDIR_FL))
    except OSError:
        return False
    finally:
        os.close(fd)
    return True


def remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def empty_directory(path: Path) -> None:
    """Unlink every file in *path* (a spool between runs), keeping the directory."""
    with os.scandir(path) as listing:
        for item in listing:
            if item.is_dir(follow_symlinks=False):
                shutil.rmtree(item.path, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(item.path)


@contextlib.contextmanager
def processes() -> Iterator[list[Process]]:
    """Every Process appended to the yielded list is stopped on the way out."""
    started: list[Process] = []
    try:
        yield started
    finally:
        for process in reversed(started):
            process.stop()


def parse_json_line(text: str) -> dict[str, Any]:
    value = json.loads(text)
    if not isinstance(value, dict):
        raise BenchError(f"expected a JSON object, got {text[:80]!r}")
    return value


def project_root() -> Path:
    return Path(__file__).resolve().parent.parent


def python_env() -> dict[str, str]:
    """The environment for helper processes: bench importable from the project root."""
    env = dict(os.environ)
    root = str(project_root())
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env
