"""Hostile SMTP clients: smuggling end to end (intake, then deliver's bytes on the wire),
the open-relay battery in the configurations docs/intake.md recommends, AUTH hygiene
(passwords never logged, even with --verbose), and connection floods and slow clients.

A client that relay must treat as remote is made by connecting from this host's own
non-loopback address (intake decides "local" with `is_loopback` on the peer address; a
connection to one's own eth0 address comes from that address). The tests that need one
skip, saying so, on a host that has none.
"""

from __future__ import annotations

import base64
import re
import smtplib
import threading
import time
from pathlib import Path

import pytest
import trustme
from support.intake import IntakeProcess, IntakeThread, RawClient, non_loopback_address
from support.programs import deliver_once
from support.smarthost import Script, ScriptedSmarthost
from support.spool import accepted, spool_files
from support.tls import client_context, server_context, server_files

from spool import Envelope, Spool

REPO = Path(__file__).resolve().parent.parent

# -- SMTP smuggling, intake and deliver together ------------------------------------------

# Fake end-of-data sequences (the smuggling paper's list plus the CR-CR-LF variant).
SMUGGLING = {
    "LF.LF": b"\n.\n",
    "LF.CRLF": b"\n.\r\n",
    "CRLF.LF": b"\r\n.\n",
    "CR.CRLF": b"\r.\r\n",
    "CR.LF": b"\r.\n",
    "CRLF.CRCRLF": b"\r\n.\r\r\n",
}


def normalised(content: bytes) -> bytes:
    """What a strict receiver must get: every bare CR or LF made CRLF."""
    return re.sub(rb"\r\n|\r|\n", b"\r\n", content)


def dot_stuffed(content: bytes) -> bytes:
    return re.sub(rb"(?m)^\.", b"..", content)


@pytest.mark.parametrize("trick", list(SMUGGLING.values()), ids=list(SMUGGLING))
def test_smuggled_second_transaction_stays_inside_one_message(spool_dir: Path,
                                                              trick: bytes) -> None:
    """A fake end-of-data plus a whole second transaction: one message stored, and one
    message on the wire to a strict smarthost, with CRLF line ends and every dot stuffed."""
    smuggled = (b"MAIL FROM:<admin@example.org>\r\nRCPT TO:<victim@example.com>\r\nDATA\r\n"
                b"From: admin@example.org\r\nSubject: smuggled\r\n\r\nsmuggled body\r\n")
    with IntakeThread(spool_dir) as intake:
        raw = RawClient(intake.port)
        raw.start_data()
        raw.send(b"Subject: one\r\n\r\nfirst" + trick + smuggled + b".\r\n")
        assert raw.reply()[:3] == "250"
        assert raw.command(b"QUIT")[:3] == "221"  # no replies to a second MAIL/RCPT/DATA
    ((envelope, content),) = accepted(spool_dir)
    assert envelope.sender == "a@example.org" and envelope.to_remote == ("b@example.com",)
    assert b"MAIL FROM:<admin@example.org>" in content
    with ScriptedSmarthost() as smarthost:
        done = deliver_once(spool_dir, smarthost.address)
        assert done.returncode == 0, done.stderr
        (wire,) = smarthost.data
        mails = [c for c in smarthost.commands if c.upper().startswith(b"MAIL")]
    assert len(mails) == 1 and smarthost.attempts == 1
    assert re.search(rb"\r(?!\n)|(?<!\r)\n", wire) is None  # no bare CR or LF on the wire
    assert b"." not in wire.split(b"\r\n")  # no line that a strict server ends DATA at
    assert wire == dot_stuffed(normalised(content))
    assert spool_files(spool_dir) == []


