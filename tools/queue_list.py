"""The queue as a list: one `QueueEntry` per message, filters, and the three ways to print it.

`read_queue` lists the spool once (`spool.entries`) and reads each envelope (any state,
never following a symlink, at most 16 MiB) and stats each content file; it changes
nothing. An envelope relay cannot parse (hand-written, truncated, hostile) is still
listed, with what can be read from it textually and the parse error as its last reason.
`format_table`, `format_json` and `format_mailq` (sendmail's `mailq` layout, as Postfix
prints it) are pure. Used by relay-queue, `relay-submit -bp`, `mailq` and the admin
interface.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime

from spool import EnvelopeError, Spool, State, entries, parse_envelope
from spool.claims import DEFERRAL_KEY
from spool.envelope import REASON_KEY, printable
from spool.files import HostileFile, read_regular

_MAX_ENVELOPE_BYTES = 16 * 1024 * 1024
_ARRIVAL_IN_ID = re.compile(r"^emailrelay\.\d+\.(\d{9,11})\.\d+$")
_TRAILER_LINE = re.compile(
    rb"^(" + REASON_KEY.encode() + rb"|" + DEFERRAL_KEY.encode() + rb"): ?([^\r\n]*)", re.MULTILINE
)
_DEFERRAL_TIME = re.compile(r"^\d+ ")

# The state names used on the command line, in the listing and in JSON.
STATE_NAMES: dict[State, str] = {
    State.NEW: "new",
    State.READY: "ready",
    State.BUSY: "busy",
    State.BAD: "bad",
    State.HELD: "held",
    State.DSN: "dsn",
}
STATES_BY_NAME = {name: state for state, name in STATE_NAMES.items()}


@dataclass(frozen=True)
class QueueEntry:
    """One message as the listing shows it. Times are Unix times; None where unknown."""

    message_id: str
    state: str
    arrival: float | None
    size: int | None
    sender: str
    recipients: tuple[str, ...]
    attempts: int
    next_try: float | None  # ready messages only: their due time
    last_reason: str

    def age(self, now: float) -> float | None:
        """Seconds since arrival."""
        return None if self.arrival is None else max(0.0, now - self.arrival)


def read_envelope_bytes(spool: Spool, message_id: str, state: State) -> bytes | None:
    """The envelope's bytes in *state*; None when it is gone.

    HostileFile (never read, never followed) when it is not a regular file with one link.
    """
    try:
        return read_regular(spool.envelope_file(message_id, state), _MAX_ENVELOPE_BYTES)
    except FileNotFoundError:
        return None


def _textual_fields(data: bytes) -> tuple[str, tuple[str, ...]]:
    """Sender and recipients from an envelope the parser refuses: the key lines as found."""
    sender = ""
    recipients: list[str] = []
    for line in data.decode("utf-8", errors="replace").splitlines():
        key, sep, value = line.partition(":")
        if not sep:
            continue
        if key == "X-MailRelay-From" and not sender:
            sender = printable(value)
        elif key in ("X-MailRelay-To-Local", "X-MailRelay-To-Remote"):
            recipients.append(printable(value))
    return sender, tuple(recipients)


def _history(data: bytes) -> tuple[int, str]:
    """Attempts that failed (deferrals and permanent failures) and the last reason given."""
    attempts = 0
    last = ""
    for match in _TRAILER_LINE.finditer(data):
        attempts += 1
        text = match.group(2).decode("utf-8", errors="replace")
        if match.group(1) != REASON_KEY.encode():
            text = _DEFERRAL_TIME.sub("", text, count=1)  # the deferral's own time stamp
        last = printable(text)
    return attempts, last


def arrival_time(spool: Spool, message_id: str) -> float | None:
    """When the message arrived: its content's mtime (as deliver's --max-age counts), else
    the time in an E-MailRelay style id."""
    try:
        return os.lstat(spool.content_path(message_id)).st_mtime
    except OSError:
        pass
    match = _ARRIVAL_IN_ID.match(message_id)
    return float(match.group(1)) if match else None


def content_size(spool: Spool, message_id: str) -> int | None:
    """The content file's size in bytes; None when it is missing."""
    try:
        return os.lstat(spool.content_path(message_id)).st_size
    except OSError:
        return None


def describe(spool: Spool, message_id: str, state: State, mtime: float) -> QueueEntry | None:
    """The entry for one envelope; None when it went away meanwhile."""
    try:
        data = read_envelope_bytes(spool, message_id, state)
    except HostileFile as error:
        return QueueEntry(message_id, STATE_NAMES[state], None, None, "", (), 0, None,
                          f"not a message: {error}")
    if data is None:
        return None
    attempts, last_reason = _history(data)
    try:
        envelope = parse_envelope(data)
        sender, recipients = envelope.sender, envelope.recipients
    except EnvelopeError as error:
        sender, recipients = _textual_fields(data)
        last_reason = f"unreadable envelope: {error.problem}"
    return QueueEntry(
        message_id=message_id,
        state=STATE_NAMES[state],
        arrival=arrival_time(spool, message_id),
        size=content_size(spool, message_id),
        sender=sender,
        recipients=recipients,
        attempts=attempts,
        next_try=mtime if state is State.READY else None,
        last_reason=last_reason,
    )


