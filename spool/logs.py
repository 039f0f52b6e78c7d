"""Logging for every relay program: structlog, one line per event, to stderr (and syslog).

`setup_logging` routes structlog and the standard library's loggers (aiosmtpd's
`mail.log`, aiosmtplib, watchdog) through one formatter, so every line has the same shape:
`--log-format console|logfmt|json`. `--syslog` adds the mail facility; `--verbose` turns on
debug lines, the SMTP dialogue included. Writes to stderr and syslog only.
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
) -> structlog.stdlib.BoundLogger:
    """Configure logging once for this process and return the program's logger."""
    if log_format not in _RENDERERS:
        raise ValueError(f"log format must be one of {', '.join(_RENDERERS)}")
    level = logging.DEBUG if verbose else logging.INFO
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
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
    logger: structlog.stdlib.BoundLogger = structlog.get_logger(program)
    return logger
