"""The `relay` command: E-MailRelay 2.6.1's command line, run as relay-intake + relay-deliver.

    relay --as-server [--forward-to HOST:PORT --poll N] ...   daemon: store; forward when told
    relay --as-proxy HOST:PORT ...                            daemon: store, then forward
    relay --as-client HOST:PORT --spool-dir DIR               forward the spool, then exit
    relay [switches] /etc/emailrelay.conf                     the switches of a config file

Every switch of `emailrelay --help --verbose` (`tools.emailrelay_switches`) is accepted with
its long name and letter; a few are refused with one line saying why (exit 64); a command
line E-MailRelay refuses too exits 1, as emailrelay. `parse` reads the command line (and
the config file, E-MailRelay's "name value" lines) into the switches given to each instance
(`--in-spool-dir`, `--out-port`: E-MailRelay's several instances in one process); `plan`
decides, as E-MailRelay does, what each instance runs: relay-intake unless
--dont-serve/--no-smtp; relay-deliver when there is a --forward-to, woken as the switches
say (--forward-on-disconnect: as mail arrives; --poll N: the whole spool every N s;
--forward: once at start; otherwise only on a flush: SIGUSR1 to `relay`, the trigger file,
the admin interface); --as-client: one flush in the foreground. The process-wide switches
(daemon, pid file, user, logging) are the first instance's. Then `tools.relay_run` runs
every instance's programs through one `tools.daemon`, in the background unless --no-daemon
(`tools.relay_args` reads the command line). Reads nothing itself; the programs do the rest.
"""

from __future__ import annotations

import os
import pwd
import socket
import sys
from dataclasses import dataclass, field

from common.process import DEFAULT_USER
from tools import emailrelay_switches as table
from tools.emailrelay_server import intake_options
from tools.relay_args import Given, Refused, UsageError, parse
from tools.relay_client import client_notes, client_options
from tools.relay_run import help_text, run, version_text

__all__ = ["Given", "Plan", "Refused", "UsageError", "main", "parse", "plan"]

# Switches whose value is a file or directory: made absolute before the daemon leaves the
# working directory (E-MailRelay's @app is the directory of the `relay` executable).
_PATHS = ("spool-dir", "pid-file", "log-file", "filter", "client-filter", "address-verifier",
          "server-auth", "client-auth", "server-tls-certificate", "client-tls-verify",
          "client-tls-certificate", "server-tls-verify", "delivery-dir")
# Repeatable switches (all values kept); every other switch: the first value given wins.
_MULTI = ("interface", "server-tls-certificate", "filter", "client-filter",
          "client-tls-certificate")
# Switches that count only for the first instance (E-MailRelay's process-wide ones).
PROCESS_WIDE = ("log", "verbose", "debug", "log-time", "log-file", "log-format", "syslog",
                "no-syslog", "close-stderr", "no-daemon", "user", "pid-file", "tls-config",
                "localedir", "help", "version", "check")
_LOG_FIELDS = ("time", "unit", "address", "port", "msgid")
_PER_INSTANCE_FIELDS = ("unit", "address", "port", "msgid")  # the rest is the first's
_RELAY_FORMATS = ("logfmt", "json", "console")
# E-MailRelay 2.6.1's --response-timeout when none is given (its source's default, and what
# its binary does; its reference says 60): relay-deliver gets it, for the same behaviour.
EMAILRELAY_RESPONSE_TIMEOUT = "1800"
# Its --idle-timeout likewise: the reference and --help say 60, its source and binary wait
# 1800 s for a silent client (checked: a client silent for 200 s was not dropped).
EMAILRELAY_IDLE_TIMEOUT = "1800"


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
    smtp_listening: list[tuple[str, str]] = field(default_factory=list)  # `status`
    admin_terminate: bool = False
    spool_dir: str | None = None
    forward_to: str | None = None
    remote_clients: bool = False
    flush_command: list[str] | None = None  # a one-off flush in the foreground (admin)
    check: bool = False  # --check: each program checks what it would load, nothing runs
    name: str = ""  # the instance's name (its --NAME-spool-dir), "" for an unnamed one
    more: list[Plan] = field(default_factory=list)  # the further instances (on the first)


