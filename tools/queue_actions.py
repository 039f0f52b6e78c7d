"""What relay-queue does to one message: flush, hold, release, delete, requeue, bounce.

Each action finds the message's state from its file names, then changes it only through
`spool` (claim then release/hold/remove for a waiting message, `unhold`, `unfail`,
`remove_message`), so it never races deliver: a message deliver has claimed at that
moment (`.envelope.busy`) is left alone and reported as `Busy`. Each action returns an
`Outcome` (what was done) or raises `ActionError` (a message for a person and an EX_*
exit code, with nothing changed). Stores a notification for `bounce` unreleased, removes
the message, then releases the notification (`spool.notifications`, as relay-notify).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from spool import Claim, Envelope, EnvelopeError, Spool, State, claim
from spool.files import HostileFile
from spool.notifications import release as release_notification
from spool.notifications import store_unreleased
from spool.unclaimed import remove_message, unfail, unhold
from tools.dsn import FailedMessage, build_dsn, dsn_bytes
from tools.notify import MessageProblem, arrival_time, original_headers, read_facts
from tools.queue_list import read_envelope_bytes

BOUNCE_REASON = "returned to the sender by the mail administrator (relay-queue bounce)"


class ActionError(Exception):
    """One message could not be acted on; nothing was changed."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Outcome:
    """What an action did, in words for the command's output."""

    message_id: str
    text: str


def check_id(message_id: str) -> None:
    """A message id is a plain file-name stem: no path, no hidden name, no control bytes."""
    if (not message_id or "/" in message_id or message_id.startswith(".")
            or any(ord(c) < 32 or ord(c) == 127 for c in message_id)):
        raise ActionError(f"{message_id!r} is not a message id", os.EX_USAGE)


def states_of(spool: Spool, message_id: str) -> set[State]:
    """The states in which *message_id* has an envelope (normally one)."""
    check_id(message_id)
    found = set()
    for state in State:
        try:
            os.lstat(spool.envelope_path(message_id, state))
        except FileNotFoundError:
            continue
        found.add(state)
    return found


def state_of(spool: Spool, message_id: str) -> State:
    """The one state of *message_id*; ActionError for no such message or a busy one."""
    found = states_of(spool, message_id)
    if not found:
        raise ActionError(f"{message_id}: no such message in {spool.path}", os.EX_NOINPUT)
    if State.BUSY in found:
        raise busy(message_id)
    if State.NEW in found and len(found) == 1:
        raise ActionError(f"{message_id}: still being received (.envelope.new); try again"
                          " in a moment", os.EX_TEMPFAIL)
    for state in (State.READY, State.HELD, State.BAD):
        if state in found:
            return state
    raise ActionError(f"{message_id}: no such message in {spool.path}", os.EX_NOINPUT)


def busy(message_id: str) -> ActionError:
    return ActionError(f"{message_id}: being delivered at this moment (claimed by"
                       " relay-deliver); nothing changed, try again later", os.EX_TEMPFAIL)


def _wrong_state(message_id: str, state: State, what: str) -> ActionError:
    hint = {
        State.HELD: "it is on hold (relay-queue release it first)",
        State.BAD: "it has failed (relay-queue requeue it first)",
        State.READY: "it is waiting in the queue",
    }[state]
    return ActionError(f"{message_id}: cannot {what}: {hint}", os.EX_DATAERR)


def _claim(spool: Spool, message_id: str) -> Claim:
    """Claim a waiting message as a deliver worker would; ActionError when that fails."""
    try:
        claimed = claim(spool, message_id)
    except HostileFile as error:
        raise ActionError(f"{message_id}: not a message: {error} (moved to .envelope.bad"
                          " unread)", os.EX_DATAERR) from None
    if claimed is None:
        raise busy(message_id)
    return claimed


def flush(spool: Spool, message_id: str, now: float | None = None) -> Outcome:
    """Make a waiting message (deferred or not) due now."""
    state = state_of(spool, message_id)
    if state is not State.READY:
        raise _wrong_state(message_id, state, "flush")
    claimed = _claim(spool, message_id)
    claimed.make_due(now)
    return Outcome(message_id, "due now")


def flush_all(spool: Spool, ids: list[str]) -> int:
    """Make every waiting message of *ids* due now; those deliver has claimed are skipped."""
    now = time.time()
    done = 0
    for message_id in ids:
        try:
            claimed = claim(spool, message_id)
        except HostileFile:
            continue  # claim moved it to `.envelope.bad` unread; relay-queue list shows it
        if claimed is not None:
            claimed.make_due(now)
            done += 1
    return done


