"""CRAM-SHA512, CRAM-SHA256 and CRAM-SHA1 beside CRAM-MD5, as E-MailRelay 2.6.1 has them.

On real sockets: relay-intake offers them in E-MailRelay's order to python's smtplib and
checks each (a custom smtplib authobject computes the HMAC); md5 secrets still serve
CRAM-MD5 alone. relay-deliver authenticates to a real aiosmtpd sink that offers one CRAM-SHA
mechanism only. Against the real E-MailRelay both ways (skipped when its binary is not
here): relay-deliver to `emailrelay --as-server` and `emailrelay --as-client` to
relay-intake, and the EHLO AUTH lines of the two servers compared for the same secrets and
--server-auth-config.
"""

from __future__ import annotations

import base64
import hmac
import json
import smtplib
from collections.abc import Callable
from pathlib import Path

import pytest
import trustme
from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword
from support import tls
from support.deliver import run_once
from support.emailrelay import EmailRelayServer, emailrelay_client, needs_emailrelay
from support.intake import MESSAGE, IntakeProcess, IntakeThread, RawClient
from support.sink import Sink
from support.spool import accepted

from common.md5state import masked_key
from spool import Envelope, Spool

ORDER = ["CRAM-SHA512", "CRAM-SHA256", "CRAM-SHA1", "CRAM-MD5", "PLAIN", "LOGIN"]
HASHES = {"CRAM-SHA512": "sha512", "CRAM-SHA256": "sha256", "CRAM-SHA1": "sha1",
          "CRAM-MD5": "md5"}


def cram(user: str, password: str, mechanism: str) -> Callable[..., str | None]:
    """An smtplib authobject answering the challenge of *mechanism* (no initial response)."""
    def answer(challenge: bytes | None = None) -> str | None:
        if challenge is None:
            return None
        digest = hmac.new(password.encode(), challenge, HASHES[mechanism]).hexdigest()
        return f"{user} {digest}"
    return answer


def auth_line(client: smtplib.SMTP) -> list[str]:
    code, text = client.ehlo()
    assert code == 250
    lines = [line[5:].split() for line in text.decode().split("\n") if line.startswith("AUTH ")]
    return lines[0] if lines else []


def server_auth(tmp_path: Path, text: str = "server plain alice s3cret\n") -> str:
    path = tmp_path / "server.auth"
    path.write_text(text)
    return str(path)


# -- relay-intake and smtplib -------------------------------------------------------------


@pytest.mark.parametrize("mechanism", ["CRAM-SHA512", "CRAM-SHA256", "CRAM-SHA1"])
def test_intake_accepts_each_cram_sha(spool_dir: Path, tmp_path: Path, mechanism: str) -> None:
    """A plain password: EHLO offers the six mechanisms in E-MailRelay's order; the right
    HMAC authenticates (the envelope names the user), the wrong password's gets 535."""
    with IntakeThread(spool_dir, "--server-auth", server_auth(tmp_path),
                      "--server-auth-insecure") as intake:
        with intake.smtp() as client:
            assert auth_line(client) == ORDER
            with pytest.raises(smtplib.SMTPAuthenticationError) as refused:
                client.auth(mechanism, cram("alice", "wrong", mechanism),
                            initial_response_ok=False)
            assert refused.value.smtp_code == 535
        with intake.smtp() as client:
            client.ehlo()
            code, _ = client.auth(mechanism, cram("alice", "s3cret", mechanism),
                                  initial_response_ok=False)
            assert code == 235
            client.sendmail("a@example.org", ["b@example.com"], MESSAGE)
    ((envelope, _),) = accepted(spool_dir)
    assert envelope.authentication == "alice"


def test_an_md5_secret_serves_cram_md5_only(spool_dir: Path, tmp_path: Path) -> None:
    """`server md5` alone: EHLO offers CRAM-MD5 only; AUTH CRAM-SHA256 is 504 unoffered, and
    CRAM-MD5 from the stored state authenticates."""
    state = base64.b64encode(masked_key(b"s3cret")).decode()
    with IntakeThread(spool_dir, "--server-auth", server_auth(tmp_path, f"server md5 alice "
                      f"{state}\n"), "--server-auth-insecure") as intake, \
            intake.smtp() as client:
        assert auth_line(client) == ["CRAM-MD5"]
        assert client.docmd("AUTH CRAM-SHA256")[0] == 504
        client.user, client.password = "alice", "s3cret"
        assert client.auth("CRAM-MD5", client.auth_cram_md5, initial_response_ok=False)[0] == 235