def test_bare_line_ends_in_a_dropped_file_reach_the_wire_as_one_message(spool_dir: Path) -> None:
    """Content written into the spool by other means (bare LF, lone dots) still goes out as
    one CRLF message with its dots stuffed."""
    content = b"Subject: lf\n\nfirst\n.\nMAIL FROM:<x@y>\n.\r\n..two\rthree\r.\rend"
    Spool(spool_dir).store(content, Envelope(sender="a@example.org",
                                             to_remote=("b@example.com",)))
    with ScriptedSmarthost() as smarthost:
        assert deliver_once(spool_dir, smarthost.address).returncode == 0
        (wire,) = smarthost.data
    assert re.search(rb"\r(?!\n)|(?<!\r)\n", wire) is None
    assert b"." not in wire.split(b"\r\n")
    assert wire == dot_stuffed(normalised(content + b"\r\n"))


def test_envelope_lines_cannot_be_forged_through_addresses_or_parameters(
        spool_dir: Path) -> None:
    """CR/LF hidden in xtext (AUTH=) is refused; Unicode line separators in SMTPUTF8
    addresses are refused (unquoted: the forwarding client could not send them) or kept
    inside their one envelope line (quoted), never a new field."""
    forged = "X-MailRelay-To-Remote: evil@evil.example"
    with IntakeThread(spool_dir) as intake:
        raw = RawClient(intake.port)
        raw.command(b"EHLO client.test")
        assert raw.command(b"MAIL FROM:<a@example.org> AUTH=x+0D+0A"
                           + forged.replace(" ", "+20").encode())[:3] == "501"
        assert raw.command(b"MAIL FROM:<a@example.org> AUTH=x+0A+2E")[:3] == "501"
        # NEL is white space to the forwarding client, which would refuse this sender.
        assert raw.command("MAIL FROM:<a\u0085b@example.org> SMTPUTF8".encode())[:3] == "553"
        assert raw.command("MAIL FROM:<\u00e4@example.org> SMTPUTF8".encode())[:3] == "250"
        accepted_rcpts = []
        for separator in ("\u0085", "\u2028", "\u2029", "\x0b", "\x0c", "\x1c"):
            rcpt = f'"r{separator}{forged}"@example.com'  # quoted: space and colon allowed
            if raw.command(f"RCPT TO:<{rcpt}>".encode())[:3] == "250":
                accepted_rcpts.append(rcpt)
        assert raw.command(b"RCPT TO:<plain@example.com>")[:3] == "250"
        assert raw.command(b"DATA")[:3] == "354"
        assert raw.command(b"Subject: forged?\r\n\r\nx\r\n.")[:3] == "250"
    ((envelope, _),) = accepted(spool_dir)
    assert len(accepted_rcpts) >= 3  # NEL, LS, PS are accepted with SMTPUTF8: kept inside
    assert envelope.sender == "\u00e4@example.org"
    assert envelope.to_remote == (*accepted_rcpts, "plain@example.com")
    (path,) = spool_dir.glob("*.envelope")
    lines = path.read_bytes().split(b"\r\n")
    assert sum(line.startswith(b"X-MailRelay-To-Remote:") for line in lines) == len(
        envelope.to_remote)


# -- open relay -----------------------------------------------------------------------------

# The classic relay tricks, for a server whose only local domain is example.org.
RELAY_TRICKS = {
    "plain": "<victim@evil.example>",
    "percent-hack": "<victim%evil.example@example.org>",
    "bang-path": "<evil.example!victim@example.org>",
    "source-route": "<@example.org:victim@evil.example>",
    "source-route-2": "<@example.org,@relay.example:victim@evil.example>",
    "quoted-at": '<"victim@evil.example"@example.org>',
    "double-at": "<victim@evil.example@example.org>",
    "quoted-percent": '<"victim%evil.example"@example.org>',
}


@pytest.fixture
def tls_args(ca: trustme.CA, tmp_path: Path) -> list[str]:
    cert_path, key_path = server_files(ca, tmp_path, "intake.test")
    return ["--server-tls-certificate", str(cert_path), "--server-tls-key", str(key_path),
            "--server-tls-required"]


