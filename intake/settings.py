"""relay-intake's options and the validated configuration built from them.

Options come through `common.config.load_settings` (flags > RELAY_* > the `[intake]` table
and shared keys of the config file > defaults). `build_config` checks them and loads what
they point to (secrets file, TLS certificate): every problem is a `ConfigError` naming the
option, so that main exits 78. Reads the secrets and certificate files; writes nothing.
"""

from __future__ import annotations

import argparse
import os
import ssl
from dataclasses import dataclass, field

from common import eventloop
from common.check import CHECK_OPTION
from common.config import SPOOL_DIR_OPTION, ConfigError, Option, local_fqdn, resolve_path
from common.events import EVENT_FD_OPTION
from common.filterspec import FilterRunner, Spec, parse_filter, parse_verifier
from common.logs import LOG_UNIT_OPTION, UNIT_OPTION
from common.metrics import METRICS_OPTION, parse_listen
from common.process import CLOSE_STDERR_OPTION, READY_FD_OPTION, USER_OPTION, lookup_user
from common.secrets import SecretsError, SecretsFile
from common.tlsconfig import SYSTEM_CAS, parse_tls_config, server_context
from common.workers import default_processes
from intake.auth import Authenticator
from intake.deliveryfilters import builtins as delivery_builtins
from intake.dnsbl import LOCAL_NETWORKS, Dnsbl, parse_dnsbl
from intake.esmtp import UTF8_MODES, AuthLists, auth_lists, available_mechanisms
from intake.filters import Verifier
from intake.limits import Network, parse_networks
from intake.sockets import default_backlog
from intake.splitfilter import BUILTINS as SPLIT_BUILTINS

PROGRAM = "relay-intake"
DESCRIPTION = "relay's SMTP intake: stores each message durably in the spool before 250."
DEFAULT_SIZE = 32 * 1024 * 1024
MIN_FREE_FLOOR = 64 * 1024 * 1024
DEFAULT_EXEMPT = parse_networks(["127.0.0.0/8", "::1/128"])