def refuse_what_relay_does_not_do(given: Given) -> None:
    """Refused (exit 64) naming the first switch relay refuses, with the reason."""
    for name in given.values:
        reason = table.refusal(table.BY_LONG[name])
        if reason is not None:
            raise Refused(f"--{name}: {reason}")


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


def _interfaces(texts: list[str]) -> tuple[list[str], list[str]]:
    """The SMTP and the admin addresses of the --interface values, as E-MailRelay reads
    them: comma lists; an address without a qualifier is for every server, `smtp=` and
    `admin=` for that one; `pop=` for none of relay's."""
    smtp: list[str] = []
    admin: list[str] = []
    for text in texts:
        for item in (word.strip() for word in text.split(",") if word.strip()):
            kind, equals, address = item.partition("=")
            if not equals:
                smtp.append(item)
                admin.append(item)
            elif kind == "smtp":
                smtp.append(address)
            elif kind == "admin":
                admin.append(address)
            elif kind != "pop":
                raise UsageError(f"--interface: {item!r}: the qualifiers are smtp=, pop= "
                                 "and admin=")
    return smtp, admin


def _modes(given: Given) -> tuple[str | None, set[str]]:
    """An instance's smarthost and the switches its --as-* mode implies."""
    modes = [name for name in ("as-client", "as-proxy", "as-server") if given.has(name)]
    if len(modes) > 1:
        raise UsageError(f"--{modes[0]} cannot be combined with --{modes[1]}")
    if given.has("as-client"):
        return given.value("as-client"), {"log", "no-syslog", "no-daemon", "dont-serve",
                                          "forward"}
    if given.has("as-proxy"):
        return given.value("as-proxy"), {"log", "close-stderr", "forward-on-disconnect"}
    if given.has("as-server"):
        return given.value("forward-to"), {"log", "close-stderr"}
    return given.value("forward-to"), set()


def plan(given: Given) -> Plan:
    """Decide, as E-MailRelay does, what runs and with which arguments: the first
    instance's plan, which also holds the process's settings (its daemon, pid file, user,
    logging, --check), and in `more` one for each further instance (`--out-spool-dir`...),
    whose process-wide switches are ignored, as E-MailRelay ignores them."""
    refuse_what_relay_does_not_do(given)
    has, value = given.has, given.value
    result = Plan(name=given.name)
    _forward_to, implied = _modes(given)

    def on(name: str) -> bool:
        return has(name) or name in implied

    # logging: every program gets the same switches
    logging: list[str] = []
    if on("verbose") or on("debug"):
        logging.append("--verbose")
    syslog = (has("syslog") or (on("log") and not on("no-syslog")))
    if syslog:
        logging += ["--syslog", "--syslog-facility", value("syslog") or "mail"]
    log_files = given.all("log-file")
    if log_files:
        logging += ["--log-file", _absolute(log_files[0])]
    items = _log_format(given)
    logging += [word for item in items if item in _RELAY_FORMATS for word in ("--log-format", item)]
    logging.append("--log-time" if on("log-time") or "time" in items else "--no-log-time")
    result.close_stderr = on("close-stderr")

    # the process
    result.daemon = not on("no-daemon")
    pid_files = given.all("pid-file")
    result.pid_file = _absolute(pid_files[0]) if pid_files else None
    user = value("user") or DEFAULT_USER
    if os.geteuid() == 0 and user != "root":
        try:
            pwd.getpwnam(user)
        except KeyError:
            raise UsageError(f"--user: no such user {user!r}") from None
        result.user = user
    common = list(logging)
    if result.user:
        common += ["--user", result.user]
    if result.close_stderr:
        common.append("--close-stderr")
    if has("localedir"):
        result.notes.append("--localedir: relay's messages are English only (nothing to load)")
    result.check = on("check")
    # E-MailRelay's line context (where [NAME] goes) is on with the first instance's
    # --log-format or --log-address
    process = _Process(common, value("tls-config"), result.check,
                       has("log-format") or has("log-address"))
    _plan_instance(given, result, process, first=True)
    for other in given.more:
        refuse_what_relay_does_not_do(other)
        per_instance = set(_log_format(other, first=False)) <= set(_PER_INSTANCE_FIELDS)
        for name in PROCESS_WIDE:
            if name == "log-format" and per_instance:
                continue  # its unit counts for this instance (the rest is in every line)
            if other.has(name):
                result.notes.append(
                    f"--{other.name}-{name}: ignored: a process-wide switch counts only for "
                    f"the first instance{f' ({given.name})' if given.name else ''}, as in "
                    "E-MailRelay")
        unit = Plan(name=other.name)
        _plan_instance(other, unit, process, first=False)
        result.notes += unit.notes
        result.more.append(unit)
    if result.deliver_once and result.more:
        result.notes.append("--as-client: the other instances do not start (E-MailRelay ends "
                            "when the first one has forwarded its spool)")
    return result