def sample_verifier(tmp_path: Path) -> Path:
    """The sample address verifier of docs/intake.md, verbatim, as an executable file."""
    text = (REPO / "docs/intake.md").read_text()
    section = text[text.index("Sample verifier"):]
    start = section.index("```sh\n") + 6
    script = section[start : section.index("\n```", start)] + "\n"
    path = tmp_path / "verify"
    path.write_text(script)
    path.chmod(0o755)
    return path


def outside_address() -> str:
    address = non_loopback_address()
    if address is None:
        pytest.skip("this host has no non-loopback IPv4 address to appear as a remote client")
    return address


def session(ca: trustme.CA, host: str, port: int, source: str | None = None,
            login: bool = False) -> smtplib.SMTP:
    """A client on TLS (as --server-tls-required wants), authenticated as alice if *login*."""
    client = smtplib.SMTP(host, port, local_hostname="client.test", timeout=10,
                          source_address=(source, 0) if source else None)
    client._host = "intake.test"  # the name the certificate is for
    client.starttls(context=client_context(ca))
    client.ehlo()
    if login:
        client.login("alice", "s3cret")
    return client


def try_relay(client: smtplib.SMTP, rcpt: str) -> tuple[int, int, int]:
    """MAIL, RCPT (raw, so the address goes as written), DATA: the three reply codes."""
    mail = client.docmd("MAIL FROM:<spammer@evil.example>")[0]
    rcpt_code = client.docmd(f"RCPT TO:{rcpt}")[0]
    data = client.docmd("DATA")[0]
    if data == 354:
        client.send(b"Subject: relay test\r\n\r\nrelayed\r\n.\r\n")
        data = client.getreply()[0]
    client.rset()
    return mail, rcpt_code, data


def secrets(tmp_path: Path, *lines: str) -> Path:
    path = tmp_path / "server.auth"
    path.write_text("server plain alice s3cret\n" + "".join(f"{line}\n" for line in lines))
    return path


def test_server_auth_refuses_every_relay_trick_from_an_untrusted_client(
        spool_dir: Path, tmp_path: Path, ca: trustme.CA, tls_args: list[str]) -> None:
    """Recommended setup 2 (--remote-clients --server-auth, TLS): a remote client without
    AUTH gets 530 for every trick and nothing is spooled; authenticated, each is accepted."""
    outside = outside_address()
    with IntakeThread(spool_dir, "--interface", outside, "--remote-clients", "--server-auth",
                      str(secrets(tmp_path)), *tls_args) as intake:
        with session(ca, outside, intake.port) as stranger:
            for rcpt in RELAY_TRICKS.values():
                mail, rcpt_code, data = try_relay(stranger, rcpt)
                assert (mail, rcpt_code, data) == (530, 530, 530), rcpt
        assert spool_files(spool_dir) == []
        with session(ca, outside, intake.port, login=True) as user:
            codes = {name: try_relay(user, rcpt) for name, rcpt in RELAY_TRICKS.items()}
    # An authenticated user may send anywhere; only what the SMTP syntax forbids is refused.
    assert codes == {name: (250, 553, 503) if name == "double-at" else (250, 250, 250)
                     for name in RELAY_TRICKS}
    assert len(accepted(spool_dir)) == len(RELAY_TRICKS) - 1


