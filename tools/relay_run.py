"""Running what `tools.relay.plan` decided: the daemon, the admin interface, --check, help.

`run` starts each instance's relay-intake and relay-deliver through one `tools.daemon`
(detached unless --no-daemon), writes the `--immediate` filter scripts when asked, starts
each instance's `tools.admin` once everything listens, logs relay's own lines with the
programs' logging switches, and exits with emailrelay's codes for a failed start (1, or 2
for an address that cannot be bound); `help_text`
and `version_text` are `relay --help` and `relay --version` (E-MailRelay's shape). Writes
the `--immediate` script (removed at exit) and, through `tools.daemon`, the pid file.
"""

from __future__ import annotations

import atexit
import errno
import os
import pwd
import shlex
import shutil
import ssl
import sys
import tempfile
import textwrap
from typing import TYPE_CHECKING, Any

from common.config import DEFAULT_SPOOL_DIR, version
from tools import daemon
from tools import emailrelay_switches as table
from tools.emailrelay_switches import NONE, OPTIONAL, Switch

if TYPE_CHECKING:
    from common.logs import Logger
    from tools.relay import Plan

EMAILRELAY_VERSION = "2.6.1"  # the E-MailRelay whose command line this is
# emailrelay 2.6.1 exits 2 when it cannot bind a listening address, 1 for any other failure
EX_BIND = 2
EX_FAILURE = 1
_BIND_ERRORS = (errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.EACCES)


def emailrelay_code(code: int) -> int:
    """A program's failure to start, as emailrelay exits for it: 2 when an address cannot
    be bound (relay-intake's own 2), 1 for anything else (a bad setting, 78, included)."""
    return code if code in (0, EX_BIND) else EX_FAILURE


def help_text(verbose: bool) -> str:
    """The help: the basic switches, or (with --verbose) every one, grouped as E-MailRelay."""
    lines = [f"relay {version()}: E-MailRelay {EMAILRELAY_VERSION}'s command line", "",
             "usage: relay [<switch> ...] [<config-file>]", ""]
    for group in table.GROUPS:
        switches = [s for s in table.SWITCHES if s.group == group]
        if not verbose and group != table.BASIC:
            continue
        lines.append(group)
        for switch in switches:
            lines.append(_help_line(switch))
        lines.append("")
    if not verbose:
        lines.append("relay --help --verbose lists every switch.")
    else:
        lines.append("Refused switches exit 64 with the reason; docs/emailrelay.md has them all.")
    return "\n".join(lines) + "\n"


def _help_line(switch: Switch) -> str:
    short = f"-{switch.short}, " if switch.short else "    "
    metavar = f"=<{switch.metavar or 'value'}>"
    value = "" if switch.value == NONE else (f"[{metavar}]" if switch.value == OPTIONAL
                                             else metavar)
    reason = table.refusal(switch)
    text = switch.help + (f" [refused: {reason}]" if reason else "")
    lines = textwrap.wrap(text, 58, break_on_hyphens=False) or [""]
    first = f"  {short}--{switch.name}{value}"
    head = first.ljust(40) + " " + lines[0] if len(first) < 40 else first + "\n" + \
        " " * 41 + lines[0]
    return "\n".join([head, *(" " * 41 + line for line in lines[1:])])


def version_text(verbose: bool) -> str:
    """`relay --version`: E-MailRelay's shape; with --verbose the build's features."""
    lines = [f"relay V{version()} (E-MailRelay {EMAILRELAY_VERSION} command line)"]
    if verbose:
        try:
            import uvloop  # noqa: F401, PLC0415 (only to say whether it is there)

            loop = "uvloop"
        except ImportError:
            loop = "asyncio"
        lines += [
            "",
            f"Python: {sys.version.split()[0]}",
            f"Event loop: {loop}",
            "Multi-threading: enabled (storage and delivery threads)",
            "Unix domain sockets: disabled",
            "POP server: disabled",
            f"Admin server: {'enabled' if table.ADMIN_SUPPORT else 'disabled'}",
            f"TLS library: {ssl.OPENSSL_VERSION}",
        ]
    return "\n".join(lines) + "\n"


def immediate_filter(client_args: list[str]) -> str:
    """Write the --immediate filter: a script running `tools.immediate` with *client_args*,
    in a directory of its own (0755, root's when started as root, removed at exit)."""
    folder = tempfile.mkdtemp(prefix="relay-immediate-")
    os.chmod(folder, 0o755)  # noqa: S103 (the --user runs it; only root may write)
    atexit.register(shutil.rmtree, folder, True)
    script = os.path.join(folder, "forward-now")
    command = " ".join(shlex.quote(word) for word in
                       [sys.executable, "-I", "-m", "tools.immediate", *client_args, "--"])
    with open(script, "w", encoding="utf-8") as handle:
        handle.write(f'#!/bin/sh\n# relay --immediate: forward, then answer the client\n'
                     f'exec {command} "$@"\n')
    os.chmod(script, 0o755)  # noqa: S103 (the --user runs it; only root may write)
    return script


def _run_deliver_once(args: list[str]) -> int:
    from deliver.main import main as deliver_main  # noqa: PLC0415 (load only what runs)

    return deliver_main(args)


