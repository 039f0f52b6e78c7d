"""Logging for every relay program: structlog, one line per event, to stderr (and syslog).

`setup_logging` gives every line the same shape, `--log-format console|logfmt|json`,
whether it comes from relay (structlog) or from a library's standard-library logger
(aiosmtpd's `mail.log`, aiosmtplib, watchdog), which go through structlog's
`ProcessorFormatter`. relay's own lines, one or more per message, take structlog's short
path (a filtering bound logger rendering straight to stderr) rather than the standard
library's chain of logger, record, handler and formatter, which cost intake ~5% of its
event loop. `--syslog` adds the mail facility (then relay's lines go through the standard
library too, to reach its syslog handler); `--verbose` turns on debug lines, the SMTP
dialogue included. Writes to stderr and syslog only.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import sys
from typing import Any

import structlog

_RENDERERS = ("console", "logfmt", "json")
_QUIET_UNLESS_VERBOSE = ("mail.log", "aiosmtplib", "watchdog", "asyncio")


class StderrLogger:
    """structlog's last step: write the rendered line to the process's stderr.

    `sys.stderr` is looked up on every line (not bound once, as structlog's own
    `PrintLogger` does), so a test framework that swaps stderr still gets the lines.
    stderr is line-buffered, so each line is one write.
    """

    def msg(self, message: str) -> None:
        sys.stderr.write(message + "\n")

    debug = info = warning = warn = error = critical = exception = fatal = log = msg


def _stderr_logger(*_args: Any) -> StderrLogger:
    return StderrLogger()


def _renderer(log_format: str) -> Any:
    if log_format == "json":
        return structlog.processors.JSONRenderer(sort_keys=False)
    if log_format == "console":
        return structlog.dev.ConsoleRenderer(colors=False)
    return structlog.processors.LogfmtRenderer(
        key_order=["timestamp", "level", "event", "msg_id"], drop_missing=True
    )


def setup_logging(
    program: str,
    *,
    log_format: str = "logfmt",
    syslog: bool = False,
    verbose: bool = False,
) -> Any:
    """Configure logging once for this process and return the program's (bound) logger."""
    if log_format not in _RENDERERS:
        raise ValueError(f"log format must be one of {', '.join(_RENDERERS)}")
    level = logging.DEBUG if verbose else logging.INFO
    shared: list[Any] = [
        structlog.stdlib.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if syslog:
        structlog.configure(
            processors=[
                structlog.stdlib.filter_by_level,
                *shared,
                structlog.processors.format_exc_info,
                structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
            ],
            logger_factory=structlog.stdlib.LoggerFactory(),
            wrapper_class=structlog.stdlib.BoundLogger,
            cache_logger_on_first_use=True,
        )
    else:
        structlog.configure(
            processors=[*shared, structlog.processors.format_exc_info, _renderer(log_format)],
            logger_factory=_stderr_logger,
            wrapper_class=structlog.make_filtering_bound_logger(level),
            cache_logger_on_first_use=True,
        )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*shared, structlog.stdlib.ExtraAdder()],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            _renderer(log_format),
        ],
    )
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    stream = logging.StreamHandler(sys.stderr)
    stream.setFormatter(formatter)
    root.addHandler(stream)
    if syslog:
        address = "/dev/log" if os.path.exists("/dev/log") else ("localhost", 514)
        handler = logging.handlers.SysLogHandler(
            address=address, facility=logging.handlers.SysLogHandler.LOG_MAIL
        )
        handler.ident = f"{program}[{os.getpid()}]: "
        handler.setFormatter(
            structlog.stdlib.ProcessorFormatter(
                foreign_pre_chain=[*shared, structlog.stdlib.ExtraAdder()],
                processors=[
                    structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    structlog.processors.LogfmtRenderer(drop_missing=True),
                ],
            )
        )
        root.addHandler(handler)
    root.setLevel(level)
    for name in _QUIET_UNLESS_VERBOSE:
        logging.getLogger(name).setLevel(logging.DEBUG if verbose else logging.WARNING)
    return structlog.get_logger(program)
