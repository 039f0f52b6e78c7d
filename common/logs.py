"""Logging for every relay program: structlog, one line per event, to stderr (and syslog).

`setup_logging` gives every line the same shape, `--log-format console|logfmt|json`,
whether it comes from relay (structlog) or from a library's standard-library logger
(aiosmtpd's `mail.log`, aiosmtplib, watchdog), which go through structlog's
`ProcessorFormatter`. relay's own lines, one or more per message, take structlog's short
path (a filtering bound logger rendering straight to stderr) rather than the standard
library's chain of logger, record, handler and formatter, which cost intake ~5% of its
event loop. `--syslog` adds the mail facility (then relay's lines go through the standard
library too, to reach its syslog handler, with `--syslog-facility`); `--verbose` turns on
debug lines, the SMTP dialogue included. `--log-file FILE` sends what would go to stderr to
FILE instead (`%d` in the name: today's date, YYYYMMDD, a new file each day); SIGHUP makes
every program reopen it (logrotate's `kill -HUP`), and never ends one. `--no-log-time`
leaves the timestamp out (syslog adds its own); `close_stderr()` points stderr at /dev/null
once a daemon has started (E-MailRelay's `--close-stderr`). `--unit NAME` names the
E-MailRelay instance a program runs for under `relay` (its `--NAME-spool-dir`): its start
line says `unit=NAME` (`unit_key()`), and with `--log-unit` every line does, as
E-MailRelay's `[NAME]` with `--log-format=unit`. Writes to stderr, the log file and syslog
only.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import logging.handlers
import os
import signal
import sys
import time
from typing import Any

import structlog
from structlog.typing import EventDict, FilteringBoundLogger

from common.config import Option

_RENDERERS = ("console", "logfmt", "json")
_QUIET_UNLESS_VERBOSE = ("mail.log", "aiosmtplib", "watchdog", "asyncio")

# Every relay logger: structlog's bound logger (`info`, `warning`, `bind` ...). With --syslog
# it is structlog's stdlib BoundLogger, which has the same methods.
Logger = FilteringBoundLogger


SYSLOG_FACILITIES = tuple(sorted(logging.handlers.SysLogHandler.facility_names))
LOG_FILE_MODE = 0o660  # as E-MailRelay's log file (the umask may take more away)

UNIT_OPTION = Option(
    "unit", "the E-MailRelay instance this program runs for (`relay`'s --NAME-spool-dir): "
    "its start line says unit=NAME", None, metavar="NAME")
LOG_UNIT_OPTION = Option(
    "log-unit", "every log line says unit=NAME (the --unit; E-MailRelay's --log-format=unit)",
    False, "bool")


class LogDestination:
    """Where the lines go: stderr, or the --log-file (reopened after SIGHUP and at midnight).

    Each line is one write(2) to a descriptor opened with O_APPEND, so the lines of several
    processes sharing one file (intake and deliver under `relay`) never interleave.
    `sys.stderr` is looked up on every line (not bound once), so a test framework that
    swaps stderr still gets them.
    """

    def __init__(self, template: str | None = None) -> None:
        self.template = template
        self.path: str | None = None
        self._fd: int | None = None
        self._reopen = False

    def request_reopen(self) -> None:
        """Reopen the file before the next line (safe in a signal handler: sets a flag)."""
        self._reopen = True

    def current_path(self) -> str | None:
        """The file name for now: the template with %d replaced by today's date."""
        if self.template is None:
            return None
        return self.template.replace("%d", time.strftime("%Y%m%d"))

    def _open(self) -> int:
        path = self.current_path()
        assert path is not None
        if self._fd is None or self._reopen or path != self.path:
            self._reopen = False
            try:
                fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC,
                             LOG_FILE_MODE)
            except OSError:
                if self._fd is None:
                    raise
                return self._fd  # cannot reopen (e.g. --user may not create it): keep the old
            if self._fd is not None:
                with contextlib.suppress(OSError):
                    os.close(self._fd)
            self._fd, self.path = fd, path
        return self._fd

    def open_now(self) -> None:
        """Open the file at start, so that an unusable --log-file is found at once (OSError)."""
        if self.template is not None:
            self._open()

    def write(self, text: str) -> None:
        if self.template is None:
            sys.stderr.write(text)
            return
        try:
            os.write(self._open(), text.encode("utf-8", "replace"))
        except OSError:
            sys.stderr.write(text)  # the file went away or the disk is full: not silent

    def flush(self) -> None:
        if self.template is None:
            sys.stderr.flush()