OPTIONS: tuple[Option, ...] = (
    SPOOL_DIR_OPTION,
    Option("interface", "address to listen on, IPv4 or IPv6 (repeatable, or a comma list; "
           "E-MailRelay's smtp= prefix is accepted)", ["127.0.0.1"], "list",
           metavar="ADDRESS"),
    Option("port", "SMTP port to listen on", 25, "int"),
    Option("domain", "this host's name in the greeting, EHLO reply and Received line "
           "(default: the host's fully qualified name)", None, metavar="NAME"),
    Option("remote-clients", "accept clients that are not on loopback", False, "bool"),
    Option("size", "largest message accepted (bytes, or K/M/G), advertised as SIZE; 0: no limit",
           DEFAULT_SIZE, "size"),
    Option("max-recipients", "recipients per message (452 for the extra ones)", 100, "int",
           metavar="N"),
    Option("max-connections", "concurrent connections in total (421 beyond)", 200, "int",
           metavar="N"),
    Option("max-connections-per-client", "concurrent connections from one client address",
           20, "int", metavar="N"),
    Option("reserved-connections", "of --max-connections, this many are kept for exempt "
           "clients (--exempt-networks and 'server none' ones; default: a tenth)", None, "int",
           metavar="N"),
    Option("max-connections-per-network", "concurrent connections from one client network "
           "(an IPv4 /24, an IPv6 /64)", 50, "int", metavar="N"),
    Option("exempt-networks", "clients never held to the per-address and per-network limits, "
           "who may use the reserved connections ('none': no network)",
           ["127.0.0.0/8", "::1/128"], "list", metavar="NETWORK"),
    Option("dnsbl", "DNS blocklists checked at connect, E-MailRelay's "
           "zone[,zone...][,threshold[,timeout-ms[,dns-server]]]", None, metavar="CONFIG"),
    Option("dnsbl-exempt-networks", "clients never checked against --dnsbl ('none': every "
           "client is checked)", list(LOCAL_NETWORKS), "list", metavar="NETWORK"),
    Option("idle-timeout", "seconds a client may take for one command, or for DATA at less "
           "than --min-data-rate, before it is dropped", 300.0, "duration", metavar="DURATION"),
    Option("min-data-rate", "bytes a second a client must keep up to take longer than "
           "--idle-timeout over one request; 0: a plain idle timeout", 500, "size",
           metavar="BYTES"),
    Option("session-timeout", "seconds a connection may last in all; 0: no limit", 1800.0,
           "duration", metavar="DURATION"),
    Option("auth-failure-limit", "failed AUTH attempts from one address within "
           "--auth-failure-window before AUTH is refused (454) for that long; 0: no limit",
           10, "int", metavar="N"),
    Option("auth-failure-window", "seconds over which failed AUTH attempts are counted, and "
           "for which an address over the limit is refused", 600.0, "duration",
           metavar="DURATION"),
    Option("anonymous", "say less about this server (E-MailRelay's --anonymous): 'server' "
           "(the greeting and EHLO reply name no host nor software), 'vrfy' (VRFY is not "
           "answered), 'content' (no Received line); 'client' is accepted (relay-deliver "
           "never sends AUTH= on MAIL)", [], "list", metavar="SCOPE"),
    Option("pipelining", "advertise PIPELINING and answer a pipelined group in one write "
           "(--no-pipelining: each reply is sent at once)", True, "bool"),
    Option("smtputf8", "advertise SMTPUTF8 (--no-smtputf8: not advertised; a client's "
           "SMTPUTF8 parameter is still accepted, as by E-MailRelay)", True, "bool"),
    Option("utf8-without-smtputf8", "a non-ASCII address without MAIL's SMTPUTF8 parameter: "
           "'refuse' (553), 'domain' (a non-ASCII domain is stored in A-labels, a non-ASCII "
           "local part is refused) or 'accept' (the message becomes an SMTPUTF8 one)",
           "refuse", choices=UTF8_MODES),
    Option("require-angle-brackets", "refuse MAIL FROM and RCPT TO addresses not in angle "
           "brackets (E-MailRelay's strict parsing)", False, "bool"),
    Option("greeting-delay", "seconds to wait before the greeting; a client that talks first "
           "is refused (554). 0 refuses only what already arrived", 0.0, "duration",
           metavar="DURATION"),
    Option("filter", "program (or built-in: exit:N, net:HOST:PORT, spam:HOST:PORT, "
           "spam-edit:, split:, copy:, deliver:; a,b chains) run on each message before it "
           "is accepted", [], "list", metavar="PROGRAM"),
    Option("delivery-dir", "where deliver: puts the local recipients' mailboxes (default: "
           "the spool directory)", None, metavar="DIR"),
    Option("filter-timeout", "seconds a filter or the address verifier may run", 60.0,
           "duration", metavar="DURATION"),
    Option("address-verifier", "program (or net:HOST:PORT, account:) that checks each "
           "RCPT TO address", None, metavar="PROGRAM"),
    Option("server-auth", "secrets file: clients must AUTH (unless a 'server none' line "
           "trusts them)", None, metavar="FILE"),
    Option("server-auth-insecure", "offer AUTH without TLS too (passwords in clear text)",
           False, "bool"),
    Option("server-auth-config", "E-MailRelay's AUTH mechanism lists: 'm:' (allowed) and "
           "'x:' (denied) without TLS, 'a:' and 'd:' with TLS; without a: or d:, m: and x: "
           "are for both (default: every mechanism with TLS, none without, unless "
           "--server-auth-insecure)", None, metavar="CONFIG"),
    Option("server-tls-certificate", "PEM certificate chain for STARTTLS", None, metavar="FILE"),
    Option("server-tls-key", "PEM private key for STARTTLS (default: in the certificate file)",
           None, metavar="FILE"),
    Option("server-tls-connection", "TLS from the first byte (SMTP over TLS, port 465) "
           "instead of STARTTLS", False, "bool"),
    Option("server-tls-verify", "ask every client for a certificate and check it against this "
           "CA file or directory ('system': the system's CAs); its PEM goes into the envelope",
           None, metavar="CAFILE"),
    Option("tls-config", "TLS versions: tlsv1.2 (the lowest allowed), -tlsv1.3 (the highest),"
           " comma-separated", None, metavar="KEYWORDS"),
    Option("server-tls-required", "refuse everything but EHLO, STARTTLS, NOOP and QUIT before TLS",
           False, "bool"),
    Option("min-free-space", "refuse MAIL (452) while the spool's disk has less free space "
           "(default: twice --size, at least 64M)", None, "size"),
    Option("sync", "how a batch of messages is made durable before 250: 'fsync' (each file, "
           "several at once) or 'syncfs' (one syncfs(2) of the spool's file system per batch; "
           "cheaper, but it also flushes other programs' data on that file system)",
           "syncfs", choices=("fsync", "syncfs")),
    Option("stop-timeout", "seconds that open transactions may take to finish after SIGTERM",
           20.0, "duration", metavar="DURATION"),
    Option("pid-file", "write the process id to this file (removed at exit)", None,
           metavar="FILE"),
    Option("processes", "worker processes, each accepting on its own socket of the port "
           "(SO_REUSEPORT) with its own storage process (default: the number of CPUs; 1 with "
           "--metrics)", None,
           "int", metavar="N"),
    Option("listen-backlog", "connections the kernel may queue before intake accepts them "
           "(default: the kernel's net.core.somaxconn)", None, "int", metavar="N"),
    Option("proxy-protocol", "connections from --proxy-address start with a PROXY protocol "
           "header (HAProxy's v1 or v2) naming the real client", False, "bool"),
    Option("proxy-address", "address or network of a proxy that sends the PROXY protocol "
           "header (repeatable)", [], "list", metavar="NETWORK"),
    USER_OPTION,
    READY_FD_OPTION,
    EVENT_FD_OPTION,
    CLOSE_STDERR_OPTION,
    UNIT_OPTION,
    LOG_UNIT_OPTION,
    eventloop.EVENT_LOOP_OPTION,
    METRICS_OPTION,
    CHECK_OPTION,
)


