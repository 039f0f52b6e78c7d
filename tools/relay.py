"""The `relay` command: E-MailRelay 2.6.1's command line, run as relay-intake + relay-deliver.

    relay --as-server [--forward-to HOST:PORT --poll N] ...   daemon: store; forward when told
    relay --as-proxy HOST:PORT ...                            daemon: store, then forward
    relay --as-client HOST:PORT --spool-dir DIR               forward the spool, then exit
    relay [switches] /etc/emailrelay.conf                     the switches of a config file

Every switch of `emailrelay --help --verbose` (`tools.emailrelay_switches`) is accepted with
its long name and letter; a few are refused with one line saying why (exit 64). `parse`
reads the command line (and the config file, E-MailRelay's "name value" lines) into the
switches given; `plan` decides, as E-MailRelay does, what runs: relay-intake unless
--dont-serve/--no-smtp; relay-deliver when there is a --forward-to, woken as the switches
say (--forward-on-disconnect: as mail arrives; --poll N: the whole spool every N s;
--forward: once at start; otherwise only on a flush: SIGUSR1 to `relay`, the trigger file,
the admin interface); --as-client: one flush in the foreground. Then `tools.daemon` runs
them, in the background unless --no-daemon. Reads the config file; the programs do the rest.
"""

from __future__ import annotations

import atexit
import os
import pwd
import shlex
import shutil
import socket
import ssl
import sys
import tempfile
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from common.config import DEFAULT_SPOOL_DIR, version
from common.process import DEFAULT_USER
from tools import daemon
from tools import emailrelay_switches as table
from tools.emailrelay_switches import NONE, OPTIONAL, REQUIRED, Switch

EX_USAGE = os.EX_USAGE
EMAILRELAY_VERSION = "2.6.1"  # the E-MailRelay whose command line this is

# Switches whose value is a file or directory: made absolute before the daemon leaves the
# working directory (E-MailRelay's @app is the directory of the `relay` executable).
_PATHS = ("spool-dir", "pid-file", "log-file", "filter", "client-filter", "address-verifier",
          "server-auth", "client-auth", "server-tls-certificate", "client-tls-verify",
          "client-tls-certificate", "server-tls-verify", "delivery-dir")
# Repeatable switches (all values kept); every other switch: the first value given wins.
_MULTI = ("interface", "server-tls-certificate", "filter", "client-filter",
          "client-tls-certificate")
_LOG_FIELDS = ("time", "unit", "address", "port", "msgid")
_RELAY_FORMATS = ("logfmt", "json", "console")
_SMTP_FEATURES = {
    "client-smtp-config": ("pipelining", "smtputf8strict", "eightbitstrict", "binarymimestrict"),
    "server-smtp-config": ("pipelining", "chunking", "smtputf8", "smtputf8strict",
                           "nostrictparsing", "noalabels"),
}


class UsageError(Exception):
    """A command line that relay cannot run (exit 64)."""


@dataclass
class Given:
    """The switches given (command line first, then the config file), by long name."""

    values: dict[str, list[str | None]] = field(default_factory=dict)
    config_file: str | None = None

    def add(self, name: str, value: str | None) -> None:
        self.values.setdefault(name, []).append(value)

    def has(self, name: str) -> bool:
        return name in self.values

    def value(self, name: str) -> str | None:
        found = self.values.get(name)
        return found[0] if found else None

    def all(self, name: str) -> list[str]:
        return [value for value in self.values.get(name, []) if value is not None]


