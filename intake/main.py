"""relay-intake: options, start-up checks, signals and the exit code.

    relay-intake --spool-dir DIR --port 10025 [--interface ADDR ...] [--remote-clients]
                 [--server-auth FILE --server-tls-certificate PEM] [--filter PROG ...] ...

Exit codes: 0 after SIGTERM/SIGINT (open transactions finished, bounded by
--stop-timeout), 2 when a port cannot be bound, 64 for a usage error, 78 for bad
configuration or an unusable spool directory. With --processes N (more than 1) the
listening sockets are bound here, then N worker processes (`common.workers`) each serve
on their own socket of each interface with their share of the connection limits. Writes
the pid file (if asked) and, through `intake.listener`, message files into the spool;
nothing else.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import socket
import sys
import warnings
from collections.abc import Callable

from common import check, eventloop, events
from common.config import ConfigError, load_settings
from common.logs import Logger, close_stderr, setup_logging_from, unit_key
from common.metrics import IntakeMetrics, MetricsServer
from common.pidfile import remove_pid_file, write_pid_file
from common.process import drop_privileges, notify_ready, settle_heap
from common.workers import EX_SOFTWARE, run_workers, signals_ready
from intake.listener import IntakeServer
from intake.settings import DESCRIPTION, OPTIONS, PROGRAM, IntakeConfig, build_config
from intake.shared_storage import SharedStorage
from intake.sockets import bind_listeners
from spool import Spool, SpoolError

EX_BIND = 2
EX_CONFIG = os.EX_CONFIG

# aiosmtpd warns on every connection when AUTH is allowed without TLS; relay warns once,
# at start, when the operator chose --server-auth-insecure.
warnings.filterwarnings("ignore", message="Requiring AUTH while not requiring TLS")


def warn_about_configuration(config: IntakeConfig, log: Logger) -> None:
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
            "(it needs TLS unless --server-auth-insecure or an m: list in "
            "--server-auth-config), so only 'server none' clients can send",
        )
    if config.auth_insecure:
        insecure = config.auth_lists.insecure
        clear = [name for name in insecure if name in ("PLAIN", "LOGIN")]
        log.warning("auth_insecure", mechanisms=",".join(insecure),
                    reason="AUTH is offered without TLS" + (
                        ": passwords travel in clear text" if clear else ""))


async def run(
    config: IntakeConfig,
    spool: Spool,
    log: Logger,
    *,
    install_signals: bool = True,
    on_ready: Callable[[IntakeServer, Callable[[], None]], None] | None = None,
    sockets: list[socket.socket] | None = None,
    worker: int | None = None,
    shared: socket.socket | None = None,
) -> int:
    """Serve until asked to stop; returns the exit code.

    *on_ready* receives the running server and a thread-safe function that stops it (for
    tests that run intake in a thread). *sockets*: already listening (a worker process of
    --processes, *worker* its index); without them intake binds its own. *shared*: the
    worker's socket to the storage process all workers share (`intake.shared_storage`).
    """
    loop = asyncio.get_running_loop()
    stop_requested = asyncio.Event()
    server = IntakeServer(config, spool, log)
    server.committer.user = config.user  # the storage process switches before reading
    server.committer.shared = shared
    metrics_server = None
    if config.metrics is not None:
        server.metrics = server.committer.metrics = IntakeMetrics()
        try:
            metrics_server = MetricsServer(*config.metrics, server.metrics.registry,
                                           server.health)
        except ConfigError as error:
            log.error("intake_not_started", reason=str(error))
            return EX_CONFIG
    if sockets is None:
        try:
            sockets = bind_listeners(config.interfaces, config.port, config.listen_backlog,
                                     1)[0][0]
        except OSError as error:
            if metrics_server is not None:
                metrics_server.stop()
            return listen_failed(error, log)
    try:
        await server.start(sockets)
    except OSError as error:
        await server.committer.stop()
        await server.close_listeners()
        if metrics_server is not None:
            metrics_server.stop()
        return listen_failed(error, log)
    if install_signals:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop_requested.set)
        signals_ready(signal.SIGTERM, signal.SIGINT)
    if config.pid_file:
        write_pid_file(config.pid_file)
    # Bound and (as root) the pid file written: from here on, as --user. No await since
    # start(), so no connection has been served yet.
    try:
        user = drop_privileges(config.user)
    except (ConfigError, OSError) as error:
        log.error("intake_not_started", reason=f"--user: {error}")
        await server.stop()
        if config.pid_file:
            remove_pid_file(config.pid_file)
        return EX_CONFIG
    try:
        extra = {} if worker is None else {"process": worker}
        log.info("intake_started", listen=[f"{h}:{p}" for h, p in server.addresses],
                 spool=str(spool.path), pid=os.getpid(), event_loop=config.event_loop,
                 **extra, **({"user": user} if user else {}), **unit_key())
        if install_signals:  # its own process (not a test's thread)
            settle_heap()
        notify_ready(config.ready_fd)
        if config.close_stderr:
            close_stderr()
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


def prepare(argv: list[str] | None) -> tuple[IntakeConfig, Spool, Logger]:
    """Options, logging, configuration and the spool; ConfigError/SpoolError on a problem."""
    settings = load_settings(PROGRAM, DESCRIPTION, OPTIONS, argv, section="intake")
    try:
        log = setup_logging_from(PROGRAM, settings)
    except (OSError, ValueError) as error:
        raise ConfigError(f"logging: {error}") from None
    events.configure(settings.event_fd)
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
    if config.processes == 1:
        return eventloop.run(run(config, spool, log), config.event_loop)
    spread = [str(network) for network in (*config.exempt_networks, *config.proxy_networks)]
    try:
        groups, steered = bind_listeners(config.interfaces, config.port, config.listen_backlog,
                                         config.processes, spread)
    except OSError as error:
        return listen_failed(error, log)
    if not steered:
        log.warning("steering_unavailable", reason="the kernel refused the BPF program that "
                    "keeps a client network on one worker: per-client limits and AUTH "
                    "failure counts are per worker process")
    try:
        storage = SharedStorage(spool, config.sync, config.processes, config.user)
    except OSError as error:
        log.error("intake_not_started", reason=f"cannot start the storage process: {error}")
        return EX_SOFTWARE
    if config.pid_file:
        write_pid_file(config.pid_file)
    # With --user, each worker switches once its storage process runs (see run()), and so
    # does the shared storage process; this parent, which holds the sockets and only
    # watches the workers, reads no message.

    def work(index: int) -> int:
        for number, sockets in enumerate(groups):
            if number != index:
                for sock in sockets:
                    sock.close()
        return eventloop.run(run(per_worker(config, index), spool, log.bind(process=index),
                                 sockets=groups[index], worker=index,
                                 shared=storage.for_worker(index)), config.event_loop)

    try:
        code = run_workers(config.processes, work, log, usr1=False,
                           stop_timeout=config.stop_timeout + 10,
                           started=storage.close_worker_ends)
    finally:
        storage.close_worker_ends()
        storage.wait()
        if config.pid_file:
            remove_pid_file(config.pid_file)
    return code


def per_worker(config: IntakeConfig, index: int) -> IntakeConfig:
    """Worker *index*'s configuration: its share of the total connection limits, no pid
    file, and its own metrics port (--metrics PORT + index: each worker counts its own).

    The per-client and per-network limits stay whole: each client network's connections
    all reach the same worker (intake.sockets).
    """
    share = config.processes

    def part(total: int) -> int:
        return -(-total // share) if total else 0

    metrics = config.metrics
    if metrics is not None and metrics[1]:
        metrics = (metrics[0], metrics[1] + index)
    shared: IntakeConfig = dataclasses.replace(
        config, pid_file=None, max_connections=part(config.max_connections),
        reserved_connections=part(config.reserved_connections), metrics=metrics)
    return shared


def listen_failed(error: OSError, log: Logger) -> int:
    """The SMTP port could not be bound: said once, by the log line (stderr by default)."""
    log.error("listen_failed", reason=error.strerror or str(error))
    return EX_BIND


if __name__ == "__main__":
    sys.exit(main())