@dataclass
class IntakeConfig:
    """Everything the server needs, checked."""

    spool_dir: str
    interfaces: list[str]
    port: int
    domain: str
    remote_clients: bool = False
    size: int = DEFAULT_SIZE
    max_recipients: int = 100
    max_connections: int = 200
    max_connections_per_client: int = 20
    reserved_connections: int = 20
    max_connections_per_network: int = 50
    exempt_networks: tuple[Network, ...] = DEFAULT_EXEMPT
    dnsbl: Dnsbl | None = None
    dnsbl_exempt: tuple[Network, ...] = parse_networks(LOCAL_NETWORKS)
    idle_timeout: float = 300.0
    min_data_rate: int = 500
    session_timeout: float = 1800.0
    auth_failure_limit: int = 10
    auth_failure_window: float = 600.0
    greeting_delay: float = 0.0
    anonymous: frozenset[str] = frozenset()  # of ANONYMOUS_SCOPES
    filters: list[Spec] = field(default_factory=list)
    filter_timeout: float = 60.0
    address_verifier: Verifier | None = None
    filter_runner: FilterRunner = field(
        default_factory=lambda: FilterRunner(builtins=SPLIT_BUILTINS))
    delivery_dir: str | None = None  # --delivery-dir, for deliver:
    authenticator: Authenticator | None = None
    auth_lists: AuthLists = field(default_factory=AuthLists)  # without TLS, with it
    pipelining: bool = True
    smtputf8: bool = True  # advertised
    utf8_without_smtputf8: str = "refuse"  # of intake.esmtp.UTF8_MODES
    angle_brackets: bool = False  # --require-angle-brackets
    tls_context: ssl.SSLContext | None = None
    tls_required: bool = False
    tls_connection: bool = False  # --server-tls-connection: implicit TLS
    min_free_space: int = MIN_FREE_FLOOR
    stop_timeout: float = 20.0
    sync: str = "syncfs"
    event_loop: str = "asyncio"  # resolved: 'asyncio' or 'uvloop'
    pid_file: str | None = None
    metrics: tuple[str, int] | None = None  # --metrics HOST:PORT
    check: bool = False  # --check: load everything, start nothing
    processes: int = 1
    listen_backlog: int = 4096
    proxy_networks: tuple[Network, ...] = ()  # empty: no PROXY protocol
    user: str | None = None
    ready_fd: int | None = None
    close_stderr: bool = False

    @property
    def auth_insecure(self) -> bool:
        """AUTH is offered on connections without TLS."""
        return (self.authenticator is not None and not self.tls_connection
                and bool(self.auth_lists.insecure))

    @property
    def open_relay(self) -> bool:
        """Untrusted remote clients may relay: remote clients, no AUTH and no verifier."""
        return self.remote_clients and self.authenticator is None and not self.address_verifier


ANONYMOUS_SCOPES = ("vrfy", "server", "content", "client")


