"""relay-intake on 127.0.0.1 driven by smtplib and raw sockets: the happy path and bad input."""

from __future__ import annotations

import smtplib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.intake import MESSAGE, IntakeThread, RawClient, non_loopback_address
from support.spool import accepted, spool_files, strip_received

from intake.policy import address_problem, helo_problem, is_loopback


def assert_still_serving(intake: IntakeThread) -> None:
    """A fresh client can still send a message."""
    before = len(accepted(intake.spool_dir))
    with intake.smtp() as client:
        client.sendmail("ok@example.org", ["ok@example.com"], MESSAGE)
    assert len(accepted(intake.spool_dir)) == before + 1


@pytest.fixture
def intake(spool_dir: Path) -> Iterator[IntakeThread]:
    with IntakeThread(spool_dir) as running:
        yield running


def test_happy_path_stores_envelope_and_exact_content(intake: IntakeThread) -> None:
    """A message is on disk as a parseable envelope and byte-identical content after Received."""
    with intake.smtp() as client:
        client.ehlo()
        refused = client.sendmail("sender@example.org", ["r1@example.com", "r2@example.net"],
                                  MESSAGE)
        assert refused == {}
    ((envelope, content),) = accepted(intake.spool_dir)
    assert envelope.sender == "sender@example.org"
    assert envelope.to_remote == ("r1@example.com", "r2@example.net")
    assert envelope.to_local == ()
    assert envelope.client == "127.0.0.1"
    assert envelope.body_type == "7bit"
    assert envelope.authentication == ""
    assert not envelope.utf8_mailbox_names
    assert strip_received(content) == MESSAGE
    first = content.split(b"\r\n\r\n")[0]
    assert b"from client.test ([127.0.0.1])" in first and b"by intake.test with ESMTP;" in first
    assert not list(intake.spool_dir.glob("*.new"))


def test_body_8bitmime_smtputf8_and_null_sender_are_recorded(intake: IntakeThread) -> None:
    """BODY=8BITMIME, SMTPUTF8 and MAIL FROM:<> end up in the envelope; 8-bit bytes kept."""
    eight_bit = "Subject: caf\u00e9\r\n\r\nna\u00efve \u00fcber\r\n".encode()
    with intake.smtp() as client:
        client.ehlo()
        client.sendmail("", ["b@example.com"], eight_bit, mail_options=["BODY=8BITMIME"])
        client.sendmail("j\u00f6rg@example.org", ["m\u00fcller@example.com"], b"X: y\r\n\r\nz\r\n",
                        mail_options=["SMTPUTF8", "BODY=8BITMIME"])
    (first, first_content), (second, _) = accepted(intake.spool_dir)
    assert first.sender == "" and first.body_type == "8bit"
    assert strip_received(first_content) == eight_bit
    assert second.utf8_mailbox_names and second.sender == "j\u00f6rg@example.org"
    assert second.to_remote == ("m\u00fcller@example.com",)


def test_ehlo_advertises_extensions_but_no_auth_without_server_auth(intake: IntakeThread) -> None:
    """EHLO lists PIPELINING, 8BITMIME, SIZE, SMTPUTF8; AUTH is neither offered nor accepted."""
    with intake.smtp() as client:
        code, _ = client.ehlo()
        assert code == 250
        for extension in ("pipelining", "8bitmime", "smtputf8"):
            assert client.has_extn(extension)
        assert client.esmtp_features["size"] == str(32 * 1024 * 1024)
        assert not client.has_extn("auth") and not client.has_extn("starttls")
        assert client.docmd("AUTH PLAIN AGFsaWNlAHNlY3JldA==")[0] == 502


def test_pipelined_transactions_are_each_answered(intake: IntakeThread) -> None:
    """A client that pipelines MAIL/RCPT/DATA gets each reply in order and one message."""
    raw = RawClient(intake.port)
    raw.command(b"EHLO client.test")
    raw.send(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.com>\r\nRCPT TO:<c@example.com>"
             b"\r\nDATA\r\n")
    assert [raw.reply()[:3] for _ in range(4)] == ["250", "250", "250", "354"]
    raw.send(MESSAGE + b".\r\nQUIT\r\n")
    assert raw.reply().startswith("250 2.0.0 OK queued as emailrelay.")
    assert raw.reply().startswith("221")
    ((envelope, content),) = accepted(intake.spool_dir)
    assert envelope.to_remote == ("b@example.com", "c@example.com")
    assert strip_received(content) == MESSAGE.replace(b"\n..", b"\n.")  # unstuffed


