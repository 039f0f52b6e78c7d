"""md5 secrets end to end: relay-passwd's bytes, CRAM-MD5 on both sides, account selectors.

relay-passwd is compared with E-MailRelay's emailrelay-passwd when the binary is here
(and with values it printed otherwise). CRAM-MD5 runs between relay-deliver and a real
relay-intake smarthost that holds only the stored MD5 state, and between smtplib and
relay-intake; selectors are checked against a real aiosmtpd sink.
"""

from __future__ import annotations

import os
import smtplib
import subprocess
import sys
from pathlib import Path

import pytest
from support.deliver import run_once
from support.emailrelay import EMAILRELAY
from support.intake import MESSAGE, IntakeThread
from support.sink import Sink
from support.spool import accepted

from deliver.main import main as deliver_main
from intake.main import main as intake_main
from spool import Envelope, Spool
from spool.envelope import parse_envelope
from tools.passwd import main as passwd_main

EMAILRELAY_PASSWD = EMAILRELAY.with_name("emailrelay-passwd")  # beside EMAILRELAY_BIN
# What emailrelay-passwd 2.6.1 printed for these inputs.
KNOWN = [
    ([], b"secret\n", "qeD38fvADIqBu6rDlXMbVs07p96q1uXKI0SLpC43l0c="),
    ([], b"p w+d=x\n", "9jLYzHmTWbEhmzk+CN0IxwMkTEAk/zO5ZpQqwryxUpE="),
    ([], b"  abc  \r\n", "CVjziNYEI1BO58Rs5EvotEZQduHJWsE0/CuoitYXtmY="),
    ([], b"x" * 100 + b"\n", "TpTWCjuw0A+S099SpdJ1ylIZfblI0JMlEqYbGD59BbA="),
    (["-H", "NONE"], b"p w+d=x\n", "p+20w+2Bd+3Dx"),
    (["-H", "none"], "jürgen\n".encode(), "j+C3+BCrgen"),
    (["--dotted"], b"secret", "4059553961.2316091643.3282746241.1444639637.3735501773."
     "3404060330.2760590371.1201092398"),
    (["-b", "-p", "c2VjcmV0"], b"", "qeD38fvADIqBu6rDlXMbVs07p96q1uXKI0SLpC43l0c="),
]


def relay_passwd(args: list[str], stdin: bytes) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "tools.passwd", *args], input=stdin,
                          capture_output=True, check=False)


@pytest.mark.parametrize(("args", "stdin", "expected"), KNOWN)
def test_relay_passwd_writes_what_emailrelay_passwd_writes(args: list[str], stdin: bytes,
                                                           expected: str) -> None:
    """The same bytes on stdout as emailrelay-passwd, for each option."""
    result = relay_passwd(args, stdin)
    assert (result.returncode, result.stdout) == (0, expected.encode() + b"\n")
    if os.access(EMAILRELAY_PASSWD, os.X_OK):
        real = subprocess.run([str(EMAILRELAY_PASSWD), *args], input=stdin,
                              capture_output=True, check=False)
        assert real.stdout == result.stdout


def test_relay_passwd_refuses_an_empty_password() -> None:
    """An empty password: exit 1 and 'invalid password', as emailrelay-passwd."""
    result = relay_passwd([], b"\n")
    assert result.returncode == 1 and b"invalid password" in result.stderr
    assert passwd_main(["-p", "x", "--hash", "sha1"]) == 1


def state_of(password: str) -> str:
    return relay_passwd(["-p", password], b"").stdout.decode().strip()


def test_intake_cram_md5_from_a_stored_state(spool_dir: Path, tmp_path: Path) -> None:
    """`server md5` (from relay-passwd): CRAM-MD5 succeeds with the right password only."""
    auth = tmp_path / "server.auth"
    auth.write_text(f"server md5 alice {state_of('secret')}\n")
    with IntakeThread(spool_dir, "--server-auth", str(auth), "--server-auth-insecure") as intake:
        with intake.smtp() as client:
            client.ehlo()
            client.user, client.password = "alice", "wrong"
            with pytest.raises(smtplib.SMTPAuthenticationError):
                client.auth("CRAM-MD5", client.auth_cram_md5)
        with intake.smtp() as client:
            client.ehlo()
            client.user, client.password = "alice", "secret"
            client.auth("CRAM-MD5", client.auth_cram_md5)
            client.sendmail("a@example.org", ["b@example.com"], MESSAGE)
    ((envelope, _),) = accepted(spool_dir)
    assert envelope.authentication == "alice"