def parse(argv: Sequence[str]) -> Given:
    """The switches of an E-MailRelay command line (and of its config file, if one is given)."""
    given = Given()
    args = list(argv)
    index = 0
    while index < len(args):
        word = args[index]
        index += 1
        if word.startswith("--") and len(word) > 2:
            name, eq, inline = word[2:].partition("=")
            switch = table.BY_LONG.get(name)
            if switch is None:
                raise UsageError(f"unknown switch --{name} (see relay --help --verbose)")
            value = inline if eq else None
            if switch.value == REQUIRED and value is None:
                if index >= len(args):
                    raise UsageError(f"--{name} needs a value")
                value = args[index]
                index += 1
            elif switch.value == NONE and value is not None:
                raise UsageError(f"--{name} takes no value")
            given.add(switch.name, value)
        elif word.startswith("-") and len(word) > 1:
            letters = word[1:]
            while letters:
                switch = table.BY_SHORT.get(letters[0])
                if switch is None:
                    raise UsageError(f"unknown switch -{letters[0]} (see relay --help --verbose)")
                letters = letters[1:]
                argument: str | None = None
                if switch.value == REQUIRED:
                    if letters:
                        argument, letters = letters, ""
                    elif index < len(args):
                        argument = args[index]
                        index += 1
                    else:
                        raise UsageError(f"-{switch.short} (--{switch.name}) needs a value")
                given.add(switch.name, argument)
        else:
            if given.config_file is not None or index < len(args):
                raise UsageError(f"unexpected argument {word!r}: only the config file may "
                                 "follow the switches")
            given.config_file = word
    if given.config_file is not None:
        read_config_file(given.config_file, given)
    return given


def read_config_file(path: str, given: Given) -> None:
    """E-MailRelay's config file: "name value" or "name" per line, '#' comments."""
    try:
        with open(path, encoding="utf-8") as handle:
            lines = handle.read().splitlines()
    except OSError as error:
        raise UsageError(f"config file {path}: {error.strerror or error}") from None
    except UnicodeDecodeError:
        raise UsageError(f"config file {path}: not UTF-8 text") from None
    for number, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, _, value = line.partition(" ")
        name = name.strip()
        text = value.strip() or None
        if text is not None and len(text) > 1 and text[0] == text[-1] and text[0] in "\"'":
            text = text[1:-1]
        switch = table.BY_LONG.get(name)
        where = f"config file {path} line {number}"
        if switch is None:
            raise UsageError(f"{where}: unknown switch {name!r}")
        if switch.value == REQUIRED and text is None:
            raise UsageError(f"{where}: {name} needs a value")
        if switch.value == NONE and text is not None:
            raise UsageError(f"{where}: {name} takes no value")
        given.add(name, text)


def _absolute(path: str) -> str:
    if path.startswith("@app"):
        path = os.path.dirname(os.path.abspath(sys.argv[0])) + path[len("@app"):]
    if ":" in path.split("/", 1)[0] and not path.startswith("/"):
        return path  # a filter spec like net:host:port or exit:0
    return os.path.abspath(os.path.expanduser(path))


@dataclass
class Plan:
    """What `relay` runs for one command line."""

    intake: list[str] | None = None  # relay-intake's arguments, or None: no SMTP server
    deliver: list[str] | None = None  # relay-deliver's arguments, or None
    deliver_once: bool = False  # --as-client / --dont-serve --forward: one flush, foreground
    daemon: bool = True
    close_stderr: bool = False
    pid_file: str | None = None
    user: str | None = None
    notes: list[str] = field(default_factory=list)
    # The admin interface (issue 16): its port and `admin=` addresses, for the module that
    # serves it (table.ADMIN_SUPPORT); its `flush` is `tools.daemon.Supervisor.flush`.
    immediate: list[str] | None = None  # --immediate: tools.immediate's deliver options
    admin_port: str | None = None
    admin_interfaces: list[str] = field(default_factory=list)
    admin_terminate: bool = False
    spool_dir: str | None = None
    forward_to: str | None = None
    remote_clients: bool = False
    flush_command: list[str] | None = None  # a one-off flush in the foreground (admin)
    check: bool = False  # --check: each program checks what it would load, nothing runs


def refuse_what_relay_does_not_do(given: Given) -> None:
    """UsageError naming the first switch relay refuses, with the reason."""
    for name in given.values:
        reason = table.refusal(table.BY_LONG[name])
        if reason is not None:
            raise UsageError(f"--{name}: {reason}")


def _features(name: str, text: str) -> list[str]:
    known = _SMTP_FEATURES[name]
    words = [word.strip().lstrip("+-") for word in text.split(",") if word.strip()]
    for word in words:
        if word not in known:
            raise UsageError(f"--{name}: unknown feature {word!r} (one of {', '.join(known)})")
    return words


