"""Quoted local parts: relay-intake stores a path as the client wrote it, as E-MailRelay
2.6.1 does, and relay-deliver sends it on exactly so.

A real relay-intake process, the real `emailrelay --as-server` beside it when it is built
here (else its record below, from a run of the built 2.6.1 binary), and relay-deliver
forwarding to the raw-socket smarthost, which records every command line as it came.
"""

from __future__ import annotations

import os
import smtplib
from pathlib import Path

import pytest
from aiosmtpd.smtp import SMTP
from support.emailrelay import EMAILRELAY, EmailRelayServer, spool_in
from support.intake import IntakeProcess
from support.programs import deliver_once
from support.smarthost import ScriptedSmarthost

from common.compat_aiosmtpd import SMTPBase
from common.smtppath import path_as_written
from spool import State, parse_envelope

SENDER = '<"john doe"@example.com>'
# (RCPT TO argument, what E-MailRelay 2.6.1 stored as X-MailRelay-To-Remote)
RECIPIENTS = [
    ('<"a b"@example.com>', '"a b"@example.com'),
    ('<"ab"@example.com>', '"ab"@example.com'),  # quotes the grammar calls needless: kept
    ('<"Q"@Example.COM>', '"Q"@Example.COM'),
    ('<"a\\"b"@example.com>', '"a\\"b"@example.com'),  # an escaped quote
    ('<"a>b"@example.com>', '"a>b"@example.com'),  # a > inside the quotes
    ('<@route.example:"r s"@example.com>', '"r s"@example.com'),  # the source route goes
    ("<plain@example.com> ", "plain@example.com"),
]


def _send(port: int) -> None:
    with smtplib.SMTP("127.0.0.1", port, local_hostname="client.test", timeout=10) as smtp:
        smtp.ehlo()
        assert smtp.docmd(f"MAIL FROM:{SENDER}")[0] == 250
        for argument, _stored in RECIPIENTS:
            assert smtp.docmd(f"RCPT TO:{argument}")[0] == 250, argument
        assert smtp.docmd("DATA")[0] == 354
        smtp.send(b"Subject: quoted\r\n\r\nhi\r\n.\r\n")
        assert smtp.getreply()[0] == 250


def _stored(spool_dir: Path) -> tuple[str, tuple[str, ...]]:
    (path,) = spool_dir.glob("*" + State.READY.suffix)
    envelope = parse_envelope(path.read_bytes())
    return envelope.sender, envelope.to_remote


def test_intake_stores_the_paths_as_emailrelay_stored_them(tmp_path: Path) -> None:
    """Quotes, escapes and case kept, a source route dropped: E-MailRelay 2.6.1's record."""
    spool_dir = spool_in(tmp_path)
    with IntakeProcess(spool_dir) as intake:
        _send(intake.port)
        intake.stop()
    assert _stored(spool_dir) == ('"john doe"@example.com',
                                  tuple(stored for _argument, stored in RECIPIENTS))


@pytest.mark.skipif(not os.access(EMAILRELAY, os.X_OK),
                    reason="E-MailRelay 2.6.1 is not built here")
def test_the_real_emailrelay_stores_the_same(tmp_path: Path) -> None:
    """The same session to the real `emailrelay --as-server`: the same envelope addresses."""
    work = tmp_path / "emailrelay"
    work.mkdir()
    spool_dir = spool_in(work)
    with EmailRelayServer(work, spool_dir) as server:
        port = server.port
        _send(port)
    assert _stored(spool_dir) == ('"john doe"@example.com',
                                  tuple(stored for _argument, stored in RECIPIENTS))


def test_deliver_sends_the_quoted_paths_as_stored(tmp_path: Path) -> None:
    """End to end: what intake stored goes out in MAIL FROM and RCPT TO byte for byte."""
    spool_dir = spool_in(tmp_path)
    with IntakeProcess(spool_dir) as intake:
        _send(intake.port)
        intake.stop()
    with ScriptedSmarthost() as smarthost:
        done = deliver_once(spool_dir, smarthost.address)
        assert done.returncode == 0, done.stderr
        commands = [c for c in smarthost.commands if c[:4].upper() in (b"MAIL", b"RCPT")]
    assert commands[0].startswith(f"MAIL FROM:{SENDER}".encode())
    assert commands[1:] == [f"RCPT TO:<{stored}>".encode() for _argument, stored in RECIPIENTS]
    assert len(smarthost.data) == 1
    assert not list(spool_dir.glob("*.envelope*"))


def test_a_space_before_the_at_is_refused_not_rewritten(tmp_path: Path) -> None:
    """`"x y" @example.com` (E-MailRelay stores it with the space) cannot be sent on as
    written, so intake refuses it (553) rather than store another address."""
    spool_dir = spool_in(tmp_path)
    with IntakeProcess(spool_dir) as intake, intake.smtp() as smtp:
        smtp.ehlo()
        assert smtp.docmd("MAIL FROM:<a@example.com>")[0] == 250
        code, text = smtp.docmd('RCPT TO:<"x y" @example.com>')
        assert (code, text[:5]) == (553, b"5.1.3")


@pytest.mark.parametrize(("text", "written"), [
    ('<"john doe"@example.com>', '"john doe"@example.com'),
    ('  <"a>b"@x.example> ', '"a>b"@x.example'),
    ('<@a.example,@b.example:"r s"@x.example>', '"r s"@x.example'),
    ('<"a\\\\"@x.example>', '"a\\\\"@x.example'),  # an escaped backslash, then the quote
    ("a@x.example ", "a@x.example"),  # no angle brackets: the first word
    ('<"open@x.example>', None),  # the quote never closes
    ("<@a.example>", None),  # a source route and no address
])
def test_path_as_written(text: str, written: str | None) -> None:
    """The address between < (or a source route's colon) and the > outside the quotes."""
    assert path_as_written(text) == written


def test_aiosmtpd_getaddr_returns_the_rest_of_its_argument() -> None:
    """general_path relies on aiosmtpd's `_getaddr` returning, as parameters, the end of its
    argument after the path; and it re-serialises the address (the reason relay takes the
    client's text instead). Either changing shows here first."""
    server = object.__new__(SMTP)
    server.local_part_limit = 0
    for argument in ('<"a b"@example.com> SIZE=10', '<"ab"@example.com>', "<a@b> (c) BODY=8BITMIME",
                     "a@b SIZE=1"):
        address, rest = SMTP._getaddr(server, argument)
        assert address is not None and rest is not None, argument
        assert argument.endswith(rest), (argument, rest)
    assert SMTP._getaddr(server, '<"ab"@example.com>')[0] == "ab@example.com"
    ours = object.__new__(SMTPBase)
    ours.local_part_limit = 0
    assert ours.general_path('<"ab"@example.com> SIZE=10') == ('"ab"@example.com', "SIZE=10")
