"""E-MailRelay's client rules for SMTP extensions (--client-smtp-config's *strict keywords).

`mail_plan` first (pure: the MAIL parameters, or E-MailRelay's reason), then relay-deliver
against a real aiosmtpd sink that does not advertise 8BITMIME or SMTPUTF8 and a scripted
smarthost that offers BINARYMIME and CHUNKING: what reaches the smarthost, what ends up in
the `.bad` envelope (E-MailRelay 2.6.1's reason, no code), and that a message sent anyway
goes out as E-MailRelay sends it. Also --pipelining and --no-linger on the wire.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

import pytest
from support.deliver import run_once
from support.sink import Behaviour, Sink
from support.smarthost import Script, ScriptedSmarthost
from support.spool import by_state
from support.system import wait_until

from deliver.extensions import (
    BINARYMIME_REASON,
    EIGHTBIT_REASON,
    SMTPUTF8_REASON,
    MailPlan,
    Strict,
    mail_plan,
)
from spool import Envelope, Spool, State, read_envelope

EIGHT_BIT = "Subject: x\r\n\r\nh\u00e9llo\r\n".encode("latin-1")
ALL = {"8bitmime", "smtputf8", "size", "binarymime", "chunking"}


@pytest.mark.parametrize(("body", "utf8", "offered", "strict", "expected"), [
    ("7bit", False, {"8bitmime", "size"}, Strict(), MailPlan(["SIZE=9", "BODY=7BIT"])),
    ("7bit", False, set(), Strict(), MailPlan([])),
    ("8bit", False, {"8bitmime"}, Strict(), MailPlan(["BODY=8BITMIME"])),
    ("8bit", False, set(), Strict(), MailPlan([], without=["8BITMIME"])),
    ("8bit", False, set(), Strict(eightbit=True), EIGHTBIT_REASON),
    ("7bit", True, {"smtputf8"}, Strict(), MailPlan(["SMTPUTF8"])),
    ("7bit", True, set(), Strict(), SMTPUTF8_REASON),
    ("7bit", True, set(), Strict(smtputf8=False), MailPlan([], without=["SMTPUTF8"])),
    ("binarymime", False, {"8bitmime", "binarymime"}, Strict(), BINARYMIME_REASON),
    ("binarymime", False, {"8bitmime"}, Strict(binarymime=False),
     MailPlan([], without=["BINARYMIME"])),
    ("binarymime", False, {"binarymime", "chunking"}, Strict(),
     MailPlan(["BODY=BINARYMIME"], bdat=True)),
    ("unknown", False, ALL, Strict(), MailPlan(["SIZE=9"])),
    ("binarymime", False, ALL, Strict(), MailPlan(["SIZE=9", "BODY=BINARYMIME"], bdat=True)),
    # E-MailRelay checks 8BITMIME first, then BINARYMIME, then SMTPUTF8
    ("8bit", True, set(), Strict(eightbit=True), EIGHTBIT_REASON),
])
def test_mail_plan_is_emailrelays_rule(body: str, utf8: bool, offered: set[str], strict: Strict,
                                       expected: MailPlan | str) -> None:
    """Each body type and name kind against each EHLO: E-MailRelay 2.6.1's parameters, or
    its reason when the keyword is strict."""
    if isinstance(expected, MailPlan):
        expected = replace(expected, size=9)
    assert mail_plan(body, utf8, offered, 9, strict) == expected


def _bad(spool: Spool) -> Envelope:
    (message_id,) = by_state(spool)[State.BAD]
    return read_envelope(spool, message_id, State.BAD)


@pytest.fixture
def seven_bit_sink() -> Iterator[Sink]:
    """A real aiosmtpd sink whose EHLO offers neither 8BITMIME nor SMTPUTF8."""
    with Sink(Behaviour(ehlo_without=("8BITMIME", "SMTPUTF8"))) as sink:
        yield sink


def test_eight_bit_is_sent_anyway_by_default(spool: Spool, seven_bit_sink: Sink,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    """No eightbitstrict (E-MailRelay's default): the 8bit message goes out, no BODY=, and
    a warning says it went without 8BITMIME (E-MailRelay warns too)."""
    message_id = spool.store(EIGHT_BIT, Envelope(sender="a@x.test", to_remote=("b@y.test",),
                                                 body_type="8bit"))
    assert run_once(spool, seven_bit_sink.address) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines()
                if '"sent_without_extension"' in line]
    assert len(warnings) == 1 and message_id in warnings[0] and "8BITMIME" in warnings[0]
    (message,) = seven_bit_sink.messages
    assert message.data == EIGHT_BIT
    assert not any(option.startswith("BODY=") for option in message.mail_options)


def test_eightbit_strict_fails_it_as_emailrelay(spool: Spool, seven_bit_sink: Sink) -> None:
    """--eightbit-strict: .bad with E-MailRelay's reason and no code; nothing sent."""
    spool.store(EIGHT_BIT, Envelope(sender="a@x.test", to_remote=("b@y.test",),
                                    body_type="8bit"))
    assert run_once(spool, seven_bit_sink.address, "--eightbit-strict") == 0
    assert seven_bit_sink.messages == []
    failed = _bad(spool)
    assert failed.reasons == [EIGHTBIT_REASON] and failed.reason_codes == [""]


def test_utf8_names_fail_by_default_and_go_with_no_smtputf8_strict(
        spool: Spool, seven_bit_sink: Sink) -> None:
    """UTF-8 addresses to a sink without SMTPUTF8: .bad by default (smtputf8strict is on in
    E-MailRelay), with its reason; --no-smtputf8-strict sends them, UTF-8 on the wire."""
    envelope = Envelope(sender="\u00e4@x.test", to_remote=("b@y.test",),
                        utf8_mailbox_names=True)
    spool.store(b"Subject: x\r\n\r\nx\r\n", envelope)
    assert run_once(spool, seven_bit_sink.address) == 0
    assert seven_bit_sink.messages == []
    assert _bad(spool).reasons == [SMTPUTF8_REASON]
    spool.store(b"Subject: y\r\n\r\ny\r\n", envelope)
    with ScriptedSmarthost() as smarthost:  # aiosmtpd refuses UTF-8 without SMTPUTF8
        assert run_once(spool, smarthost.address, "--no-smtputf8-strict") == 0
        assert "MAIL FROM:<\u00e4@x.test> SIZE=17 BODY=7BIT".encode() in smarthost.commands
        assert len(smarthost.data) == 1


BINARY = b"Subject: bin\r\n\r\n\x00\x01\r\x02\n.\r\n.end\r\n"
CHUNKING = (b"250-BINARYMIME", b"250-CHUNKING")


def test_binarymime_goes_in_one_bdat_to_a_chunking_smarthost(spool: Spool) -> None:
    """BINARYMIME and CHUNKING offered: BODY=BINARYMIME and BDAT <size> LAST, the bytes
    exactly as stored (no dot-stuffing, no line-end repair), as E-MailRelay sends it."""
    spool.store(BINARY, Envelope(sender="a@x.test", to_remote=("b@y.test",),
                                 body_type="binarymime"))
    with ScriptedSmarthost(Script(ehlo_extra=CHUNKING)) as smarthost:
        assert run_once(spool, smarthost.address) == 0
    assert b"MAIL FROM:<a@x.test> SIZE=%d BODY=BINARYMIME" % len(BINARY) in smarthost.commands
    assert b"BDAT %d LAST" % len(BINARY) in smarthost.commands
    assert b"DATA" not in smarthost.commands
    assert smarthost.data == [BINARY]
    assert by_state(spool) == {}


def test_binarymime_to_a_smarthost_without_chunking(spool: Spool) -> None:
    """No CHUNKING: .bad with E-MailRelay's reason by default; --no-binarymime-strict sends
    it with DATA and no BODY=, as E-MailRelay does."""
    envelope = Envelope(sender="a@x.test", to_remote=("b@y.test",), body_type="binarymime")
    spool.store(b"Subject: b\r\n\r\nb\r\n", envelope)
    with ScriptedSmarthost() as smarthost:
        assert run_once(spool, smarthost.address) == 0
        assert _bad(spool).reasons == [BINARYMIME_REASON]
        assert not [c for c in smarthost.commands if c.startswith(b"MAIL")]
        for path in spool.path.iterdir():
            path.unlink()
        spool.store(b"Subject: b\r\n\r\nb\r\n", envelope)
        assert run_once(spool, smarthost.address, "--no-binarymime-strict") == 0
        assert b"MAIL FROM:<a@x.test> SIZE=17" in smarthost.commands  # no BODY=
        assert smarthost.data == [b"Subject: b\r\n\r\nb\r\n"]


PIPELINING = (b"250-PIPELINING",)


def test_pipelining_sends_mail_and_every_rcpt_in_one_write(spool: Spool) -> None:
    """--pipelining, PIPELINING offered: MAIL FROM and both RCPT TOs come in one write (each
    but the last with more behind it), then DATA after their replies."""
    spool.store(b"Subject: p\r\n\r\np\r\n",
                Envelope(sender="a@x.test", to_remote=("b@y.test", "c@y.test")))
    with ScriptedSmarthost(Script(ehlo_extra=PIPELINING)) as smarthost:
        assert run_once(spool, smarthost.address, "--pipelining") == 0
    assert smarthost.queued_behind == [b"MAIL FROM:<a@x.test> SIZE=17 BODY=7BIT",
                                       b"RCPT TO:<b@y.test>"]
    assert smarthost.commands[1:5] == [b"MAIL FROM:<a@x.test> SIZE=17 BODY=7BIT",
                                       b"RCPT TO:<b@y.test>",
                                       b"RCPT TO:<c@y.test>", b"DATA"]
    assert len(smarthost.data) == 1


def test_pipelined_replies_are_each_recipients_own(spool: Spool) -> None:
    """--pipelining to a real aiosmtpd sink offering PIPELINING: the 550 for one recipient
    splits it off to .bad with its reply, the other gets the message; a refused MAIL fails
    the message with that reply."""
    sink = Sink(Behaviour(ehlo_extra=("PIPELINING",), rcpt_replies={"no@y.test": "550 no"}))
    with sink:
        spool.store(b"Subject: p\r\n\r\np\r\n",
                    Envelope(sender="a@x.test", to_remote=("no@y.test", "b@y.test")))
        assert run_once(spool, sink.address, "--pipelining") == 0
        assert [m.rcpt_tos for m in sink.messages] == [["b@y.test"]]
        failed = _bad(spool)
        assert failed.to_remote == ("no@y.test",) and failed.reason_codes == ["550"]
        for path in spool.path.iterdir():
            path.unlink()
        sink.behaviour.mail_reply = "553 5.7.1 sender refused"
        spool.store(b"Subject: q\r\n\r\nq\r\n",
                    Envelope(sender="a@x.test", to_remote=("b@y.test",)))
        assert run_once(spool, sink.address, "--pipelining") == 0
        assert _bad(spool).reason_codes == ["553"]
        assert len(sink.messages) == 1


def test_without_pipelining_each_command_waits(spool: Spool) -> None:
    """No --pipelining (E-MailRelay's default), PIPELINING offered: one command at a time."""
    spool.store(b"Subject: p\r\n\r\np\r\n",
                Envelope(sender="a@x.test", to_remote=("b@y.test", "c@y.test")))
    with ScriptedSmarthost(Script(ehlo_extra=PIPELINING)) as smarthost:
        assert run_once(spool, smarthost.address) == 0
    assert smarthost.queued_behind == []
    assert len(smarthost.data) == 1


def test_no_linger_ends_a_dropped_connection_with_a_reset(spool: Spool) -> None:
    """--no-linger (E-MailRelay's -linger): a connection relay-deliver drops after a refusal
    ends with a reset at the smarthost; by default it ends with a normal close."""
    script = Script(replies={"DOT": b"554 5.6.0 refused"})
    for extra, resets in (((), 0), (("--no-linger",), 1)):
        spool.store(b"Subject: l\r\n\r\nl\r\n", Envelope(sender="a@x.test",
                                                        to_remote=("b@y.test",)))
        with ScriptedSmarthost(script) as smarthost:
            assert run_once(spool, smarthost.address, *extra) == 0
            assert smarthost.attempts == 1
            wait_until(lambda: smarthost.ended == 1, 15)
            assert smarthost.resets == resets


def test_bdat_announces_and_sends_the_stored_size() -> None:
    """For BDAT, SIZE= is the content as stored (DATA's size counts a bare LF as CRLF)."""
    plan = mail_plan("binarymime", False, ALL, 12, Strict(), stored_size=10)
    assert isinstance(plan, MailPlan)
    assert (plan.parameters[0], plan.size, plan.bdat) == ("SIZE=10", 10, True)
    data = mail_plan("8bit", False, ALL, 12, Strict(), stored_size=10)
    assert isinstance(data, MailPlan) and (data.parameters[0], data.size) == ("SIZE=12", 12)
