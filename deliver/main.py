"""relay-deliver: forwards the spool to the smarthost (options, startup, signals, --once).

Reads the settings (flags > RELAY_* environment > the config file's [deliver] table >
defaults), the client secrets file and the spool; writes the pid file when asked. Stays in
the foreground: SIGTERM and SIGINT stop it cleanly (in-flight messages finish or go back
within --shutdown-timeout), SIGUSR1 asks for a scan now. With --processes N, N worker
processes (`common.workers`) share the spool, each claiming messages as any two deliver
processes would, and the signals go to each. Exit codes: 0 ok, 64 usage, 75 (--once) mail
is still waiting, 78 configuration.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
from pathlib import Path
from typing import Any

from common import eventloop
from common.config import ConfigError, Option, load_settings, resolve_path, split_host_port
from common.logs import setup_logging
from common.secrets import SecretsError, SecretsFile
from common.workers import run_workers
from deliver.forward import ForwardSettings, Route, SmarthostConnection
from deliver.message import MessageHandler, Policy
from deliver.outcome import parse_duration
from deliver.scheduler import RunStats, Scheduler
from spool import Spool, SpoolError

PROGRAM = "relay-deliver"
DEFAULT_SPOOL_DIR = "/var/spool/relay"

OPTIONS: tuple[Option, ...] = (
    Option("spool-dir", "the spool directory", DEFAULT_SPOOL_DIR, metavar="DIR"),
    Option("forward-to", "the smarthost, HOST:PORT (the port may be a service name: smtp)",
           None, metavar="HOST:PORT"),
    Option("once", "forward everything that is due, then exit (0, or 75 if mail is left)",
           False, "bool"),
    Option("poll", "seconds between safety-net rescans of the spool", "60", metavar="DURATION"),
    Option("concurrency", "parallel connections to the smarthost (in all, shared out over"
           " --processes)", 4, "int", metavar="N"),
    Option("processes", "worker processes sharing the spool (each claims messages as they"
           " come; 1: no separate workers)", 1, "int", metavar="N"),
    Option("client-filter", "program run on each message before it is sent", [], "list",
           metavar="PROGRAM"),
    Option("filter-timeout", "seconds a client filter may run", "60", metavar="DURATION"),
    Option("client-auth", "secrets file with a 'client plain USER PASSWORD' line", None,
           metavar="FILE"),
    Option("client-tls", "use STARTTLS when the smarthost offers it", False, "bool"),
    Option("client-tls-connection", "implicit TLS from the first byte (port 465)", False, "bool"),
    Option("client-tls-required", "never send without TLS (STARTTLS must succeed)", False, "bool"),
    Option("client-tls-verify", "verify the smarthost's certificate against this CA file"
           " ('system' for the system's CAs)", None, metavar="CAFILE"),
    Option("domain", "this host's name in EHLO (default: the host name, no DNS lookup)", None,
           metavar="NAME"),
    Option("connection-timeout", "seconds to connect and get the greeting", "40",
           metavar="DURATION"),
    Option("response-timeout", "seconds to wait for each reply", "60", metavar="DURATION"),
    Option("data-timeout", "seconds to wait for the reply after the final dot (RFC 5321: 10m)",
           "600", metavar="DURATION"),
    Option("retry-first", "backoff after the first temporary failure", "60", metavar="DURATION"),
    Option("retry-max", "longest backoff between two attempts", "3600", metavar="DURATION"),
    Option("max-age", "give up (.bad) on mail queued this long, from its content file's mtime",
           "5d", metavar="DURATION"),
    Option("content-grace", "how long an envelope may wait for its content file", "10",
           metavar="DURATION"),
    Option("shutdown-timeout", "on SIGTERM, how long in-flight messages may take to finish",
           "10", metavar="DURATION"),
    Option("pid-file", "write the process id to this file", None, metavar="FILE"),
    eventloop.EVENT_LOOP_OPTION,
)

_DURATIONS = ("poll", "filter_timeout", "connection_timeout", "response_timeout",
              "data_timeout", "retry_first", "retry_max", "max_age", "content_grace",
              "shutdown_timeout")


def _durations(settings: Any) -> dict[str, float]:
    values: dict[str, float] = {}
    for name in _DURATIONS:
        try:
            values[name] = parse_duration(getattr(settings, name))
        except ValueError as error:
            raise ConfigError(f"{name.replace('_', '-')}: {error}") from None
    if values["poll"] <= 0:
        raise ConfigError("poll: must be more than 0 seconds")
    return values


def build(settings: Any, concurrency: int | None = None) -> tuple[Scheduler, Spool]:
    """The scheduler for *settings*; ConfigError/SpoolError/SecretsError on a bad setting.

    *concurrency* overrides the setting (one worker process's share of it)."""
    if not settings.forward_to:
        raise ConfigError("--forward-to HOST:PORT is required (or forward-to in [deliver])")
    host, port = split_host_port(settings.forward_to)
    if settings.concurrency < 1:
        raise ConfigError("concurrency: must be 1 or more")
    if not 1 <= settings.processes <= settings.concurrency:
        raise ConfigError("processes: must be 1 or more, and at most --concurrency (each"
                          " process keeps at least one connection)")
    if settings.client_tls_connection and settings.client_tls:
        raise ConfigError("client-tls (STARTTLS) and client-tls-connection exclude each other")
    durations = _durations(settings)
    spool = Spool(Path(os.path.expanduser(settings.spool_dir)))
    client_auth = None
    auth_path = resolve_path(settings.client_auth)
    if auth_path is not None:
        client_auth = SecretsFile(auth_path)
    tls_verify = settings.client_tls_verify
    if tls_verify and tls_verify != "system" and not os.path.isfile(tls_verify):
        raise ConfigError(f"client-tls-verify: {tls_verify} is not a file")
    forward = ForwardSettings(
        local_hostname=settings.domain or socket.gethostname() or "localhost",
        connect_timeout=durations["connection_timeout"],
        response_timeout=durations["response_timeout"],
        data_timeout=durations["data_timeout"],
        starttls=settings.client_tls,
        implicit_tls=settings.client_tls_connection,
        tls_required=settings.client_tls_required,
        tls_verify=tls_verify,
        client_auth=client_auth,
        log_dialogue=settings.verbose,
    )
    tls_context = forward.tls_context()
    policy = Policy(
        default_route=Route(host, port),
        client_filters=tuple(settings.client_filter or ()),
        filter_timeout=durations["filter_timeout"],
        retry_first=durations["retry_first"],
        retry_max=durations["retry_max"],
        max_age=durations["max_age"],
        content_grace=durations["content_grace"],
    )
    scheduler = Scheduler(
        spool=spool,
        handler=MessageHandler(spool, policy),
        new_connection=lambda: SmarthostConnection(forward, tls_context),
        concurrency=concurrency or settings.concurrency,
        poll=durations["poll"],
        once=settings.once,
        shutdown_timeout=durations["shutdown_timeout"],
    )
    return scheduler, spool


async def _run(scheduler: Scheduler) -> RunStats:
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, scheduler.stop)
    loop.add_signal_handler(signal.SIGINT, scheduler.stop)
    loop.add_signal_handler(signal.SIGUSR1, scheduler.request_scan)
    try:
        return await scheduler.run()
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1):
            loop.remove_signal_handler(signum)