def test_server_auth_config_lists_name_the_sha_mechanisms(spool_dir: Path,
                                                          tmp_path: Path) -> None:
    """m:cram-sha1,plain;a:cram-sha256: without TLS CRAM-SHA1 and PLAIN are offered (in
    E-MailRelay's order, not the list's), CRAM-SHA256 is 538 (TLS only), CRAM-SHA1 works."""
    with IntakeThread(spool_dir, "--server-auth", server_auth(tmp_path),
                      "--server-auth-config", "m:plain,cram-sha1;a:cram-sha256") as intake, \
            intake.smtp() as client:
        assert auth_line(client) == ["CRAM-SHA1", "PLAIN"]
        assert client.docmd("AUTH CRAM-SHA256")[0] == 538
        assert client.docmd("AUTH CRAM-SHA512")[0] == 504
        assert client.auth("CRAM-SHA1", cram("alice", "s3cret", "CRAM-SHA1"),
                           initial_response_ok=False)[0] == 235


def test_a_cram_sha_initial_response_is_refused(spool_dir: Path, tmp_path: Path) -> None:
    """CRAM-SHA256 is server-first: an initial response is 501, and a cancelled exchange
    ('*') is 501 too, leaving the connection usable."""
    with IntakeThread(spool_dir, "--server-auth", server_auth(tmp_path),
                      "--server-auth-insecure") as intake, RawClient(intake.port) as raw:
        raw.command(b"EHLO client.test")
        assert raw.command(b"AUTH CRAM-SHA256 YWxpY2U=")[:3] == "501"
        assert raw.command(b"AUTH CRAM-SHA256")[:3] == "334"
        assert raw.command(b"*")[:3] == "501"
        assert raw.command(b"NOOP")[:3] == "250"


# -- relay-deliver and an aiosmtpd sink ------------------------------------------------------


class CramSink:
    """aiosmtpd handler methods for the sink's CRAM-SHA1 and CRAM-SHA256 (user "relay",
    password "s3cret pw"), recording what each AUTH was."""

    def __init__(self) -> None:
        self.used: list[tuple[str, bool]] = []

    async def _check(self, server: SMTP, args: list[str], mechanism: str) -> AuthResult:
        challenge = b"<12345.67890@sink.test>"
        response = await server.challenge_auth(challenge)
        user, _, digest = bytes(response).decode().rpartition(" ")
        expected = hmac.new(b"s3cret pw", challenge, HASHES[mechanism]).hexdigest()
        ok = user == "relay" and hmac.compare_digest(digest, expected) and len(args) == 1
        self.used.append((mechanism, ok))
        return AuthResult(success=ok, auth_data=LoginPassword(user.encode(), b""))

    async def auth_CRAM__SHA256(self, server: SMTP, args: list[str]) -> AuthResult:
        return await self._check(server, args, "CRAM-SHA256")

    async def auth_CRAM__SHA1(self, server: SMTP, args: list[str]) -> AuthResult:
        return await self._check(server, args, "CRAM-SHA1")


@pytest.mark.parametrize(("offered", "hidden"), [
    ("CRAM-SHA256", ["CRAM-SHA1"]), ("CRAM-SHA1", ["CRAM-SHA256"])])
def test_deliver_authenticates_with_the_one_cram_sha_offered(
        tmp_path: Path, spool: Spool, offered: str, hidden: list[str]) -> None:
    """A sink that offers only CRAM-SHA256 (or only CRAM-SHA1): relay-deliver with a plain
    password answers its challenge correctly and the message goes."""
    cram_sink = CramSink()
    client_auth = tmp_path / "client.auth"
    client_auth.write_text("client plain relay s3cret+20pw\n")
    spool.store(MESSAGE, Envelope(sender="a@x.test", to_remote=("b@y.test",)))
    with Sink(handler_mixin=cram_sink, auth_require_tls=False, auth_required=True,
              auth_exclude_mechanism=["LOGIN", "PLAIN", *hidden]) as sink:
        assert run_once(spool, sink.address, "--client-auth", str(client_auth)) == 0
        sink.wait_for(1)
    assert cram_sink.used == [(offered, True)]


