"""relay-intake's optional ESMTP behaviour (intake.esmtp and the options that set it): the
AUTH mechanism lists of --server-auth-config, --no-pipelining, --no-smtputf8,
--utf8-without-smtputf8, --require-angle-brackets and the anonymous greeting, first as pure
functions, then on a real relay-intake process driven by smtplib on 127.0.0.1.

The expected lists are what E-MailRelay 2.6.1 (built with OpenSSL) offered for each
configuration when run by hand.
"""

from __future__ import annotations

import base64
import signal
import smtplib
import subprocess
from pathlib import Path

import pytest
import trustme
from support import tls
from support.intake import MESSAGE, IntakeProcess, RawClient
from support.programs import INTAKE, program_env
from support.spool import accepted
from support.system import wait_until

from intake.esmtp import (
    BAD_IDN,
    MECHANISMS,
    NEEDS_SMTPUTF8,
    auth_lists,
    available_mechanisms,
    international_address,
    unknown_mechanisms,
)

ALL = MECHANISMS  # CRAM-SHA512 CRAM-SHA256 CRAM-SHA1 CRAM-MD5 PLAIN LOGIN
CRAM = ("CRAM-SHA512", "CRAM-SHA256", "CRAM-SHA1", "CRAM-MD5")


@pytest.mark.parametrize(("config", "insecure", "secure"), [
    ("", ALL, ALL),
    ("m:;a:plain", (), ("PLAIN",)),
    ("M:;A:PLAIN", (), ("PLAIN",)),
    ("m:plain,login", ("PLAIN", "LOGIN"), ("PLAIN", "LOGIN")),
    ("m:login,plain", ("PLAIN", "LOGIN"), ("PLAIN", "LOGIN")),  # the allow list keeps order
    ("x:plain", (*CRAM, "LOGIN"), (*CRAM, "LOGIN")),
    ("m:login,plain;a:", ("PLAIN", "LOGIN"), ()),
    ("a:login", ALL, ("LOGIN",)),
    ("d:plain,login", ALL, CRAM),
    ("m:cram-md5;d:cram-md5", ("CRAM-MD5",), ("CRAM-SHA512", "CRAM-SHA256", "CRAM-SHA1",
                                               "PLAIN", "LOGIN")),
    ("m:plain,cram-sha1,cram-sha256", ("CRAM-SHA256", "CRAM-SHA1", "PLAIN"),
     ("CRAM-SHA256", "CRAM-SHA1", "PLAIN")),
    ("x:cram-sha512,cram-md5;a:cram-sha256", ("CRAM-SHA256", "CRAM-SHA1", "PLAIN", "LOGIN"),
     ("CRAM-SHA256",)),
    ("m:;a:cram-md5,login", (), ("CRAM-MD5", "LOGIN")),
    (" m: ; a: plain ; z:whatever", (), ("PLAIN",)),
])
def test_auth_lists_as_emailrelay_offers_them(config: str, insecure: tuple[str, ...],
                                              secure: tuple[str, ...]) -> None:
    """Each --server-auth-config gives the lists E-MailRelay 2.6.1 offered before and after
    STARTTLS with a plain-password secrets file."""
    lists = auth_lists(config, ALL)
    assert (lists.insecure, lists.secure) == (insecure, secure)


def test_what_the_secrets_can_serve() -> None:
    """Plain passwords serve every mechanism, md5 secrets CRAM-MD5 only; with TLS, PLAIN is
    offered when nothing else is (RFC 4954 4, as E-MailRelay)."""
    assert available_mechanisms({"plain", "md5"}) == ALL
    assert available_mechanisms({"plain"}) == ALL
    assert available_mechanisms({"md5"}) == ("CRAM-MD5",)
    assert available_mechanisms({"oauth"}) == ()
    assert auth_lists("", ()).secure == ("PLAIN",) and auth_lists("", ()).insecure == ()
    assert unknown_mechanisms("m:cram-sha256,plain,apop;a:cram-sha1,xoauth2,plain") == [
        "APOP", "XOAUTH2"]


