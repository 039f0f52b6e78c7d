"""Handling one waiting message: claim, client filters, forward, act on the outcome.

Reads the claimed envelope and content through the `spool.Claim` (never a descriptor; its
paths only go to client filters and into reasons); changes their state only through the
claim's transitions (defer, give_back, fail, split_off), and hands a sent message's claim
off to `deliver.remover`, whose thread removes it. Writes one log line per message.
Never raises for anything a message or the smarthost does: a bad envelope, a missing or
unreadable content file or an unexpected error ends in `.bad` or a retry, never in a
crashed worker.
"""

from __future__ import annotations

import contextlib
import re
import time
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Any

import structlog

from common import events
from common.config import ConfigError, split_host_port
from common.filterspec import FilterRunner, Spec
from common.logs import Logger
from common.metrics import DeliverMetrics, reason_class
from common.secrets import SecretsError, SecretsFile
from deliver.clientfilter import REJECT_CODE, FilterVerdict, run_filters
from deliver.dotstuff import data_size
from deliver.forward import SLICE_SIZE, Route, SmarthostConnection
from deliver.mxfilter import BUILTINS as MX_BUILTINS
from deliver.outcome import (
    Attempt,
    Deferred,
    Failed,
    Reply,
    Sent,
    Stage,
    classify,
    next_attempt,
)
from deliver.remover import Remover
from spool import Claim, Envelope, EnvelopeError, HostileFile, Spool, claim
from spool.claims import DEFERRAL_KEY
from spool.envelope import REASON_KEY, trailer_fields
from spool.testhooks import checkpoint


class Result(Enum):
    """What became of one message id taken from the queue."""

    SENT = "sent"
    DEFERRED = "deferred"  # back to `.envelope`, due again after a backoff
    FAILED = "failed"  # `.envelope.bad`
    HELD = "held"  # back to `.envelope` for a moment (filter said 100, content not there yet)
    NOT_CLAIMED = "not_claimed"  # gone, or another worker has it


@dataclass(frozen=True)
class Handled:
    """The result, and whether a client filter asked to stop this scan (exit 102)."""

    result: Result
    stop_scan: bool = False


@dataclass(frozen=True)
class Policy:
    """The delivery settings that concern one message."""

    default_route: Route
    client_filters: tuple[Spec, ...] = ()
    filter_timeout: float = 60.0
    filter_runner: FilterRunner = field(
        default_factory=lambda: FilterRunner(builtins=MX_BUILTINS))
    client_auth: SecretsFile | None = None  # for the ClientAccountSelector check
    retry_first: float = 60.0
    retry_max: float = 3600.0
    max_age: float = 5 * 86400.0
    content_grace: float = 10.0


