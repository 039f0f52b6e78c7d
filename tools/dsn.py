"""Delivery status notifications (RFC 3464) for failed messages: pure, no I/O.

`build_dsn` turns a failed message's envelope facts and original headers into the bytes
of a `multipart/report; report-type=delivery-status` message, built with the standard
library's email package. Every value taken from the failed message (addresses, reasons,
headers) is reduced to printable one-line text first, so nothing in a reason or an
address can become a header line of the notification. Reads and writes no files.
"""

from __future__ import annotations

import email.policy
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.headerregistry import Address
from email.message import EmailMessage, Message
from email.utils import format_datetime, formatdate, make_msgid

from spool.envelope import printable

SUBJECT = "Undelivered Mail Returned to Sender"
_ENHANCED_CODE = re.compile(r"(?<![\d.])([245])\.(\d{1,3})\.(\d{1,3})(?![\d.])")
_MAX_HEADER_BYTES = 64 * 1024


@dataclass(frozen=True)
class FailedMessage:
    """What a notification says about one failed message."""

    message_id: str
    sender: str
    recipients: Sequence[str]
    reasons: Sequence[str] = ()
    reason_codes: Sequence[str] = ()
    arrival_time: float | None = None
    original_headers: bytes = b""


def status_for(reason: str, code: str) -> str:
    """RFC 3463 status: the enhanced code in the reason if its class agrees, else x.0.0.

    A reply without a code (a filter failure, a local error) is a permanent failure,
    because the message sits in `.bad` and nobody will retry it any more.
    """
    code = code.strip()
    code_class = code[:1] if code[:1] in ("4", "5") else "5"
    match = _ENHANCED_CODE.search(reason)
    if match and match.group(1) == code_class:
        return ".".join(match.groups())
    return f"{code_class}.0.0"


def diagnostic_code(reason: str, code: str) -> str:
    """`smtp; 550 5.1.1 no such user`, the code added when the reason does not start with it."""
    reason = printable(reason)
    code = printable(code)
    if code and not reason.startswith(code):
        reason = f"{code} {reason}".strip()
    return f"smtp; {reason or 'delivery failed'}"


def header_block(raw: bytes) -> str:
    """The original header section as text, unfolded lines kept, controls other than tabs gone."""
    head = raw[:_MAX_HEADER_BYTES]
    for separator in (b"\r\n\r\n", b"\n\n"):
        end = head.find(separator)
        if end >= 0:
            head = head[:end]
            break
    text = head.decode("utf-8", errors="replace")
    lines = []
    for line in text.replace("\r\n", "\n").split("\n"):
        lines.append(re.sub(r"[\x00-\x08\x0a-\x1f\x7f]", " ", line))
    return "\n".join(lines).strip("\n") + "\n"


def _human_text(failed: FailedMessage, reporting_mta: str) -> str:
    lines = [
        f"This is the mail system at {reporting_mta}.",
        "",
        "Your message could not be delivered to one or more recipients.",
        "It has been returned to you, with its original headers attached.",
        "",
        "The following recipients failed:",
        "",
    ]
    last_reason = printable(failed.reasons[-1]) if failed.reasons else "unknown reason"
    for recipient in failed.recipients:
        lines.append(f"  <{printable(recipient)}>: {last_reason}")
    if len(failed.reasons) > 1:
        lines += ["", "Every attempt that failed, oldest first:", ""]
        codes = list(failed.reason_codes) + [""] * len(failed.reasons)
        for reason, code in zip(failed.reasons, codes, strict=False):
            lines.append(f"  {printable(code) or '---'} {printable(reason)}")
    lines += ["", f"Queue id: {printable(failed.message_id)}", ""]
    return "\n".join(lines)


def build_dsn(
    failed: FailedMessage,
    *,
    domain: str,
    now: float | None = None,
) -> EmailMessage:
    """The notification for *failed*, from MAILER-DAEMON@*domain* to the original sender."""
    reason = failed.reasons[-1] if failed.reasons else "delivery failed"
    code = failed.reason_codes[-1] if failed.reason_codes else ""
    status = status_for(reason, code)

    dsn = EmailMessage(policy=email.policy.SMTP)
    dsn["From"] = f"Mail Delivery System <MAILER-DAEMON@{domain}>"
    dsn["To"] = _address_header(failed.sender)
    dsn["Subject"] = SUBJECT
    dsn["Date"] = formatdate(now, localtime=True)
    dsn["Message-ID"] = make_msgid("relay-dsn", domain=domain)
    dsn["Auto-Submitted"] = "auto-replied"
    dsn["MIME-Version"] = "1.0"
    dsn.add_header("Content-Type", "multipart/report", report_type="delivery-status")

    human = EmailMessage(policy=email.policy.SMTP)
    human.set_content(_human_text(failed, domain))
    human.add_header("Content-Description", "Notification")
    del human["MIME-Version"]  # set_content adds it to parts; only the top level needs it

    per_message = EmailMessage(policy=email.policy.SMTP)
    per_message["Reporting-MTA"] = f"dns; {domain}"
    per_message["X-Relay-Queue-ID"] = printable(failed.message_id)
    if failed.arrival_time is not None:
        arrival = datetime.fromtimestamp(failed.arrival_time, tz=UTC)
        per_message["Arrival-Date"] = format_datetime(arrival)
    blocks = [per_message]
    for recipient in failed.recipients:
        block = EmailMessage(policy=email.policy.SMTP)
        block["Final-Recipient"] = f"rfc822; {printable(recipient)}"
        block["Action"] = "failed"
        block["Status"] = status
        block["Diagnostic-Code"] = diagnostic_code(reason, code)
        blocks.append(block)
    status_part = EmailMessage(policy=email.policy.SMTP)
    status_part["Content-Type"] = "message/delivery-status"
    status_part.add_header("Content-Description", "Delivery report")
    payload: list[Message[str, str] | str] = list(blocks)
    status_part.set_payload(payload)

    headers_part = EmailMessage(policy=email.policy.SMTP)
    headers_part.set_content(header_block(failed.original_headers), subtype="rfc822-headers")
    headers_part.add_header("Content-Description", "Undelivered Message Headers")
    del headers_part["MIME-Version"]

    for part in (human, status_part, headers_part):
        dsn.attach(part)
    return dsn


def _address_header(sender: str) -> str:
    """The To header value: the sender as an angle address when it parses cleanly."""
    cleaned = printable(sender)
    try:
        return str(Address(addr_spec=cleaned))
    except (ValueError, IndexError, TypeError):
        # Not a plain addr-spec (quoted oddities): say it as a comment-free phrase group.
        return "undisclosed-recipients:;"


def dsn_bytes(dsn: EmailMessage) -> bytes:
    """The notification as stored in the spool: CRLF line ends."""
    return dsn.as_bytes(policy=email.policy.SMTP)
