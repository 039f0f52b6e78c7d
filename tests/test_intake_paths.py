"""relay-intake refuses, at MAIL and RCPT, every path that relay-deliver could not forward
exactly as stored: `RCPT TO:<>`, and what aiosmtplib's address quoting refuses or rewrites.
Real sockets to a real intake; the rule is aiosmtplib's own quoting (compat_aiosmtplib).
"""

from __future__ import annotations

import re
from pathlib import Path

from aiosmtplib.email import quote_address
from hypothesis import given, settings
from hypothesis import strategies as st
from support.intake import IntakeThread, RawClient
from support.spool import accepted

from intake.policy import path_problem


def test_empty_forward_path_gets_553_and_only_the_good_recipient_is_stored(
        spool_dir: Path) -> None:
    """RCPT TO:<> is refused with 553 5.1.3 saying why; the transaction goes on with the
    recipients that were accepted, and the stored envelope holds only those."""
    with IntakeThread(spool_dir) as intake:
        raw = RawClient(intake.port)
        raw.command(b"EHLO client.test")
        assert raw.command(b"MAIL FROM:<a@example.org>")[:3] == "250"
        refusal = raw.command(b"RCPT TO:<>")
        assert refusal.startswith("553 5.1.3 ") and "forward-path" in refusal
        assert raw.command(b"RCPT TO:<b@example.com>")[:3] == "250"
        assert raw.command(b"DATA")[:3] == "354"
        assert raw.command(b"Subject: t\r\n\r\nhi\r\n.")[:3] == "250"
        raw.command(b"QUIT")
    ((envelope, _),) = accepted(spool_dir)
    assert envelope.to_remote == ("b@example.com",)


def test_a_transaction_whose_only_recipient_was_refused_has_no_data(spool_dir: Path) -> None:
    """With `<>` the only recipient, DATA gets 503 and nothing reaches the spool."""
    with IntakeThread(spool_dir) as intake:
        raw = RawClient(intake.port)
        raw.command(b"EHLO client.test")
        raw.command(b"MAIL FROM:<a@example.org>")
        assert raw.command(b"RCPT TO:<>")[:3] == "553"
        assert raw.command(b"DATA")[:3] == "503"
        raw.command(b"QUIT")
    assert accepted(spool_dir) == []


def test_paths_the_forwarding_client_would_change_are_refused_and_others_pass(
        spool_dir: Path) -> None:
    """A lone quote in a local part (aiosmtplib would send `<a>`) gets 553 at RCPT and at
    MAIL; the null reverse-path, a quoted local part with a space, an address literal and
    a bare `postmaster` are forwardable and accepted."""
    with IntakeThread(spool_dir) as intake:
        raw = RawClient(intake.port)
        raw.command(b"EHLO client.test")
        assert raw.command(b'MAIL FROM:<a"b@example.org>')[:3] == "553"
        assert raw.command(b"MAIL FROM:<>")[:3] == "250"
        assert raw.command(b'RCPT TO:<a"b@example.com>')[:10] == "553 5.1.3 "
        for good in (b'<"john doe"@example.com>', b"<x@[192.0.2.1]>", b"<postmaster>"):
            assert raw.command(b"RCPT TO:" + good)[:3] == "250", good
        assert raw.command(b"DATA")[:3] == "354"
        assert raw.command(b"Subject: t\r\n\r\nhi\r\n.")[:3] == "250"
        raw.command(b"QUIT")
    ((envelope, _),) = accepted(spool_dir)
    assert envelope.sender == ""
    assert envelope.to_remote == ('"john doe"@example.com', "x@[192.0.2.1]", "postmaster")
    for address in envelope.to_remote:
        assert quote_address(address) == f"<{address}>"


def test_an_unforwardable_address_from_the_verifier_is_refused(spool_dir: Path,
                                                               tmp_path: Path) -> None:
    """An address verifier that rewrites a recipient into something aiosmtplib would
    change gets 553 for that RCPT instead of a message that can never be forwarded."""
    verifier = tmp_path / "verify"
    verifier.write_text('#!/bin/sh\necho remote\necho "list,of@example.com"\nexit 1\n')
    verifier.chmod(0o755)
    with IntakeThread(spool_dir, "--address-verifier", str(verifier)) as intake:
        raw = RawClient(intake.port)
        raw.command(b"EHLO client.test")
        raw.command(b"MAIL FROM:<a@example.org>")
        assert raw.command(b"RCPT TO:<b@example.com>")[:10] == "553 5.1.3 "
        raw.command(b"QUIT")
    assert accepted(spool_dir) == []


def _forwarded_unchanged(address: str) -> bool:
    try:
        return quote_address(address) == f"<{address}>"
    except ValueError:
        return False


@settings(max_examples=2000, deadline=None)
@given(st.text(alphabet=st.sampled_from('ab@.,:;()<>[]" \\\t\u00e9'), max_size=12))
def test_path_rule_is_exactly_what_aiosmtplib_sends_unchanged(address: str) -> None:
    """intake's rule is aiosmtplib's quoting itself: a path is accepted exactly when
    aiosmtplib would send `<address>` as stored (the empty one never, as a forward-path),
    and it is not a list (a comma outside a quoted local part: Python 3.13's parseaddr lets
    it through where 3.11's and 3.12's rewrote it)."""
    if address in ("", "<>"):
        assert path_problem(address, null_allowed=False) is not None
        return
    quoted = re.match(r'"(?:[^"\\]|\\.)*"(.*)', address, re.DOTALL)
    listed = "," in (quoted.group(1) if quoted else address)
    expected = _forwarded_unchanged(address) and not listed  # a list: refused on every Python
    assert (path_problem(address, null_allowed=False) is None) == expected


def test_the_paths_aiosmtplib_refuses_or_rewrites_today() -> None:
    """Anchors that fail loudly if an aiosmtplib upgrade changes its quoting: a space, a
    lone quote, a list and a comment are refused; quoted local parts, address literals and
    a bare postmaster pass."""
    for refused in ("a b@c", 'a"b@c', "a,b@c", "a(b)@c", "a@b.c (x)", "<a@b>"):
        assert path_problem(refused, null_allowed=False) is not None, refused
    for fine in ('"a b"@c', '"a\\"b"@c', "x@[192.0.2.1]", "postmaster", "\u00e4@x.example",
                 '"a,b"@c'):
        assert path_problem(fine, null_allowed=False) is None, fine
