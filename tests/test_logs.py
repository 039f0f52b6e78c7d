"""common.logs: one line shape for relay's own lines and the libraries', in every format."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from common.logs import Logger, setup_logging

_PROGRAM = """
import logging, sys
from common.logs import setup_logging
log = setup_logging("relay-test", log_format=sys.argv[1], syslog=sys.argv[2] == "1",
                    verbose=sys.argv[3] == "1")
log.info("message_stored", msg_id="emailrelay.1.2.3", size=42, **{"from": "a@b"})
log.debug("debug_line", detail="x")
logging.getLogger("mail.log").warning("library line %s", "w")
logging.getLogger("mail.log").debug("library debug")
try:
    raise ValueError("boom")
except ValueError:
    log.exception("delivery_error", msg_id="emailrelay.4")
"""


def _lines(log_format: str, syslog: bool, verbose: bool) -> list[str]:
    done = subprocess.run([sys.executable, "-c", _PROGRAM, log_format, str(int(syslog)),
                           str(int(verbose))], capture_output=True, text=True, timeout=60,
                          check=True)
    return done.stderr.splitlines()


@pytest.mark.parametrize("syslog", [False, True])
def test_logfmt_lines_from_relay_and_libraries(syslog: bool) -> None:
    """logfmt: timestamp, level, event, msg_id first; library lines look the same."""
    lines = _lines("logfmt", syslog, verbose=False)
    assert lines[0].startswith("timestamp=")
    assert " level=info event=message_stored msg_id=emailrelay.1.2.3" in lines[0]
    assert "size=42" in lines[0] and "from=a@b" in lines[0]
    assert not any("debug_line" in line or "library debug" in line for line in lines)
    assert any("level=warning" in line and 'event="library line w"' in line for line in lines)
    error = next(index for index, line in enumerate(lines) if "delivery_error" in line)
    assert "level=error" in lines[error] and "ValueError: boom" in "\n".join(lines[error:])


@pytest.mark.parametrize("syslog", [False, True])
def test_json_lines_and_verbose(syslog: bool) -> None:
    """json with --verbose: every line is an object, debug lines included."""
    lines = _lines("json", syslog, verbose=True)
    records = [json.loads(line) for line in lines]
    events = [record["event"] for record in records]
    assert events[:2] == ["message_stored", "debug_line"]
    assert "library line w" in events and "library debug" in events
    assert records[0]["level"] == "info" and records[0]["size"] == 42
    assert "ValueError: boom" in records[-1]["exception"]


_SYSLOG_PROGRAM = """
import logging, logging.handlers
from common.logs import setup_logging
log = setup_logging("relay-test", log_format="json", syslog=True)
(handler,) = [h for h in logging.getLogger().handlers
              if isinstance(h, logging.handlers.SysLogHandler)]
handler.emit = lambda record: print(handler.format(record))  # what it would send
log.info("message_stored", msg_id="emailrelay.1.2.3", size=42)
logging.getLogger("mail.log").warning("library line")
"""


def test_syslog_lines_are_logfmt_in_the_files_key_order() -> None:
    """--syslog: what goes to syslog is logfmt whatever the --log-format, its keys in the
    order of relay's logfmt lines (timestamp, level, event, msg_id, then the rest)."""
    done = subprocess.run([sys.executable, "-c", _SYSLOG_PROGRAM], capture_output=True,
                          text=True, timeout=60, check=True)
    ours, library = done.stdout.splitlines()
    assert ours.startswith("timestamp=")
    expected = "level=info event=message_stored msg_id=emailrelay.1.2.3 size=42"
    assert ours.split(" ", 1)[1] == expected
    assert library.split(" ", 1)[1] == 'level=warning event="library line"'


def test_console_format() -> None:
    """console: human-readable, the event and its keys on one line."""
    (first, *_) = _lines("console", False, verbose=False)
    assert "message_stored" in first and "msg_id=emailrelay.1.2.3" in first


def test_unknown_format_is_an_error() -> None:
    """A log format that does not exist is refused, not ignored."""
    with pytest.raises(ValueError, match="log format"):
        setup_logging("relay-test", log_format="xml")


# The logger methods relay's code calls; mypy checks each call against common.logs.Logger.
CALLED = ("bind", "debug", "info", "warning", "error", "exception")
_METHODS_PROGRAM = """
import sys
from common.logs import setup_logging
log = setup_logging("relay-test", syslog=sys.argv[1] == "1")
names = sys.argv[2:]
print(" ".join(n for n in names for o in (log, log.bind(k=1)) if not callable(getattr(o, n, None))))
"""


@pytest.mark.parametrize("syslog", [False, True])
def test_the_logger_has_what_its_type_promises(syslog: bool) -> None:
    """Plain and with --syslog (another structlog wrapper), the logger and a bound one have
    every method of `common.logs.Logger` that relay calls."""
    assert all(callable(getattr(Logger, name, None)) for name in CALLED)
    done = subprocess.run([sys.executable, "-c", _METHODS_PROGRAM, str(int(syslog)), *CALLED],
                          capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.strip() == ""