@dataclass
class MessageHandler:
    """Handles message ids for the workers; remembers which ids wait for a moment (holds)."""

    spool: Spool
    policy: Policy
    log: Logger = field(default_factory=lambda: structlog.get_logger("relay-deliver"))
    remover: Remover = field(default_factory=Remover)  # closed by whoever runs the workers
    holds: dict[str, float] = field(default_factory=dict)  # id -> monotonic time
    metrics: DeliverMetrics | None = None  # --metrics
    _first_trouble: dict[str, float] = field(default_factory=dict)

    def held(self, message_id: str, now: float) -> bool:
        """True while *message_id* should not be claimed (a hold this process gave it)."""
        until = self.holds.get(message_id)
        if until is None:
            return False
        if until <= now:
            del self.holds[message_id]
            return False
        return True

    def next_hold_expiry(self) -> float | None:
        return min(self.holds.values(), default=None)

    async def handle(self, connection: SmarthostConnection, message_id: str) -> Handled:
        """Claim *message_id* and see it through to sent, deferred, failed or held."""
        try:
            claimed = claim(self.spool, message_id)
        except HostileFile as error:  # claim moved it to `.envelope.bad` as it was
            self.log.error("message_failed", msg_id=message_id, outcome="failed",
                           reason=f"envelope {error} (moved to .envelope.bad unread)")
            if self.metrics is not None:
                self.metrics.failed.labels("local").inc()
            return Handled(Result.FAILED)
        except OSError as error:
            self.log.error("claim_failed", msg_id=message_id, reason=_os_reason(error))
            return Handled(Result.NOT_CLAIMED)
        if claimed is None:
            return Handled(Result.NOT_CLAIMED)
        try:
            return await self._handle_claimed(connection, claimed)
        except Exception as error:  # a bug or an I/O fault: keep the message, keep going
            self.log.exception("delivery_error", msg_id=message_id, reason=repr(error))
            if claimed.held:
                claimed.defer(f"internal error: {error!r}", time.time() + self.policy.retry_first)
                if self.metrics is not None:
                    self.metrics.deferred.labels("local").inc()
            return Handled(Result.DEFERRED)
        finally:
            if claimed.held:  # cancelled at shutdown: back to `.envelope` untouched
                claimed.give_back()

    async def _handle_claimed(self, connection: SmarthostConnection, claimed: Claim) -> Handled:
        message_id = claimed.message_id
        stop_scan = False
        expired = self._expired(claimed)
        if expired is not None:
            return expired
        if self.policy.client_filters:
            # A filter is never run on a content file that deliver itself would refuse.
            refused = self._check_content(claimed)
            if refused is not None:
                return refused
            decision = await run_filters(self.policy.client_filters, claimed.content_path,
                                         claimed.envelope_path, self.policy.filter_timeout,
                                         self.policy.filter_runner)
            try:
                claimed.follow_filter_changes()
            except HostileFile as error:
                return self._fail(claimed, None, f"after the client filter: {error}", None)
            stop_scan = decision.stop_scan
            if decision.verdict is FilterVerdict.SKIP:
                claimed.give_back()
                self.holds[message_id] = time.monotonic() + 1.0
                self.log.info("message_skipped", msg_id=message_id, outcome="skipped",
                              reason=f"client filter {decision.program} abandoned it")
                return Handled(Result.HELD, stop_scan)
            if decision.verdict is FilterVerdict.FAIL:
                self.log.info("client_filter_refused", msg_id=message_id,
                              filter=decision.detail, reason=decision.reason)
                return Handled(self._fail(claimed, None, decision.reason, REJECT_CODE).result,
                               stop_scan)
            if decision.verdict is FilterVerdict.DEFER:
                delay = self.policy.retry_first
                claimed.defer(decision.reason, time.time() + delay)
                self.log.warning("delivery_deferred", msg_id=message_id, outcome="deferred",
                                 reason=decision.reason, retry_in=round(delay, 1))
                return Handled(Result.DEFERRED, stop_scan)
        try:
            envelope = claimed.read_envelope()
        except EnvelopeError as error:
            return self._trouble(claimed, f"bad envelope: {error}")
        except OSError as error:
            return self._trouble(claimed, f"envelope cannot be read: {_os_reason(error)}")
        refused = self._check_content(claimed, envelope)
        if refused is not None:
            return refused
        try:
            size = claimed.content_size()
            content_mtime = claimed.content_mtime()
        except OSError as error:
            return self._fail(claimed, envelope,
                              f"content file {claimed.content_path} cannot be read:"
                              f" {_os_reason(error)}", None)
        self._first_trouble.pop(message_id, None)
        if not envelope.to_remote:
            return self._fail(claimed, envelope, "no remote recipients (X-MailRelay-To-Remote)",
                              None)
        try:
            route = self._route(envelope)
        except ConfigError as error:
            return self._fail(claimed, envelope, f"bad X-MailRelay-ForwardToAddress: {error}",
                              None)
        unknown = self._unknown_account(route.account_selector)
        if unknown:  # never under another account, never without the one asked for
            return self._fail(claimed, envelope, unknown, None)
        # SIZE= announces what is sent, and a bare CR or LF goes out as CRLF: one pass that
        # only counts (a file written by intake has none). On a read fault, the file's size:
        # sending reads it again and defers on the same fault.
        stored_size = size  # what BDAT sends (a binarymime message goes as it is)
        with contextlib.suppress(OSError):
            size = data_size(claimed.content_slices(SLICE_SIZE))
        started = time.monotonic()
        events.emit("client", "sending", message_id)  # E-MailRelay's events for `notify`
        # The content is read slice by slice as it is sent: a big message is never held
        # whole (a read error on the way defers it; the smarthost never sees the dot).
        attempt = await connection.transact(route, envelope, claimed.content_slices(SLICE_SIZE),
                                            size, stored_size=stored_size)
        events.emit("client", "sent", message_id, _short_reason(attempt))
        if attempt.line_ends_normalised:  # a content file with bare CR or LF, sent as CRLF
            self.log.info("line_ends_normalised", msg_id=message_id,
                          count=attempt.line_ends_normalised)
        if attempt.without:  # E-MailRelay's lenient keywords: sent all the same
            self.log.warning("sent_without_extension", msg_id=message_id,
                             extensions=",".join(attempt.without))
        outcome = classify(attempt)
        # Reached: any reply at all, or a stage past the connection.
        reached = attempt.stage is not Stage.CONNECT or attempt.reply.code is not None
        if self.metrics is not None:
            self.metrics.forward_seconds.observe(time.monotonic() - started)
            self.metrics.smarthost_up.set(1 if reached else 0)
        if isinstance(outcome, Failed):
            return self._fail(claimed, envelope, outcome.reason, outcome.code,
                              kind=reason_class(outcome.code, connected=reached))
        if isinstance(outcome, Deferred):
            result = self._defer(claimed, envelope, content_mtime, outcome.reason, outcome.code,
                                 kind=reason_class(outcome.code, connected=reached))
            return Handled(result.result, stop_scan)
        checkpoint("smarthost_accepted")  # tests: a kill here may cost a copy, never the mail
        return Handled(self._settle(claimed, envelope, outcome), stop_scan)

    def _expired(self, claimed: Claim) -> Handled | None:
        """A deferred message queued longer than --max-age: `.bad` now, without another
        try (nor a client filter), with the max-age reason and its last one.

        A message never tried yet (no deferral line) gets its one attempt however old it
        is: a long outage of deliver itself must fail no mail it never tried; so does one
        relay-resubmit brought back from `.bad` (a reason after its deferrals). None when
        the message goes on as usual: young, never tried, or its files cannot be read
        (the usual handling says why)."""
        try:
            age = time.time() - claimed.content_mtime()
        except OSError:
            return None
        if age <= self.policy.max_age:
            return None
        try:
            envelope = claimed.read_envelope()
        except (EnvelopeError, OSError):
            return None
        last = _last_deferral(envelope.trailer)
        if last is None:
            return None
        reason = (f"queued longer than max-age ({self.policy.max_age:g} s), not tried again;"
                  f" last reason: {last}")
        return self._fail(claimed, envelope, reason, _reason_code(last), kind="max_age")

    def _check_content(self, claimed: Claim, envelope: Envelope | None = None) -> Handled | None:
        """Open and check the content file: None when it can be read, else what became of
        the message (missing: held for a while; hostile or unreadable: failed)."""
        try:
            claimed.open_content()
        except FileNotFoundError:
            return self._trouble(claimed, f"content file {claimed.content_path} is missing",
                                 envelope)
        except HostileFile as error:
            return self._fail(claimed, envelope, f"content file {error}", None)
        except OSError as error:
            return self._fail(claimed, envelope,
                              f"content file {claimed.content_path} cannot be read:"
                              f" {_os_reason(error)}", None)
        return None

    def _unknown_account(self, selector: str) -> str:
        """Why no account answers *selector* (E-MailRelay's "bad selector"), or ''.

        With a `--client-auth` file every message needs an account, the empty selector's
        too (the default `client` line): E-MailRelay 2.6.1 fails the message, and so does
        relay, rather than send it without AUTH."""
        if self.policy.client_auth is None:
            if not selector:
                return ""
            return (f"no client authentication account: selector [{selector}] (no "
                    "--client-auth secrets file to find it in)")
        try:
            account = self.policy.client_auth.get().client_account(selector)
        except SecretsError as error:
            return f"X-MailRelay-ClientAccountSelector {selector!r}: {error}"
        if account is None:
            return f"no client authentication account: selector [{selector}]"
        return ""

    def _route(self, envelope: Envelope) -> Route:
        selector = envelope.client_account_selector
        if envelope.forward_to_address:
            host, port = split_host_port(envelope.forward_to_address)
            return Route(host, port, selector)
        return replace(self.policy.default_route, account_selector=selector)

    # -- acting on outcomes ------------------------------------------------------------

    def _settle(self, claimed: Claim, envelope: Envelope, sent: Sent) -> Result:
        """Sent to some or all: split off the refused ones first, then remove the original.

        The copies exist before the original goes, so a crash in between can at worst send
        the message again to the accepted recipients, never lose the refused ones.
        """
        split_ids: list[str] = []
        for group, permanent in ((sent.failed, True), (sent.deferred, False)):
            if not group:
                continue
            addresses = tuple(address for address, _reply in group)
            copy = replace(envelope, to_local=(), to_remote=addresses)
            new_id = claimed.split_off(copy)
            split_ids.append(new_id)
            new_claim = claim(self.spool, new_id)
            if new_claim is None:
                continue  # someone else took it: it is a normal waiting message now
            reason = _refusal_reason(group)
            code = group[0][1].code
            if permanent:
                self._fail(new_claim, copy, reason, code, kind=reason_class(code))
            else:
                self._defer(new_claim, copy, claimed.content_mtime(), reason, code,
                            kind=reason_class(code))
        # The removal runs in the remover thread; this worker goes on to its next message.
        # Until then the envelope stays `.busy` and locked: nobody else takes it, and a
        # crash before it is gone sends it again (never loses it).
        self.remover.hand_over(claimed.hand_off())  # its lock belongs to the remover now
        if sent.delivered and self.metrics is not None:
            self.metrics.forwarded.inc()
        if sent.delivered:
            extra: dict[str, Any] = {"split_off": ",".join(split_ids)} if split_ids else {}
            self.log.info("message_forwarded", msg_id=claimed.message_id, outcome="sent",
                          **{"from": envelope.sender, "to": ",".join(sent.delivered)}, **extra)
        else:
            self.log.info("message_split", msg_id=claimed.message_id, outcome="split",
                          split_off=",".join(split_ids))
        return Result.SENT

    def _defer(self, claimed: Claim, envelope: Envelope, content_mtime: float, reason: str,
               code: int | None, *, kind: str = "local") -> Handled:
        now = time.time()
        age = now - content_mtime
        if age > self.policy.max_age:
            return self._fail(
                claimed, envelope, f"{reason} (giving up: queued longer than max-age)", code,
                kind="max_age",
            )
        attempts = 1 + sum(1 for key, _v in trailer_fields(envelope.trailer) if key == DEFERRAL_KEY)
        delay = next_attempt(attempts, self.policy.retry_first, self.policy.retry_max)
        claimed.defer(reason, now + delay)
        if self.metrics is not None:
            self.metrics.deferred.labels(kind).inc()
        self.log.warning("delivery_deferred", msg_id=claimed.message_id, outcome="deferred",
                         reason=reason, attempts=attempts, retry_in=round(delay, 1),
                         **{"from": envelope.sender, "to": ",".join(envelope.to_remote)})
        return Handled(Result.DEFERRED)

    def _fail(self, claimed: Claim, envelope: Envelope | None, reason: str,
              code: int | None, *, kind: str = "local") -> Handled:
        claimed.fail(reason, code)
        if self.metrics is not None:
            self.metrics.failed.labels(kind).inc()
        self._first_trouble.pop(claimed.message_id, None)
        extra: dict[str, Any] = {}
        if envelope is not None:
            extra = {"from": envelope.sender, "to": ",".join(envelope.to_remote)}
        self.log.error("message_failed", msg_id=claimed.message_id, outcome="failed",
                       reason=reason, code=code, **extra)
        return Handled(Result.FAILED)

    def _trouble(self, claimed: Claim, reason: str, envelope: Envelope | None = None) -> Handled:
        """A missing content file or unreadable envelope: maybe a pair still being dropped.

        A person drops the content first and then the envelope, and may write the envelope
        in place; so a young envelope (or one seen in trouble for the first time less than
        the grace ago) goes back for a moment. After the grace it fails with *reason*.
        """
        message_id = claimed.message_id
        now = time.monotonic()
        first = self._first_trouble.setdefault(message_id, now)
        try:
            envelope_age = claimed.envelope_age()
        except OSError:
            envelope_age = 0.0
        grace = self.policy.content_grace
        if now - first < grace and envelope_age < grace:
            claimed.give_back()
            self.holds[message_id] = now + min(1.0, max(grace / 4, 0.05))
            self.log.debug("message_waiting", msg_id=message_id, reason=reason)
            return Handled(Result.HELD)
        return self._fail(claimed, envelope, reason, None)


