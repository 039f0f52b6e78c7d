"""What a delivery attempt means: the pure core of relay-deliver.

`classify(attempt) -> Sent | Deferred | Failed` turns what the smarthost said (or did not
say) into the one decision deliver acts on; `next_attempt(n)` is the retry backoff. No
I/O: reads and writes nothing, never touches the spool or the network.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class Stage(Enum):
    """Where in the SMTP transaction the attempt ended."""

    CONNECT = "connect"  # connection, greeting, EHLO, STARTTLS
    AUTH = "auth"
    UNSENDABLE = "unsendable"  # needs an extension the smarthost lacks (deliver.extensions)
    MAIL = "mail"
    RCPT = "rcpt"
    DATA = "data"  # the DATA command, the message, the reply after the final dot
    DONE = "done"  # the smarthost answered 250 after the final dot


@dataclass(frozen=True)
class Reply:
    """An SMTP reply, or the lack of one (code None: timeout, refused or lost connection)."""

    code: int | None
    text: str

    @property
    def permanent(self) -> bool:
        return self.code is not None and 500 <= self.code <= 599

    def describe(self) -> str:
        """One line for logs and envelope reasons: '550 5.1.1 no such user'."""
        text = " ".join(self.text.split())
        return f"{self.code} {text}" if self.code is not None else text


@dataclass(frozen=True)
class Attempt:
    """What happened: the stage reached, the last reply, and each refused recipient;
    how many bare CR or LF of the content went out as CRLF (see deliver.dotstuff); and the
    extensions it was sent without (8BITMIME...: see deliver.extensions)."""

    stage: Stage
    reply: Reply
    accepted: tuple[str, ...] = ()
    refused: tuple[tuple[str, Reply], ...] = ()
    line_ends_normalised: int = 0
    without: tuple[str, ...] = ()  # extensions the message needed and went without


@dataclass(frozen=True)
class Sent:
    """The transaction settled recipient by recipient.

    *delivered* got the message (possibly nobody, when every recipient was refused with a
    mix of 4xx and 5xx). The refused ones are split off into messages of their own: the
    *failed* ones (5xx) to `.bad`, the *deferred* ones (4xx or no reply) to retry, so that
    nobody receives the message twice.
    """

    delivered: tuple[str, ...]
    failed: tuple[tuple[str, Reply], ...] = ()
    deferred: tuple[tuple[str, Reply], ...] = ()


@dataclass(frozen=True)
class Deferred:
    """A temporary failure for the whole message: keep it and try again after a backoff."""

    reason: str
    code: int | None = None


@dataclass(frozen=True)
class Failed:
    """A permanent failure for the whole message: `.bad` with this reason and code."""

    reason: str
    code: int | None = None


Outcome = Sent | Deferred | Failed

_STAGE_WORDS = {
    Stage.CONNECT: "connecting to the smarthost",
    Stage.AUTH: "authenticating to the smarthost",
    Stage.UNSENDABLE: "before MAIL FROM",
    Stage.MAIL: "MAIL FROM",
    Stage.RCPT: "RCPT TO",
    Stage.DATA: "DATA",
    Stage.DONE: "after DATA",
}


def classify(attempt: Attempt) -> Outcome:
    """Decide what an attempt means. Anything that is not clearly permanent is temporary.

    - 250 after the dot: Sent (refused recipients, if any, split by 4xx/5xx).
    - Every recipient refused: Failed if all 5xx, Deferred if none is, else a Sent that
      delivered to nobody and splits the refusals.
    - 5xx at MAIL or DATA: Failed. 4xx, no reply, a lost connection, a timeout: Deferred.
    - Connecting and authenticating never fail a message for good: a smarthost that is
      down or a wrong password is the operator's to fix, and the mail must wait for that.
    - A message that needs an extension the smarthost lacks (Stage.UNSENDABLE): Failed
      with the reason alone and no code, as E-MailRelay writes it.
    """
    reply = attempt.reply
    where = _STAGE_WORDS[attempt.stage]
    if attempt.stage is Stage.DONE:
        return _split(attempt.accepted, attempt.refused)
    if attempt.stage is Stage.RCPT and attempt.refused and not attempt.accepted:
        if all(refusal.permanent for _address, refusal in attempt.refused):
            first = attempt.refused[0][1]
            return Failed(f"all recipients refused: {first.describe()}", first.code)
        if not any(refusal.permanent for _address, refusal in attempt.refused):
            first = attempt.refused[0][1]
            return Deferred(f"all recipients refused: {first.describe()}", first.code)
        return _split((), attempt.refused)
    if attempt.stage is Stage.UNSENDABLE:
        return Failed(reply.text, reply.code)
    if attempt.stage in (Stage.CONNECT, Stage.AUTH):
        return Deferred(f"{where}: {reply.describe()}", reply.code)
    if reply.permanent:
        return Failed(f"{where}: {reply.describe()}", reply.code)
    return Deferred(f"{where}: {reply.describe()}", reply.code)


def _split(delivered: tuple[str, ...], refused: tuple[tuple[str, Reply], ...]) -> Sent:
    failed = tuple(item for item in refused if item[1].permanent)
    deferred = tuple(item for item in refused if not item[1].permanent)
    return Sent(delivered, failed, deferred)


def next_attempt(attempts: int, first: float, maximum: float) -> float:
    """Seconds to wait after the *attempts*-th temporary failure (1 = the first one).

    Doubles from *first* and never exceeds *maximum*: 1 -> first, 2 -> 2*first, ...
    """
    if attempts < 1:
        return 0.0
    # Cap the exponent so that a message retried thousands of times cannot overflow.
    return float(min(maximum, first * 2 ** min(attempts - 1, 60)))