def run(the_plan: Plan) -> int:
    """Run the plan: a flush in the foreground, or the programs (as a daemon by default)."""
    for note in the_plan.notes:
        sys.stderr.write(f"relay: {note}\n")
    if the_plan.check:
        return _check(the_plan)
    if the_plan.deliver_once:
        assert the_plan.deliver is not None
        return _run_deliver_once(the_plan.deliver)
    if the_plan.intake is None and the_plan.deliver is None:
        return 0  # --dont-serve without --forward: nothing to do, as E-MailRelay
    if the_plan.daemon:
        code = daemon.detach()
        if code is not None:
            return code  # the parent: the daemon is ready (0) or failed
        os.chdir("/")
    programs = []
    for unit in [the_plan, *the_plan.more]:  # each instance's programs, in order
        tag = f"[{unit.name}]" if unit.name else ""
        if unit.intake is not None:
            intake = list(unit.intake)
            if unit.immediate is not None:  # written by the daemon, removed when it ends
                intake += ["--filter", immediate_filter(unit.immediate)]
            programs.append(daemon.Program(f"relay-intake{tag}", "intake.main", intake))
        if unit.deliver is not None:
            programs.append(daemon.Program(f"relay-deliver{tag}", "deliver.main", unit.deliver))
    os.umask(0o007)  # spool files 0660 (and the log file), as E-MailRelay's
    group = pwd.getpwnam(the_plan.user).pw_gid if the_plan.user else None
    supervisor = daemon.Supervisor(programs, pid_file=the_plan.pid_file, pid_group=group,
                                   log=_own_log(the_plan),
                                   with_events=the_plan.admin_port is not None)
    code = supervisor.start(detached=the_plan.daemon)
    if code != 0:
        code = emailrelay_code(code)
        daemon.tell_parent(str(code))
        return code
    admins: list[Any] = []
    try:
        for unit in [the_plan, *the_plan.more]:  # once everything runs
            admins.append(_start_admin(unit, supervisor.event_fd))
    except (ValueError, OSError) as error:
        sys.stderr.write(f"relay: {error}\n")
        for admin in admins:
            if admin is not None:
                admin.stop()
        supervisor.stop()
        code = EX_BIND if isinstance(error, OSError) and error.errno in _BIND_ERRORS \
            else EX_FAILURE
        daemon.tell_parent(str(code))
        return code
    for unit, admin in zip([the_plan, *the_plan.more], admins, strict=True):
        if admin is not None and supervisor.log is not None:  # E-MailRelay: "admin server on"
            supervisor.log.info("admin_started", listen=admin.addresses,
                                **({"unit": unit.name} if unit.name else {}))
    if admins[0] is not None:  # every instance's events, for the first one's `notify`,
        supervisor.on_event = admins[0].publish  # as E-MailRelay's
    daemon.tell_parent("ready")
    if the_plan.daemon:
        daemon.quiet_stdio(close_stderr=the_plan.close_stderr)
    try:
        return supervisor.run()
    finally:
        for admin in admins:
            if admin is not None:
                admin.stop()


def _own_log(the_plan: Plan) -> Logger | None:
    """relay's own logger, with the programs' logging switches (file, syslog, format)."""
    from common.logs import setup_logging  # noqa: PLC0415 (the daemon only)

    args = the_plan.intake or the_plan.deliver or []

    def value(flag: str) -> str | None:
        return args[args.index(flag) + 1] if flag in args else None

    try:
        return setup_logging("relay", log_format=value("--log-format") or "logfmt",
                             syslog="--syslog" in args, verbose="--verbose" in args,
                             log_file=value("--log-file"), log_time="--log-time" in args,
                             syslog_facility=value("--syslog-facility") or "mail")
    except (OSError, ValueError):
        return None  # the programs report it (they open the same file) and exit 78


def _start_admin(the_plan: Plan, event_fd: int | None) -> Any:
    """--admin PORT: tools.admin's server in this process (terminate: SIGTERM to it);
    *event_fd* is the supervisor's event pipe, for a one-off relay-deliver's events."""
    if the_plan.admin_port is None:
        return None
    from tools.admin import start_for_relay  # noqa: PLC0415 (load only what runs)

    return start_for_relay(the_plan.admin_port,
                           spool_dir=the_plan.spool_dir or DEFAULT_SPOOL_DIR,
                           forward_to=the_plan.forward_to,
                           with_terminate=the_plan.admin_terminate,
                           remote_clients=the_plan.remote_clients,
                           deliver_command=the_plan.flush_command,
                           smtp_listening=tuple(the_plan.smtp_listening),
                           interfaces=tuple(the_plan.admin_interfaces),
                           event_fd=event_fd)


def _check(the_plan: Plan) -> int:
    """--check: each program the plan would run checks what it would load; the worst code."""
    from deliver.main import main as deliver_main  # noqa: PLC0415 (load only what runs)
    from intake.main import main as intake_main  # noqa: PLC0415

    codes = []
    for unit in [the_plan, *the_plan.more]:
        if unit.intake is not None:
            codes.append(intake_main(unit.intake))
        if unit.deliver is not None:
            deliver = unit.deliver if "--check" in unit.deliver else [*unit.deliver, "--check"]
            codes.append(deliver_main(deliver))
    return max(codes, default=0)