@pytest.mark.parametrize("address", [b"<a\x00b@example.com>", b"<a\x01b@example.com>",
                                     b"<a\rb@example.com>", b"<a\x7fb@example.com>",
                                     b"<a\x1bb@example.com>"])
def test_control_characters_in_addresses_are_refused(intake: IntakeThread, address: bytes) -> None:
    """NUL, CR, DEL and other controls in MAIL FROM or RCPT TO get 553/501; nothing stored."""
    raw = RawClient(intake.port)
    raw.command(b"EHLO client.test")
    assert raw.command(b"MAIL FROM:" + address)[:3] in ("553", "501")
    assert raw.command(b"MAIL FROM:<ok@example.org>")[:3] == "250"
    assert raw.command(b"RCPT TO:" + address)[:3] in ("553", "501")
    assert raw.command(b"DATA")[:3] == "503"
    raw.close()
    assert spool_files(intake.spool_dir) == []
    assert_still_serving(intake)


def test_non_ascii_address_needs_smtputf8(intake: IntakeThread) -> None:
    """An 8-bit address without the SMTPUTF8 parameter is refused 553."""
    raw = RawClient(intake.port)
    raw.command(b"EHLO client.test")
    assert raw.command("MAIL FROM:<j\u00f6rg@example.org>".encode())[:3] == "553"
    assert raw.command(b"MAIL FROM:<a@example.org>")[:3] == "250"
    assert raw.command(b"RCPT TO:<\xff\xfe@example.com>")[:3] == "553"


def test_helo_with_bare_cr_is_refused(intake: IntakeThread) -> None:
    """HELO/EHLO names with a bare CR (or other control) are refused 501; MAIL needs HELO."""
    raw = RawClient(intake.port)
    assert raw.command(b"HELO evil\rMAIL FROM:<a@example.org>")[:3] == "501"
    assert raw.command(b"EHLO evil\rname")[:3] == "501"
    assert raw.command(b"MAIL FROM:<a@example.org>")[:3] == "503"
    assert raw.command(b"HELO good.example")[:3] == "250"
    assert raw.command(b"MAIL FROM:<a@example.org>")[:3] == "250"


def test_long_data_line_and_long_command_are_refused(intake: IntakeThread) -> None:
    """A DATA line over 1000 octets: 5xx and nothing stored; a command over 512: 500."""
    raw = RawClient(intake.port)
    raw.command(b"EHLO client.test")
    assert raw.command(b"NOOP " + b"x" * 600)[:3] == "500"
    assert raw.command(b"MAIL FROM:<a@example.org>")[:3] == "250"
    assert raw.command(b"RCPT TO:<b@example.com>")[:3] == "250"
    assert raw.command(b"DATA")[:3] == "354"
    raw.send(b"Subject: long\r\n\r\n" + b"y" * 1200 + b"\r\nend\r\n.\r\n")
    assert raw.reply()[0] == "5"
    assert raw.command(b"NOOP")[:3] == "250"
    raw.close()
    assert spool_files(intake.spool_dir) == []
    assert_still_serving(intake)


def test_size_limits_declared_and_undeclared(spool_dir: Path) -> None:
    """SIZE= over --size is 552 at MAIL; undeclared excess is 552 after DATA, nothing stored."""
    with IntakeThread(spool_dir, "--size", "10K") as intake:
        with intake.smtp() as client:
            client.ehlo()
            assert client.esmtp_features["size"] == "10240"
            code, _ = client.mail("a@example.org", ["SIZE=20000"])
            assert code == 552
        raw = RawClient(intake.port)  # smtplib would declare SIZE=; this client does not
        raw.start_data()
        raw.send(b"Subject: big\r\n\r\n" + (b"z" * 70 + b"\r\n") * 4000 + b".\r\n")
        assert raw.reply()[:3] == "552"
        assert raw.command(b"NOOP")[:3] == "250"
        assert spool_files(spool_dir) == []
        assert_still_serving(intake)


def test_too_many_recipients_get_452(spool_dir: Path) -> None:
    """Recipients beyond --max-recipients get 452; the message goes to the first ones."""
    with IntakeThread(spool_dir, "--max-recipients", "3") as intake:
        with intake.smtp() as client:
            refused = client.sendmail("a@example.org",
                                      [f"r{n}@example.com" for n in range(5)], MESSAGE)
        assert {code for code, _ in refused.values()} == {452}
        assert sorted(refused) == ["r3@example.com", "r4@example.com"]
        ((envelope, _),) = accepted(spool_dir)
        assert envelope.to_remote == ("r0@example.com", "r1@example.com", "r2@example.com")