def hold(spool: Spool, message_id: str) -> Outcome:
    """Put a waiting message on hold: deliver skips it until it is released."""
    state = state_of(spool, message_id)
    if state is State.HELD:
        return Outcome(message_id, "already on hold")
    if state is not State.READY:
        raise _wrong_state(message_id, state, "hold")
    claimed = _claim(spool, message_id)
    claimed.hold()
    return Outcome(message_id, "on hold")


def release(spool: Spool, message_id: str) -> Outcome:
    """A held message back to the queue, due when it was due before the hold."""
    state = state_of(spool, message_id)
    if state is not State.HELD:
        raise ActionError(f"{message_id}: not on hold", os.EX_DATAERR)
    if not unhold(spool, message_id):
        raise ActionError(f"{message_id}: gone meanwhile", os.EX_NOINPUT)
    return Outcome(message_id, "released")


def delete(spool: Spool, message_id: str) -> Outcome:
    """Remove a message in any state but busy or new, envelope first."""
    state = state_of(spool, message_id)
    if state is State.READY:
        claimed = _claim(spool, message_id)
        claimed.remove()
    elif not remove_message(spool, message_id, state):
        raise ActionError(f"{message_id}: moved on meanwhile; nothing removed", os.EX_TEMPFAIL)
    return Outcome(message_id, "deleted")


def requeue(spool: Spool, message_id: str) -> Outcome:
    """A failed message (`.bad`) back to the queue, due now."""
    state = state_of(spool, message_id)
    if state is not State.BAD:
        raise ActionError(f"{message_id}: has not failed (it is {_STATE_WORDS[state]})",
                          os.EX_DATAERR)
    if not unfail(spool, message_id):
        raise ActionError(f"{message_id}: gone meanwhile", os.EX_NOINPUT)
    return Outcome(message_id, "requeued")


_STATE_WORDS = {State.READY: "waiting", State.HELD: "on hold", State.BAD: "failed",
                State.BUSY: "being delivered", State.NEW: "being received"}


def _notification(spool: Spool, message_id: str, data: bytes, domain: str,
                  extra_reason: str | None) -> tuple[bytes, Envelope] | None:
    """The DSN for a message and its envelope; None for a null sender (never bounced)."""
    try:
        facts = read_facts(message_id, data)
    except MessageProblem as problem:
        raise ActionError(str(problem), os.EX_DATAERR) from None
    if not facts.sender:
        return None
    reasons = list(facts.reasons)
    codes = list(facts.reason_codes)
    if extra_reason is not None:
        reasons.append(extra_reason)
        codes.append("")
    failed = FailedMessage(
        message_id=message_id,
        sender=facts.sender,
        recipients=[r for r in facts.recipients if r] or ["unknown"],
        reasons=reasons,
        reason_codes=codes,
        arrival_time=arrival_time(spool, message_id),
        original_headers=original_headers(spool, message_id),
    )
    message = dsn_bytes(build_dsn(failed, domain=domain))
    envelope = Envelope(
        sender="",
        to_remote=(facts.sender,),
        body_type="7bit" if message.isascii() else "8bit",
        utf8_mailbox_names=facts.utf8 or not facts.sender.isascii(),
    )
    return message, envelope


def bounce(spool: Spool, message_id: str, domain: str) -> Outcome:
    """Return a message to its sender now (a DSN is stored first), then remove it."""
    state = state_of(spool, message_id)
    if state is State.READY:
        claimed = _claim(spool, message_id)
        with claimed:  # anything raised puts it back as it was
            try:
                data = claimed.envelope_bytes()  # through the claim's checked descriptor
            except EnvelopeError as error:  # larger than any envelope: not read on
                raise ActionError(f"{message_id}: {error}", os.EX_DATAERR) from None
            notification = _notification(spool, message_id, data, domain, BOUNCE_REASON)
            dsn_id = _store(spool, message_id, notification)
            claimed.remove()
    else:
        data_or_none = read_envelope_bytes(spool, message_id, state)
        if data_or_none is None:
            raise ActionError(f"{message_id}: gone meanwhile", os.EX_NOINPUT)
        extra = None if state is State.BAD else BOUNCE_REASON
        notification = _notification(spool, message_id, data_or_none, domain, extra)
        dsn_id = _store(spool, message_id, notification)
        remove_message(spool, message_id, state)
    if dsn_id is None:
        return Outcome(message_id, "removed (null sender: no notification)")
    release_notification(spool, dsn_id)
    return Outcome(message_id, f"bounced (notification {dsn_id})")


def _store(spool: Spool, message_id: str,
           notification: tuple[bytes, Envelope] | None) -> str | None:
    """Store the notification unreleased (as relay-notify does, so a kill sends it once)."""
    if notification is None:
        return None
    return store_unreleased(spool, *notification, answers=message_id)
