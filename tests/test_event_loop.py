"""relay-intake and relay-deliver on either event loop: asyncio's own and uvloop (--event-loop).

The chain runs as console scripts on the chosen loop: a client sends with STARTTLS, and
another with PIPELINING, to relay-intake, and relay-deliver forwards with STARTTLS
(certificate verified) and AUTH to a sink, which must receive the very same messages.
"""

from __future__ import annotations

import signal
import smtplib
import ssl
import subprocess
import time
from pathlib import Path

import pytest
import trustme
from support.intake import MESSAGE, IntakeProcess, RawClient
from support.programs import DELIVER, program_env
from support.sink import Sink, authenticator, client_auth_file
from support.spool import strip_received
from support.tls import ca_file, client_context, server_files

from common import eventloop
from common.config import ConfigError

LOOPS = ["asyncio", pytest.param("uvloop", marks=pytest.mark.skipif(
    not eventloop.uvloop_installed(), reason="uvloop (the fast extra) is not installed"))]


def test_choices(monkeypatch: pytest.MonkeyPatch) -> None:
    """auto takes uvloop only when it is installed; asking for a missing uvloop is an error."""
    assert eventloop.resolve("asyncio") == "asyncio"
    monkeypatch.setattr(eventloop, "uvloop_installed", lambda: False)
    assert eventloop.resolve("auto") == "asyncio"
    with pytest.raises(ConfigError, match="uvloop is not installed"):
        eventloop.resolve("uvloop")
    with pytest.raises(ConfigError, match="event-loop must be one of"):
        eventloop.resolve("trio")
    monkeypatch.setattr(eventloop, "uvloop_installed", lambda: True)
    assert eventloop.resolve("auto") == "uvloop"


@pytest.mark.parametrize("loop", LOOPS)
def test_chain_on_each_event_loop(loop: str, ca: trustme.CA, tmp_path: Path,
                                  spool_dir: Path) -> None:
    """client -STARTTLS-> intake -> deliver -STARTTLS, verified, AUTH-> sink: same bytes."""
    cert_path, key_path = server_files(ca, tmp_path, "intake.test", "127.0.0.1")
    intake = IntakeProcess(spool_dir, "--server-tls-certificate", str(cert_path),
                           "--server-tls-key", str(key_path), "--event-loop", loop)
    try:
        with smtplib.SMTP("127.0.0.1", intake.port, local_hostname="client.test",
                          timeout=10) as client:
            client._host = "intake.test"  # the name the certificate is for
            client.starttls(context=client_context(ca))
            client.sendmail("a@example.org", ["b@example.com"], MESSAGE)
        raw = RawClient(intake.port)  # a pipelined group: its replies come together
        raw.command(b"EHLO client.test")
        raw.send(b"MAIL FROM:<c@example.org>\r\nRCPT TO:<d@example.com>\r\nDATA\r\n")
        assert [raw.reply()[:3] for _ in range(3)] == ["250", "250", "354"]
        raw.send(MESSAGE + b".\r\n")
        assert raw.reply()[:3] == "250"
    finally:
        # The raw client stays connected: SIGTERM must say 421 to it and close at once.
        stopping = time.monotonic()
        intake_log = intake.finish(signal.SIGTERM)
    assert time.monotonic() - stopping < 5, intake_log
    assert raw.reply().startswith("421") and raw.closed()
    assert f'"event_loop": "{loop}"' in intake_log and intake.process.returncode == 0
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert_path, key_path)
    with Sink(tls_context=server_context, require_starttls=True, authenticator=authenticator,
              auth_required=True, auth_require_tls=True) as sink:
        done = subprocess.run(
            [DELIVER, "--once", "--spool-dir", str(spool_dir), "--event-loop", loop,
             "--forward-to", sink.address, "--client-tls", "--client-tls-required",
             "--client-tls-verify", str(ca_file(ca, tmp_path)),
             "--client-auth", client_auth_file(tmp_path), "--log-format", "json"],
            capture_output=True, text=True, timeout=60, env=program_env())
        assert done.returncode == 0, done.stderr
        assert f'"event_loop": "{loop}"' in done.stderr
        # smtplib dot-stuffed its copy; the raw client sent "..a line" as it is.
        assert {strip_received(m.data) for m in sink.messages} == {
            MESSAGE, MESSAGE.replace(b"\n..", b"\n.")}
