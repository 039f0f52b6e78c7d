"""Failed messages as E-MailRelay 2.x leaves them, for the tools' tests: its envelope
format with failure reasons, a typical content, and a writer that drops the pair into a
spool directory (content first, then `.envelope.bad`, mode 0600); writes nowhere else.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path


def emailrelay_envelope(
    sender: str = "bob@example.com",
    recipients: Sequence[str] = ("alice@example.org",),
    failures: Sequence[tuple[str, str]] = (),
    *,
    body_type: str = "7bit",
    client: str = "192.0.2.7",
) -> bytes:
    """An envelope exactly as E-MailRelay 2.x writes it (#2821.8, CRLF), failures appended."""
    lines = [
        "X-MailRelay-Format: #2821.8",
        f"X-MailRelay-Content: {body_type}",
        f"X-MailRelay-From: {sender}",
        f"X-MailRelay-ToCount: {len(recipients)}",
        *[f"X-MailRelay-To-Remote: {recipient}" for recipient in recipients],
        "X-MailRelay-Authentication: ",
        f"X-MailRelay-Client: {client}",
        "X-MailRelay-ClientCertificate: ",
        "X-MailRelay-MailFromAuthIn: ",
        "X-MailRelay-MailFromAuthOut: ",
        "X-MailRelay-ForwardTo: ",
        "X-MailRelay-ForwardToAddress: ",
        "X-MailRelay-ClientAccountSelector: ",
        "X-MailRelay-Utf8MailboxNames: 0",
        "X-MailRelay-End: 1",
    ]
    for reason, code in failures:
        lines += [f"X-MailRelay-Reason: {reason}", f"X-MailRelay-ReasonCode: {code}"]
    return ("\r\n".join(lines) + "\r\n").encode("utf-8")


def failures_of(count: int, code: str = "550") -> list[tuple[str, str]]:
    """*count* failure pairs as a smarthost would have caused them."""
    return [(f"{code} 5.1.1 <alice@example.org>: mailbox unavailable ({n})", code)
            for n in range(count)]


CONTENT = (
    b"Received: from client.example.com by relay.test; Tue, 1 Oct 2024 10:00:00 +0000\r\n"
    b"From: Bob <bob@example.com>\r\n"
    b"To: Alice <alice@example.org>\r\n"
    b"Subject: quarterly figures\r\n"
    b"Message-ID: <original-1@example.com>\r\n"
    b"\r\n"
    b"The figures are attached.\r\n"
)


def write_bad(spool_dir: Path, message_id: str, envelope: bytes,
              content: bytes = CONTENT) -> None:
    """Drop a failed message (content first, then `.envelope.bad`, mode 0600)."""
    for name, data in ((f"{message_id}.content", content),
                       (f"{message_id}.envelope.bad", envelope)):
        path = spool_dir / name
        path.write_bytes(data)
        os.chmod(path, 0o600)
