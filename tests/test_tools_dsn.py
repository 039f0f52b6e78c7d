"""tools.dsn, the pure part of relay-notify: statuses and the RFC 3464 structure."""

from __future__ import annotations

import email
import email.policy
from email.message import EmailMessage

import pytest

from tools.dsn import FailedMessage, build_dsn, diagnostic_code, dsn_bytes, status_for


@pytest.mark.parametrize(
    ("reason", "code", "status"),
    [
        ("550 5.1.1 <a@b>: no such user", "550", "5.1.1"),
        ("mailbox unavailable", "550", "5.0.0"),
        ("452 4.2.2 mailbox full", "452", "4.2.2"),
        ("try again later", "451", "4.0.0"),
        ("550 4.2.2 says the wrong class", "550", "5.0.0"),
        ("filter refused it", "", "5.0.0"),
        ("version 5.1.1.2 of the filter said no", "554", "5.0.0"),
    ],
)
def test_status_from_code_and_enhanced_code(reason: str, code: str, status: str) -> None:
    """5xx -> 5.0.0, 4xx -> 4.0.0, an enhanced code of the same class in the reason wins."""
    assert status_for(reason, code) == status


def test_diagnostic_code_is_one_line_with_the_code() -> None:
    """The Diagnostic-Code carries the SMTP code once and no line break."""
    assert diagnostic_code("550 5.1.1 gone", "550") == "smtp; 550 5.1.1 gone"
    assert diagnostic_code("gone\r\nBcc: x@y", "550") == "smtp; 550 gone Bcc: x@y"


def parse(data: bytes) -> EmailMessage:
    message = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


def test_dsn_structure_reads_back() -> None:
    """build_dsn's bytes parse as multipart/report with text, delivery-status and headers."""
    failed = FailedMessage(
        "emailrelay.1.1700000000.1", "bob@example.com", ["alice@example.org", "carol@x.org"],
        ["550 5.1.1 no such user"], ["550"], 1700000000.0,
        b"Subject: figures\r\nFrom: bob@example.com\r\n\r\nbody text\r\n",
    )
    data = dsn_bytes(build_dsn(failed, domain="relay.test"))
    assert b"\r\n" in data and b"\n" not in data.replace(b"\r\n", b"")
    dsn = parse(data)
    assert dsn.get_content_type() == "multipart/report"
    assert dsn.get_param("report-type") == "delivery-status"
    assert dsn["From"].addresses[0].addr_spec == "MAILER-DAEMON@relay.test"
    assert dsn["To"].addresses[0].addr_spec == "bob@example.com"
    assert dsn["Auto-Submitted"] == "auto-replied"
    parts = list(dsn.iter_parts())
    assert [part.get_content_type() for part in parts] == [
        "text/plain", "message/delivery-status", "text/rfc822-headers"]
    human = parts[0].get_content()
    assert "alice@example.org" in human and "550 5.1.1 no such user" in human
    blocks = parts[1].get_payload()
    assert blocks[0]["Reporting-MTA"] == "dns; relay.test"
    assert blocks[0]["Arrival-Date"] == "Tue, 14 Nov 2023 22:13:20 +0000"
    assert [b["Final-Recipient"] for b in blocks[1:]] == [
        "rfc822; alice@example.org", "rfc822; carol@x.org"]
    assert {b["Status"] for b in blocks[1:]} == {"5.1.1"}
    assert {b["Action"] for b in blocks[1:]} == {"failed"}
    assert "Subject: figures" in parts[2].get_content()
    assert "body text" not in parts[2].get_content()


def test_reason_with_line_breaks_never_becomes_a_header() -> None:
    """CR/LF in a reason and in original headers cannot add headers or parts to the DSN."""
    failed = FailedMessage(
        "m1", "bob@example.com", ["alice@example.org"],
        ["550 denied\r\nBcc: victim@example.net\r\n\r\n--boundary"], ["550\r\nX-Evil: 1"],
        None, b"Subject: a\rX-Injected: b\r\n\r\n",
    )
    dsn = parse(dsn_bytes(build_dsn(failed, domain="relay.test")))
    assert dsn["Bcc"] is None and dsn["X-Evil"] is None
    blocks = list(dsn.iter_parts())[1].get_payload()
    assert len(blocks) == 2
    assert blocks[1]["Bcc"] is None and blocks[1]["X-Evil"] is None
    assert "Bcc: victim@example.net" in blocks[1]["Diagnostic-Code"]
    assert "Arrival-Date" not in blocks[0]