@dataclass(frozen=True)
class _Process:
    """What every instance's programs get from the first instance's switches."""

    common: list[str]  # logging, --user, --close-stderr
    tls_config: str | None
    check: bool
    log_context: bool  # the first instance has a --log-format or --log-address


def _log_format(given: Given, *, first: bool = True) -> list[str]:
    """The items of an instance's --log-format values: E-MailRelay's fields and relay's
    line formats; UsageError for anything else."""
    items = [word.strip() for text in given.all("log-format") for word in text.split(",")
             if word.strip()]
    for item in items:
        if item not in _LOG_FIELDS and item not in _RELAY_FORMATS:
            switch = "log-format" if first else _named(given, "log-format")
            raise UsageError(f"--{switch}: unknown field {item!r} (time, "
                             "unit, address, port, msgid; or logfmt, json, console)")
    return items


def _unit_args(given: Given, process: _Process) -> list[str]:
    """How an instance's programs name it in their lines, as E-MailRelay does: a named
    instance on its start lines always (`--unit`); on every line (`--log-unit`) where its
    own --log-format has `unit` and the first instance's switches turn the context on."""
    if not given.name:
        return []
    every_line = process.log_context and "unit" in _log_format(given)
    return ["--unit", given.name, *(["--log-unit"] if every_line else [])]


