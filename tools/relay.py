"""The `relay` command: E-MailRelay's command line, mapped onto relay-intake and relay-deliver.

    relay --as-server --port 10025 --spool-dir DIR         intake only (storage daemon)
    relay --as-client HOST:PORT --spool-dir DIR            forward what is due, then exit
    relay --as-proxy HOST:PORT --spool-dir DIR [--filter]  intake and deliver together

E-MailRelay's main switches are accepted with their long and short names and passed to
the program they belong to; switches about daemons and log destinations that do not
apply (relay always stays in the foreground and logs to stderr) are accepted and noted.
`relay --help --verbose` lists them all. Unknown switches: a clear error, exit 64.
Reads and writes nothing itself: the programs it runs do.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

from common.config import DEFAULT_SPOOL_DIR

EX_USAGE = os.EX_USAGE


@dataclass(frozen=True)
class Switch:
    """One E-MailRelay switch: where it goes (intake, deliver, both, mode or nowhere)."""

    name: str
    short: str | None
    takes_value: bool
    goes_to: str  # "intake" | "deliver" | "both" | "mode" | "ignored" | "help"
    help: str
    relay_name: str | None = None  # the relay flag it becomes, when it is spelt differently
    basic: bool = False


SWITCHES: tuple[Switch, ...] = (
    Switch("as-server", "d", False, "mode", "storage daemon: accept mail and spool it", basic=True),
    Switch("as-client", "q", True, "mode",
           "forward spooled mail to HOST:PORT, then exit", basic=True),
    Switch("as-proxy", "y", True, "mode",
           "accept mail and forward each message to HOST:PORT as soon as it is stored",
           basic=True),
    Switch("spool-dir", "s", True, "both", "the spool directory", basic=True),
    Switch("port", "p", True, "intake", "SMTP port to listen on", basic=True),
    Switch("forward-to", "o", True, "deliver", "the smarthost HOST:PORT", basic=True),
    Switch("help", "h", False, "help", "show help; with --verbose, every switch", basic=True),
    Switch("verbose", "v", False, "both", "more detail, the SMTP dialogue included", basic=True),
    Switch("interface", "I", True, "intake", "address to listen on (repeatable)"),
    Switch("remote-clients", "r", False, "intake", "allow clients that are not local"),
    Switch("domain", "D", True, "both", "this host's name in SMTP greetings and Received"),
    Switch("size", "M", True, "intake", "largest message accepted, in bytes"),
    Switch("filter", "z", True, "intake", "program run on each message as it is received"),
    Switch("filter-timeout", "W", True, "both", "seconds a filter may run"),
    Switch("address-verifier", "Y", True, "intake", "program that checks each recipient"),
    Switch("client-filter", "Z", True, "deliver", "program run on each message before sending"),
    Switch("server-auth", "S", True, "intake", "secrets file: clients must authenticate"),
    Switch("server-tls-certificate", "K", True, "intake", "PEM certificate for STARTTLS"),
    Switch("server-tls-key", None, True, "intake", "PEM private key for STARTTLS"),
    Switch("server-tls-required", None, False, "intake", "refuse mail before STARTTLS"),
    Switch("client-auth", "C", True, "deliver", "secrets file: authenticate to the smarthost"),
    Switch("client-tls", "j", False, "deliver", "use STARTTLS to the smarthost"),
    Switch("client-tls-connection", "b", False, "deliver", "implicit TLS to the smarthost"),
    Switch("client-tls-required", None, False, "deliver", "never send without TLS"),
    Switch("client-tls-verify", None, True, "deliver", "CA file to verify the smarthost"),
    Switch("client-tls-verify-name", None, True, "deliver", "the name the smarthost's "
           "certificate must be for"),
    Switch("client-tls-server-name", None, True, "deliver", "the name sent in the handshake"),
    Switch("client-tls-certificate", None, True, "deliver", "this client's PEM key and "
           "certificate"),
    Switch("server-tls-connection", None, False, "intake", "TLS from the first byte (465)"),
    Switch("server-tls-verify", None, True, "intake", "CA file to check client certificates"),
    Switch("tls-config", "9", True, "both", "TLS versions: tlsv1.2, -tlsv1.3"),
    Switch("poll", "O", True, "deliver", "seconds between spool scans"),
    Switch("idle-timeout", None, True, "intake", "seconds before an idle client is dropped"),
    Switch("pid-file", "i", True, "both", "write the process id to this file"),
    Switch("syslog", "k", False, "both", "also log to syslog (mail facility)"),
    Switch("no-syslog", "n", False, "ignored", "accepted: relay logs to syslog only with --syslog"),
    Switch("log", "l", False, "ignored", "accepted: relay always logs to stderr"),
    Switch("log-format", None, True, "both", "console, logfmt or json", relay_name="log-format"),
    Switch("no-daemon", "t", False, "ignored", "accepted: relay always stays in the foreground"),
    Switch("close-stderr", "e", False, "ignored", "accepted and ignored: logs go to stderr"),
    Switch("forward", "f", False, "ignored", "accepted: --as-client forwards already"),
    Switch("forward-on-disconnect", "1", False, "ignored",
           "accepted: --as-proxy forwards each message as soon as it is stored"),
    Switch("immediate", "m", False, "ignored", "accepted: see --forward-on-disconnect"),
    Switch("dont-serve", "x", False, "ignored", "accepted: --as-client does not serve"),
    Switch("check", None, False, "both", "load the configuration, secrets, certificates,"
           " filters and the spool; say what is wrong; exit 0 or 78 without starting"),
    Switch("admin", "a", True, "admin", "the admin interface on PORT (E-MailRelay's commands)"),
    Switch("admin-terminate", "Q", False, "admin", "the admin interface's terminate command"),
)
_BY_LONG = {switch.name: switch for switch in SWITCHES}
_BY_SHORT = {switch.short: switch for switch in SWITCHES if switch.short}


class UsageError(Exception):
    """A command line that relay cannot understand."""


@dataclass
class Plan:
    """What to run: mode, the smarthost, and the arguments for each program."""

    mode: str | None
    forward_to: str | None
    intake_args: list[str]
    deliver_args: list[str]
    wants_help: bool
    verbose: bool
    notes: list[str]
    admin: dict[str, str] = field(default_factory=dict)  # --admin, --admin-terminate


def parse(argv: Sequence[str]) -> Plan:
    """Map an E-MailRelay command line onto relay-intake and relay-deliver arguments."""
    plan = Plan(None, None, [], [], False, False, [])
    args = list(argv)
    index = 0
    while index < len(args):
        word = args[index]
        index += 1
        value: str | None = None
        if word.startswith("--"):
            name, eq, inline = word[2:].partition("=")
            switch = _BY_LONG.get(name)
            if switch is None:
                raise UsageError(f"unknown switch --{name} (see relay --help --verbose)")
            value = inline if eq else None
        elif word.startswith("-") and len(word) >= 2:
            switch = _BY_SHORT.get(word[1])
            if switch is None:
                raise UsageError(f"unknown switch {word[:2]} (see relay --help --verbose)")
            value = word[2:] or None
        else:
            raise UsageError(f"unexpected argument {word!r}: relay takes switches only")
        if switch.takes_value and value is None:
            if index >= len(args):
                raise UsageError(f"--{switch.name} needs a value")
            value = args[index]
            index += 1
        elif not switch.takes_value and value is not None:
            raise UsageError(f"--{switch.name} takes no value")
        _apply(plan, switch, value)
    return plan


def _apply(plan: Plan, switch: Switch, value: str | None) -> None:
    if switch.goes_to == "help":
        plan.wants_help = True
        return
    if switch.name == "verbose":
        plan.verbose = True
    if switch.goes_to == "mode":
        mode = switch.name
        if plan.mode and plan.mode != mode:
            raise UsageError(f"--{mode} cannot be combined with --{plan.mode}")
        plan.mode = mode
        if value is not None:
            plan.forward_to = value
        return
    if switch.goes_to == "admin":
        plan.admin[switch.name] = value or ""
        return
    if switch.goes_to == "ignored":
        plan.notes.append(f"--{switch.name} accepted: {switch.help.removeprefix('accepted: ')}")
        return
    flag = [f"--{switch.relay_name or switch.name}"] + ([value] if value is not None else [])
    if switch.name == "forward-to":
        plan.forward_to = value
        return
    if switch.goes_to in ("intake", "both"):
        plan.intake_args += flag
    if switch.goes_to in ("deliver", "both"):
        plan.deliver_args += flag


def help_text(verbose: bool) -> str:
    """The help: the basic switches, or every one with --verbose."""
    lines = [
        "usage: relay --as-server | --as-client HOST:PORT | --as-proxy HOST:PORT [switches]",
        "",
        "E-MailRelay's command line for relay. Switches:",
    ]
    for switch in SWITCHES:
        if not verbose and not switch.basic:
            continue
        short = f"-{switch.short}, " if switch.short else "    "
        value = " VALUE" if switch.takes_value else ""
        lines.append(f"  {short}--{switch.name}{value}".ljust(40) + f" {switch.help}")
    if not verbose:
        lines += ["", "relay --help --verbose lists every switch."]
    lines += [
        "",
        "relay-intake --help and relay-deliver --help list relay's own options.",
    ]
    return "\n".join(lines) + "\n"


def _program(module: str) -> list[str]:
    return [sys.executable, "-c", f"import sys; from {module} import main; sys.exit(main())"]


def run_proxy(intake_args: list[str], deliver_args: list[str]) -> int:
    """Run intake and deliver side by side until a signal (or one of them) ends them."""
    children = [
        subprocess.Popen([*_program("intake.main"), *intake_args]),
        subprocess.Popen([*_program("deliver.main"), *deliver_args]),
    ]
    stopping = False

    def forward(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        if signum in (signal.SIGTERM, signal.SIGINT):
            stopping = True
        targets = children[1:] if signum == signal.SIGUSR1 else children
        for child in targets:
            if child.poll() is None:
                child.send_signal(signum)

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1):
        signal.signal(signum, forward)
    status = 0
    while True:
        ended = [child for child in children if child.poll() is not None]
        if ended:
            if not stopping:
                status = ended[0].returncode or 1  # one died on its own: stop the other
                stopping = True
                for child in children:
                    if child.poll() is None:
                        child.terminate()
            if len(ended) == len(children):
                break
        time.sleep(0.1)
    if status == 0:
        status = max((child.returncode for child in children), default=0)
    return status if status > 0 else 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of `relay`."""
    arguments = sys.argv[1:] if argv is None else argv
    try:
        plan = parse(arguments)
    except UsageError as error:
        sys.stderr.write(f"relay: {error}\n")
        return EX_USAGE
    if plan.wants_help:
        sys.stdout.write(help_text(plan.verbose))
        return 0
    if plan.mode is None:
        sys.stderr.write("relay: give one of --as-server, --as-client HOST:PORT, --as-proxy"
                         " HOST:PORT (see relay --help)\n")
        return EX_USAGE
    for note in plan.notes:
        sys.stderr.write(f"relay: {note}\n")
    forward = ["--forward-to", plan.forward_to] if plan.forward_to else []
    admin = None
    if "admin" in plan.admin and plan.mode != "as-client":
        try:
            admin = _start_admin(plan, forward)
        except (ValueError, OSError) as error:
            sys.stderr.write(f"relay: {error}\n")
            return os.EX_CONFIG
    try:
        return _run(plan, forward)
    finally:
        if admin is not None:
            admin.stop()