def test_an_md5_client_secret_cannot_answer_cram_sha(tmp_path: Path, spool: Spool,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """`client md5` to a sink offering only CRAM-SHA256: no AUTH is tried, the message stays
    queued with a reason that says why (E-MailRelay: the same secret has no mechanism)."""
    cram_sink = CramSink()
    client_auth = tmp_path / "client.auth"
    state = base64.b64encode(masked_key(b"s3cret pw")).decode()
    client_auth.write_text(f"client md5 relay {state}\n")
    spool.store(MESSAGE, Envelope(sender="a@x.test", to_remote=("b@y.test",)))
    with Sink(handler_mixin=cram_sink, auth_require_tls=False, auth_required=True,
              auth_exclude_mechanism=["LOGIN", "PLAIN", "CRAM-SHA1"]) as sink:
        assert run_once(spool, sink.address, "--client-auth", str(client_auth)) == 75
    assert cram_sink.used == [] and sink.messages == []
    assert "CRAM-SHA256" in capsys.readouterr().err



@pytest.mark.parametrize("kind", ["sha256", "oauth"])
def test_an_account_relay_cannot_use_never_sends_without_auth(
        tmp_path: Path, spool: Spool, kind: str, capsys: pytest.CaptureFixture[str]) -> None:
    """A `client sha256` (or `oauth`) account alone, to a sink that offers CRAM-SHA256 and
    takes mail without AUTH: relay-deliver does not send the message unauthenticated; it
    stays queued, saying why (E-MailRelay 2.6.1 tries and fails: it cannot restore a SHA
    state)."""
    cram_sink = CramSink()
    client_auth = tmp_path / "client.auth"
    client_auth.write_text(f"client {kind} relay {base64.b64encode(bytes(64)).decode()}\n")
    spool.store(MESSAGE, Envelope(sender="a@x.test", to_remote=("b@y.test",)))
    with Sink(handler_mixin=cram_sink, auth_require_tls=False,
              auth_exclude_mechanism=["LOGIN", "PLAIN", "CRAM-SHA1"]) as sink:
        assert run_once(spool, sink.address, "--client-auth", str(client_auth)) == 75
    assert cram_sink.used == [] and sink.messages == []
    assert f"only {kind} secrets, which relay cannot use" in capsys.readouterr().err


# -- relay and the real E-MailRelay, both ways ------------------------------------------


@needs_emailrelay
@pytest.mark.parametrize(("client", "listed", "expected"), [
    ("plain relay s3cret+20pw", ["--server-auth-config", "m:cram-sha256"], "cram-sha256"),
    ("plain relay s3cret+20pw", ["--server-auth-config", "m:cram-sha1,login"], "cram-sha1"),
    ("plain relay s3cret+20pw", [], "cram-sha512"),
    (f"md5 relay {base64.b64encode(masked_key(b's3cret pw')).decode()}", [], "cram-md5")])
def test_deliver_to_emailrelay_by_cram(tmp_path: Path, spool: Spool, client: str,
                                       listed: list[str], expected: str) -> None:
    """relay-deliver to `emailrelay --as-server`: with --server-auth-config m:cram-sha256 it
    offers CRAM-SHA256 alone, and E-MailRelay logs a successful cram-sha256 authentication
    and stores the message with the account's name; offering everything, relay-deliver's
    password picks cram-sha512 and its md5 secret cram-md5."""
    far = tmp_path / "far"
    far.mkdir(mode=0o700)
    secrets = server_auth(tmp_path, "server plain relay s3cret+20pw\n")
    client_auth = tmp_path / "client.auth"
    client_auth.write_text(f"client {client}\n")
    spool.store(MESSAGE, Envelope(sender="a@x.test", to_remote=("b@y.test",)))
    with EmailRelayServer(tmp_path, far, "--server-auth", secrets, "--verbose",
                          *listed) as server:
        with smtplib.SMTP("127.0.0.1", server.port, timeout=10) as probe:
            offered = auth_line(probe)
        assert offered == (ORDER if not listed else [expected.upper(), *(
            ["LOGIN"] if "login" in listed[1] else [])])
        assert run_once(spool, f"127.0.0.1:{server.port}", "--client-auth",
                        str(client_auth)) == 0
    assert ("successful authentication of remote client using mechanism "
            f"[{expected}]") in server.log()
    ((envelope, content),) = accepted(far)
    assert envelope.authentication == "relay" and content.endswith(MESSAGE)


@needs_emailrelay
@pytest.mark.parametrize(("secret", "config", "expected"), [
    ("plain relay s3cret+20pw", None, "CRAM-SHA512"),
    ("plain relay s3cret+20pw", "m:cram-sha256,plain", "CRAM-SHA256"),
    ("plain relay s3cret+20pw", "m:cram-sha1", "CRAM-SHA1"),
    ("plain relay s3cret+20pw", "x:cram-sha512,cram-sha256,cram-sha1", "CRAM-MD5"),
    (f"md5 relay {base64.b64encode(masked_key(b's3cret pw')).decode()}", None, "CRAM-MD5")])
def test_emailrelay_client_to_intake(tmp_path: Path, spool_dir: Path, secret: str,
                                     config: str | None, expected: str) -> None:
    """`emailrelay --as-client --client-auth` forwarding a spooled message into relay-intake:
    with a password it picks the strongest mechanism relay offers (CRAM-SHA512), or the one
    its --client-auth-config leaves, with an md5 secret CRAM-MD5; relay-intake checks it
    and stores the message."""
    outbox = tmp_path / "outbox"
    outbox.mkdir(mode=0o700)
    Spool(outbox).store(MESSAGE, Envelope(sender="a@x.test", to_remote=("b@y.test",)))
    client_auth = tmp_path / "client.auth"
    client_auth.write_text(f"client {secret}\n")
    extra = ["--client-auth-config", config] if config else []
    with IntakeProcess(spool_dir, "--server-auth", server_auth(
            tmp_path, "server plain relay s3cret+20pw\n"), "--server-auth-insecure") as intake:
        done = emailrelay_client(tmp_path, outbox, f"127.0.0.1:{intake.port}",
                                 "--client-auth", str(client_auth), *extra)
        assert done.returncode == 0, done.stderr
        intake.wait_for_log("client_authenticated")
        logged = [json.loads(line) for line in intake.log().splitlines()
                  if "client_authenticated" in line]
    assert [(line["mechanism"], line["user"]) for line in logged] == [(expected, "relay")]
    ((envelope, _),) = accepted(spool_dir)
    assert envelope.authentication == "relay"
    assert not list(outbox.glob("*.envelope*"))  # E-MailRelay took the message as sent


def _auth_lines(port: int, ca: trustme.CA) -> tuple[list[str], list[str]]:
    """The AUTH mechanisms a server offers before STARTTLS and after it."""
    with smtplib.SMTP("127.0.0.1", port, local_hostname="client.test", timeout=10) as client:
        before = auth_line(client)
        client._host = "intake.test"  # the name the certificate is for
        client.starttls(context=tls.client_context(ca))
        return before, auth_line(client)


MD5_ALICE = f"server md5 alice {base64.b64encode(masked_key(b's3cret')).decode()}\n"


@needs_emailrelay
@pytest.mark.parametrize("secrets", ["server plain alice s3cret\n", MD5_ALICE])
@pytest.mark.parametrize("config", [None, "m:cram-sha256,plain;a:cram-sha1",
                                    "x:cram-md5,login", "m:;a:cram-sha512,plain,cram-md5",
                                    "m:cram-sha1"])
def test_ehlo_offers_what_emailrelay_offers(tmp_path: Path, spool_dir: Path, ca: trustme.CA,
                                            secrets: str, config: str | None) -> None:
    """The same secrets and --server-auth-config to `emailrelay --as-server --server-tls` and
    to relay-intake (with what `relay` gives it for those switches): the same AUTH line,
    in the same order, before STARTTLS and after it."""
    auth = server_auth(tmp_path, secrets)
    cert, key = tls.server_files(ca, tmp_path)
    both = tmp_path / "both.pem"
    both.write_bytes(key.read_bytes() + cert.read_bytes())
    listed = ["--server-auth-config", config] if config else []
    far = tmp_path / "far"
    far.mkdir(mode=0o700)
    with EmailRelayServer(tmp_path, far, "--server-auth", auth, "--server-tls",
                          "--server-tls-certificate", str(both), *listed) as server:
        theirs = _auth_lines(server.port, ca)
    with IntakeProcess(spool_dir, "--server-auth", auth, *(listed or ["--server-auth-insecure"]),
                       "--server-tls-certificate", str(cert), "--server-tls-key",
                       str(key)) as intake:
        ours = _auth_lines(intake.port, ca)
    assert ours == theirs
