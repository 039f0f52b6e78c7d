"""What relay-resubmit, relay-notify and relay-submit share: options, the tools lock, exits.

Opens the spool directory (through `spool.Spool`, which refuses an unsafe one) and the
tools lock file `.relay-tools.lock` inside it; reads `.envelope.bad` files without
changing them, and only when they are regular files with one link (`spool.files`). Never
writes message files itself: every change goes through `spool`.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

from common.config import Option
from spool import HostileFile, Spool, SpoolError
from spool.envelope import MAX_ENVELOPE_BYTES
from spool.files import open_regular, read_regular
from spool.names import TOOLS_LOCK_NAME, State

DEFAULT_MAX_RETRIES = 5

MAX_RETRIES_OPTION = Option(
    "max-retries",
    "failures (X-MailRelay-Reason lines) after which a message is no longer retried",
    DEFAULT_MAX_RETRIES,
    "int",
    metavar="N",
)
DRY_RUN_OPTION = Option("dry-run", "say what would be done, change nothing", False, "bool")

_REASON_LINE = re.compile(rb"^X-MailRelay-Reason:", re.MULTILINE)
# A host name for From/Message-ID/MAILER-DAEMON: letters, digits, dots, hyphens, or an
# address literal. Anything else could smuggle text into a header.
_DOMAIN = re.compile(r"^(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?\.?)+$|^\[[0-9A-Fa-f:.]+\]$")


def fail(program: str, message: str, code: int) -> int:
    """Print one line `program: message` to stderr and return *code* (for `return fail(...)`)."""
    print(f"{program}: {message}", file=sys.stderr)
    return code


def open_spool(directory: str) -> Spool:
    """The spool at *directory*; SpoolError if it is missing, a symlink or unsafe."""
    return Spool(Path(os.path.expanduser(directory)))


def local_domain(configured: str | None) -> str:
    """The configured --domain, or this host's name (no DNS lookup: cron must not hang)."""
    domain = (configured or socket.gethostname() or "localhost").strip()
    if not _DOMAIN.match(domain):
        raise ValueError(f"not a usable domain name: {domain!r}")
    return domain


def count_reasons(envelope_bytes: bytes) -> int:
    """How often the message failed: its `X-MailRelay-Reason:` lines (ReasonCode lines aside).

    Counted textually, so that a `.bad` written by E-MailRelay (or edited by a person) is
    never refused for a parse quirk.
    """
    return len(_REASON_LINE.findall(envelope_bytes))


def read_bad_envelope(spool: Spool, message_id: str) -> bytes | None:
    """The bytes of `<id>.envelope.bad`; None when it is gone.

    HostileFile when it is not a regular file with one link (a FIFO, a symlink, a hard
    link, a device, a directory): such a file is never read, followed or moved.
    """
    path = spool.envelope_file(message_id, State.BAD)
    try:
        return read_regular(path, MAX_ENVELOPE_BYTES)
    except FileNotFoundError:
        return None


@contextlib.contextmanager
def tools_lock(spool: Spool) -> Iterator[None]:
    """Hold the tools' flock so that resubmit and notify runs take turns (cron overlaps).

    deliver does not take this lock: it never touches `.bad` files, and every step a tool
    takes is a rename that a concurrent deliver cannot observe half-done.
    """
    path = f"{spool.directory}/{TOOLS_LOCK_NAME}"
    try:
        fd, _info = open_regular(path, os.O_RDWR | os.O_CREAT, 0o600)
    except HostileFile as error:
        raise SpoolError(f"cannot use the tools lock {error}; remove it") from None
    except OSError as error:
        raise SpoolError(f"cannot open the tools lock {path}: {error.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