def _check(plan: Plan, forward: list[str]) -> int:
    """--check: each program the mode would run checks what it would load; the worst code."""
    from deliver.main import main as deliver_main  # noqa: PLC0415 (load only what runs)
    from intake.main import main as intake_main  # noqa: PLC0415

    codes = []
    if plan.mode in ("as-server", "as-proxy"):
        codes.append(intake_main(plan.intake_args))
    if plan.mode in ("as-client", "as-proxy") or plan.forward_to:
        codes.append(deliver_main([*forward, *plan.deliver_args]))
    return max(codes, default=0)


def _start_admin(plan: Plan, forward: list[str]) -> Any:
    """--admin PORT: tools.admin's server for this relay (it stops with the program)."""
    from tools.admin import start_for_relay  # noqa: PLC0415 (load only what runs)

    def value(args: list[str], flag: str) -> str | None:
        return args[args.index(flag) + 1] if flag in args else None

    spool_dir = value(plan.intake_args, "--spool-dir") or DEFAULT_SPOOL_DIR
    deliver = None  # --as-proxy runs relay-deliver; --as-server has none, so a flush runs one
    if plan.mode == "as-server" and plan.forward_to:
        deliver = [*_program("deliver.main"), "--once", *forward, *plan.deliver_args]
    return start_for_relay(plan.admin["admin"], spool_dir=spool_dir,
                           forward_to=plan.forward_to,
                           with_terminate="admin-terminate" in plan.admin,
                           remote_clients="--remote-clients" in plan.intake_args,
                           deliver_command=deliver)


def _run(plan: Plan, forward: list[str]) -> int:
    if "--check" in plan.intake_args:
        return _check(plan, forward)
    if plan.mode == "as-server":
        from intake.main import main as intake_main  # noqa: PLC0415 (load only what runs)

        return intake_main(plan.intake_args)
    if plan.mode == "as-client":
        from deliver.main import main as deliver_main  # noqa: PLC0415 (load only what runs)

        status: int = deliver_main(["--once", *forward, *plan.deliver_args])
        return status
    return run_proxy(plan.intake_args, [*forward, *plan.deliver_args])


if __name__ == "__main__":
    sys.exit(main())