def test_lan_trust_plus_sample_verifier_refuses_every_relay_trick(
        spool_dir: Path, tmp_path: Path, ca: trustme.CA, tls_args: list[str]) -> None:
    """Recommended setup 3 (server none for the LAN + docs/intake.md's sample verifier):
    strangers get 530; an unauthenticated LAN client reaches only example.org, each relay
    trick refused; an authenticated user may send anywhere."""
    outside = outside_address()
    lan_client = "127.0.0.2"
    with IntakeThread(spool_dir, "--interface", outside, "--interface", "127.0.0.1",
                      "--remote-clients", "--server-auth",
                      str(secrets(tmp_path, f"server none {lan_client} lan")),
                      "--address-verifier", str(sample_verifier(tmp_path)),
                      *tls_args) as intake:
        with session(ca, outside, intake.port) as stranger:
            for rcpt in RELAY_TRICKS.values():
                assert try_relay(stranger, rcpt) == (530, 530, 530), rcpt
        with session(ca, "127.0.0.1", intake.port, source=lan_client) as lan:
            refused = {name: try_relay(lan, rcpt) for name, rcpt in RELAY_TRICKS.items()}
            assert spool_files(spool_dir) == []
            assert try_relay(lan, "<postmaster@example.org>") == (250, 250, 250)
        with session(ca, outside, intake.port, login=True) as user:
            assert try_relay(user, "<victim@evil.example>") == (250, 250, 250)
    # The verifier refuses each (550); a@b@c is already a syntax error (553).
    assert refused == {name: (250, 553 if name == "double-at" else 550, 503)
                       for name in RELAY_TRICKS}
    assert sorted(e.to_remote for e, _ in accepted(spool_dir)) == [
        ("postmaster@example.org",), ("victim@evil.example",)]


def test_server_none_client_without_verifier_is_trusted(spool_dir: Path, tmp_path: Path,
                                                        ca: trustme.CA,
                                                        tls_args: list[str]) -> None:
    """A `server none` client (no verifier) is trusted: it may relay, a stranger still may not."""
    outside = outside_address()
    with IntakeThread(spool_dir, "--interface", outside, "--interface", "127.0.0.1",
                      "--remote-clients", "--server-auth",
                      str(secrets(tmp_path, "server none 127.0.0.2 lan")), *tls_args) as intake:
        with session(ca, "127.0.0.1", intake.port, source="127.0.0.2") as lan:
            assert try_relay(lan, "<victim@evil.example>") == (250, 250, 250)
        with session(ca, outside, intake.port) as stranger:
            assert try_relay(stranger, "<victim@evil.example>") == (530, 530, 530)
    assert [e.to_remote for e, _ in accepted(spool_dir)] == [("victim@evil.example",)]


# -- AUTH hygiene ---------------------------------------------------------------------------

PASSWORD = "Corr3ct-Horse-Battery"
WRONG = "Wr0ng-Guess-Staple"


def secret_forms(password: str) -> list[str]:
    """The ways a password could leak into a log line: plain, base64 in PLAIN and LOGIN."""
    return [password, base64.b64encode(f"\0alice\0{password}".encode()).decode(),
            base64.b64encode(password.encode()).decode(), repr(password.encode())[2:-1]]


def test_passwords_never_appear_in_the_logs_even_verbose(spool_dir: Path, tmp_path: Path,
                                                         ca: trustme.CA,
                                                         tls_args: list[str]) -> None:
    """PLAIN, LOGIN and CRAM-MD5, right and wrong, with --verbose: no password in any line."""
    auth = tmp_path / "server.auth"
    auth.write_text(f"server plain alice {PASSWORD}\n")
    with IntakeProcess(spool_dir, "--server-auth", str(auth), *tls_args, "--verbose",
                       "--log-format", "logfmt") as intake:
        for password in (WRONG, PASSWORD):
            for mechanism in ("PLAIN", "LOGIN", "CRAM-MD5"):
                client = session(ca, "127.0.0.1", intake.port)
                client.user, client.password = "alice", password
                method = {"PLAIN": client.auth_plain, "LOGIN": client.auth_login,
                          "CRAM-MD5": client.auth_cram_md5}[mechanism]
                try:
                    code = client.auth(mechanism, method)[0]
                except smtplib.SMTPAuthenticationError as error:
                    code = error.smtp_code
                assert code == (235 if password == PASSWORD else 535), mechanism
                if code == 235:
                    client.sendmail("alice@example.org", ["b@example.com"], b"Subject: x\r\n\r\n")
                client.close()
        assert intake.stop() == 0
        log = intake.log()
    assert "auth_failed" in log and "client_authenticated" in log  # there was something to see
    assert "user=alice" in log
    for password in (WRONG, PASSWORD):
        for form in secret_forms(password):
            assert form not in log, form
    # A CRAM-MD5 digest is no password, but it allows an offline guess: not logged either.
    assert not re.search(r"alice [0-9a-f]{32}", log)
    assert base64.b64encode(b"alice ").decode() not in log  # nor in its base64 form


