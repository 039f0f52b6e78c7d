"""relay-notify's notifications, in steps that a kill at any moment cannot turn into two.

A notification (a DSN) answers one failed message. It is stored not yet released,
`<dsn-id>.envelope.dsn` (`store_unreleased`: written, synced, then one rename from
`.envelope.new`), a name deliver never forwards and E-MailRelay's programs never list;
its envelope names the failed message after End (`X-Relay-Notification-For`). Then the
failed message leaves the spool (`spool.unclaimed`), and only then is the notification
released (`release`: one rename to `.envelope`). After a kill, `settle` looks at each
unreleased notification: one whose failed message is still in the spool is removed (the
bounce is made again), one whose failed message is gone is released. So the sender gets
exactly one notification, never none, never two.

Writes only notification files; reads an unreleased notification's envelope through
`spool.files` (a regular file with one link) and only the names of the failed message's.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field, replace

from spool.envelope import Envelope, trailer_fields, trailer_line
from spool.names import State
from spool.scan import entries
from spool.store import Spool, fsync_directory
from spool.testhooks import checkpoint
from spool.unclaimed import read_envelope, remove_message

ANSWERS_KEY = "X-Relay-Notification-For"
# Where the failed message may still be: in the spool, in any state but a notification's.
_MESSAGE_STATES = tuple(state for state in State if state is not State.DSN)


def store_unreleased(spool: Spool, content: bytes | Iterable[bytes], envelope: Envelope,
                     answers: str) -> str:
    """Store a notification for failed message *answers*, durably, not yet released.

    Returns its id. Raises OSError (nothing is left but debris `spool.scan.recover` removes).
    """
    marked = replace(envelope, trailer=envelope.trailer + trailer_line(ANSWERS_KEY, answers))
    dsn_id = spool.store(content, marked, into=State.DSN)
    checkpoint("notification_stored")
    return dsn_id


def release(spool: Spool, dsn_id: str) -> bool:
    """An unreleased notification becomes `.envelope`, due now; False if it was not there."""
    try:
        os.rename(spool.envelope_path(dsn_id, State.DSN),
                  spool.envelope_path(dsn_id, State.READY))
    except FileNotFoundError:
        return False
    fsync_directory(spool.path)
    return True


def answers(spool: Spool, dsn_id: str) -> str | None:
    """The id of the failed message an unreleased notification answers; None if unnamed.

    Raises EnvelopeError, HostileFile or OSError as `read_envelope` does.
    """
    trailer = read_envelope(spool, dsn_id, State.DSN).trailer
    for key, value in trailer_fields(trailer):
        if key == ANSWERS_KEY and value:
            return value
    return None


def still_in_spool(spool: Spool, message_id: str) -> bool:
    """True while *message_id* has an envelope in any state (`.bad`, or requeued meanwhile)."""
    for state in _MESSAGE_STATES:
        try:
            os.lstat(spool.envelope_path(message_id, state))
        except FileNotFoundError:
            continue
        return True
    return False


@dataclass
class Settled:
    """What `settle` did with the unreleased notifications it found."""

    released: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    problems: list[tuple[str, Exception]] = field(default_factory=list)  # left as they are


def settle(spool: Spool, *, act: bool = True) -> Settled:
    """Finish what a killed relay-notify left: release or remove each unreleased notification.

    A notification that names no failed message, or whose envelope cannot be read (a
    hostile file, garbage), is left alone and reported in `problems`. Without *act*, only
    says what it would do (`--dry-run`).
    """
    settled = Settled()
    for entry in list(entries(spool)):
        if entry.state is not State.DSN:
            continue
        try:
            failed_id = answers(spool, entry.message_id)
            if failed_id is None or not _plain_id(failed_id):
                raise ValueError(f"no {ANSWERS_KEY} line naming a message: left alone")
            if still_in_spool(spool, failed_id):
                if not act or remove_message(spool, entry.message_id, State.DSN):
                    settled.removed.append(entry.message_id)
            elif not act or release(spool, entry.message_id):
                settled.released.append(entry.message_id)
        except FileNotFoundError:
            continue  # gone since the listing
        except (OSError, ValueError) as error:  # EnvelopeError and HostileFile among them
            settled.problems.append((entry.message_id, error))
    return settled


def _plain_id(message_id: str) -> bool:
    """A file-name stem in this directory: no path, no hidden name."""
    return "/" not in message_id and not message_id.startswith(".") and message_id != ""


__all__ = ["ANSWERS_KEY", "Settled", "answers", "release", "settle", "still_in_spool",
           "store_unreleased"]
