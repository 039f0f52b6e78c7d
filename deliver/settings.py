"""relay-deliver's options and the validated configuration built from them.

Options come through `common.config.load_settings` (flags > RELAY_* > the `[deliver]` table
and shared keys of the config file > defaults); durations and sizes are parsed there, the
same way for every program. `build_config` checks what is left and loads what the settings
point to (the client secrets file, the CA file): every problem is a `ConfigError` naming the
option, so that main exits 78 before anything is forwarded. Reads the secrets file only;
writes nothing.
"""

from __future__ import annotations

import argparse
import os
import ssl
from dataclasses import dataclass

from common import eventloop
from common.config import (
    SPOOL_DIR_OPTION,
    ConfigError,
    Option,
    local_fqdn,
    resolve_path,
    split_host_port,
)
from common.events import EVENT_FD_OPTION
from common.filterspec import Spec, parse_filter
from common.logs import LOG_UNIT_OPTION, UNIT_OPTION
from common.process import CLOSE_STDERR_OPTION, READY_FD_OPTION, USER_OPTION, lookup_user
from common.secrets import SecretsError, SecretsFile
from common.tlsconfig import SYSTEM_CAS, client_context, parse_tls_config
from deliver.clientauth import AuthConfig, parse_auth_config
from deliver.extensions import Strict
from deliver.mxfilter import BUILTINS as MX_BUILTINS

PROGRAM = "relay-deliver"
DESCRIPTION = "Forward the spooled mail to the smarthost."

