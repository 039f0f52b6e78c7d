"""docs/policies.md, run: each recipe's scripts and secrets taken from the page itself.

A real relay-intake with the recipe's switches, clients from several 127.0.0.x addresses
(standing in for the LAN and the outside), relay-deliver forwarding to a real aiosmtpd
sink, and Debian's spamd for the scanning recipe.
"""

from __future__ import annotations

import re
import smtplib
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme
from support import tls
from support.deliver import run_once
from support.intake import MESSAGE, IntakeThread
from support.sink import Sink
from support.spamd import CLEAN, GTUBE, SPAMD, running_spamd

from spool import Spool

PAGE = (Path(__file__).parent.parent / "docs/policies.md").read_text()


def block(first_line: str) -> str:
    """The fenced block of docs/policies.md that starts with (or holds first) *first_line*."""
    for match in re.finditer(r"```(?:sh)?\n(.*?)```", PAGE, re.S):
        text = match.group(1)
        lines = text.splitlines()
        if first_line in lines[:2]:
            return text
    raise AssertionError(f"no block with {first_line!r} in docs/policies.md")


def program(tmp_path: Path, name: str) -> str:
    path = tmp_path / name
    path.write_text(block(f"# /etc/relay/{name}"))
    path.chmod(0o755)
    return str(path)


def secrets(tmp_path: Path, name: str, lan: str) -> str:
    """A secrets block, with the LAN network replaced by the test's LAN address."""
    path = tmp_path / name
    path.write_text(block(f"# /etc/relay/{name}").replace("192.168.1.0/24", lan))
    return str(path)


def forward(spool_dir: Path, sink: Sink) -> None:
    """relay-deliver --once from intake's spool to the sink."""
    assert run_once(Spool(spool_dir), sink.address) == 0


def test_signature(spool_dir: Path, tmp_path: Path, sink: Sink) -> None:
    """A signature on every message: the smarthost receives the message with it."""
    with IntakeThread(spool_dir, "--filter", program(tmp_path, "addsig")) as intake, \
            intake.smtp() as client:
        client.sendmail("a@example.org", ["b@example.net"], MESSAGE)
    forward(spool_dir, sink)
    (received,) = sink.messages
    assert received.data.endswith(MESSAGE + b"-- \r\nSent through relay at example.org\r\n")


@pytest.fixture
def spamd(tmp_path: Path) -> Iterator[str]:
    if SPAMD is None:
        pytest.skip("spamd is not installed (.ci/run does it)")
    with running_spamd(tmp_path) as address:
        yield address


def test_spam_scanning(spool_dir: Path, sink: Sink, spamd: str) -> None:
    """`--filter spam:`: GTUBE is refused at DATA, the clean message reaches the smarthost."""
    with IntakeThread(spool_dir, "--filter", f"spam:{spamd}") as intake, \
            intake.smtp(timeout=60) as client:
        with pytest.raises(smtplib.SMTPDataError) as refused:
            client.sendmail("a@example.org", ["b@example.net"], GTUBE)
        assert refused.value.smtp_code == 452
        client.sendmail("a@example.org", ["b@example.net"], CLEAN)
    forward(spool_dir, sink)
    assert [m.data.endswith(CLEAN) for m in sink.messages] == [True]


def lan_client(port: int, source: str) -> smtplib.SMTP:
    return smtplib.SMTP("127.0.0.1", port, local_hostname="client.test", timeout=10,
                        source_address=(source, 0))


def test_lan_only_relay(spool_dir: Path, tmp_path: Path, sink: Sink) -> None:
    """The LAN (127.0.0.2 here) sends without a password; another address gets 530."""
    auth = secrets(tmp_path, "lan.auth", "127.0.0.2")
    with IntakeThread(spool_dir, "--interface", "127.0.0.1", "--remote-clients",
                      "--server-auth", auth) as intake:
        with lan_client(intake.port, "127.0.0.2") as lan:
            lan.sendmail("a@example.org", ["b@example.net"], MESSAGE)
        with lan_client(intake.port, "127.0.0.3") as outside:
            outside.ehlo()
            code, _text = outside.mail("a@example.org")
            assert code == 530
    forward(spool_dir, sink)
    assert [m.rcpt_tos for m in sink.messages] == [["b@example.net"]]


def tls_session(ca: trustme.CA, port: int, source: str) -> smtplib.SMTP:
    client = lan_client(port, source)
    context = ssl.create_default_context()
    ca.configure_trust(context)
    client.starttls(context=context)
    return client


def test_authenticated_relay_with_a_verifier(spool_dir: Path, tmp_path: Path, sink: Sink,
                                             ca: trustme.CA) -> None:
    """The LAN may send to example.org only; alice (PLAIN) and carol (CRAM-MD5 from the
    md5 line) anywhere; everyone else must authenticate."""
    auth = secrets(tmp_path, "server.auth", "127.0.0.2")
    cert, key = tls.server_files(ca, tmp_path, "127.0.0.1")
    with IntakeThread(spool_dir, "--interface", "127.0.0.1", "--remote-clients",
                      "--server-auth", auth, "--address-verifier",
                      program(tmp_path, "verify"), "--server-tls-certificate", str(cert),
                      "--server-tls-key", str(key), "--server-tls-required") as intake:
        with tls_session(ca, intake.port, "127.0.0.2") as lan:
            lan.ehlo()
            lan.mail("a@example.org")
            assert lan.rcpt("victim@evil.example")[0] == 550
            assert lan.rcpt("victim%evil.example@example.org")[0] == 550
            assert lan.rcpt("bob@example.org")[0] == 250
            assert lan.data(MESSAGE)[0] == 250
        with tls_session(ca, intake.port, "127.0.0.3") as stranger:
            stranger.ehlo()
            assert stranger.mail("a@example.org")[0] == 530
        with tls_session(ca, intake.port, "127.0.0.3") as alice:
            alice.login("alice", "e=mc2")
            alice.sendmail("alice@example.org", ["friend@elsewhere.example"], MESSAGE)
        with tls_session(ca, intake.port, "127.0.0.3") as carol:
            carol.ehlo()
            carol.user, carol.password = "carol", "carols password"
            carol.auth("CRAM-MD5", carol.auth_cram_md5)
            carol.sendmail("carol@example.org", ["other@elsewhere.example"], MESSAGE)
    forward(spool_dir, sink)
    assert sorted(m.rcpt_tos[0] for m in sink.messages) == [
        "bob@example.org", "friend@elsewhere.example", "other@elsewhere.example"]