def test_deliver_cram_md5_from_a_stored_state(tmp_path: Path, spool: Spool) -> None:
    """relay-deliver with `client md5` authenticates to a smarthost that holds `server md5`."""
    state = state_of("s3cret")
    server_auth = tmp_path / "server.auth"
    server_auth.write_text(f"server md5 carol {state}\n")
    client_auth = tmp_path / "client.auth"
    client_auth.write_text(f"client md5 carol {state}\n")
    far = tmp_path / "far"
    far.mkdir(mode=0o700)
    spool.store([MESSAGE], Envelope(sender="a@x.test", to_remote=("b@y.test",)))
    with IntakeThread(far, "--server-auth", str(server_auth), "--server-auth-insecure") as smart:
        assert run_once(spool, f"127.0.0.1:{smart.port}", "--client-auth", str(client_auth)) == 0
    ((envelope, _),) = accepted(far)
    assert envelope.authentication == "carol"


def test_selectors(tmp_path: Path, spool: Spool, sink: Sink) -> None:
    """A selector with no account -> .bad, never the default account; `= =` -> no AUTH."""
    auth = tmp_path / "client.auth"
    auth.write_text("client plain:b = = noauth\n")
    unknown = spool.store([MESSAGE], Envelope(sender="a@x.test", to_remote=("b@y.test",),
                                              client_account_selector="nosuch"))
    plain = spool.store([MESSAGE], Envelope(sender="a@x.test", to_remote=("c@y.test",),
                                            client_account_selector="noauth"))
    assert run_once(spool, sink.address, "--client-auth", str(auth)) == 0
    assert [m.rcpt_tos for m in sink.messages] == [["c@y.test"]]
    failed = parse_envelope(spool.path.joinpath(f"{unknown}.envelope.bad").read_bytes())
    assert failed.reasons[0] == "no client authentication account: selector [nosuch]"
    assert not spool.content_path(plain).exists()


NO_DEFAULT = "no client authentication account: selector []"  # E-MailRelay 2.6.1's reason


def test_no_default_client_line_fails_a_message_without_selector(
        tmp_path: Path, spool: Spool, sink: Sink) -> None:
    """--client-auth without a default `client` line: a message with no selector is .bad
    with E-MailRelay's reason and nothing reaches the smarthost (never sent without AUTH)."""
    auth = tmp_path / "client.auth"
    auth.write_text("client plain bob pw eu\nserver plain alice pw\n")
    message = spool.store([MESSAGE], Envelope(sender="a@x.test", to_remote=("b@y.test",)))
    assert run_once(spool, sink.address, "--client-auth", str(auth)) == 0
    assert sink.messages == []
    failed = parse_envelope(spool.path.joinpath(f"{message}.envelope.bad").read_bytes())
    assert failed.reasons == [NO_DEFAULT]


@pytest.mark.skipif(not os.access(EMAILRELAY, os.X_OK), reason="no E-MailRelay binary here")
def test_emailrelay_fails_a_message_without_selector_the_same_way(
        tmp_path: Path, spool: Spool, sink: Sink) -> None:
    """The real E-MailRelay --as-client, same secrets file: .bad, the same reason, no mail."""
    auth = tmp_path / "client.auth"
    auth.write_text("client plain bob pw eu\nserver plain alice pw\n")
    message = spool.store([MESSAGE], Envelope(sender="a@x.test", to_remote=("b@y.test",)))
    argv = [str(EMAILRELAY), "--as-client", sink.address, "--spool-dir", str(spool.path),
            "--client-auth", str(auth)]
    if os.geteuid() == 0:
        argv += ["--user", "root"]
    subprocess.run(argv, cwd=tmp_path, capture_output=True, timeout=30, check=False)
    assert sink.messages == []
    failed = parse_envelope(spool.path.joinpath(f"{message}.envelope.bad").read_bytes())
    assert failed.reasons[0] == NO_DEFAULT


def test_selector_without_client_auth_is_bad(spool: Spool, sink: Sink) -> None:
    """A ClientAccountSelector and no --client-auth: .bad (E-MailRelay's bad selector)."""
    message = spool.store([MESSAGE], Envelope(sender="a@x.test", to_remote=("b@y.test",),
                                              client_account_selector="eu"))
    assert run_once(spool, sink.address) == 0
    assert sink.messages == []
    assert spool.path.joinpath(f"{message}.envelope.bad").exists()


@pytest.mark.parametrize("line", ["server plain alice", "client plain:b !!! x",
                                  "server md5 alice c2hvcnQ="])
def test_a_bad_secrets_line_stops_every_program_with_78(
        tmp_path: Path, spool_dir: Path, line: str, capsys: pytest.CaptureFixture[str]) -> None:
    """relay-intake and relay-deliver exit 78 at start, naming the line."""
    auth = tmp_path / "auth"
    auth.write_text(f"# ok\n{line}\n")
    assert intake_main(["--spool-dir", str(spool_dir), "--port", "0",
                        "--server-auth", str(auth)]) == 78
    assert "line 2" in capsys.readouterr().err
    assert deliver_main(["--once", "--spool-dir", str(spool_dir), "--forward-to",
                         "127.0.0.1:9", "--client-auth", str(auth)]) == 78
    assert "line 2" in capsys.readouterr().err
