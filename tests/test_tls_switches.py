"""E-MailRelay's TLS switches, each accept and refuse case, with trustme certificates.

deliver: `--client-tls-verify` checks the chain only (a smarthost given by IP address with
a certificate for its name is accepted), `--client-tls-verify-name` checks the name,
`--client-tls-server-name` is the SNI, `--client-tls-certificate` a client certificate,
`--tls-config` the versions. intake: `--server-tls-connection` (implicit TLS) and
`--server-tls-verify` (client certificates, recorded in the envelope). Real sockets: an
aiosmtpd sink and the real relay-intake.
"""

from __future__ import annotations

import smtplib
import ssl
from pathlib import Path

import pytest
import trustme
from support import tls
from support.deliver import run_once
from support.deliver import store as store_numbered
from support.intake import MESSAGE, IntakeThread
from support.sink import Sink
from support.spool import accepted, spool_files

from deliver.main import main as deliver_main
from intake.main import main as intake_main
from spool import Spool


def sink_context(ca: trustme.CA, *names: str, client_ca: trustme.CA | None = None,
                 maximum: ssl.TLSVersion | None = None) -> ssl.SSLContext:
    context = tls.server_context(ca, *names)
    if client_ca is not None:
        context.verify_mode = ssl.CERT_REQUIRED
        client_ca.configure_trust(context)
    if maximum is not None:
        context.maximum_version = maximum
    return context


def send_tls(spool: Spool, context: ssl.SSLContext, *args: str) -> tuple[int, int]:
    """Store one message, run deliver --once over implicit TLS: (exit code, delivered)."""
    store_numbered(spool, 0)
    with Sink(ssl_context=context) as sink:
        code = run_once(spool, sink.address, "--client-tls-connection", *args)
        return code, len(sink.messages)


def test_verify_checks_the_chain_not_the_name(tmp_path: Path, spool: Spool,
                                              ca: trustme.CA) -> None:
    """A certificate for smarthost.test, reached as 127.0.0.1: accepted (as E-MailRelay)."""
    ca_file = str(tls.ca_file(ca, tmp_path))
    assert send_tls(spool, sink_context(ca, "smarthost.test"), "--client-tls-verify",
                    ca_file) == (0, 1)


def test_verify_refuses_another_ca(tmp_path: Path, spool: Spool, ca: trustme.CA) -> None:
    """A certificate from a CA that is not trusted: not sent, kept for a retry."""
    other = trustme.CA()
    ca_file = str(tls.ca_file(ca, tmp_path))
    assert send_tls(spool, sink_context(other, "127.0.0.1"), "--client-tls-verify",
                    ca_file) == (75, 0)


def test_no_verify_accepts_any_certificate(spool: Spool) -> None:
    """Without --client-tls-verify, TLS encrypts and checks nothing (E-MailRelay's default)."""
    assert send_tls(spool, sink_context(trustme.CA(), "whatever.test")) == (0, 1)