def _default_interfaces(remote: bool) -> list[str]:
    """Without --interface: loopback, or (with --remote-clients) every address, IPv6 too."""
    if not remote:
        return ["127.0.0.1"]
    found = ["0.0.0.0"]
    if socket.has_ipv6:
        try:
            with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
                probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                probe.bind(("::", 0))
            found.append("::")
        except OSError:
            pass
    return found


def plan(given: Given) -> Plan:
    """Decide, as E-MailRelay does, what runs and with which arguments."""
    refuse_what_relay_does_not_do(given)
    has, value = given.has, given.value
    result = Plan()
    forward_to = value("forward-to")
    implied: set[str] = set()
    modes = [name for name in ("as-client", "as-proxy", "as-server") if has(name)]
    if len(modes) > 1:
        raise UsageError(f"--{modes[0]} cannot be combined with --{modes[1]}")
    if has("as-client"):
        forward_to = value("as-client")
        implied |= {"log", "no-syslog", "no-daemon", "dont-serve", "forward"}
    elif has("as-proxy"):
        forward_to = value("as-proxy")
        implied |= {"log", "close-stderr", "forward-on-disconnect"}
    elif has("as-server"):
        implied |= {"log", "close-stderr"}

    def on(name: str) -> bool:
        return has(name) or name in implied

    for name in ("forward", "forward-on-disconnect", "poll", "immediate"):
        if on(name) and not forward_to:
            raise UsageError(f"--{name} needs --forward-to")
    paths = {name: [_absolute(v) for v in given.all(name)] for name in _PATHS}

    # logging: every program gets the same switches
    logging: list[str] = []
    if on("verbose") or on("debug"):
        logging.append("--verbose")
    syslog = (has("syslog") or (on("log") and not on("no-syslog")))
    if syslog:
        logging += ["--syslog", "--syslog-facility", value("syslog") or "mail"]
    if paths["log-file"]:
        logging += ["--log-file", paths["log-file"][0]]
    log_time = on("log-time")
    for fields in given.all("log-format"):
        for item in (word.strip() for word in fields.split(",") if word.strip()):
            if item in _RELAY_FORMATS:
                logging += ["--log-format", item]
            elif item not in _LOG_FIELDS:
                raise UsageError(f"--log-format: unknown field {item!r} (time, unit, address, "
                                 "port, msgid; or logfmt, json, console)")
            log_time = log_time or item == "time"
    logging.append("--log-time" if log_time else "--no-log-time")
    result.close_stderr = on("close-stderr")

    # the process
    result.daemon = not on("no-daemon")
    result.pid_file = paths["pid-file"][0] if paths["pid-file"] else None
    spool = ["--spool-dir", paths["spool-dir"][0]] if paths["spool-dir"] else []
    user = value("user") or DEFAULT_USER
    if os.geteuid() == 0 and user != "root":
        try:
            pwd.getpwnam(user)
        except KeyError:
            raise UsageError(f"--user: no such user {user!r}") from None
        result.user = user
    common = [*spool, *logging]
    if result.user:
        common += ["--user", result.user]
    if result.close_stderr:
        common.append("--close-stderr")
    if has("localedir"):
        result.notes.append("--localedir: relay's messages are English only (nothing to load)")
    for name in ("client-smtp-config", "server-smtp-config"):
        for text in given.all(name):
            _features(name, text)
            result.notes.append(f"--{name}: accepted; relay's SMTP features are fixed "
                                "(see docs/emailrelay.md)")
    if has("prompt-timeout"):
        result.notes.append("--prompt-timeout: accepted; relay waits for the greeting up to "
                            "--connection-timeout")

    timeout_filter = ["--filter-timeout", value("filter-timeout") or ""] \
        if has("filter-timeout") else []
    # relay-intake
    serving = not on("dont-serve") and not on("no-smtp")
    if serving:
        args = [*common, "--port", value("port") or "25"]
        interfaces: list[str] = []
        for text in given.all("interface"):
            for item in (word.strip() for word in text.split(",") if word.strip()):
                kind, equals, address = item.partition("=")
                if not equals:
                    interfaces.append(item)
                elif kind == "smtp":
                    interfaces.append(address)
                elif kind == "admin":
                    result.admin_interfaces.append(address)
                elif kind != "pop":
                    raise UsageError(f"--interface: {item!r}: the qualifiers are smtp=, pop= "
                                     "and admin=")
        if not interfaces:
            interfaces = _default_interfaces(on("remote-clients"))
        for address in interfaces:
            args += ["--interface", address]
        if on("remote-clients"):
            args.append("--remote-clients")
        for name in ("domain", "size", "idle-timeout"):
            if has(name):
                args += [f"--{name}", value(name) or ""]
        if has("anonymous"):
            args += ["--anonymous", value("anonymous") or "vrfy,server,content,client"]
        for path in paths["filter"]:
            args += ["--filter", path]
        if paths["delivery-dir"]:
            args += ["--delivery-dir", paths["delivery-dir"][0]]
        if paths["address-verifier"]:
            args += ["--address-verifier", paths["address-verifier"][0]]
        args += timeout_filter
        if paths["server-auth"]:
            args += ["--server-auth", paths["server-auth"][0]]
        config = value("server-auth-config")
        if config is not None and _mechanisms_before_tls(config):
            args.append("--server-auth-insecure")
        certificates = paths["server-tls-certificate"]
        if on("server-tls") or on("server-tls-connection"):
            if not certificates:
                raise UsageError("--server-tls and --server-tls-connection need "
                                 "--server-tls-certificate")
            args += ["--server-tls-certificate", certificates[-1]]
            if len(certificates) > 1:
                args += ["--server-tls-key", certificates[0]]
        elif certificates:
            result.notes.append("--server-tls-certificate without --server-tls: STARTTLS is "
                                "not offered")
        for name in ("server-tls-required", "server-tls-connection", "check"):
            if on(name):
                args.append(f"--{name}")
        if paths["server-tls-verify"]:
            verify = given.value("server-tls-verify")
            args += ["--server-tls-verify",
                     "<default>" if verify == "<default>" else paths["server-tls-verify"][0]]
        if has("tls-config"):
            args += ["--tls-config", value("tls-config") or ""]
        result.intake = args
    # relay-deliver
    if forward_to and on("immediate") and result.intake is not None:
        result.immediate = _client_args(given, paths, forward_to, timeout_filter)
    if forward_to and (serving or on("forward") or on("no-smtp")):
        args = [*common, *_client_args(given, paths, forward_to, timeout_filter)]
        if not on("forward-to-some"):
            args.append("--forward-to-all")
        result.flush_command = [sys.executable, "-I", "-m", "deliver.main", *args,
                                "--once", "--flush"]
        if on("check"):
            args.append("--check")
        if on("dont-serve"):
            result.deliver_once = True
            args += ["--once", "--flush"]
        else:
            if not on("forward-on-disconnect"):
                args.append("--no-watch")
            if on("poll"):
                args += ["--flush-every", value("poll") or "0"]
            if on("forward"):
                args.append("--flush-at-start")
        result.deliver = args
    if result.deliver_once:
        result.daemon = False  # it ends once the spool is forwarded
    result.admin_port = value("admin")
    result.admin_terminate = on("admin-terminate")
    result.spool_dir = paths["spool-dir"][0] if paths["spool-dir"] else None
    result.forward_to = forward_to
    result.remote_clients = on("remote-clients")
    result.check = on("check")
    return result


