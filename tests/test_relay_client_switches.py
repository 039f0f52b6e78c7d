"""`relay`'s SMTP client switches: --client-smtp-config (-c), --client-auth-config,
--prompt-timeout (-w), read as E-MailRelay 2.6.1 reads them and passed to relay-deliver.

The reading and the plan first, then `relay --as-client` itself (the console script, a real
process) against a real aiosmtpd sink without 8BITMIME and a smarthost that never greets.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
from support.programs import BIN, program_env
from support.sink import Behaviour, Sink
from support.smarthost import Script, ScriptedSmarthost

from deliver.extensions import EIGHTBIT_REASON
from spool import Envelope, Spool, parse_envelope
from tools.relay import UsageError, parse, plan
from tools.relay_args import SmtpConfigItems

RELAY = str(BIN / "relay")


@pytest.mark.parametrize(("text", "key", "default", "value", "left"), [
    ("pipelining", "pipelining", False, True, []),
    ("+pipelining", "pipelining", False, True, []),
    ("with-pipelining", "pipelining", False, True, []),
    ("-smtputf8strict", "smtputf8strict", True, False, []),
    ("nosmtputf8strict", "smtputf8strict", True, False, []),
    ("without-smtputf8strict", "smtputf8strict", True, False, []),
    ("=eightbitstrict", "eightbitstrict", False, False, []),
    ("+eightbitstrict,-eightbitstrict", "eightbitstrict", False, True, ["-eightbitstrict"]),
    ("warp,+pipelining", "pipelining", False, True, ["warp"]),
    (" +pipelining", "pipelining", False, False, [" +pipelining"]),  # no trimming
])
def test_switches_read_as_emailrelay(text: str, key: str, default: bool, value: bool,
                                     left: list[str]) -> None:
    """E-MailRelay's forms (KEY, +KEY, with-KEY on; -KEY, noKEY, without-KEY off; =KEY the
    default), the first 'on' form winning, and what is left over (a warning there)."""
    switches = SmtpConfigItems(text)
    assert switches(key, default) is value
    assert switches.items == left


def _deliver_args(*argv: str) -> list[str]:
    result = plan(parse(["--as-client", "h:25", "-u", "root", *argv]))
    assert result.deliver is not None
    return result.deliver


def test_each_keyword_becomes_a_relay_deliver_option() -> None:
    """Each keyword that differs from E-MailRelay's default becomes relay-deliver's option;
    the defaults add nothing; an unknown item is E-MailRelay's warning, not a refusal."""
    args = _deliver_args("-c", "+eightbitstrict,nosmtputf8strict,-binarymimestrict,"
                               "+pipelining,-linger")
    for option in ("--eightbit-strict", "--no-smtputf8-strict", "--no-binarymime-strict",
                   "--pipelining", "--no-linger"):
        assert option in args
    defaults = _deliver_args("-c", "smtputf8strict,binarymimestrict,-pipelining,=linger")
    assert not [word for word in defaults if "strict" in word or "linger" in word
                or "pipelining" in word]
    noted = plan(parse(["--as-client", "h:25", "-u", "root", "-c", "warp,+pipelining"]))
    assert noted.notes == ["--client-smtp-config: unknown smtp-config item [warp]"]


def test_client_auth_config_and_prompt_timeout_are_passed_on(tmp_path: Path) -> None:
    """--client-auth-config (with --client-auth) and -w reach relay-deliver as they are; the
    one without --client-auth is refused with E-MailRelay's words."""
    args = _deliver_args("-C", str(tmp_path / "c.auth"), "--client-auth-config",
                         "m:cram-sha256;x:login", "-w", "7")
    assert args[args.index("--client-auth-config") + 1] == "m:cram-sha256;x:login"
    assert args[args.index("--prompt-timeout") + 1] == "7"
    with pytest.raises(UsageError, match="the --client-auth-config option requires "
                                         "--client-auth"):
        plan(parse(["--as-client", "h:25", "--client-auth-config", "m:plain"]))


def _relay(workdir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([RELAY, *args], cwd=workdir, env=program_env(), text=True,
                          capture_output=True, timeout=90, check=False)


def test_relay_eightbitstrict_fails_the_message_as_emailrelay(tmp_path: Path,
                                                               spool: Spool) -> None:
    """relay --as-client -c +eightbitstrict,warp to a sink without 8BITMIME: the 8bit
    message is .bad with E-MailRelay's reason, relay says E-MailRelay's warning for `warp`;
    without -c the message goes out (E-MailRelay's default)."""
    envelope = Envelope(sender="a@x.test", to_remote=("b@y.test",), body_type="8bit")
    message = spool.store(b"Subject: x\r\n\r\n\xe9\r\n", envelope)
    with Sink(Behaviour(ehlo_without=("8BITMIME",))) as sink:
        done = _relay(tmp_path, "--as-client", sink.address, "-s", str(spool.path), "-u",
                      "root", "-c", "+eightbitstrict,warp")
        assert done.returncode == 0, done.stderr
        assert "relay: --client-smtp-config: unknown smtp-config item [warp]" in done.stderr
        assert sink.messages == []
        bad = parse_envelope(spool.path.joinpath(f"{message}.envelope.bad").read_bytes())
        assert bad.reasons == [EIGHTBIT_REASON]
        spool.store(b"Subject: y\r\n\r\n\xe9\r\n", envelope)
        done = _relay(tmp_path, "--as-client", sink.address, "-s", str(spool.path), "-u",
                      "root")
        assert done.returncode == 0, done.stderr
        assert [m.data for m in sink.messages] == [b"Subject: y\r\n\r\n\xe9\r\n"]


def test_relay_prompt_timeout_goes_on_without_a_greeting(tmp_path: Path,
                                                         spool: Spool) -> None:
    """relay --as-client -w 1 to a smarthost that never greets: EHLO after a second, and the
    message goes out (E-MailRelay 2.6.1 did the same, after -w seconds)."""
    spool.store(b"Subject: w\r\n\r\nw\r\n", Envelope(sender="a@x.test",
                                                    to_remote=("b@y.test",)))
    with ScriptedSmarthost(Script(greeting=None)) as smarthost:
        started = time.monotonic()
        done = _relay(tmp_path, "--as-client", smarthost.address, "-s", str(spool.path),
                      "-u", "root", "-w", "1")
        assert done.returncode == 0, done.stderr
        assert time.monotonic() - started >= 1.0
    assert len(smarthost.data) == 1
