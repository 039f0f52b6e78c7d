"""The systems a user would pick instead of relay, run as bench's baselines: Postfix, E-MailRelay.

Each `System` listens on 127.0.0.1, stores what it is sent into a queue of its own under
the run's scratch directory (never a system directory), says how many messages it holds
and how much CPU its processes used, and is stopped by bench:

- `RelayIntake`: relay-intake through its console script (`bench.harness.start_intake`).
- `Postfix`: a throwaway instance of Debian's Postfix: its own `main.cf` and `master.cf`
  in a temporary config directory, its own queue and data directories, `relayhost` to the
  bench sink (when one is given), chroot off, logging to a file of its own (postlogd);
  started with `postfix -c DIR start` and stopped with `postfix -c DIR stop`. It never
  reads or touches /etc/postfix or a running system instance. For intake figures every
  message is put on hold (`check_client_access static:HOLD`): stored and fsynced like any
  other, but not delivered, as relay-intake alone and E-MailRelay `--as-server` do not.
- `EmailRelay`: E-MailRelay 2.6.1 `--as-server --no-daemon` when `EMAILRELAY_BIN` names its
  binary (docs/performance.md says how to build one). It never fsyncs.

CPU figures count each system's whole process tree, children that have already exited
included (Postfix's smtpd processes come and go). Writes only under the scratch directory.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from pathlib import Path

from bench.common import (
    HOST,
    BenchError,
    Context,
    Process,
    count_files,
    free_port,
    process_tree,
    wait_for_port,
)
from bench.harness import start_intake

EMAILRELAY_ENV = "EMAILRELAY_BIN"
POSTFIX_SERVICES = """\
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU of *pid* and its descendants, the exited (reaped) ones included."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for member in process_tree(pid):
        with contextlib.suppress(OSError, IndexError, ValueError):
            with open(f"/proc/{member}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
            total += sum(int(value) for value in fields[11:15])  # utime stime cutime cstime
    return total / ticks


def postfix_program() -> str | None:
    """Postfix's `postfix` command, or None when Debian's postfix package is not installed."""
    return shutil.which("postfix") or next(
        (path for path in ("/usr/sbin/postfix",) if os.access(path, os.X_OK)), None)


def emailrelay_program() -> str | None:
    """The E-MailRelay binary named by EMAILRELAY_BIN, or None."""
    path = os.environ.get(EMAILRELAY_ENV, "")
    return path if path and os.access(path, os.X_OK) else None


class System:
    """A running SMTP server under test: its port, its queue, its CPU."""

    name = "system"
    durable = True  # fsyncs a message before its 250

    def __init__(self) -> None:
        self.port = 0

    def stored(self) -> int:
        raise NotImplementedError

    def cpu_seconds(self) -> float:
        raise NotImplementedError

    def pids(self) -> list[int]:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError


class SpoolServer(System):
    """A system that is one process (and its children) keeping `.envelope` files in a spool."""

    process: Process
    spool: Path

    def stored(self) -> int:
        return count_files(self.spool, ".envelope")

    def cpu_seconds(self) -> float:
        return tree_cpu_seconds(self.process.pid)

    def pids(self) -> list[int]:
        return process_tree(self.process.pid)

    def stop(self) -> None:
        self.process.stop()


class RelayIntake(SpoolServer):
    """relay-intake with a fresh spool; *extra* options as given (e.g. --processes 1)."""

    def __init__(self, ctx: Context, *extra: str, name: str = "relay") -> None:
        super().__init__()
        self.name = name
        self.spool = ctx.spool("peers-relay")
        self.logs = ctx.scratch("peers-relay-logs")
        self.process, self.port = start_intake(ctx, self.spool, self.logs, *extra)


class EmailRelay(SpoolServer):
    """E-MailRelay --as-server with a fresh spool directory (it never fsyncs)."""

    name = "E-MailRelay"
    durable = False

    def __init__(self, ctx: Context, program: str, *, forward_port: int | None = None) -> None:
        """--as-server; with *forward_port*, also forwarding there after each client's
        disconnection and every second (`--forward-on-disconnect --poll 1`)."""
        super().__init__()
        self.spool = ctx.spool("peers-emailrelay")
        logs = ctx.scratch("peers-emailrelay-logs")
        self.port = free_port()
        forward = ([] if forward_port is None else
                   ["--forward-to", f"{HOST}:{forward_port}", "--forward-on-disconnect",
                    "--poll", "1"])
        self.process = Process(
            [program, "--as-server", "--no-daemon", "--no-syslog", "--port", str(self.port),
             "--interface", HOST, "--spool-dir", str(self.spool), "--domain", "emailrelay.bench",
             "--log-file", str(logs / "emailrelay.log"), "--pid-file", str(logs / "pid"),
             *forward],
            logs / "emailrelay.stderr")
        wait_for_port(self.port, self.process)


class Postfix(System):
    """A throwaway Postfix instance: own config, queue and data directories, own port.

    *relay_port*: where it forwards (relayhost); without it every message is held (intake
    figures). *limits*: smtpd processes at most (Postfix's default_process_limit, 100).
    """

    name = "Postfix"

    def __init__(self, ctx: Context, *, relay_port: int | None = None,
                 process_limit: int = 100) -> None:
        super().__init__()
        program = postfix_program()
        if program is None:
            raise BenchError("postfix is not installed (apt-get install postfix)")
        self.program = program
        self.base = ctx.spool("peers-postfix")
        os.chmod(self.base, 0o755)
        # Postfix's daemons drop to the postfix user and open data_directory by its full
        # path: every directory above it must let them through.
        for parent in (self.base.parent, *self.base.parent.parents):
            if parent == ctx.work_dir or parent == Path("/"):
                break
            os.chmod(parent, os.stat(parent).st_mode | 0o111)
        self.config = self.base / "config"
        self.queue = self.base / "queue"
        data = self.base / "data"
        for directory in (self.config, self.queue, data):
            directory.mkdir()
        shutil.chown(data, "postfix")
        self.data = data
        self.log = self.base / "maillog"
        self.port = free_port()
        self.process_limit = process_limit
        self._configure(relay_port)
        self._postfix("check")
        self._start()

    def _configure(self, relay_port: int | None) -> None:
        hold = "" if relay_port else "smtpd_client_restrictions = check_client_access static:HOLD\n"
        relayhost = f"[{HOST}]:{relay_port}" if relay_port else f"[{HOST}]:9"
        (self.config / "main.cf").write_text(
            "compatibility_level = 3.6\n"
            f"queue_directory = {self.queue}\n"
            f"data_directory = {self.data}\n"
            "mail_owner = postfix\nsetgid_group = postdrop\n"
            "myhostname = postfix.bench\nmydomain = bench\nmyorigin = $myhostname\n"
            "mydestination =\nlocal_recipient_maps =\nalias_maps =\nalias_database =\n"
            f"inet_interfaces = {HOST}\ninet_protocols = ipv4\nmynetworks = 127.0.0.0/8\n"
            f"relayhost = {relayhost}\n"
            "smtpd_relay_restrictions = permit_mynetworks, reject\n"
            f"{hold}"
            f"maillog_file = {self.log}\n"
            f"default_process_limit = {self.process_limit}\n"
            "smtp_dns_support_level = disabled\nbiff = no\n"
        )
        (self.config / "master.cf").write_text(
            f"{HOST}:{self.port} inet n - n - - smtpd\n" + POSTFIX_SERVICES)

    def _start(self) -> None:
        self._postfix("start")
        deadline = time.monotonic() + 30
        self.master = 0
        while time.monotonic() < deadline and not self.master:
            with contextlib.suppress(OSError, ValueError):
                self.master = int((self.queue / "pid" / "master.pid").read_text().split()[0])
            if not os.path.exists(f"/proc/{self.master}"):
                self.master = 0
            time.sleep(0.05)
        if not self.master:
            raise BenchError(f"postfix did not start; see {self.log}")
        wait_for_port(self.port, None, timeout=30, name="postfix")

    def release_to(self, relay_port: int) -> float:
        """Restart forwarding to *relay_port*, release every held message and flush the
        queue; returns when the release began (time.monotonic)."""
        self.stop()
        self._configure(relay_port)
        self._start()
        started = time.monotonic()
        for command in (["postsuper", "-c", str(self.config), "-H", "ALL"],
                        ["postqueue", "-c", str(self.config), "-f"]):
            done = subprocess.run(command, capture_output=True, text=True, timeout=120,
                                  check=False)
            if done.returncode != 0:
                raise BenchError(f"{command[0]} failed: {done.stderr.strip()[-300:]}")
        return started

    def _postfix(self, command: str) -> None:
        done = subprocess.run([self.program, "-c", str(self.config), command],
                              capture_output=True, text=True, timeout=120, check=False)
        if done.returncode != 0:
            raise BenchError(f"postfix {command} failed: {done.stderr.strip()[-300:]}")

    def stored(self) -> int:
        """Messages in its queue, on hold or waiting (every queue file counts once)."""
        total = 0
        for name in ("hold", "incoming", "active", "deferred", "maildrop"):
            for _root, _dirs, files in os.walk(self.queue / name):
                total += len(files)
        return total

    def cpu_seconds(self) -> float:
        return tree_cpu_seconds(self.master)

    def pids(self) -> list[int]:
        return process_tree(self.master)

    def stop(self) -> None:
        with contextlib.suppress(BenchError, subprocess.TimeoutExpired):
            self._postfix("stop")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and os.path.exists(f"/proc/{self.master}"):
            time.sleep(0.05)
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.master, 9)