def main(argv: list[str] | None = None) -> int:
    """Entry point of relay-deliver."""
    try:
        settings = load_settings(PROGRAM, "Forward the spooled mail to the smarthost.",
                                 OPTIONS, argv, section="deliver")
    except ConfigError as error:
        print(f"{PROGRAM}: {error}", file=sys.stderr)
        return os.EX_CONFIG
    log = setup_logging(PROGRAM, log_format=settings.log_format, syslog=settings.syslog,
                        verbose=settings.verbose)
    try:
        scheduler, spool = build(settings)
        event_loop = eventloop.resolve(settings.event_loop)
    except (ConfigError, SpoolError, SecretsError, OSError) as error:
        log.error("deliver_not_started", reason=str(error))
        return os.EX_CONFIG
    pid_file = resolve_path(settings.pid_file)
    if pid_file is not None:
        try:
            pid_file.write_text(f"{os.getpid()}\n")
        except OSError as error:
            log.error("deliver_not_started", reason=f"pid file {pid_file}: {error.strerror}")
            return os.EX_CONFIG
    try:
        if settings.processes == 1:
            return serve(settings, scheduler, spool, event_loop, log)

        def work(index: int) -> int:
            share = settings.concurrency // settings.processes
            share += 1 if index < settings.concurrency % settings.processes else 0
            child_scheduler, child_spool = build(settings, concurrency=share)
            return serve(settings, child_scheduler, child_spool, event_loop,
                         log.bind(process=index))

        return run_workers(settings.processes, work, log, finish=settings.once,
                           stop_timeout=parse_duration(settings.shutdown_timeout) + 10)
    finally:
        if pid_file is not None:
            with contextlib.suppress(OSError):
                pid_file.unlink()


def serve(settings: Any, scheduler: Scheduler, spool: Spool, event_loop: str, log: Any) -> int:
    """Run one scheduler until stopped (or, --once, done); its exit code."""
    log.info("deliver_started", spool=str(spool.path), forward_to=settings.forward_to,
             concurrency=scheduler.concurrency, once=settings.once, event_loop=event_loop)
    stats = eventloop.run(_run(scheduler), event_loop)
    extra = {"removals_failed": stats.removals_failed} if stats.removals_failed else {}
    log.info("deliver_stopped", sent=stats.sent, deferred=stats.deferred, failed=stats.failed,
             waiting=stats.waiting_at_end, connections=stats.connections, **extra)
    # A sent message whose removal failed is still in the spool (sent again later): --once
    # says so rather than claim an empty queue.
    if settings.once and (stats.waiting_at_end or stats.removals_failed):
        return os.EX_TEMPFAIL
    return os.EX_OK


if __name__ == "__main__":
    raise SystemExit(main())