def test_early_talker_is_refused(spool_dir: Path) -> None:
    """A client that sends the whole transaction before the greeting gets 554 and nothing."""
    with IntakeThread(spool_dir, "--greeting-delay", "0.3") as intake:
        raw = RawClient(intake.port, greeting=False)
        raw.send(b"EHLO spam.test\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.com>\r\n"
                 b"DATA\r\nSubject: early\r\n\r\nhi\r\n.\r\nQUIT\r\n")
        assert raw.reply().startswith("554 ")
        assert raw.closed()
        assert spool_files(spool_dir) == []
        polite = RawClient(intake.port)
        assert polite.greeting.startswith("220 intake.test")
        assert_still_serving(intake)


@pytest.mark.parametrize("trick", [b"\n.\n", b"\r\n.\n", b"\n.\r\n", b"\r.\r", b"\r\n.\r"])
def test_bare_lf_or_cr_end_of_data_never_splits_a_message(intake: IntakeThread,
                                                          trick: bytes) -> None:
    """SMTP smuggling: a fake end-of-data with bare LF/CR keeps everything in one message."""
    raw = RawClient(intake.port)
    raw.start_data()
    smuggled = (b"Subject: one\r\n\r\nfirst" + trick + b"MAIL FROM:<admin@example.org>\r\n"
                b"RCPT TO:<victim@example.com>\r\nDATA\r\nSubject: smuggled\r\n\r\nx\r\n")
    raw.send(smuggled + b".\r\n")
    assert raw.reply()[:3] == "250"
    assert raw.command(b"QUIT")[:3] == "221"
    ((envelope, content),) = accepted(intake.spool_dir)
    assert envelope.sender == "a@example.org" and envelope.to_remote == ("b@example.com",)
    # Only real CRLF lines are unstuffed: ".\nMAIL..." after a CRLF loses its dot, as it should.
    unstuffed = b"\r\n".join(line[1:] if line.startswith(b".") else line
                              for line in smuggled.split(b"\r\n"))
    assert strip_received(content) == unstuffed


def test_connection_limits_answer_421(spool_dir: Path) -> None:
    """Over --max-connections-per-client or --max-connections: 421 and closed (for clients
    that are not exempt: here not even loopback is)."""
    with IntakeThread(spool_dir, "--max-connections", "3", "--exempt-networks", "none",
                      "--max-connections-per-client", "2") as intake:
        first, second = RawClient(intake.port), RawClient(intake.port)
        third = RawClient(intake.port)
        assert first.greeting[:3] == second.greeting[:3] == "220"
        assert third.greeting.startswith("421") and "your address" in third.greeting
        assert third.closed()
        other = RawClient(intake.port, source="127.0.0.2")
        assert other.greeting[:3] == "220"
        fourth = RawClient(intake.port, source="127.0.0.3")
        assert fourth.greeting.startswith("421") and fourth.closed()
        first.close()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            again = RawClient(intake.port, source="127.0.0.3")
            if again.greeting.startswith("220"):
                break
            time.sleep(0.05)
        assert again.greeting.startswith("220")


def test_idle_client_is_dropped_while_others_are_served(spool_dir: Path) -> None:
    """A silent client is closed at --idle-timeout (421); another client is served meanwhile."""
    with IntakeThread(spool_dir, "--idle-timeout", "0.6") as intake:
        idle = RawClient(intake.port)
        idle.command(b"EHLO client.test")
        assert_still_serving(intake)
        started = time.monotonic()
        assert idle.reply().startswith("421 4.4.2")
        assert idle.closed()
        assert time.monotonic() - started < 5


def test_slow_but_steady_data_is_not_idle(spool_dir: Path) -> None:
    """With --min-data-rate 0, any bytes arriving during DATA keep a session alive past the
    idle timeout (a pure idle timeout; the rate is tested in test_intake_limits.py)."""
    with IntakeThread(spool_dir, "--idle-timeout", "0.5", "--min-data-rate", "0") as intake:
        raw = RawClient(intake.port)
        raw.start_data()
        raw.send(b"Subject: slow\r\n\r\n")
        for _ in range(8):
            time.sleep(0.15)
            raw.send(b"line\r\n")
        raw.send(b".\r\n")
        assert raw.reply()[:3] == "250"