def _anonymous(values: list[str]) -> frozenset[str]:
    """--anonymous scopes (comma lists too); ConfigError for one E-MailRelay does not have."""
    scopes = {item.strip() for value in values for item in value.split(",") if item.strip()}
    unknown = scopes - set(ANONYMOUS_SCOPES)
    if unknown:
        raise ConfigError(f"--anonymous: unknown scope {sorted(unknown)[0]!r} (one of "
                          f"{', '.join(ANONYMOUS_SCOPES)})")
    return frozenset(scopes)


def _interfaces(values: list[str]) -> list[str]:
    """--interface values: comma lists flattened, `smtp=` dropped; pop=/admin= refused."""
    found: list[str] = []
    for value in values:
        for piece in value.split(","):
            kind, equals, address = piece.strip().partition("=")
            if equals and kind != "smtp":
                raise ConfigError(f"--interface: {piece.strip()!r}: relay-intake listens for "
                                  "SMTP only (smtp=ADDRESS)")
            item = address.strip() if equals else kind
            if item:
                found.append(item)
    if not found:
        raise ConfigError("--interface: give at least one address")
    return found


def _authentication(settings: argparse.Namespace) -> tuple[Authenticator | None, AuthLists]:
    """--server-auth's authenticator and the mechanism lists (--server-auth-config)."""
    if not settings.server_auth:
        if settings.server_auth_config is not None:
            raise ConfigError("--server-auth-config needs --server-auth")
        return None, AuthLists()
    try:
        secrets = SecretsFile(str(resolve_path(settings.server_auth)))
        kinds = {kind for kind, _ in secrets.get().server}
    except (SecretsError, OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"--server-auth: {error}") from None
    available = available_mechanisms(kinds)
    if settings.server_auth_config is not None:
        if settings.server_auth_insecure:
            raise ConfigError("--server-auth-insecure and --server-auth-config: give the "
                              "mechanisms without TLS in --server-auth-config's m: list")
        lists = auth_lists(settings.server_auth_config, available)
    else:  # every mechanism with TLS; without, none unless --server-auth-insecure
        lists = auth_lists("", available)
        if not settings.server_auth_insecure:
            lists = AuthLists(insecure=(), secure=lists.secure)
    return Authenticator(secrets), lists