_destination = LogDestination()
_unit: str | None = None  # --unit, for the start lines


def unit_key() -> dict[str, str]:
    """`unit=NAME` for a program's start line under `relay` (E-MailRelay names an instance
    on its "smtp server on" line whatever the --log-format); nothing without --unit."""
    return {"unit": _unit} if _unit else {}


class _AddUnit:
    """The processor of --log-unit: `unit=NAME` on every line (a start line has it already)."""

    def __init__(self, unit: str) -> None:
        self.unit = unit

    def __call__(self, _logger: Any, _method: str, event_dict: EventDict) -> EventDict:
        event_dict.setdefault("unit", self.unit)
        return event_dict


def reopen() -> None:
    """Reopen the log file before the next line (SIGHUP does this in every program)."""
    _destination.request_reopen()


def on_hangup(_signum: int, _frame: object) -> None:
    """The SIGHUP handler: reopen the log file before the next line."""
    _destination.request_reopen()


def close_stderr() -> None:
    """Point stderr (fd 2) at /dev/null: a daemon that has started logs to its file/syslog."""
    with contextlib.suppress(OSError, ValueError):
        sys.stderr.flush()
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
    finally:
        os.close(devnull)


class StderrLogger:
    """structlog's last step: write the rendered line to the destination (stderr or file)."""

    def msg(self, message: str) -> None:
        _destination.write(message + "\n")

    debug = info = warning = warn = error = critical = exception = fatal = log = msg


def _stderr_logger(*_args: Any) -> StderrLogger:
    return StderrLogger()


class UtcTimeStamper:
    """`timestamp=` as structlog's `TimeStamper(fmt="iso", utc=True)` writes it, cheaper:
    `2026-12-03T19:14:00.123456Z` (no fraction when the microseconds are 0, as
    `datetime.isoformat`), the part up to the second formatted once per second.

    The clock is read as `datetime.now` reads it (the system clock, truncated to the
    microsecond), so the lines are the same, byte for byte, at a sixth of the cost.
    """

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def text(self, nanoseconds: int) -> str:
        """The timestamp of *nanoseconds* since the epoch (UTC)."""
        second, rest = divmod(nanoseconds, 1_000_000_000)
        if second != self._second:
            moment = datetime.datetime.fromtimestamp(second, tz=datetime.UTC)
            self._prefix = moment.strftime("%Y-%m-%dT%H:%M:%S")
            self._second = second
        micro = rest // 1000
        return f"{self._prefix}.{micro:06d}Z" if micro else f"{self._prefix}Z"

    def __call__(self, _logger: Any, _method: str, event_dict: EventDict) -> EventDict:
        event_dict["timestamp"] = self.text(time.time_ns())
        return event_dict


_LOGFMT_ORDER = ("timestamp", "level", "unit", "event", "msg_id")
_NEEDS_QUOTES = frozenset(' ="')


class LogfmtRenderer:
    """structlog's `LogfmtRenderer(key_order=_LOGFMT_ORDER, drop_missing=True)`, cheaper:
    the same text for every event (the keys of the order first, then the others as given;
    a value with a space, `=` or `"` quoted, `"` and newlines escaped, `\\` too when quoted;
    True as a bare flag), without its per-line list of sorted items and key checks (a key is
    checked once, the first time it is seen).
    """

    _KNOWN_KEYS_LIMIT = 1024  # keys are relay's own, a few dozen; bound the memo anyway

    def __init__(self) -> None:
        self._valid_keys: set[str] = set()

    def _check(self, key: str) -> None:
        if key in self._valid_keys:
            return
        if any(c <= " " for c in key):
            raise ValueError(f'Invalid key: "{key}"')
        if len(self._valid_keys) < self._KNOWN_KEYS_LIMIT:
            self._valid_keys.add(key)

    @staticmethod
    def _value(value: object) -> str:
        if value is False:
            return "false"
        text = str(value)
        if _NEEDS_QUOTES.isdisjoint(text):
            return text.replace("\n", "\\n") if "\n" in text else text
        if "\\" in text:
            text = text.replace("\\", "\\\\")
        return '"' + text.replace('"', '\\"').replace("\n", "\\n") + '"'

    def _element(self, key: str, value: object) -> str:
        self._check(key)
        if value is None:
            return key + "="
        if value is True:
            return key
        return key + "=" + self._value(value)

    def __call__(self, _logger: Any, _method: str, event_dict: EventDict) -> str:
        elements = []
        for key in _LOGFMT_ORDER:
            value = event_dict.pop(key, None)
            if value is not None:
                elements.append(self._element(key, value))
        for key, value in event_dict.items():
            elements.append(self._element(key, value))
        return " ".join(elements)