def test_verify_ca_file_under_home(tmp_path: Path, spool: Spool, ca: trustme.CA,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """`--client-tls-verify ~/ca.pem` is the CA file in $HOME, as the other path options."""
    home = tmp_path / "home"
    home.mkdir()
    tls.ca_file(ca, home)
    monkeypatch.setenv("HOME", str(home))
    assert send_tls(spool, sink_context(ca, "smarthost.test"), "--client-tls-verify",
                    "~/ca.pem") == (0, 1)


def test_missing_ca_file_is_named_as_given(tmp_path: Path, spool: Spool,
                                           monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    """A `~/` CA file that is not there stops deliver with 78, naming it as it was given."""
    monkeypatch.setenv("HOME", str(tmp_path))
    assert deliver_main(["--once", "--spool-dir", str(spool.path), "--forward-to",
                         "127.0.0.1:9", "--client-tls-verify", "~/missing.pem"]) == 78
    assert "--client-tls-verify: ~/missing.pem: no such file" in capsys.readouterr().err


@pytest.mark.parametrize(("name", "expected"), [("smarthost.test", (0, 1)),
                                                ("other.test", (75, 0))])
def test_verify_name(tmp_path: Path, spool: Spool, ca: trustme.CA, name: str,
                     expected: tuple[int, int]) -> None:
    """--client-tls-verify-name: the certificate must be for that name."""
    ca_file = str(tls.ca_file(ca, tmp_path))
    assert send_tls(spool, sink_context(ca, "smarthost.test"), "--client-tls-verify", ca_file,
                    "--client-tls-verify-name", name) == expected


def test_server_name_is_the_sni(spool: Spool, ca: trustme.CA) -> None:
    """--client-tls-server-name is the name the smarthost sees in the handshake."""
    context = sink_context(ca, "mx.example.net")
    seen: list[str | None] = []

    def remember(_socket: object, name: str | None, _context: object) -> None:
        seen.append(name)

    context.sni_callback = remember  # type: ignore[assignment]
    assert send_tls(spool, context, "--client-tls-server-name", "mx.example.net") == (0, 1)
    # (None: the sink's own start-up probe, which sends no name)
    assert [name for name in seen if name is not None] == ["mx.example.net"]


@pytest.mark.parametrize("with_certificate", [True, False])
def test_client_certificate(tmp_path: Path, spool: Spool, ca: trustme.CA,
                            with_certificate: bool) -> None:
    """A smarthost that requires a client certificate: sent with one, kept without."""
    client = ca.issue_cert("relay-client.test")
    combined = tmp_path / "client.pem"
    combined.write_bytes(client.private_key_pem.bytes() + client.cert_chain_pems[0].bytes())
    args = ["--client-tls-certificate", str(combined)] if with_certificate else []
    context = sink_context(ca, "127.0.0.1", client_ca=ca)
    assert send_tls(spool, context, *args) == ((0, 1) if with_certificate else (75, 0))


def test_tls_config_minimum_version(spool: Spool, ca: trustme.CA) -> None:
    """--tls-config tlsv1.3 against a TLS 1.2 smarthost: not sent; tlsv1.2 is."""
    old = sink_context(ca, "127.0.0.1", maximum=ssl.TLSVersion.TLSv1_2)
    assert send_tls(spool, old, "--tls-config", "tlsv1.3") == (75, 0)


@pytest.mark.parametrize("argv", [["--tls-config", "mbedtls"],
                                  ["--client-tls-verify-name", "x.test"],
                                  ["--client-tls-certificate", "/no/such.pem"]])
def test_bad_tls_switches_stop_deliver_with_78(spool: Spool, argv: list[str]) -> None:
    """A TLS switch deliver cannot use: exit 78 at start."""
    assert deliver_main(["--once", "--spool-dir", str(spool.path), "--forward-to",
                         "127.0.0.1:9", *argv]) == 78


def test_server_tls_connection(tmp_path: Path, spool_dir: Path, ca: trustme.CA) -> None:
    """--server-tls-connection: TLS from the first byte (port 465); AUTH is offered on it."""
    cert, key = tls.server_files(ca, tmp_path, "127.0.0.1")
    with IntakeThread(spool_dir, "--server-tls-certificate", str(cert), "--server-tls-key",
                      str(key), "--server-tls-connection") as intake:
        with smtplib.SMTP_SSL("127.0.0.1", intake.port, local_hostname="client.test",
                              context=tls.client_context(ca), timeout=10) as client:
            client.sendmail("a@example.org", ["b@example.com"], MESSAGE)
        with pytest.raises((smtplib.SMTPServerDisconnected, OSError)), \
                intake.smtp(timeout=3) as plain:
            plain.ehlo()
    ((envelope, _content),) = accepted(spool_dir)
    assert envelope.sender == "a@example.org"


@pytest.mark.parametrize("with_certificate", [True, False])
def test_server_tls_verify(tmp_path: Path, spool_dir: Path, ca: trustme.CA,
                           with_certificate: bool) -> None:
    """--server-tls-verify: a client with a good certificate is served and its certificate
    goes into the envelope; one without cannot finish STARTTLS, and nothing is stored."""
    cert, key = tls.server_files(ca, tmp_path, "127.0.0.1")
    ca_file = tls.ca_file(ca, tmp_path)
    context = tls.client_context(ca)
    client_cert = ca.issue_cert("client.test")
    if with_certificate:
        client_cert.configure_cert(context)
    with IntakeThread(spool_dir, "--server-tls-certificate", str(cert), "--server-tls-key",
                      str(key), "--server-tls-verify", str(ca_file)) as intake, \
            intake.smtp() as client:
        if with_certificate:
            client.starttls(context=context)
            client.sendmail("a@example.org", ["b@example.com"], MESSAGE)
        else:
            with pytest.raises((ssl.SSLError, smtplib.SMTPServerDisconnected, OSError)):
                client.starttls(context=context)
                client.sendmail("a@example.org", ["b@example.com"], MESSAGE)
    if with_certificate:
        ((envelope, _content),) = accepted(spool_dir)
        pem = client_cert.cert_chain_pems[0].bytes().decode()
        assert envelope.client_certificate.split() == pem.split()
    else:
        assert spool_files(spool_dir) == []


@pytest.mark.parametrize("argv", [["--server-tls-connection"], ["--server-tls-verify", "x"],
                                  ["--tls-config", "tlsv9"]])
def test_bad_server_tls_switches_stop_intake_with_78(spool_dir: Path, argv: list[str]) -> None:
    """Server TLS switches without a certificate, or with bad values: exit 78 at start."""
    assert intake_main(["--spool-dir", str(spool_dir), "--port", "0", *argv]) == 78