def _client_args(given: Given, paths: dict[str, list[str]], forward_to: str,
                 timeout_filter: list[str]) -> list[str]:
    """relay-deliver's options for talking to the smarthost (deliver and --immediate)."""
    args = ["--forward-to", forward_to]
    for name in ("domain", "client-interface", "connection-timeout", "response-timeout",
                 "client-tls-server-name", "client-tls-verify-name", "tls-config"):
        if given.has(name):
            args += [f"--{name}", given.value(name) or ""]
    for path in paths["client-tls-certificate"]:
        args += ["--client-tls-certificate", path]
    for path in paths["client-filter"]:
        args += ["--client-filter", path]
    args += timeout_filter
    if paths["client-auth"]:
        args += ["--client-auth", paths["client-auth"][0]]
    for name in ("client-tls", "client-tls-connection", "client-tls-required"):
        if given.has(name):
            args.append(f"--{name}")
    verify = given.value("client-tls-verify")
    if verify is not None:
        args += ["--client-tls-verify",
                 "system" if verify == "<default>" else paths["client-tls-verify"][0]]
    return args


def _mechanisms_before_tls(config: str) -> bool:
    """--server-auth-config: True when the 'm:' list (mechanisms without TLS) is not empty."""
    for item in config.split(";"):
        key, _, mechanisms = item.strip().partition(":")
        if key.strip() == "m":
            return any(word.strip() for word in mechanisms.split(","))
    return False


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
    if the_plan.intake is not None:
        intake = list(the_plan.intake)
        if the_plan.immediate is not None:  # written by the daemon, removed when it ends
            intake += ["--filter", immediate_filter(the_plan.immediate)]
        programs.append(daemon.Program("relay-intake", "intake.main", intake))
    if the_plan.deliver is not None:
        programs.append(daemon.Program("relay-deliver", "deliver.main", the_plan.deliver))
    os.umask(0o007)  # spool files 0660 (and the log file), as E-MailRelay's
    group = pwd.getpwnam(the_plan.user).pw_gid if the_plan.user else None
    supervisor = daemon.Supervisor(programs, pid_file=the_plan.pid_file, pid_group=group,
                                   log=_own_log(the_plan))
    code = supervisor.start(detached=the_plan.daemon)
    if code != 0:
        daemon.tell_parent(str(code))
        return code
    try:
        admin = _start_admin(the_plan)  # once everything runs: its commands act at once
    except (ValueError, OSError) as error:
        sys.stderr.write(f"relay: {error}\n")
        supervisor.stop()
        daemon.tell_parent(str(os.EX_CONFIG))
        return os.EX_CONFIG
    daemon.tell_parent("ready")
    if the_plan.daemon:
        daemon.quiet_stdio(close_stderr=the_plan.close_stderr)
    try:
        return supervisor.run()
    finally:
        if admin is not None:
            admin.stop()


