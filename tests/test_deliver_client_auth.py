"""--client-auth-config: E-MailRelay 2.6.1's choice of the client's AUTH mechanisms.

The choice first (pure `mechanisms`, one case per command line E-MailRelay was run with),
then on the wire: a scripted smarthost that refuses every AUTH sees the mechanisms tried
one after the other in E-MailRelay's order; a real aiosmtpd sink with a real account
sees the mechanism the list asks for; and --client-auth-config without --client-auth stops
relay-deliver at start.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.smtp import AuthResult, LoginPassword
from support.deliver import run_once
from support.sink import Sink, client_auth_file
from support.smarthost import Script, ScriptedSmarthost

from common.secrets import ClientAccount
from deliver.clientauth import AuthConfig, mechanisms, parse_auth_config
from deliver.main import main
from spool import Envelope, Spool

OFFERED = ["login", "plain", "cram-md5", "cram-sha1", "xoauth2"]  # as aiosmtplib has them
PASSWORD = ClientAccount("", "relay", password="s3cret")
MD5 = ClientAccount("", "relay", md5_state=bytes(32))


@pytest.mark.parametrize(("config", "expected"), [
    (None, ["CRAM-SHA1", "CRAM-MD5", "PLAIN", "LOGIN"]),
    ("m:login,plain", ["PLAIN", "LOGIN"]),  # E-MailRelay keeps its own order, not the list's
    ("x:cram-md5,cram-sha1", ["PLAIN", "LOGIN"]),
    ("plain", ["PLAIN"]),  # one mechanism name alone: that one
    ("plain,login", ["CRAM-SHA1", "CRAM-MD5", "PLAIN", "LOGIN"]),  # no m: item: all
    ("a:login", ["CRAM-SHA1", "CRAM-MD5", "PLAIN", "LOGIN"]),  # a:/d: are the server's
    ("m:plain;a:login", ["PLAIN"]),
    ("M:LOGIN", ["LOGIN"]),
    ("m:bogus", []),
])
def test_the_mechanisms_emailrelay_tries(config: str | None, expected: list[str]) -> None:
    """Each --client-auth-config E-MailRelay 2.6.1 was run with: the same mechanisms, in the
    same order, for an account with a password and a smarthost offering five."""
    assert mechanisms(PASSWORD, parse_auth_config(config), OFFERED) == expected


def test_an_md5_secret_can_do_cram_md5_only() -> None:
    """A `client md5` account: CRAM-MD5, whatever else is offered or listed."""
    assert mechanisms(MD5, AuthConfig(), OFFERED) == ["CRAM-MD5"]
    assert mechanisms(MD5, parse_auth_config("m:plain,login"), OFFERED) == []
    assert mechanisms(PASSWORD, AuthConfig(), ["cram-sha256", "cram-sha512"]) == [
        "CRAM-SHA512", "CRAM-SHA256"]


EHLO_AUTH = (b"250-AUTH LOGIN PLAIN CRAM-MD5 CRAM-SHA1 XOAUTH2",)


@pytest.mark.parametrize(("config", "tried"), [
    (None, [b"AUTH CRAM-SHA1", b"AUTH CRAM-MD5", b"AUTH PLAIN AHJlbGF5AHMzY3JldA==",
            b"AUTH LOGIN cmVsYXk="]),
    ("m:login,plain", [b"AUTH PLAIN AHJlbGF5AHMzY3JldA==", b"AUTH LOGIN cmVsYXk="]),
    ("M:LOGIN", [b"AUTH LOGIN cmVsYXk="]),
])
def test_after_a_refusal_the_next_mechanism_is_tried(
        tmp_path: Path, spool: Spool, config: str | None, tried: list[bytes]) -> None:
    """A smarthost answering 535 to every AUTH gets exactly the AUTH lines E-MailRelay 2.6.1
    sent it, in its order; the message stays queued (relay retries: docs/emailrelay.md)."""
    secrets = tmp_path / "client.auth"
    secrets.write_text("client plain relay s3cret\n")
    spool.store(b"Subject: a\r\n\r\na\r\n", Envelope(sender="a@x.test", to_remote=("b@y.test",)))
    extra = ["--client-auth-config", config] if config else []
    script = Script(ehlo_extra=EHLO_AUTH, replies={"AUTH": b"535 5.7.8 no"})
    with ScriptedSmarthost(script) as smarthost:
        assert run_once(spool, smarthost.address, "--client-auth", str(secrets), *extra) == 75
    assert [c for c in smarthost.commands if c.startswith(b"AUTH")] == tried
    assert smarthost.data == []


def test_the_listed_mechanism_is_the_one_used(tmp_path: Path, spool: Spool) -> None:
    """m:login to a real aiosmtpd sink offering LOGIN and PLAIN: the sink authenticates the
    account by LOGIN and takes the message; without the list, PLAIN (E-MailRelay's order)."""
    used: list[str] = []

    def authenticator(_server: Any, _session: Any, _envelope: Any, mechanism: str,
                      auth_data: Any) -> AuthResult:
        used.append(mechanism)
        ok = isinstance(auth_data, LoginPassword) and (auth_data.login, auth_data.password) \
            == (b"relay", b"s3cret pw")
        return AuthResult(success=ok, handled=False)

    with Sink(authenticator=authenticator, auth_required=True, auth_require_tls=False) as sink:
        for number, extra in enumerate((["--client-auth-config", "m:login"], []), 1):
            spool.store(f"Subject: {number}\r\n\r\nx\r\n".encode(),
                        Envelope(sender="a@x.test", to_remote=("b@y.test",)))
            assert run_once(spool, sink.address, "--client-auth", client_auth_file(tmp_path),
                            *extra) == 0
            sink.wait_for(number)
    assert used == ["LOGIN", "PLAIN"]


def test_client_auth_config_needs_client_auth(spool: Spool,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    """--client-auth-config without --client-auth: exit 78 at start, saying so (E-MailRelay
    refuses the same command line)."""
    assert main(["--once", "--spool-dir", str(spool.path), "--forward-to", "127.0.0.1:9",
                 "--client-auth-config", "m:plain"]) == 78
    assert "--client-auth-config needs --client-auth" in capsys.readouterr().err
