"""relay-intake's STARTTLS and AUTH (PLAIN, LOGIN, CRAM-MD5) with a throwaway trustme CA,
and the access rules of docs/intake.md, *Access* (no open relay in the recommended setups)."""

from __future__ import annotations

import base64
import smtplib
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme
from support import tls
from support.intake import MESSAGE, IntakeThread, RawClient
from support.spool import accepted


@pytest.fixture
def tls_files(ca: trustme.CA, tmp_path: Path) -> tuple[Path, Path]:
    """A server certificate for intake.test and its key, as PEM files."""
    return tls.server_files(ca, tmp_path, "intake.test")


@pytest.fixture
def client_context(ca: trustme.CA) -> ssl.SSLContext:
    return tls.client_context(ca)


def secrets_file(tmp_path: Path, *extra: str) -> Path:
    path = tmp_path / "server.auth"
    path.write_text("# relay server secrets\nserver plain alice s3cret\n" + "".join(
        line + "\n" for line in extra))
    return path


@pytest.fixture
def auth_intake(spool_dir: Path, tmp_path: Path,
                tls_files: tuple[Path, Path]) -> Iterator[IntakeThread]:
    cert, key = tls_files
    with IntakeThread(spool_dir, "--server-auth", str(secrets_file(tmp_path)),
                      "--server-tls-certificate", str(cert), "--server-tls-key",
                      str(key)) as running:
        yield running


def tls_client(intake: IntakeThread, context: ssl.SSLContext) -> smtplib.SMTP:
    client = smtplib.SMTP("127.0.0.1", intake.port, local_hostname="client.test", timeout=10)
    client._host = "intake.test"  # the name the certificate is for
    client.starttls(context=context)
    return client


def test_auth_only_after_starttls_and_mail_needs_auth(auth_intake: IntakeThread,
                                                      client_context: ssl.SSLContext) -> None:
    """Before TLS: no AUTH offered, AUTH refused, MAIL 530. After TLS + AUTH PLAIN: stored."""
    with auth_intake.smtp() as plain:
        plain.ehlo()
        assert plain.has_extn("starttls") and not plain.has_extn("auth")
        assert plain.docmd("AUTH PLAIN " + base64.b64encode(b"\0alice\0s3cret").decode())[0] == 538
        assert plain.mail("a@example.org")[0] == 530
    client = tls_client(auth_intake, client_context)
    client.ehlo()
    assert "PLAIN" in client.esmtp_features["auth"] and "CRAM-MD5" in client.esmtp_features["auth"]
    assert client.mail("a@example.org")[0] == 530
    client.rset()
    client.login("alice", "s3cret")
    client.sendmail("a@example.org", ["b@example.com"], MESSAGE)
    client.quit()
    ((envelope, content),) = accepted(auth_intake.spool_dir)
    assert envelope.authentication == "alice"
    assert b"with ESMTPSA;" in content.split(b"\r\n\r\n")[0]


@pytest.mark.parametrize("mechanism", ["LOGIN", "CRAM-MD5"])
def test_login_and_cram_md5(auth_intake: IntakeThread, client_context: ssl.SSLContext,
                            mechanism: str) -> None:
    """AUTH LOGIN and AUTH CRAM-MD5 authenticate against the secrets file."""
    client = tls_client(auth_intake, client_context)
    client.ehlo()
    method = {"LOGIN": client.auth_login, "CRAM-MD5": client.auth_cram_md5}[mechanism]
    client.user, client.password = "alice", "s3cret"
    code, _ = client.auth(mechanism, method)
    assert code == 235
    client.sendmail("a@example.org", ["b@example.com"], MESSAGE)
    client.quit()
    ((envelope, _),) = accepted(auth_intake.spool_dir)
    assert envelope.authentication == "alice"


def test_three_failed_auth_attempts_close_the_connection(auth_intake: IntakeThread,
                                                         client_context: ssl.SSLContext) -> None:
    """Wrong passwords get 535; the third failure closes the connection (421)."""
    client = tls_client(auth_intake, client_context)
    client.ehlo()
    wrong = "AUTH PLAIN " + base64.b64encode(b"\0alice\0wrong").decode()
    assert client.docmd(wrong)[0] == 535
    assert client.docmd(wrong)[0] == 535
    code, _ = client.docmd(wrong)
    assert code == 535
    assert client.getreply()[0] == 421
    with pytest.raises(smtplib.SMTPServerDisconnected):
        client.noop()


def test_server_none_trusts_a_client_without_auth(spool_dir: Path, tmp_path: Path) -> None:
    """A `server none` line for 127.0.0.1 lets that client send without AUTH."""
    secrets = secrets_file(tmp_path, "server none 127.0.0.0/8 lan")
    with IntakeThread(spool_dir, "--server-auth", str(secrets)) as intake, intake.smtp() as c:
        c.sendmail("a@example.org", ["b@example.com"], MESSAGE)
    ((envelope, _),) = accepted(spool_dir)
    assert envelope.authentication == ""


def test_server_auth_insecure_offers_auth_without_tls(spool_dir: Path, tmp_path: Path) -> None:
    """--server-auth-insecure: AUTH in clear text works; the Received line says ESMTPA."""
    with IntakeThread(spool_dir, "--server-auth", str(secrets_file(tmp_path)),
                      "--server-auth-insecure") as intake, intake.smtp() as client:
        client.ehlo()
        assert client.has_extn("auth")
        client.login("alice", "s3cret")
        client.sendmail("a@example.org", ["b@example.com"], MESSAGE)
    ((envelope, content),) = accepted(spool_dir)
    assert envelope.authentication == "alice"
    assert b"with ESMTPA;" in content.split(b"\r\n\r\n")[0]


def test_server_tls_required(spool_dir: Path, tls_files: tuple[Path, Path],
                             client_context: ssl.SSLContext) -> None:
    """--server-tls-required: MAIL before STARTTLS is 530; after it, mail goes (ESMTPS)."""
    cert, key = tls_files
    with IntakeThread(spool_dir, "--server-tls-certificate", str(cert), "--server-tls-key",
                      str(key), "--server-tls-required") as intake:
        raw = RawClient(intake.port)
        raw.command(b"EHLO client.test")
        assert raw.command(b"MAIL FROM:<a@example.org>")[:3] == "530"
        client = tls_client(intake, client_context)
        client.sendmail("a@example.org", ["b@example.com"], MESSAGE)
        client.quit()
    ((_, content),) = accepted(spool_dir)
    assert b"with ESMTPS;" in content.split(b"\r\n\r\n")[0]


def test_open_relay_probe_refused_with_server_auth(spool_dir: Path, tmp_path: Path,
                                                   tls_files: tuple[Path, Path]) -> None:
    """The recommended setup (--remote-clients --server-auth + TLS): unauthenticated relay 530."""
    cert, key = tls_files
    with IntakeThread(spool_dir, "--remote-clients", "--server-auth", str(secrets_file(tmp_path)),
                      "--server-tls-certificate", str(cert), "--server-tls-key", str(key)
                      ) as intake:
        raw = RawClient(intake.port)
        raw.command(b"EHLO probe.test")
        for line in (b"MAIL FROM:<spammer@example.org>", b"RCPT TO:<victim@example.net>",
                     b"DATA"):
            assert raw.command(line)[:3] == "530"
    assert accepted(spool_dir) == []