@pytest.mark.parametrize("accepted_login", [True, False])
def test_deliver_never_logs_its_smarthost_password(spool_dir: Path, tmp_path: Path,
                                                   ca: trustme.CA, accepted_login: bool) -> None:
    """relay-deliver --verbose logging in to the smarthost (accepted, or refused with 535):
    the password is on the wire, never in deliver's log."""
    auth = tmp_path / "client.auth"
    auth.write_text(f"client plain alice {PASSWORD}\n")
    auth.chmod(0o600)
    context = server_context(ca, "smarthost.test")
    Spool(spool_dir).store(b"Subject: x\r\n\r\nx\r\n", Envelope(
        sender="a@example.org", to_remote=("b@example.com",)))
    reply = b"235 2.7.0 ok" if accepted_login else b"535 5.7.8 bad credentials"
    script = Script(ehlo_extra=(b"250-AUTH PLAIN LOGIN",), replies={"AUTH": reply})
    with ScriptedSmarthost(script, context) as smarthost:
        done = deliver_once(spool_dir, smarthost.address, "--client-tls-required",
                            "--client-auth", str(auth), "--verbose")
        wire = b"\n".join(smarthost.commands)
    assert done.returncode == (0 if accepted_login else 75), done.stderr
    assert base64.b64encode(f"\0alice\0{PASSWORD}".encode()) in wire  # it was sent
    for form in secret_forms(PASSWORD):
        assert form not in done.stderr, form
    if not accepted_login:  # the reason quotes the reply once, code included
        assert "smarthost: 535 5.7.8 bad credentials" in done.stderr, done.stderr
    # --verbose logs the dialogue, with AUTH's argument hidden.
    assert "smtp_command" in done.stderr and "AUTH PLAIN ***" in done.stderr
    if accepted_login:
        assert "MAIL FROM:<a@example.org>" in done.stderr, done.stderr


def test_wrong_cram_md5_response_gets_535(spool_dir: Path, tmp_path: Path) -> None:
    """A wrong CRAM-MD5 response is answered 535 at once, not left hanging to the timeout."""
    with IntakeThread(spool_dir, "--server-auth", str(secrets(tmp_path)),
                      "--server-auth-insecure") as intake:
        raw = RawClient(intake.port)
        raw.command(b"EHLO client.test")
        assert raw.command(b"AUTH CRAM-MD5")[:3] == "334"
        raw.sock.settimeout(3)
        wrong = base64.b64encode(b"alice " + b"0" * 32)
        assert raw.command(wrong)[:3] == "535"


def test_auth_before_starttls_is_not_offered_and_refused(spool_dir: Path, tmp_path: Path,
                                                        ca: trustme.CA,
                                                        tls_args: list[str]) -> None:
    """Before TLS: AUTH is not in the EHLO reply, AUTH PLAIN and LOGIN get 538, MAIL 530;
    a client that keeps trying is cut off after three attempts like a guesser."""
    with IntakeThread(spool_dir, "--server-auth", str(secrets(tmp_path)), *tls_args[:4]) as intake:
        raw = RawClient(intake.port)
        assert "AUTH" not in raw.command(b"EHLO client.test")
        plain = base64.b64encode(b"\0alice\0s3cret")
        assert raw.command(b"AUTH PLAIN " + plain)[:3] == "538"
        assert raw.command(b"AUTH LOGIN")[:3] == "538"
        assert raw.command(b"MAIL FROM:<a@example.org>")[:3] == "530"
        assert raw.command(b"AUTH PLAIN " + plain)[:3] == "538"
        assert raw.reply()[:3] == "421"
        assert raw.closed()
    assert spool_files(spool_dir) == []