OPTIONS: tuple[Option, ...] = (
    SPOOL_DIR_OPTION,
    Option("forward-to", "the smarthost, HOST:PORT (the port may be a service name: smtp)",
           None, metavar="HOST:PORT"),
    Option("once", "forward everything that is due, then exit (0, or 75 if mail is left)",
           False, "bool"),
    Option("flush", "with --once: every queued message, deferred ones too (sendmail -q), "
           "not only what is due", False, "bool"),
    Option("flush-every", "try every queued message, deferred ones too, every DURATION "
           "(E-MailRelay's --poll; 0: never)", 0.0, "duration", metavar="DURATION"),
    Option("flush-at-start", "try every queued message once at start (E-MailRelay's --forward)",
           False, "bool"),
    Option("watch", "forward new mail as soon as it is stored (file-system events and the "
           "--poll rescans); --no-watch: nothing is sent but by a flush",
           True, "bool"),
    Option("poll", "seconds between safety-net rescans of the spool", 60.0, "duration",
           metavar="DURATION"),
    Option("concurrency", "parallel connections to the smarthost (in all, shared out over"
           " --processes)", 4, "int", metavar="N"),
    Option("processes", "worker processes sharing the spool (each claims messages as they"
           " come; 1: no separate workers)", 1, "int", metavar="N"),
    Option("client-filter", "program (or built-in: exit:N, net:HOST:PORT, spam:HOST:PORT, "
           "spam-edit:HOST:PORT) run on each message before it is sent", [], "list",
           metavar="PROGRAM"),
    Option("filter-timeout", "seconds a client filter may run", 60.0, "duration",
           metavar="DURATION"),
    Option("client-auth", "secrets file with a 'client plain USER PASSWORD' line", None,
           metavar="FILE"),
    Option("client-auth-config", "AUTH mechanisms, E-MailRelay's client syntax: m:LIST "
           "keeps only these, x:LIST avoids these (e.g. m:cram-sha256,cram-md5;x:login);"
           " needs --client-auth", None, metavar="CONFIG"),
    Option("client-tls", "use STARTTLS when the smarthost offers it", False, "bool"),
    Option("client-tls-connection", "implicit TLS from the first byte (port 465)", False, "bool"),
    Option("client-tls-required", "never send without TLS (STARTTLS must succeed)", False, "bool"),
    Option("client-tls-verify", "check the smarthost's certificate chain against this CA file"
           " or directory ('system' or '<default>': the system's CAs); the name is not checked",
           None, metavar="CAFILE"),
    Option("client-tls-verify-name", "check that the smarthost's certificate is for this name",
           None, metavar="NAME"),
    Option("client-tls-server-name", "the server name sent in the TLS handshake (SNI)", None,
           metavar="NAME"),
    Option("client-tls-certificate", "PEM file with this client's key and certificate; or give"
           " it twice: the key file, then the certificate file", [], "list", metavar="FILE"),
    Option("tls-config", "TLS versions: tlsv1.2 (the lowest allowed), -tlsv1.3 (the highest),"
           " comma-separated", None, metavar="KEYWORDS"),
    Option("domain", "this host's name in EHLO (default: the fully qualified host name; a "
           "name without a dot: EHLO [local address], as E-MailRelay)", None, metavar="NAME"),
    Option("client-interface", "local address to connect from", None, metavar="ADDRESS"),
    Option("forward-to-all", "send a message only if the smarthost accepts every recipient "
           "(E-MailRelay's default); otherwise refused recipients are split off", False, "bool"),
    Option("connection-timeout", "seconds to connect (and the TLS handshake of "
           "--client-tls-connection)", 40.0, "duration", metavar="DURATION"),
    Option("prompt-timeout", "seconds to wait for the smarthost's greeting, then go on with "
           "EHLO without it (E-MailRelay's -w); 0: wait --response-timeout, then give up",
           20.0, "duration", metavar="DURATION"),
    Option("eightbit-strict", "fail (.bad) an 8bit message to a smarthost without 8BITMIME "
           "(E-MailRelay's +eightbitstrict); otherwise it is sent anyway", False, "bool"),
    Option("smtputf8-strict", "fail (.bad) a message with UTF-8 addresses to a smarthost "
           "without SMTPUTF8; --no-smtputf8-strict: send it anyway", True, "bool"),
    Option("binarymime-strict", "fail (.bad) a binarymime message to a smarthost without "
           "BINARYMIME and CHUNKING; --no-binarymime-strict: send it with DATA", True,
           "bool"),
    Option("pipelining", "send MAIL FROM and every RCPT TO in one write when the smarthost "
           "offers PIPELINING (E-MailRelay's +pipelining)", False, "bool"),
    Option("linger", "--no-linger: close each connection to the smarthost with a reset "
           "(SO_LINGER 0, no TIME_WAIT; E-MailRelay's -linger)", True, "bool"),
    Option("response-timeout", "seconds to wait for each reply", 60.0, "duration",
           metavar="DURATION"),
    Option("data-timeout", "seconds to wait for the reply after the final dot (RFC 5321: 10m)",
           600.0, "duration", metavar="DURATION"),
    Option("retry-first", "backoff after the first temporary failure", 60.0, "duration",
           metavar="DURATION"),
    Option("retry-max", "longest backoff between two attempts", 3600.0, "duration",
           metavar="DURATION"),
    Option("max-age", "give up (.bad) on mail queued this long, from its content file's mtime",
           "5d", "duration", metavar="DURATION"),
    Option("content-grace", "how long an envelope may wait for its content file", 10.0,
           "duration", metavar="DURATION"),
    Option("shutdown-timeout", "on SIGTERM, how long in-flight messages may take to finish",
           10.0, "duration", metavar="DURATION"),
    Option("pid-file", "write the process id to this file (removed at exit)", None,
           metavar="FILE"),
    USER_OPTION,
    READY_FD_OPTION,
    EVENT_FD_OPTION,
    CLOSE_STDERR_OPTION,
    UNIT_OPTION,
    LOG_UNIT_OPTION,
    eventloop.EVENT_LOOP_OPTION,
)


@dataclass(frozen=True)
class DeliverConfig:
    """Everything relay-deliver needs, checked; durations in seconds."""

    spool_dir: str
    host: str
    port: int
    forward_to: str
    once: bool
    poll: float
    flush: bool
    flush_every: float
    flush_at_start: bool
    watch: bool
    concurrency: int
    processes: int
    client_filters: tuple[Spec, ...]
    filter_timeout: float
    client_auth: SecretsFile | None
    client_auth_config: AuthConfig
    client_tls: bool
    client_tls_connection: bool
    client_tls_required: bool
    client_tls_verify: str | None
    tls_context: ssl.SSLContext
    domain: str
    client_interface: str | None
    forward_to_all: bool
    connection_timeout: float
    prompt_timeout: float
    strict: Strict
    pipelining: bool
    linger: bool
    response_timeout: float
    data_timeout: float
    retry_first: float
    retry_max: float
    max_age: float
    content_grace: float
    shutdown_timeout: float
    pid_file: str | None
    event_loop: str  # resolved: 'asyncio' or 'uvloop'
    verbose: bool
    user: str | None = None
    ready_fd: int | None = None
    close_stderr: bool = False


