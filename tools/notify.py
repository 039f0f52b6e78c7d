"""relay-notify: tell senders about mail that failed for good, then clear it from the spool.

    relay-notify [--spool-dir D] [--max-retries N] [--all] [--keep] [--procmail]
                 [--dry-run] [--domain D]

Reads each `<id>.envelope.bad` with N or more `X-MailRelay-Reason:` lines (every one with
`--all`) and the header section of its `<id>.content`. For a message with a sender it
builds an RFC 3464 delivery status notification (tools.dsn) from MAILER-DAEMON@domain
and stores it in the spool with an empty envelope sender, durably but not yet released
(`<dsn-id>.envelope.dsn`, which deliver does not forward: `spool.notifications`), or with
`--procmail` pipes it to `procmail -d <user>` (no shell). Only after that does the failed
message leave the spool: removed, or moved to the `failed/` subfolder with `--keep` (both
through `spool`); then the notification is released (renamed to `.envelope`). A message
whose sender is empty (a bounce itself) gets no notification, so bounces never loop.

Never rewrites an existing file; creates only the notification's files and `failed/`.
A `.envelope.bad` that is not a regular file with one link is never read nor moved (one
line on stderr; it is no message, so it does not make the exit 75); a content file that
is not is never read (the notification goes without the original headers) nor kept in
`failed/`.
Killed at any step, the next run settles first what the killed one left: an unreleased
notification whose failed message is still in the spool is removed (the bounce is made
again), one whose failed message is gone is released; so the sender gets exactly one
notification (with `--procmail`, a kill between procmail and the removal may still
deliver one twice). Takes turns with
relay-resubmit on the tools lock. Silent on success; exit 0, 64 usage, 75 when some
message could not be handled (it stays for the next run), 78 for an unusable spool.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from common.config import SPOOL_DIR_OPTION, ConfigError, Option, load_settings
from common.logs import Logger, setup_logging_from
from spool import (
    Envelope,
    EnvelopeError,
    HostileFile,
    Spool,
    SpoolError,
    State,
    entries,
    parse_envelope,
)
from spool.envelope import REASON_CODE_KEY, REASON_KEY, check_address
from spool.files import read_regular
from spool.names import TOOLS_LOCK_NAME
from spool.notifications import release, settle, store_unreleased
from spool.testhooks import checkpoint
from spool.unclaimed import archive_failed, remove_message
from tools.common import (
    DRY_RUN_OPTION,
    MAX_RETRIES_OPTION,
    count_reasons,
    fail,
    local_domain,
    open_spool,
    read_bad_envelope,
    tools_lock,
)
from tools.dsn import FailedMessage, build_dsn, dsn_bytes

DESCRIPTION = "Send delivery status notifications for failed messages and clear them."
PROGRAM = "relay-notify"
KEEP_FOLDER = "failed"
PROCMAIL_TIMEOUT = 60.0
_HEADER_READ_LIMIT = 64 * 1024
_ARRIVAL_IN_ID = re.compile(r"^emailrelay\.\d+\.(\d{9,11})\.\d+$")
# procmail gets the user as an argument: a conservative login name, never an option.
_LOCAL_USER = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,63}$")

OPTIONS = (
    SPOOL_DIR_OPTION,
    MAX_RETRIES_OPTION,
    Option("all", "notify for every .bad, however few its failures", False, "bool"),
    Option("keep", f"move failed messages to the {KEEP_FOLDER}/ subfolder, not remove", False,
           "bool"),
    Option("procmail", "deliver notifications locally with `procmail -d <user>`", False, "bool"),
    DRY_RUN_OPTION,
    Option("domain", "domain of MAILER-DAEMON and of Message-IDs (default: host name)", None,
           metavar="DOMAIN"),
)


class MessageProblem(Exception):
    """One message could not be handled this run; it stays in the spool for the next."""


@dataclass(frozen=True)
class BadMessage:
    """The facts notify needs from one `.envelope.bad`."""

    message_id: str
    sender: str
    recipients: tuple[str, ...]
    reasons: list[str]
    reason_codes: list[str]
    utf8: bool


def read_facts(message_id: str, data: bytes) -> BadMessage:
    """Sender, recipients and reasons from an envelope; textual fallback for odd files."""
    try:
        envelope = parse_envelope(data)
    except EnvelopeError:
        return _read_facts_textually(message_id, data)
    return BadMessage(
        message_id,
        envelope.sender,
        envelope.recipients,
        envelope.reasons,
        envelope.reason_codes,
        envelope.utf8_mailbox_names,
    )


def _read_facts_textually(message_id: str, data: bytes) -> BadMessage:
    """What a person or another program wrote that our parser refuses: take the key lines."""
    text = data.decode("utf-8", errors="replace")
    fields: list[tuple[str, str]] = []
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields.append((key.strip(), value.strip()))
    senders = [value for key, value in fields if key == "X-MailRelay-From"]
    if not senders:
        raise MessageProblem(f"{message_id}: envelope has no X-MailRelay-From line")
    recipients = tuple(
        value for key, value in fields if key in ("X-MailRelay-To-Local", "X-MailRelay-To-Remote")
    )
    return BadMessage(
        message_id,
        senders[0],
        recipients,
        [value for key, value in fields if key == REASON_KEY],
        [value for key, value in fields if key == REASON_CODE_KEY],
        not senders[0].isascii(),
    )


def original_headers(spool: Spool, message_id: str) -> bytes:
    """The first bytes of the content (its headers); nothing when it is gone or hostile."""
    try:
        return read_regular(spool.content_file(message_id), _HEADER_READ_LIMIT)
    except OSError:  # gone, or no regular file with one link (never read): no headers
        return b""


def arrival_time(spool: Spool, message_id: str) -> float | None:
    """When the message arrived: from an E-MailRelay style id, else the content's mtime."""
    match = _ARRIVAL_IN_ID.match(message_id)
    if match:
        return float(match.group(1))
    try:
        return os.lstat(spool.content_path(message_id)).st_mtime
    except OSError:
        return None


