"""relay-intake: options, start-up checks, signals and the exit code.

    relay-intake --spool-dir DIR --port 10025 [--interface ADDR ...] [--remote-clients]
                 [--server-auth FILE --server-tls-certificate PEM] [--filter PROG ...] ...

Exit codes: 0 after SIGTERM/SIGINT (open transactions finished, bounded by
--stop-timeout), 2 when a port cannot be bound, 64 for a usage error, 78 for bad
configuration or an unusable spool directory. Writes the pid file (if asked) and,
through `intake.listener`, message files into the spool; nothing else.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import warnings
from collections.abc import Callable
from typing import Any

from common import check, eventloop
from common.config import ConfigError, load_settings
from common.logs import setup_logging
from common.metrics import IntakeMetrics, MetricsServer
from common.pidfile import remove_pid_file, write_pid_file
from intake.listener import IntakeServer
from intake.settings import DESCRIPTION, OPTIONS, PROGRAM, IntakeConfig, build_config
from spool import Spool, SpoolError

EX_BIND = 2
EX_CONFIG = os.EX_CONFIG

# aiosmtpd warns on every connection when AUTH is allowed without TLS; relay warns once,
# at start, when the operator chose --server-auth-insecure.
warnings.filterwarnings("ignore", message="Requiring AUTH while not requiring TLS")


def warn_about_configuration(config: IntakeConfig, log: Any) -> None:
    """Log, at every start, the risks the operator has chosen."""
    if config.open_relay:
        log.warning(
            "open_relay_risk",
            reason="--remote-clients without --server-auth and without --address-verifier: "
            "any client that can reach this port can relay mail through the smarthost "
            "(an open relay). Only do this on a closed network.",
        )
    if config.authenticator is not None and config.tls_context is None and not config.auth_insecure:
        log.warning(
            "auth_unavailable",
            reason="--server-auth without --server-tls-certificate: AUTH is never offered "
            "(it needs TLS unless --server-auth-insecure), so only 'server none' clients "
            "can send",
        )
    if config.auth_insecure:
        log.warning("auth_insecure", reason="AUTH is offered without TLS: passwords travel "
                    "in clear text")


async def run(
    config: IntakeConfig,
    spool: Spool,
    log: Any,
    *,
    install_signals: bool = True,
    on_ready: Callable[[IntakeServer, Callable[[], None]], None] | None = None,
) -> int:
    """Serve until asked to stop; returns the exit code.

    *on_ready* receives the running server and a thread-safe function that stops it (for
    tests that run intake in a thread).
    """
    loop = asyncio.get_running_loop()
    stop_requested = asyncio.Event()
    server = IntakeServer(config, spool, log)
    metrics_server = None
    if config.metrics is not None:
        server.metrics = server.committer.metrics = IntakeMetrics()
        try:
            metrics_server = MetricsServer(*config.metrics, server.metrics.registry,
                                           server.health)
        except ConfigError as error:
            log.error("intake_not_started", reason=str(error))
            print(f"{PROGRAM}: {error}", file=sys.stderr)
            return EX_CONFIG
    try:
        await server.start()
    except OSError as error:
        await server.committer.stop()
        if metrics_server is not None:
            metrics_server.stop()
        log.error("listen_failed", reason=str(error))
        print(f"{PROGRAM}: {error.strerror or error}", file=sys.stderr)
        return EX_BIND
    if install_signals:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop_requested.set)
    if config.pid_file:
        write_pid_file(config.pid_file)
    try:
        log.info("intake_started", listen=[f"{h}:{p}" for h, p in server.addresses],
                 spool=str(spool.path), pid=os.getpid(), event_loop=config.event_loop)
        if on_ready is not None:

            def request_stop() -> None:
                loop.call_soon_threadsafe(stop_requested.set)

            on_ready(server, request_stop)
        await stop_requested.wait()
        log.info("intake_stopping", sessions=len(server.sessions))
        await server.stop()
        log.info("intake_stopped", messages=server.committer.messages,
                 batches=server.committer.batches)
    finally:
        if metrics_server is not None:
            metrics_server.stop()
        if config.pid_file:
            remove_pid_file(config.pid_file)
        if install_signals:
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(signum)
    return 0


def prepare(argv: list[str] | None) -> tuple[IntakeConfig, Spool, Any]:
    """Options, logging, configuration and the spool; ConfigError/SpoolError on a problem."""
    settings = load_settings(PROGRAM, DESCRIPTION, OPTIONS, argv, section="intake")
    log = setup_logging(PROGRAM, log_format=settings.log_format, syslog=settings.syslog,
                        verbose=settings.verbose)
    config = build_config(settings)
    spool = Spool(config.spool_dir)
    return config, spool, log


def main(argv: list[str] | None = None) -> int:
    """Entry point of `relay-intake`."""
    checking = ("--check" in (sys.argv[1:] if argv is None else argv)
                or os.environ.get("RELAY_CHECK", "").lower() in ("1", "true", "yes", "on"))
    try:
        config, spool, log = prepare(argv)
    except (ConfigError, SpoolError) as error:
        if checking:
            return check.failed(PROGRAM, str(error))
        print(f"{PROGRAM}: {error}", file=sys.stderr)
        return EX_CONFIG
    if config.check:  # loaded: say so, start nothing
        where = ", ".join(f"{i}:{config.port}" for i in config.interfaces)
        return check.passed(PROGRAM, spool, f"listen on {where}")
    warn_about_configuration(config, log)
    return eventloop.run(run(config, spool, log), config.event_loop)


if __name__ == "__main__":
    sys.exit(main())