def _renderer(log_format: str) -> Any:
    if log_format == "json":
        return structlog.processors.JSONRenderer(sort_keys=False)
    if log_format == "console":
        return structlog.dev.ConsoleRenderer(colors=False)
    return LogfmtRenderer()


def setup_logging(
    program: str,
    *,
    log_format: str = "logfmt",
    syslog: bool = False,
    verbose: bool = False,
    log_file: str | None = None,
    log_time: bool = True,
    syslog_facility: str = "mail",
    unit: str | None = None,
    log_unit: bool = False,
) -> Logger:
    """Configure logging once for this process and return the program's (bound) logger:
    *unit* is the instance's name for `unit_key()`, on every line with *log_unit*.

    Raises OSError when *log_file* cannot be opened, ValueError for a bad format or facility.
    """
    global _destination, _unit  # noqa: PLW0603 (one destination per process, reset by each call)
    if log_format not in _RENDERERS:
        raise ValueError(f"log format must be one of {', '.join(_RENDERERS)}")
    if syslog_facility not in logging.handlers.SysLogHandler.facility_names:
        raise ValueError(f"syslog facility must be one of {', '.join(SYSLOG_FACILITIES)}")
    destination = LogDestination(log_file)
    destination.open_now()
    _destination = destination
    _unit = unit or None
    with contextlib.suppress(ValueError):  # not the main thread: the caller handles SIGHUP
        signal.signal(signal.SIGHUP, on_hangup)
    level = logging.DEBUG if verbose else logging.INFO
    shared: list[Any] = [structlog.stdlib.add_log_level]
    if unit and log_unit:
        shared.append(_AddUnit(unit))
    if log_time:
        shared.append(UtcTimeStamper())
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
    stream = logging.StreamHandler(destination)
    stream.setFormatter(formatter)
    root.addHandler(stream)
    if syslog:
        address = "/dev/log" if os.path.exists("/dev/log") else ("localhost", 514)
        handler = logging.handlers.SysLogHandler(
            address=address,
            facility=logging.handlers.SysLogHandler.facility_names[syslog_facility],
        )
        handler.ident = f"{program}[{os.getpid()}]: "
        handler.setFormatter(
            structlog.stdlib.ProcessorFormatter(
                foreign_pre_chain=[*shared, structlog.stdlib.ExtraAdder()],
                processors=[
                    structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    LogfmtRenderer(),  # always logfmt, in the same key order as the file's
                ],
            )
        )
        root.addHandler(handler)
    root.setLevel(level)
    for name in _QUIET_UNLESS_VERBOSE:
        logging.getLogger(name).setLevel(logging.DEBUG if verbose else logging.WARNING)
    logger: Logger = structlog.get_logger(program)
    return logger


def setup_logging_from(program: str, settings: Any) -> Logger:
    """`setup_logging` with the common options of `common.config` (a settings namespace)."""
    return setup_logging(
        program,
        log_format=settings.log_format,
        syslog=settings.syslog,
        verbose=settings.verbose,
        log_file=getattr(settings, "log_file", None),
        log_time=getattr(settings, "log_time", True),
        syslog_facility=getattr(settings, "syslog_facility", "mail"),
        unit=getattr(settings, "unit", None),
        log_unit=getattr(settings, "log_unit", False),
    )