def run_procmail(program: str, sender: str, message: bytes) -> None:
    """Deliver *message* to the local user of *sender* with `procmail -d user` (no shell)."""
    user = sender.rpartition("@")[0] if "@" in sender else sender
    if not _LOCAL_USER.match(user):
        raise MessageProblem(f"sender {sender!r} has no local user name procmail could take")
    local_text = message.replace(b"\r\n", b"\n")  # a local mailbox wants Unix line ends
    try:
        completed = subprocess.run(
            [program, "-d", user],
            input=local_text,
            capture_output=True,
            timeout=PROCMAIL_TIMEOUT,
            env={"PATH": "/usr/bin:/bin"},
            cwd="/",
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise MessageProblem(f"procmail -d {user} timed out") from None
    except OSError as error:
        raise MessageProblem(f"cannot run {program}: {error.strerror}") from None
    if completed.returncode != 0:
        detail = completed.stderr.decode("utf-8", "replace").strip().splitlines()[:1]
        raise MessageProblem(
            f"procmail -d {user} exited {completed.returncode}"
            + (f": {detail[0]}" if detail else "")
        )


def dispose(spool: Spool, message_id: str, keep: bool) -> None:
    """The failed message leaves the spool: removed, or kept in the failed/ subfolder."""
    if keep:
        archive_failed(spool, message_id, KEEP_FOLDER)
    else:
        remove_message(spool, message_id, State.BAD)


def handle(spool: Spool, message_id: str, settings: argparse.Namespace, *, domain: str,
           procmail: str | None, log: Logger) -> bool:
    """Notify about one failed message and clear it; True when a notification was stored."""
    data = read_bad_envelope(spool, message_id)
    if data is None:
        return False  # a person took it since the listing
    failures = count_reasons(data)
    if not settings.all and failures < settings.max_retries:
        return False  # relay-resubmit will retry it
    facts = read_facts(message_id, data)
    if not facts.sender:
        if settings.dry_run:
            print(f"would {'keep' if settings.keep else 'remove'} {message_id}"
                  " (null sender: no notification)")
            return False
        dispose(spool, message_id, settings.keep)
        log.debug("bounce_dropped", msg_id=message_id, failures=failures)
        return False
    try:
        check_address(facts.sender, "sender")
    except EnvelopeError as error:
        raise MessageProblem(f"{message_id}: {error.problem}") from None
    failed = FailedMessage(
        message_id=message_id,
        sender=facts.sender,
        recipients=[r for r in facts.recipients if r] or ["unknown"],
        reasons=facts.reasons,
        reason_codes=facts.reason_codes,
        arrival_time=arrival_time(spool, message_id),
        original_headers=original_headers(spool, message_id),
    )
    message = dsn_bytes(build_dsn(failed, domain=domain))
    if settings.dry_run:
        how = "procmail" if procmail else "the spool"
        print(f"would notify {facts.sender} about {message_id} through {how}")
        return False
    stored = False
    if procmail:
        run_procmail(procmail, facts.sender, message)
    else:
        envelope = Envelope(
            sender="",
            to_remote=(facts.sender,),
            body_type="7bit" if message.isascii() else "8bit",
            utf8_mailbox_names=facts.utf8 or not facts.sender.isascii(),
        )
        dsn_id = store_unreleased(spool, message, envelope, answers=message_id)
        stored = True
        log.debug("notification_stored", msg_id=message_id, dsn_id=dsn_id, to=facts.sender)
    dispose(spool, message_id, settings.keep)
    log.debug("failed_message_cleared", msg_id=message_id, kept=settings.keep)
    if stored:
        checkpoint("failed_message_cleared")
        release(spool, dsn_id)
        checkpoint("notification_released")
    return stored


def settle_unreleased(spool: Spool, dry_run: bool, log: Logger) -> int:
    """What a killed run left: release or remove its notifications; returns how many released.

    A notification file relay cannot read (hostile, garbage) is named on stderr and left
    for a person; it is no message, so it does not make the exit 75.
    """
    settled = settle(spool, act=not dry_run)
    for dsn_id in settled.removed:
        if dry_run:
            print(f"would remove unreleased notification {dsn_id} (its message is still here)")
        log.info("notification_redone", dsn_id=dsn_id)
    for dsn_id in settled.released:
        if dry_run:
            print(f"would release notification {dsn_id} (its message is gone)")
        log.info("notification_released", dsn_id=dsn_id)
    for dsn_id, error in settled.problems:
        print(f"{PROGRAM}: {dsn_id}{State.DSN.suffix}: {error}: remove it by hand",
              file=sys.stderr)
    return 0 if dry_run else len(settled.released)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of relay-notify."""
    try:
        settings = load_settings(
            PROGRAM,
            DESCRIPTION,
            OPTIONS,
            argv,
            section="notify",
        )
        domain = local_domain(settings.domain)
    except (ConfigError, ValueError) as error:
        return fail(PROGRAM, str(error), os.EX_CONFIG)
    if settings.max_retries < 0:
        return fail(PROGRAM, "--max-retries must be 0 or more", os.EX_USAGE)
    try:
        log = setup_logging_from(PROGRAM, settings)
    except (OSError, ValueError) as error:
        return fail(PROGRAM, f"logging: {error}", os.EX_CONFIG)
    procmail: str | None = None
    if settings.procmail:
        procmail = shutil.which("procmail")
        if procmail is None:
            return fail(PROGRAM, "--procmail: no procmail program on PATH", os.EX_CONFIG)
    problems = 0
    try:
        spool = open_spool(settings.spool_dir)
        with tools_lock(spool):
            stored = settle_unreleased(spool, settings.dry_run, log)
            bad_ids = sorted(e.message_id for e in entries(spool) if e.state is State.BAD)
            for message_id in bad_ids:
                try:
                    stored += handle(spool, message_id, settings, domain=domain,
                                     procmail=procmail, log=log)
                except MessageProblem as problem:
                    problems += 1
                    print(f"{PROGRAM}: {problem}", file=sys.stderr)
                except HostileFile as error:  # no message: never read, never moved
                    print(f"{PROGRAM}: {error}: no notification, remove it by hand",
                          file=sys.stderr)
                except OSError as error:
                    problems += 1
                    where = error.filename or message_id
                    print(f"{PROGRAM}: {message_id}: {where}: {error.strerror}",
                          file=sys.stderr)
            if stored:
                spool.trigger_scan()
    except SpoolError as error:
        return fail(PROGRAM, str(error), os.EX_CONFIG)
    except OSError as error:
        return fail(PROGRAM, f"{error.filename or TOOLS_LOCK_NAME}: {error.strerror}",
                    os.EX_TEMPFAIL)
    return os.EX_TEMPFAIL if problems else os.EX_OK


if __name__ == "__main__":
    raise SystemExit(main())