# -- floods and slow clients ----------------------------------------------------------------


def test_connection_flood_excess_get_421_promptly_the_rest_finish(spool_dir: Path) -> None:
    """Twice --max-connections at once: the excess get 421 quickly, the admitted all send."""
    limit = 12
    with IntakeThread(spool_dir, "--max-connections", str(limit),
                      "--max-connections-per-client", "0") as intake:
        started = time.monotonic()
        clients = [RawClient(intake.port) for _ in range(2 * limit)]
        admitted = [c for c in clients if c.greeting.startswith("220")]
        excess = [c for c in clients if c.greeting.startswith("421")]
        assert len(admitted) == limit and len(excess) == limit
        assert all(c.closed(timeout=5) for c in excess)
        assert time.monotonic() - started < 10

        def transact(number: int, client: RawClient) -> None:
            client.command(b"EHLO client.test")
            assert client.command(b"MAIL FROM:<a@example.org>")[:3] == "250"
            assert client.command(b"RCPT TO:<b@example.com>")[:3] == "250"
            assert client.command(b"DATA")[:3] == "354"
            assert client.command(f"Subject: {number}\r\n\r\nhi\r\n.".encode())[:3] == "250"
            assert client.command(b"QUIT")[:3] == "221"

        threads = [threading.Thread(target=transact, args=(n, c)) for n, c in enumerate(admitted)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
    assert len(accepted(spool_dir)) == limit


def test_slow_clients_are_cut_while_a_large_message_gets_through(spool_dir: Path) -> None:
    """Clients that stall (after EHLO, mid-command, mid-DATA) are dropped at --idle-timeout;
    a large message trickling in steadily on the same server takes longer and is stored."""
    with IntakeThread(spool_dir, "--idle-timeout", "1", "--size", "20M") as intake:
        stallers = [RawClient(intake.port) for _ in range(3)]
        stallers[0].command(b"EHLO slow.test")
        stallers[1].send(b"EHLO slo")  # half a command
        stallers[2].command(b"EHLO slow.test")
        stallers[2].command(b"MAIL FROM:<a@example.org>")
        stallers[2].command(b"RCPT TO:<b@example.com>")
        stallers[2].command(b"DATA")
        stallers[2].send(b"Subject: never finished\r\n\r\npart")
        big = RawClient(intake.port)
        big.command(b"EHLO big.test")
        assert big.command(b"MAIL FROM:<a@example.org> SIZE=6000000")[:3] == "250"
        assert big.command(b"RCPT TO:<b@example.com>")[:3] == "250"
        assert big.command(b"DATA")[:3] == "354"
        big.send(b"Subject: big\r\n\r\n")
        line = b"b" * 98 + b"\r\n"
        started = time.monotonic()
        for _ in range(30):  # ~6 MB over about 3 idle timeouts
            big.send(line * 2000)
            time.sleep(0.1)
        big.send(b".\r\n")
        assert big.reply()[:3] == "250"
        assert time.monotonic() - started > 2.5
        for staller in stallers:
            assert staller.closed(timeout=10)
    ((_, content),) = accepted(spool_dir)
    assert content.endswith(line) and len(content) > 5_900_000


def test_stalled_connections_free_their_slots(spool_dir: Path) -> None:
    """Silent connections holding every slot are cut at the idle timeout; then others get in."""
    with IntakeThread(spool_dir, "--max-connections", "4", "--idle-timeout", "0.8") as intake:
        hogs = [RawClient(intake.port) for _ in range(4)]
        assert all(h.greeting.startswith("220") for h in hogs)
        assert RawClient(intake.port).greeting.startswith("421")
        assert all(h.closed(timeout=10) for h in hogs)
        deadline = time.monotonic() + 5
        while True:
            late = RawClient(intake.port)
            if late.greeting.startswith("220") or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert late.greeting.startswith("220")
        late.close()