def build_config(settings: argparse.Namespace) -> DeliverConfig:
    """Check the merged settings; raises ConfigError naming the option at fault."""
    if not settings.forward_to:
        raise ConfigError("--forward-to HOST:PORT is required (or forward-to in [deliver])")
    host, port = split_host_port(settings.forward_to)
    if settings.concurrency < 1:
        raise ConfigError("--concurrency must be 1 or more")
    if not 1 <= settings.processes <= settings.concurrency:
        raise ConfigError("--processes must be 1 or more, and at most --concurrency (each"
                          " process keeps at least one connection)")
    if settings.client_tls_connection and settings.client_tls:
        raise ConfigError("--client-tls (STARTTLS) and --client-tls-connection exclude each other")
    for name in ("poll", "filter_timeout", "connection_timeout", "response_timeout",
                 "data_timeout", "shutdown_timeout"):
        if getattr(settings, name) <= 0:
            raise ConfigError(f"--{name.replace('_', '-')} must be more than 0 seconds")
    if settings.prompt_timeout < 0:
        raise ConfigError("--prompt-timeout must not be negative")
    if settings.client_auth_config and not settings.client_auth:
        raise ConfigError("--client-auth-config needs --client-auth")
    if settings.flush_every < 0:
        raise ConfigError("--flush-every must not be negative")
    if settings.user:
        lookup_user(settings.user)
    client_auth = None
    auth_path = resolve_path(settings.client_auth)
    if auth_path is not None:
        try:
            client_auth = SecretsFile(auth_path)
        except (SecretsError, OSError, UnicodeDecodeError) as error:
            raise ConfigError(f"--client-auth: {error}") from None
    tls_verify = settings.client_tls_verify
    if tls_verify and tls_verify not in SYSTEM_CAS:
        if not os.path.exists(resolved := str(resolve_path(tls_verify))):
            raise ConfigError(f"--client-tls-verify: {tls_verify}: no such file or directory")
        tls_verify = resolved
    certificates = [str(resolve_path(path)) for path in settings.client_tls_certificate or ()]
    if len(certificates) > 2:
        raise ConfigError("--client-tls-certificate: give one file (key and certificate) or"
                          " two (the key file, then the certificate file)")
    tls_context = client_context(
        verify=tls_verify, verify_name=settings.client_tls_verify_name,
        server_name=settings.client_tls_server_name,
        certificate=certificates[-1] if certificates else None,
        key=certificates[0] if len(certificates) == 2 else None,
        config=parse_tls_config(settings.tls_config))
    return DeliverConfig(
        spool_dir=str(resolve_path(settings.spool_dir)),
        host=host,
        port=port,
        forward_to=settings.forward_to,
        once=settings.once,
        poll=settings.poll,
        flush=settings.flush,
        flush_every=settings.flush_every,
        flush_at_start=settings.flush_at_start,
        watch=settings.watch,
        concurrency=settings.concurrency,
        processes=settings.processes,
        client_filters=tuple(spec for text in settings.client_filter or ()
                             for spec in parse_filter(text, "client-filter", MX_BUILTINS)),
        filter_timeout=settings.filter_timeout,
        client_auth=client_auth,
        client_auth_config=parse_auth_config(settings.client_auth_config),
        client_tls=settings.client_tls,
        client_tls_connection=settings.client_tls_connection,
        client_tls_required=settings.client_tls_required,
        client_tls_verify=tls_verify,
        tls_context=tls_context,
        domain=settings.domain or local_fqdn(),
        client_interface=settings.client_interface,
        forward_to_all=settings.forward_to_all,
        connection_timeout=settings.connection_timeout,
        prompt_timeout=settings.prompt_timeout,
        strict=Strict(settings.eightbit_strict, settings.smtputf8_strict,
                      settings.binarymime_strict),
        pipelining=settings.pipelining,
        linger=settings.linger,
        response_timeout=settings.response_timeout,
        data_timeout=settings.data_timeout,
        retry_first=settings.retry_first,
        retry_max=settings.retry_max,
        max_age=settings.max_age,
        content_grace=settings.content_grace,
        shutdown_timeout=settings.shutdown_timeout,
        pid_file=str(resolve_path(settings.pid_file)) if settings.pid_file else None,
        event_loop=eventloop.resolve(settings.event_loop),
        verbose=settings.verbose,
        user=settings.user,
        ready_fd=settings.ready_fd,
        close_stderr=settings.close_stderr,
    )