def _own_log(the_plan: Plan) -> Any:
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


def _start_admin(the_plan: Plan) -> Any:
    """--admin PORT: tools.admin's server in this process (terminate: SIGTERM to it)."""
    if the_plan.admin_port is None:
        return None
    from tools.admin import start_for_relay  # noqa: PLC0415 (load only what runs)

    return start_for_relay(the_plan.admin_port,
                           spool_dir=the_plan.spool_dir or DEFAULT_SPOOL_DIR,
                           forward_to=the_plan.forward_to,
                           with_terminate=the_plan.admin_terminate,
                           remote_clients=the_plan.remote_clients,
                           deliver_command=the_plan.flush_command)


def _check(the_plan: Plan) -> int:
    """--check: each program the plan would run checks what it would load; the worst code."""
    from deliver.main import main as deliver_main  # noqa: PLC0415 (load only what runs)
    from intake.main import main as intake_main  # noqa: PLC0415

    codes = []
    if the_plan.intake is not None:
        codes.append(intake_main(the_plan.intake))
    if the_plan.deliver is not None:
        deliver = the_plan.deliver if "--check" in the_plan.deliver else \
            [*the_plan.deliver, "--check"]
        codes.append(deliver_main(deliver))
    return max(codes, default=0)


def main(argv: list[str] | None = None) -> int:
    """Entry point of `relay`."""
    arguments = sys.argv[1:] if argv is None else argv
    try:
        given = parse(arguments)
        if given.has("help"):
            sys.stdout.write(help_text(given.has("verbose")))
            return 0
        if given.has("version"):
            sys.stdout.write(version_text(given.has("verbose")))
            return 0
        the_plan = plan(given)
    except UsageError as error:
        sys.stderr.write(f"relay: {error}\n")
        return EX_USAGE
    return run(the_plan)


if __name__ == "__main__":
    sys.exit(main())