def _refusal_reason(group: tuple[tuple[str, Reply], ...]) -> str:
    return "; ".join(f"RCPT TO <{address}>: {reply.describe()}" for address, reply in group)


def _last_deferral(trailer: str) -> str | None:
    """The reason of the last deferral line (`<unix-time> <reason>`) when the message has
    been deferred since it last failed; None for one never deferred, or brought back from
    `.bad` (relay-resubmit) since: an `X-MailRelay-Reason` after its deferrals."""
    last = None
    for key, value in trailer_fields(trailer):
        if key == DEFERRAL_KEY:
            last = value.partition(" ")[2] or "(no reason recorded)"
        elif key == REASON_KEY:
            last = None
    return last


# A reply code as Reply.describe() puts it into a reason: "MAIL FROM: 451 4.3.0 later".
_REASON_CODE = re.compile(r"(?:^|: )([2-5][0-9][0-9])(?= |$)")


def _reason_code(reason: str) -> int | None:
    """The SMTP code in a recorded reason, None when it names none (a refused connection)."""
    match = _REASON_CODE.search(reason)
    return int(match.group(1)) if match else None


def _os_reason(error: OSError) -> str:
    return error.strerror or str(error)


def _short_reason(attempt: Attempt) -> str:
    """What E-MailRelay's `sent` event says after the id: nothing when every recipient
    took the message, else the reply's text without its code ("5.7.1 go away")."""
    if attempt.stage is Stage.DONE and not attempt.refused:
        return ""
    reply = attempt.refused[0][1] if attempt.refused else attempt.reply
    return " ".join(reply.text.split())


__all__ = ["Handled", "MessageHandler", "Policy", "Result"]

