"""E-MailRelay 2.6.1's command line: every switch, its letter, its value, and relay's answer.

The table is data: `tools.relay` parses with it, prints `--help` from it and plans what to
run from the switches given. Each switch has the long name and the short letter of
`emailrelay --help --verbose` (2.6.1) exactly, whether it takes a value (some take one
optionally: `--syslog[=facility]`, `--anonymous[=scope]`), and either `refused`, the one
line relay exits 64 with (POP and Windows-only switches, and what relay does not do yet),
or None (relay does it). The admin interface's switches (`--admin`, `--admin-terminate`) go
to `tools.admin`. `--check` is relay's own. Reads and writes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

NONE = "none"
REQUIRED = "required"
OPTIONAL = "optional"

_POP = ("relay is not a POP server: E-MailRelay's POP server serves the spool to mail "
        "readers, relay only forwards (see docs/emailrelay.md)")

# The admin interface (tools.admin) is built in.
ADMIN_SUPPORT = True
ADMIN_REFUSAL = "the admin interface is not in this build of relay"


@dataclass(frozen=True)
class Switch:
    """One switch of `emailrelay`: names, value, help group and line, or why relay refuses it."""

    name: str
    short: str | None
    value: str  # NONE, REQUIRED or OPTIONAL
    group: str
    help: str
    metavar: str = ""
    refused: str | None = None


def _s(name: str, short: str | None, value: str, group: str, text: str,  # noqa: PLR0917
       metavar: str = "", refused: str | None = None) -> Switch:
    return Switch(name, short, value, group, text, metavar, refused)


BASIC = "Basic options"
CLIENT = "SMTP client options"
SERVER = "SMTP server options"
POP = "POP server options"
ADMIN = "Admin server options"
AUTH = "Authentication options"
TLS = "TLS options"
PROCESS = "Process options"
LOGGING = "Logging options"
RELAY = "relay's own options"

SWITCHES: tuple[Switch, ...] = (
    _s("as-client", "q", REQUIRED, BASIC, "forward the spool to HOST:PORT, then exit: "
       "--log --no-syslog --no-daemon --dont-serve --forward --forward-to", "host:port"),
    _s("as-proxy", "y", REQUIRED, BASIC, "store each message and forward it as soon as it "
       "is stored: --log --close-stderr --forward-on-disconnect --forward-to", "host:port"),
    _s("as-server", "d", NONE, BASIC, "storage daemon, forwarding only when told to: "
       "--log --close-stderr"),
    _s("spool-dir", "s", REQUIRED, BASIC, "the spool directory", "dir"),
    _s("help", "h", NONE, BASIC, "this help (with --verbose: every switch)"),
    _s("version", "V", NONE, BASIC, "the version (with --verbose: the build's features)"),
    # SMTP client
    _s("client-smtp-config", "c", REQUIRED, CLIENT, "client protocol features: "
       "[+-]eightbitstrict, smtputf8strict, binarymimestrict, pipelining, linger", "config"),
    _s("forward", "f", NONE, CLIENT, "forward the spool at start-up (needs --forward-to)"),
    _s("forward-on-disconnect", "1", NONE, CLIENT,
       "forward the spool whenever an SMTP client disconnects (needs --forward-to)"),
    _s("forward-to", "o", REQUIRED, CLIENT, "the smarthost", "host:port"),
    _s("poll", "O", REQUIRED, CLIENT,
       "forward the whole spool every PERIOD seconds (needs --forward-to)", "period"),
    _s("client-filter", "Y", REQUIRED, CLIENT, "program run on each message as it is "
       "forwarded", "program"),
    _s("client-interface", "6", REQUIRED, CLIENT, "local address of outgoing connections",
       "ip-address"),
    _s("connection-timeout", "U", REQUIRED, CLIENT,
       "seconds to connect to the smarthost (default 40)", "time"),
    _s("idle-timeout", None, REQUIRED, CLIENT,
       "seconds without traffic before a client is dropped (default 1800)", "time"),
    _s("response-timeout", "T", REQUIRED, CLIENT,
       "seconds to wait for each smarthost reply (default 1800)", "time"),
    _s("forward-to-all", None, NONE, CLIENT,
       "a message goes out only if every recipient is accepted (the default)"),
    _s("forward-to-some", None, NONE, CLIENT,
       "send to the recipients the smarthost accepts, even if it refuses others"),
    _s("immediate", "m", NONE, CLIENT, "forward each message before its client gets the "
       "answer, which is the smarthost's (needs --forward-to)"),
    # SMTP server
    _s("port", "p", REQUIRED, SERVER, "SMTP port (default 25)", "port"),
    _s("remote-clients", "r", NONE, SERVER, "accept clients that are not local"),
    _s("address-verifier", None, REQUIRED, SERVER, "program that checks each recipient",
       "program"),
    _s("anonymous", "A", OPTIONAL, SERVER, "no VRFY, a terse greeting, no Received line, no "
       "AUTH= on MAIL (scope: vrfy,server,content,client)", "scope"),
    _s("delivery-dir", None, REQUIRED, SERVER, "base directory for the mailboxes of "
       "--filter deliver:", "dir"),
    _s("dnsbl", None, REQUIRED, SERVER, "DNSBL zones that refuse clients at connect: "
       "zone[,zone...][,threshold[,timeout-ms[,dns-server]]]", "config"),
    _s("domain", "D", REQUIRED, SERVER, "this host's name in EHLO, greetings and Received "
       "(default: the host's fully qualified name)", "fqdn"),
    _s("filter", "z", REQUIRED, SERVER, "program run on each message as it is stored",
       "program"),
    _s("filter-timeout", "W", REQUIRED, SERVER, "seconds a filter may run (default 60)", "time"),
    _s("interface", "I", REQUIRED, SERVER, "listening addresses: a comma list, each "
       "optionally smtp=, pop= or admin=", "ip-address-list"),
    _s("prompt-timeout", "w", REQUIRED, SERVER,
       "seconds to wait for the smarthost's greeting, then EHLO without it (default 20)",
       "time"),
    _s("server-smtp-config", "Z", REQUIRED, SERVER, "server protocol features: -pipelining "
       "(no PIPELINING), +smtputf8 (SMTPUTF8 offered), smtputf8strict (a UTF-8 mailbox needs "
       "SMTPUTF8), nostrictparsing (paths without <>); noalabels and nolinger change nothing; "
       "+chunking is refused (relay-intake has no BDAT)", "config"),
    _s("size", "M", REQUIRED, SERVER, "largest message accepted, in bytes, advertised as SIZE "
       "(relay's default 33554432; 0: no limit, no SIZE)", "bytes"),
    # POP
    _s("pop", "B", NONE, POP, "the POP server", refused=_POP),
    _s("pop-by-name", "J", NONE, POP, "POP spool per user", refused=_POP),
    _s("pop-no-delete", "G", NONE, POP, "POP without DELE", refused=_POP),
    _s("pop-port", "E", REQUIRED, POP, "POP port", "port", refused=_POP),
    _s("pop-auth", "F", REQUIRED, AUTH, "POP secrets file", "file", refused=_POP),
    # admin (issue 16)
    _s("admin", "a", REQUIRED, ADMIN, "the administration interface on PORT", "port"),
    _s("admin-terminate", "Q", NONE, ADMIN, "the admin interface's terminate command"),
    # authentication
    _s("client-auth", "C", REQUIRED, AUTH, "secrets file for AUTH to the smarthost", "file"),
    _s("client-auth-config", None, REQUIRED, AUTH, "client AUTH mechanisms: m: the ones to "
       "use, x: the ones to avoid (needs --client-auth)", "config"),
    _s("server-auth", "S", REQUIRED, AUTH, "secrets file: clients authenticate", "file"),
    _s("server-auth-config", None, REQUIRED, AUTH, "server AUTH mechanisms: m: and x: before "
       "TLS, a: and d: after (m:;a:plain)", "config"),
    # TLS
    _s("client-tls", "j", NONE, TLS, "STARTTLS to the smarthost when offered"),
    _s("client-tls-certificate", None, REQUIRED, TLS, "client key and certificate (PEM); "
       "twice: the key file, then the certificate file", "pem-file"),
    _s("client-tls-connection", "b", NONE, TLS, "implicit TLS to the smarthost (SMTPS)"),
    _s("client-tls-required", None, NONE, TLS, "never send without TLS"),
    _s("client-tls-server-name", None, REQUIRED, TLS, "server name sent in the TLS handshake",
       "hostname"),
    _s("client-tls-verify", None, REQUIRED, TLS, "verify the smarthost against these CAs "
       "(<default>: the system's)", "ca-list"),
    _s("client-tls-verify-name", None, REQUIRED, TLS, "name the smarthost's certificate must "
       "have", "cname"),
    _s("server-tls", "K", NONE, TLS, "offer STARTTLS (needs --server-tls-certificate)"),
    _s("server-tls-certificate", None, REQUIRED, TLS, "server key and certificate (PEM); "
       "twice: the key file, then the certificate file", "pem-file"),
    _s("server-tls-connection", None, NONE, TLS, "implicit TLS on the SMTP port (SMTPS)"),
    _s("server-tls-required", None, NONE, TLS, "clients must STARTTLS before AUTH or MAIL"),
    _s("server-tls-verify", None, REQUIRED, TLS, "verify client certificates against these CAs",
       "ca-list"),
    _s("tls-config", "9", REQUIRED, TLS, "TLS versions: tlsv1.2 (the lowest), -tlsv1.3 (the "
       "highest)", "options"),
    # process
    _s("dont-serve", "x", NONE, PROCESS, "no listening at all; end after --forward"),
    _s("localedir", None, REQUIRED, PROCESS, "message catalogues (relay speaks English only: "
       "accepted, nothing to load)", "dir"),
    _s("no-daemon", "t", NONE, PROCESS, "stay in the foreground"),
    _s("no-smtp", "X", NONE, PROCESS, "no SMTP listening (with --admin)"),
    _s("pid-file", "i", REQUIRED, PROCESS, "write the daemon's process id here", "path"),
    _s("user", "u", REQUIRED, PROCESS, "started as root: the user to run as after binding "
       "(default daemon; root: stay root)", "username"),
    _s("hidden", "H", NONE, PROCESS, "hide the window", refused="--hidden is Windows only"),
    _s("show", None, REQUIRED, PROCESS, "window style", "style",
       refused="--show is Windows only"),
    # logging
    _s("verbose", "v", NONE, LOGGING, "more detail in the log (the SMTP dialogue) and in --help"),
    _s("log", "l", NONE, LOGGING, "log to stderr and syslog (see --close-stderr, --no-syslog)"),
    _s("debug", "g", NONE, LOGGING, "debug-level logging"),
    _s("log-address", None, NONE, LOGGING, "the client's address on every log line"),
    _s("log-file", "N", REQUIRED, LOGGING, "log to this file instead of stderr (%d: the "
       "date, a file a day)", "file"),
    _s("log-format", None, REQUIRED, LOGGING, "fields to add: time, unit, address, port, "
       "msgid (and relay's line formats: logfmt, json, console)", "value"),
    _s("log-time", "L", NONE, LOGGING, "a timestamp on every log line"),
    _s("no-syslog", "n", NONE, LOGGING, "no syslog (overridden by --syslog)"),
    _s("syslog", "k", OPTIONAL, LOGGING, "syslog even with --no-syslog (facility: mail by "
       "default)", "facility"),
    _s("close-stderr", "e", NONE, LOGGING, "close stderr once started"),
    # relay's own
    _s("check", None, NONE, RELAY, "load the configuration, secrets, certificates, filters "
       "and the spool; say what is wrong; exit 0 or 78 without starting"),
)

BY_LONG: dict[str, Switch] = {switch.name: switch for switch in SWITCHES}
BY_SHORT: dict[str, Switch] = {switch.short: switch for switch in SWITCHES if switch.short}
# --help --verbose of 2.6.1 on Unix lists these; --hidden and --show are Windows-only extras.
WINDOWS_ONLY = ("hidden", "show")
GROUPS = (BASIC, CLIENT, SERVER, POP, ADMIN, AUTH, TLS, PROCESS, LOGGING, RELAY)
RELAY_ONLY = ("check",)  # not E-MailRelay's


def refusal(switch: Switch) -> str | None:
    """Why relay refuses *switch*, or None when it does what E-MailRelay does."""
    if switch.group == ADMIN and not ADMIN_SUPPORT:
        return ADMIN_REFUSAL
    return switch.refused
