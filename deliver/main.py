"""relay-deliver: forwards the spool to the smarthost (options, startup, signals, --once).

Reads the settings (`deliver.settings`), the client secrets file and the spool; writes the
pid file when asked (atomically, `common.pidfile`). Stays in the foreground: SIGTERM and
SIGINT stop it cleanly (in-flight messages finish or go back within --shutdown-timeout),
SIGUSR1 flushes (every queued message is tried now, deferred ones included), SIGHUP reopens
the log file. With --user (started as root) it runs as that user from before the first
message is read; --ready-fd tells `relay` once it is running. With --processes N, N worker
processes (`common.workers`) share the spool, each claiming messages as any two deliver
processes would, and the signals go to each. Exit codes: 0 ok, 64 usage, 75 (--once) mail
is still waiting, 78 configuration.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Callable

from common import check, eventloop, events
from common.check import CHECK_OPTION
from common.config import ConfigError, load_settings
from common.logs import Logger, close_stderr, setup_logging_from, unit_key
from common.metrics import METRICS_OPTION, DeliverMetrics, MetricsServer, parse_listen
from common.pidfile import remove_pid_file, write_pid_file
from common.process import drop_privileges, notify_ready
from common.workers import run_workers, signals_ready
from deliver.forward import ForwardSettings, Route
from deliver.message import MessageHandler, Policy
from deliver.routes import DestinationHealth, RoutePool
from deliver.scheduler import RunStats, Scheduler
from deliver.settings import DESCRIPTION, OPTIONS, PROGRAM, DeliverConfig, build_config
from spool import Spool, SpoolError

ALL_OPTIONS = (*OPTIONS, METRICS_OPTION, CHECK_OPTION)


def forward_settings(config: DeliverConfig) -> ForwardSettings:
    """How to talk to the smarthost, from *config* (also `relay --immediate`'s)."""
    return ForwardSettings(
        local_hostname=config.domain,
        connect_timeout=config.connection_timeout,
        response_timeout=config.response_timeout,
        data_timeout=config.data_timeout,
        starttls=config.client_tls,
        implicit_tls=config.client_tls_connection,
        tls_required=config.client_tls_required,
        tls_verify=config.client_tls_verify,
        client_auth=config.client_auth,
        log_dialogue=config.verbose,
        client_interface=config.client_interface,
        all_recipients=config.forward_to_all,
        prompt_timeout=config.prompt_timeout,
        strict=config.strict,
        auth_config=config.client_auth_config,
        pipelining=config.pipelining,
        linger=config.linger,
    )


def build(config: DeliverConfig, concurrency: int | None = None,
          metrics: DeliverMetrics | None = None) -> tuple[Scheduler, Spool]:
    """The scheduler for *config*; SpoolError for an unusable spool directory.

    *concurrency* overrides the setting (one worker process's share of it)."""
    spool = Spool(config.spool_dir)
    forward = forward_settings(config)
    tls_context = config.tls_context  # common.tlsconfig: E-MailRelay's switches
    policy = Policy(
        default_route=Route(config.host, config.port),
        client_filters=config.client_filters,
        filter_timeout=config.filter_timeout,
        retry_first=config.retry_first,
        retry_max=config.retry_max,
        max_age=config.max_age,
        content_grace=config.content_grace,
        client_auth=config.client_auth,
    )
    health = DestinationHealth(down_for=config.retry_first)  # routed destinations
    scheduler = Scheduler(
        spool=spool,
        handler=MessageHandler(spool, policy, metrics=metrics),
        new_connection=lambda: RoutePool(forward, tls_context, health,
                                         (config.host, config.port)),
        concurrency=concurrency or config.concurrency,
        poll=config.poll,
        once=config.once,
        flush_every=config.flush_every,
        flush_at_start=config.flush or config.flush_at_start,
        watch=config.watch,
        shutdown_timeout=config.shutdown_timeout,
        metrics=metrics,
        on_flush=health.forget,  # a flush tries every destination again, as E-MailRelay's
    )
    return scheduler, spool


async def _run(scheduler: Scheduler, started: Callable[[], None]) -> RunStats:
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, scheduler.stop)
    loop.add_signal_handler(signal.SIGINT, scheduler.stop)
    loop.add_signal_handler(signal.SIGUSR1, scheduler.flush)
    signals_ready(signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)
    # Said only now: a SIGTERM sent on seeing this line is handled, never the default kill.
    started()
    try:
        return await scheduler.run()
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1):
            loop.remove_signal_handler(signum)