def _plan_instance(given: Given, result: Plan, process: _Process, *, first: bool) -> None:
    """Fill in *result*: the programs one instance runs and its admin interface."""
    has, value = given.has, given.value
    forward_to, implied = _modes(given)

    def on(name: str) -> bool:
        return has(name) or name in implied

    for name in ("forward", "forward-on-disconnect", "poll", "immediate"):
        if on(name) and not forward_to:
            raise UsageError(f"--{_named(given, name)} needs --{_named(given, 'forward-to')}")
    paths = {name: [_absolute(v) for v in given.all(name)] for name in _PATHS}
    spool = ["--spool-dir", paths["spool-dir"][0]] if paths["spool-dir"] else []
    common = [*spool, *process.common, *_unit_args(given, process)]
    tls_config = ["--tls-config", process.tls_config] if process.tls_config is not None else []
    server_options = intake_options(given, result.notes)  # -Z, --server-auth-config
    result.notes += client_notes(given)  # -c, --client-auth-config

    timeout_filter = ["--filter-timeout", value("filter-timeout") or ""] \
        if has("filter-timeout") else []
    interfaces, result.admin_interfaces = _interfaces(given.all("interface"))
    # relay-intake
    serving = not on("dont-serve") and not on("no-smtp")
    if serving:
        smtp_port = value("port") or "25"
        args = [*common, "--port", smtp_port]
        if not interfaces:
            interfaces = _default_interfaces(on("remote-clients"))
        for address in interfaces:
            args += ["--interface", address]
            result.smtp_listening.append((address, smtp_port))
        if on("remote-clients"):
            args.append("--remote-clients")
        for name in ("domain", "size", "idle-timeout", "dnsbl"):
            if has(name):
                args += [f"--{name}", value(name) or ""]
        if not has("idle-timeout"):  # E-MailRelay's, not relay-intake's own 300 s
            args += ["--idle-timeout", EMAILRELAY_IDLE_TIMEOUT]
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
        args += server_options
        certificates = paths["server-tls-certificate"]
        if on("server-tls") or on("server-tls-connection"):
            if not certificates:
                raise UsageError(f"--{_named(given, 'server-tls')} and "
                                 f"--{_named(given, 'server-tls-connection')} need "
                                 f"--{_named(given, 'server-tls-certificate')}")
            args += ["--server-tls-certificate", certificates[-1]]
            if len(certificates) > 1:
                args += ["--server-tls-key", certificates[0]]
        elif certificates:
            result.notes.append(f"--{_named(given, 'server-tls-certificate')} without "
                                f"--{_named(given, 'server-tls')}: STARTTLS is not offered")
        for name in ("server-tls-required", "server-tls-connection"):
            if on(name):
                args.append(f"--{name}")
        if process.check:
            args.append("--check")
        if paths["server-tls-verify"]:
            verify = given.value("server-tls-verify")
            args += ["--server-tls-verify",
                     "<default>" if verify == "<default>" else paths["server-tls-verify"][0]]
        result.intake = [*args, *tls_config]
    # relay-deliver
    client = [*_client_args(given, paths, forward_to, timeout_filter), *tls_config] \
        if forward_to else []
    if forward_to and on("immediate") and result.intake is not None:
        result.immediate = client
    if forward_to and (serving or on("forward") or on("no-smtp")):
        args = [*common, *client]
        if not on("forward-to-some"):
            args.append("--forward-to-all")
        result.flush_command = [sys.executable, "-I", "-m", "deliver.main", *args,
                                "--once", "--flush"]
        if process.check:
            args.append("--check")
        if on("dont-serve") and first:
            result.deliver_once = True
            args += ["--once", "--flush"]
        else:  # a further instance's --as-client: one flush at start, then only when told
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


def _named(given: Given, switch: str) -> str:
    """*switch* as this instance's user wrote it (`out-forward-to` in instance out)."""
    return f"{given.name}-{switch}" if given.name else switch


def _client_args(given: Given, paths: dict[str, list[str]], forward_to: str,
                 timeout_filter: list[str]) -> list[str]:
    """relay-deliver's options for talking to the smarthost (deliver and --immediate)."""
    args = ["--forward-to", forward_to]
    for name in ("domain", "client-interface", "connection-timeout", "response-timeout",
                 "client-tls-server-name", "client-tls-verify-name"):
        if given.has(name):
            args += [f"--{name}", given.value(name) or ""]
    if not given.has("response-timeout"):  # E-MailRelay's, not relay-deliver's own 60 s
        args += ["--response-timeout", EMAILRELAY_RESPONSE_TIMEOUT]
    for path in paths["client-tls-certificate"]:
        args += ["--client-tls-certificate", path]
    for path in paths["client-filter"]:
        args += ["--client-filter", path]
    args += timeout_filter
    if paths["client-auth"]:
        args += ["--client-auth", paths["client-auth"][0]]
    args += client_options(given)
    for name in ("client-tls", "client-tls-connection", "client-tls-required"):
        if given.has(name):
            args.append(f"--{name}")
    verify = given.value("client-tls-verify")
    if verify is not None:
        args += ["--client-tls-verify",
                 "system" if verify == "<default>" else paths["client-tls-verify"][0]]
    return args


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
        return error.exit_code
    return run(the_plan)


if __name__ == "__main__":
    sys.exit(main())