def test_international_addresses_in_each_mode() -> None:
    """refuse: SMTPUTF8 needed for any non-ASCII; domain: A-labels, a UTF-8 local part
    refused; accept: a UTF-8 local part makes the message SMTPUTF8."""
    idn = "a@b\u00fccher.example"
    local = "j\u00f6@example.com"
    assert international_address(idn, smtputf8=False, mode="refuse") == NEEDS_SMTPUTF8
    assert international_address(idn, smtputf8=True, mode="refuse") == (idn, False)
    for mode in ("domain", "accept"):
        assert international_address(idn, smtputf8=False, mode=mode) == (
            "a@xn--bcher-kva.example", False)
        assert international_address(local, smtputf8=True, mode=mode) == (local, False)
    assert international_address(local, smtputf8=False, mode="domain") == NEEDS_SMTPUTF8
    assert international_address(local, smtputf8=False, mode="accept") == (local, True)
    assert international_address("a@" + "\u00fc" * 70 + ".example", smtputf8=False,
                                 mode="accept") == BAD_IDN
    assert international_address("a@b.example", smtputf8=False, mode="refuse") == (
        "a@b.example", False)


# -- a real relay-intake ---------------------------------------------------------------


def secrets_file(tmp_path: Path) -> Path:
    path = tmp_path / "server.auth"
    path.write_text("server plain alice s3cret\n")
    return path


def extensions(client: smtplib.SMTP) -> list[str]:
    """The EHLO reply's extension lines after the first (the host) line."""
    code, text = client.ehlo()
    assert code == 250
    return text.decode().split("\n")[1:]


def tls_client(port: int, ca: trustme.CA) -> smtplib.SMTP:
    client = smtplib.SMTP("127.0.0.1", port, local_hostname="client.test", timeout=10)
    client._host = "intake.test"  # the name the certificate is for
    client.starttls(context=tls.client_context(ca))
    return client


def test_no_pipelining_and_no_smtputf8_leave_ehlo(spool_dir: Path) -> None:
    """--no-pipelining and --no-smtputf8 take PIPELINING and SMTPUTF8 out of EHLO; pipelined
    commands are still answered one by one, and SMTPUTF8 on MAIL is still accepted (as by
    E-MailRelay, which accepts it unadvertised)."""
    with IntakeProcess(spool_dir, "--no-pipelining", "--no-smtputf8") as intake:
        raw = RawClient(intake.port)
        raw.send(b"EHLO client.test\r\n")
        ehlo = raw.reply()
        assert "PIPELINING" not in ehlo and "SMTPUTF8" not in ehlo and "8BITMIME" in ehlo
        raw.send(b"MAIL FROM:<a@example.com> SMTPUTF8\r\nRCPT TO:<j\xc3\xb6@example.com>\r\n"
                 b"RSET\r\n")
        assert [raw.reply()[:3] for _ in range(3)] == ["250", "250", "250"]
        raw.close()
    with IntakeProcess(spool_dir) as intake, intake.smtp() as client:
        found = extensions(client)
        assert "PIPELINING" in found and "SMTPUTF8" in found


def test_auth_config_lists_are_offered_and_enforced(spool_dir: Path, tmp_path: Path,
                                                    ca: trustme.CA) -> None:
    """--server-auth-config m:;a:plain: no AUTH before STARTTLS (538 for PLAIN), only PLAIN
    after it (504 for LOGIN), and PLAIN then authenticates and the message is stored."""
    cert, key = tls.server_files(ca, tmp_path)
    with IntakeProcess(spool_dir, "--server-auth", str(secrets_file(tmp_path)),
                       "--server-auth-config", "m:;a:plain", "--server-tls-certificate",
                       str(cert), "--server-tls-key", str(key)) as intake:
        with intake.smtp() as plain:
            assert not any(line.startswith("AUTH") for line in extensions(plain))
            assert plain.docmd("AUTH PLAIN")[0] == 538
        with tls_client(intake.port, ca) as client:
            assert "AUTH PLAIN" in extensions(client)
            assert client.docmd("AUTH LOGIN")[0] == 504
            credentials = base64.b64encode(b"\0alice\0s3cret").decode()
            assert client.docmd("AUTH PLAIN " + credentials)[0] == 235
            client.sendmail("a@example.com", ["b@example.net"], MESSAGE)
        assert wait_until(lambda: len(accepted(spool_dir)) == 1, 20)