def main(argv: list[str] | None = None) -> int:
    """Entry point of relay-deliver."""
    try:
        settings = load_settings(PROGRAM, DESCRIPTION, ALL_OPTIONS, argv, section="deliver")
    except ConfigError as error:
        print(f"{PROGRAM}: {error}", file=sys.stderr)
        return os.EX_CONFIG
    try:
        log = setup_logging_from(PROGRAM, settings)
    except (OSError, ValueError) as error:
        print(f"{PROGRAM}: logging: {error}", file=sys.stderr)
        return os.EX_CONFIG
    events.configure(settings.event_fd)
    metrics_server: MetricsServer | None = None
    try:
        config = build_config(settings)
        metrics = None
        if settings.metrics:
            host, port = parse_listen(settings.metrics)
            if config.processes != 1:
                raise ConfigError("metrics: --metrics needs --processes 1 (each worker process"
                                  " would count only its own share)")
            metrics = DeliverMetrics()
        scheduler, spool = build(config, metrics=metrics)
        if settings.check:  # loaded: say so, start nothing
            return check.passed(PROGRAM, spool, f"forward to {config.forward_to}")
        if metrics is not None:
            metrics_server = MetricsServer(host, port, metrics.registry, scheduler.health)
    except (ConfigError, SpoolError, OSError) as error:
        if settings.check:
            return check.failed(PROGRAM, str(error))
        log.error("deliver_not_started", reason=str(error))
        return os.EX_CONFIG
    try:
        return _start(config, scheduler, spool, log)
    finally:
        if metrics_server is not None:
            metrics_server.stop()


def _start(config: DeliverConfig, scheduler: Scheduler, spool: Spool, log: Logger) -> int:
    """Write the pid file and run the scheduler (or the worker processes); the exit code."""
    if config.pid_file is not None:
        try:
            write_pid_file(config.pid_file)
        except OSError as error:
            log.error("deliver_not_started",
                      reason=f"pid file {config.pid_file}: {error.strerror}")
            return os.EX_CONFIG
    try:
        user = drop_privileges(config.user)
    except (ConfigError, OSError) as error:
        log.error("deliver_not_started", reason=f"--user: {error}")
        if config.pid_file is not None:
            remove_pid_file(config.pid_file)
        return os.EX_CONFIG
    if user is not None:
        log.info("user_switched", user=user, uid=os.getuid())
    notify_ready(config.ready_fd)
    if config.close_stderr:
        close_stderr()
    try:
        if config.processes == 1:
            return serve(config, scheduler, spool, log)

        def work(index: int) -> int:
            share = config.concurrency // config.processes
            share += 1 if index < config.concurrency % config.processes else 0
            child_scheduler, child_spool = build(config, concurrency=share)
            return serve(config, child_scheduler, child_spool, log.bind(process=index))

        return run_workers(config.processes, work, log, finish=config.once,
                           stop_timeout=config.shutdown_timeout + 10)
    finally:
        if config.pid_file is not None:
            remove_pid_file(config.pid_file)


def serve(config: DeliverConfig, scheduler: Scheduler, spool: Spool, log: Logger) -> int:
    """Run one scheduler until stopped (or, --once, done); its exit code."""

    def started() -> None:
        log.info("deliver_started", spool=str(spool.path), forward_to=config.forward_to,
                 concurrency=scheduler.concurrency, once=config.once,
                 event_loop=config.event_loop, **unit_key())

    stats = eventloop.run(_run(scheduler, started), config.event_loop)
    extra = {"removals_failed": stats.removals_failed} if stats.removals_failed else {}
    log.info("deliver_stopped", sent=stats.sent, deferred=stats.deferred, failed=stats.failed,
             waiting=stats.waiting_at_end, connections=stats.connections, **extra)
    # A sent message whose removal failed is still in the spool (sent again later): --once
    # says so rather than claim an empty queue.
    if config.once and (stats.waiting_at_end or stats.removals_failed):
        return os.EX_TEMPFAIL
    return os.EX_OK


if __name__ == "__main__":
    raise SystemExit(main())