def read_queue(spool: Spool) -> list[QueueEntry]:
    """Every message in the spool, oldest first (then by id)."""
    found: list[QueueEntry] = []
    for item in entries(spool):
        if item.state is None:
            continue
        entry = describe(spool, item.message_id, item.state, item.mtime)
        if entry is not None:
            found.append(entry)
    found.sort(key=lambda e: (e.arrival if e.arrival is not None else 0.0, e.message_id))
    return found


@dataclass(frozen=True)
class Filters:
    """What `relay-queue list` keeps: states, sender/recipient substrings, minimum age."""

    states: frozenset[str] = frozenset()
    sender: str | None = None
    recipient: str | None = None
    older_than: float | None = None  # seconds

    def keep(self, entry: QueueEntry, now: float) -> bool:
        if self.states and entry.state not in self.states:
            return False
        if self.sender is not None and self.sender.lower() not in entry.sender.lower():
            return False
        if self.recipient is not None and not any(
            self.recipient.lower() in r.lower() for r in entry.recipients
        ):
            return False
        if self.older_than is not None:
            age = entry.age(now)
            if age is None or age < self.older_than:
                return False
        return True


def select(queue: Iterable[QueueEntry], filters: Filters, now: float) -> list[QueueEntry]:
    """The entries *filters* keep."""
    return [entry for entry in queue if filters.keep(entry, now)]


def short_duration(seconds: float) -> str:
    """`45s`, `12m`, `3h`, `2d`: an age or a wait as the table shows it."""
    seconds = max(0.0, seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def _next_try_text(entry: QueueEntry, now: float) -> str:
    if entry.next_try is None:
        return "-"
    return "now" if entry.next_try <= now else "in " + short_duration(entry.next_try - now)


def format_table(queue: Sequence[QueueEntry], now: float) -> str:
    """The listing for a person: one line per message, the last reason on a second line."""
    if not queue:
        return "queue is empty\n"
    id_width = max(len("ID"), *(len(e.message_id) for e in queue))
    header = (f"{'ID':<{id_width}} {'STATE':<5} {'AGE':>4} {'SIZE':>8} {'TRIES':>5} "
              f"{'NEXT':<7} SENDER -> RECIPIENTS")
    lines = [header]
    for entry in queue:
        age = entry.age(now)
        size = "-" if entry.size is None else str(entry.size)
        lines.append(
            f"{entry.message_id:<{id_width}} {entry.state:<5} "
            f"{'-' if age is None else short_duration(age):>4} {size:>8} {entry.attempts:>5} "
            f"{_next_try_text(entry, now):<7} "
            f"<{entry.sender}> -> {', '.join(entry.recipients) or '(none)'}"
        )
        if entry.last_reason:
            lines.append(f"{'':<{id_width}} ({entry.last_reason})")
    lines.append(f"{len(queue)} message{'s' if len(queue) != 1 else ''}")
    return "\n".join(lines) + "\n"


def as_json(entry: QueueEntry, now: float) -> dict[str, object]:
    """One entry as a JSON object (the field names of `relay-queue list --json`)."""
    data: dict[str, object] = {"id": entry.message_id}
    data.update(asdict(entry))
    del data["message_id"]
    data["recipients"] = list(entry.recipients)
    data["age"] = entry.age(now)
    return data


def format_json(queue: Sequence[QueueEntry], now: float) -> str:
    """The listing as one JSON array."""
    return json.dumps([as_json(entry, now) for entry in queue], indent=2) + "\n"


_MAILQ_MARK = {"busy": "*", "held": "!"}


def mailq_time(when: float) -> str:
    """`Wed Dec  2 16:29:15`: the arrival as Postfix's mailq prints it (C's asctime: the day
    of the month padded with a space, not a zero), in local time."""
    local = time.localtime(when)
    day = f"{local.tm_mday:>2}"
    return time.strftime(f"%a %b {day} %H:%M:%S", local)


def format_mailq(queue: Sequence[QueueEntry]) -> str:
    """sendmail's `mailq` listing, laid out as Postfix's `mailq` prints it.

    A `*` after the id marks a message being delivered, `!` one on hold; the reason of the
    last failure is shown in parentheses above the recipients. Local times, like mailq.
    """
    if not queue:
        return "Mail queue is empty\n"
    id_width = max(10, *(len(e.message_id) for e in queue))
    lines = [f"{'-Queue ID-':<{id_width + 1}} --Size-- ----Arrival Time---- "
             "-Sender/Recipient-------"]
    total = 0
    for entry in queue:
        size = entry.size or 0
        total += size
        mark = _MAILQ_MARK.get(entry.state, " ")
        when = mailq_time(entry.arrival) if entry.arrival is not None else "-"
        prefix = f"{entry.message_id + mark:<{id_width + 1}} {size:>8} {when:<19}  "
        lines.append(prefix + (entry.sender or "MAILER-DAEMON"))
        if entry.last_reason:
            lines.append(f"({entry.last_reason})")
        lines += [" " * len(prefix) + recipient for recipient in entry.recipients]
        lines.append("")
    kbytes = total // 1024  # whole Kbytes, as Postfix counts them (854 bytes: 0 Kbytes)
    count = len(queue)
    lines.append(f"-- {kbytes} Kbytes in {count} Request{'s' if count != 1 else ''}.")
    return "\n".join(lines) + "\n"


def timestamp(value: float | None) -> str:
    """A Unix time as local ISO 8601 text, '-' for None."""
    if value is None:
        return "-"
    return datetime.fromtimestamp(value).astimezone().isoformat(timespec="seconds")