def test_auth_config_before_tls_offers_its_m_list_in_order(spool_dir: Path,
                                                           tmp_path: Path) -> None:
    """m:login,plain without TLS: AUTH PLAIN LOGIN (relay's order, E-MailRelay's too), and
    CRAM-MD5, not in the list, is refused with 504."""
    with IntakeProcess(spool_dir, "--server-auth", str(secrets_file(tmp_path)),
                       "--server-auth-config", "m:login,plain") as intake:
        with intake.smtp() as client:
            assert "AUTH PLAIN LOGIN" in extensions(client)
            assert client.docmd("AUTH CRAM-MD5")[0] == 504
            client.login("alice", "s3cret")
        log = intake.finish(signal.SIGTERM)
    assert '"mechanisms": "PLAIN,LOGIN"' in log and "auth_insecure" in log


def test_auth_config_needs_server_auth(spool_dir: Path) -> None:
    """relay-intake --server-auth-config without --server-auth: exit 78 saying so."""
    done = subprocess.run([INTAKE, "--spool-dir", str(spool_dir), "--port", "0",
                           "--server-auth-config", "m:;a:plain"], env=program_env(),
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 78
    assert "--server-auth-config needs --server-auth" in done.stderr


def test_utf8_addresses_without_smtputf8_accepted_as_emailrelay(spool_dir: Path) -> None:
    """--utf8-without-smtputf8 accept: a UTF-8 local part without SMTPUTF8 is taken and the
    message stored as an SMTPUTF8 one; a UTF-8 domain is stored in A-labels."""
    with IntakeProcess(spool_dir, "--utf8-without-smtputf8", "accept") as intake:
        raw = RawClient(intake.port)
        assert raw.command(b"EHLO client.test")[:3] == "250"
        assert raw.command("MAIL FROM:<j\u00f6@example.com>".encode())[:3] == "250"
        assert raw.command("RCPT TO:<a@b\u00fccher.example>".encode())[:3] == "250"
        assert raw.command(b"DATA")[:3] == "354"
        assert raw.command(b"Subject: s\r\n\r\nbody\r\n.")[:3] == "250"
        raw.close()
    ((envelope, _),) = accepted(spool_dir)
    assert envelope.sender == "j\u00f6@example.com" and envelope.utf8_mailbox_names
    assert envelope.to_remote == ("a@xn--bcher-kva.example",)


def test_utf8_local_part_refused_in_domain_mode(spool_dir: Path) -> None:
    """--utf8-without-smtputf8 domain (E-MailRelay's smtputf8strict): a UTF-8 local part
    without SMTPUTF8 is 553; a UTF-8 domain is fine."""
    with IntakeProcess(spool_dir, "--utf8-without-smtputf8", "domain") as intake:
        raw = RawClient(intake.port)
        assert raw.command(b"EHLO client.test")[:3] == "250"
        assert raw.command("MAIL FROM:<j\u00f6@example.com>".encode())[:3] == "553"
        assert raw.command("MAIL FROM:<a@b\u00fccher.example>".encode())[:3] == "250"
        raw.close()


def test_require_angle_brackets(spool_dir: Path) -> None:
    """--require-angle-brackets refuses MAIL FROM:a@b and RCPT TO:c@d (553); without
    it relay-intake takes them."""
    with IntakeProcess(spool_dir, "--require-angle-brackets") as intake:
        raw = RawClient(intake.port)
        assert raw.command(b"EHLO client.test")[:3] == "250"
        assert raw.command(b"MAIL FROM:a@example.com")[:3] == "553"
        assert raw.command(b"MAIL FROM:<a@example.com>")[:3] == "250"
        assert raw.command(b"RCPT TO:b@example.com")[:3] == "553"
        assert raw.command(b"VRFY b@example.com")[:3] == "252"  # VRFY takes no path
        raw.close()
    with IntakeProcess(spool_dir) as intake:
        raw = RawClient(intake.port)
        assert raw.command(b"EHLO client.test")[:3] == "250"
        assert raw.command(b"MAIL FROM:a@example.com")[:3] == "250"
        raw.close()


def test_anonymous_server_greets_as_emailrelay(spool_dir: Path) -> None:
    """--anonymous server: '220 greeting' and 'smtp says hello', E-MailRelay's own words."""
    with IntakeProcess(spool_dir, "--anonymous", "server") as intake:
        client = smtplib.SMTP(local_hostname="client.test", timeout=10)
        assert client.connect("127.0.0.1", intake.port) == (220, b"greeting")
        assert client.ehlo()[1].split(b"\n")[0] == b"smtp says hello"
        client.quit()