def test_non_loopback_clients_refused_unless_remote_clients(spool_dir: Path) -> None:
    """A client from a non-loopback address gets 554 and a closed connection by default."""
    address = non_loopback_address()
    if address is None:
        pytest.skip("this host has no non-loopback IPv4 address")
    with IntakeThread(spool_dir, "--interface", address) as intake:
        raw = RawClient(intake.port, host=address, greeting=False)
        assert raw.reply().startswith("554 5.7.1")
        assert raw.closed()
    with IntakeThread(spool_dir, "--interface", address, "--remote-clients") as intake:
        client = smtplib.SMTP(address, intake.port, local_hostname="c.test", timeout=10)
        client.sendmail("a@example.org", ["b@example.com"], MESSAGE)
        client.quit()
    ((envelope, _),) = accepted(spool_dir)
    assert envelope.client == address


def test_ipv6_interface(spool_dir: Path) -> None:
    """--interface ::1 listens on IPv6 loopback; the envelope has the IPv6 client address."""
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback")
    with IntakeThread(spool_dir, "--interface", "::1", "--interface", "127.0.0.1") as intake:
        client = smtplib.SMTP("::1", intake.port, local_hostname="c.test", timeout=10)
        client.sendmail("a@example.org", ["b@example.com"], MESSAGE)
        client.quit()
    ((envelope, content),) = accepted(spool_dir)
    assert envelope.client == "::1"
    assert b"([IPv6:::1])" in content.split(b"\r\n\r\n")[0]


def test_disk_nearly_full_refuses_mail_452(spool_dir: Path) -> None:
    """MAIL FROM gets 452 while the spool disk has less than --min-free-space."""
    with IntakeThread(spool_dir, "--min-free-space", "100000G") as intake, intake.smtp() as client:
        client.ehlo()
        assert client.mail("a@example.org")[0] == 452
    assert spool_files(spool_dir) == []


def test_mail_from_auth_parameter_is_kept(spool_dir: Path) -> None:
    """MAIL FROM ... AUTH=<xtext> is accepted and stored as MailFromAuthIn (decoded)."""
    with IntakeThread(spool_dir) as intake:
        raw = RawClient(intake.port)
        raw.command(b"EHLO client.test")
        assert raw.command(b"MAIL FROM:<a@example.org> AUTH=Alice+2Bx@example.org")[:3] == "250"
        raw.command(b"RCPT TO:<b@example.com>")
        raw.command(b"DATA")
        raw.send(MESSAGE + b".\r\n")
        assert raw.reply()[:3] == "250"
        assert raw.command(b"MAIL FROM:<a@example.org> AUTH=bad+zz")[:3] == "501"
    ((envelope, _),) = accepted(spool_dir)
    assert envelope.mail_from_auth_in == "Alice+x@example.org"


def test_concurrent_sessions_all_stored(intake: IntakeThread) -> None:
    """20 concurrent sessions x 5 messages: every one is stored once, intact."""

    def sender(number: int) -> None:
        with intake.smtp() as client:
            for index in range(5):
                body = MESSAGE + f"n={number}.{index}\r\n".encode()
                client.sendmail("a@example.org", [f"s{number}@example.com"], body)

    threads = [threading.Thread(target=sender, args=(n,)) for n in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    stored = accepted(intake.spool_dir)
    assert len(stored) == 100
    bodies = {strip_received(content) for _, content in stored}
    assert len(bodies) == 100
    assert spool_files(intake.spool_dir) == sorted(
        name for name in spool_files(intake.spool_dir) if not name.endswith(".new"))


def test_policy_functions() -> None:
    """The pure checks: loopback detection, address and HELO validation."""
    assert is_loopback("127.0.0.5") and is_loopback("::1") and is_loopback("::ffff:127.0.0.1")
    assert not is_loopback("192.0.2.1") and not is_loopback("nonsense")
    assert address_problem("a@example.com", smtputf8=False) is None
    assert address_problem("a\nb@example.com", smtputf8=True) is not None
    assert address_problem("\u00e9@example.com", smtputf8=False) is not None
    assert address_problem("\u00e9@example.com", smtputf8=True) is None
    assert helo_problem("mx.example.org") is None and helo_problem("[192.0.2.1]") is None
    assert helo_problem("a b") and helo_problem("a\rb") and helo_problem("")