def build_config(settings: argparse.Namespace) -> IntakeConfig:
    """Check the merged settings; raises ConfigError naming the option at fault."""
    positive = ("idle_timeout", "filter_timeout", "stop_timeout", "auth_failure_window")
    for name in positive:
        if getattr(settings, name) <= 0:
            raise ConfigError(f"--{name.replace('_', '-')} must be more than 0")
    for name in ("size", "max_connections", "max_connections_per_client", "greeting_delay",
                 "max_connections_per_network", "min_data_rate", "session_timeout",
                 "auth_failure_limit"):
        if getattr(settings, name) < 0:
            raise ConfigError(f"--{name.replace('_', '-')} must not be negative")
    reserved = settings.reserved_connections
    if reserved is None:
        reserved = settings.max_connections // 10
    elif reserved < 0 or (settings.max_connections and reserved >= settings.max_connections):
        raise ConfigError("--reserved-connections must be at least 0 and less than "
                          "--max-connections")
    try:
        exempt = parse_networks(n for n in settings.exempt_networks if n.lower() != "none")
    except ValueError as error:
        raise ConfigError(f"--exempt-networks: {error}") from None
    try:
        dnsbl = parse_dnsbl(settings.dnsbl) if settings.dnsbl else None
    except ValueError as error:
        raise ConfigError(f"--dnsbl: {error}") from None
    try:
        dnsbl_exempt = parse_networks(n for n in settings.dnsbl_exempt_networks
                                      if n.lower() != "none")
    except ValueError as error:
        raise ConfigError(f"--dnsbl-exempt-networks: {error}") from None
    if settings.max_recipients < 1:
        raise ConfigError("--max-recipients must be at least 1")
    if not 0 <= settings.port < 65536:
        raise ConfigError("--port must be 0-65535")
    interfaces = _interfaces(settings.interface)
    domain = settings.domain or local_fqdn()
    if any(not (33 <= ord(c) <= 126) for c in domain):
        raise ConfigError(f"--domain: {domain!r} is not a host name")
    authenticator, lists = _authentication(settings)
    tls_context = None
    if settings.server_tls_certificate:
        key = str(resolve_path(settings.server_tls_key)) if settings.server_tls_key else None
        verify = settings.server_tls_verify
        if verify and verify not in SYSTEM_CAS:
            verify = str(resolve_path(verify))
        tls_context = server_context(str(resolve_path(settings.server_tls_certificate)), key,
                                     verify=verify, config=parse_tls_config(settings.tls_config))
    elif (settings.server_tls_key or settings.server_tls_required
          or settings.server_tls_connection or settings.server_tls_verify):
        raise ConfigError("--server-tls-key, --server-tls-required, --server-tls-connection "
                          "and --server-tls-verify need --server-tls-certificate")
    else:
        parse_tls_config(settings.tls_config)  # a bad value is refused even when unused
    processes = settings.processes
    if processes is None:  # one per CPU; one with --metrics (whose counts are per process)
        processes = 1 if settings.metrics else default_processes()
    if processes < 1:
        raise ConfigError("--processes must be at least 1")
    backlog = default_backlog() if settings.listen_backlog is None else settings.listen_backlog
    if backlog < 1:
        raise ConfigError("--listen-backlog must be at least 1")
    try:
        proxies = parse_networks(settings.proxy_address)
    except ValueError as error:
        raise ConfigError(f"--proxy-address: {error}") from None
    if settings.proxy_protocol and not proxies:
        raise ConfigError("--proxy-protocol needs --proxy-address: the proxies whose "
                          "connections carry a PROXY header")
    if proxies and not settings.proxy_protocol:
        raise ConfigError("--proxy-address is only used with --proxy-protocol")
    delivery_dir = str(resolve_path(settings.delivery_dir)) if settings.delivery_dir else None
    if delivery_dir is not None and not os.path.isdir(delivery_dir):
        raise ConfigError(f"--delivery-dir: {delivery_dir} is not a directory")
    local_builtins = {**SPLIT_BUILTINS, **delivery_builtins(delivery_dir)}
    min_free = settings.min_free_space
    if min_free is None:
        min_free = max(2 * settings.size, MIN_FREE_FLOOR)
    return IntakeConfig(
        spool_dir=str(resolve_path(settings.spool_dir)),
        interfaces=interfaces,
        port=settings.port,
        domain=domain,
        remote_clients=settings.remote_clients,
        size=settings.size,
        max_recipients=settings.max_recipients,
        max_connections=settings.max_connections,
        max_connections_per_client=settings.max_connections_per_client,
        reserved_connections=reserved,
        max_connections_per_network=settings.max_connections_per_network,
        exempt_networks=exempt,
        dnsbl=dnsbl,
        dnsbl_exempt=dnsbl_exempt,
        idle_timeout=settings.idle_timeout,
        min_data_rate=settings.min_data_rate,
        session_timeout=settings.session_timeout,
        auth_failure_limit=settings.auth_failure_limit,
        auth_failure_window=settings.auth_failure_window,
        greeting_delay=settings.greeting_delay,
        anonymous=_anonymous(settings.anonymous),
        filters=[spec for text in settings.filter
                 for spec in parse_filter(text, builtins=local_builtins)],
        filter_timeout=settings.filter_timeout,
        filter_runner=FilterRunner(builtins=local_builtins),
        delivery_dir=delivery_dir,
        address_verifier=(Verifier(parse_verifier(settings.address_verifier), domain,
                                   settings.filter_timeout)
                          if settings.address_verifier else None),
        authenticator=authenticator,
        auth_lists=lists,
        pipelining=settings.pipelining,
        smtputf8=settings.smtputf8,
        utf8_without_smtputf8=settings.utf8_without_smtputf8,
        angle_brackets=settings.require_angle_brackets,
        tls_context=tls_context,
        tls_required=settings.server_tls_required,
        tls_connection=settings.server_tls_connection,
        min_free_space=min_free,
        stop_timeout=settings.stop_timeout,
        sync=settings.sync,
        event_loop=eventloop.resolve(settings.event_loop),
        pid_file=str(resolve_path(settings.pid_file)) if settings.pid_file else None,
        metrics=parse_listen(settings.metrics) if settings.metrics else None,
        check=settings.check,
        processes=processes,
        listen_backlog=backlog,
        proxy_networks=proxies,
        user=lookup_user(settings.user).pw_name if settings.user else None,
        ready_fd=settings.ready_fd,
        close_stderr=settings.close_stderr,
    )
