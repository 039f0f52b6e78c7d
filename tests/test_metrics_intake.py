"""relay-intake --metrics scraped over HTTP while mail flows, parsed with prometheus_client's
parser: accepted and refused messages, sessions, AUTH failures and commits counted exactly;
then intake and deliver together, their counters against what the sink received."""

from __future__ import annotations

import base64
import os
import smtplib
import socket
import subprocess
import threading
from pathlib import Path

import pytest
from support.deliver import Deliver
from support.intake import IntakeProcess, non_loopback_address
from support.metrics import fetch, scrape, value, wait_for_value
from support.programs import INTAKE, program_env
from support.sink import Sink, free_port

from spool import Spool

MESSAGE = b"Subject: metrics\r\n\r\nbody\r\n"


def send(intake: IntakeProcess, count: int) -> None:
    with intake.smtp() as client:
        for _ in range(count):
            client.sendmail("a@a.test", ["b@b.test"], MESSAGE)


def test_intake_counts_while_mail_flows(spool_dir: Path, tmp_path: Path) -> None:
    """4 connections of 5 messages each at once, scraped between two rounds; a message too
    big (552 at MAIL), an empty recipient (553 at RCPT) and two failed AUTHs: every
    counter says exactly that, commits and batch sizes add up to the messages stored."""
    secrets = tmp_path / "secrets"
    secrets.write_text("server plain alice s3cret\n")
    port = free_port()
    with IntakeProcess(spool_dir, "--metrics", f"127.0.0.1:{port}", "--size", "2000",
                       "--server-auth", str(secrets), "--server-auth-insecure") as intake:
        assert value(scrape(port), "relay_intake_sessions_total") == 0
        with intake.smtp() as client:
            client.login("alice", "s3cret")
            client.sendmail("a@a.test", ["b@b.test"], MESSAGE)
        first = wait_for_value(port, "relay_intake_messages_accepted_total", 1)
        assert value(first, "relay_intake_sessions_total") == 1
        threads = []
        for _ in range(4):
            thread = threading.Thread(target=_authenticated_send, args=(intake, 5))
            thread.start()
            threads.append(thread)
        for thread in threads:
            thread.join(60)
        with intake.smtp() as client:
            client.login("alice", "s3cret")
            with pytest.raises(smtplib.SMTPSenderRefused):
                client.sendmail("a@a.test", ["b@b.test"], b"x" * 5000)
            client.rset()
            with pytest.raises(smtplib.SMTPRecipientsRefused):
                client.sendmail("a@a.test", ["<>"], MESSAGE)
        with intake.smtp() as client:
            client.ehlo()
            wrong = base64.b64encode(b"\0alice\0wrong").decode()
            for _ in range(2):  # one AUTH command each (smtplib's login would try three)
                assert client.docmd("AUTH", f"PLAIN {wrong}")[0] == 535
        samples = wait_for_value(port, "relay_intake_sessions_active", 0)
        stored = len(list(spool_dir.glob("*.envelope")))
        assert stored == 21
        assert value(samples, "relay_intake_messages_accepted_total") == 21
        assert value(samples, "relay_intake_messages_refused_total", reason="mail_552") == 1
        assert value(samples, "relay_intake_messages_refused_total", reason="rcpt_553") == 1
        assert value(samples, "relay_intake_auth_failures_total") == 2
        assert value(samples, "relay_intake_sessions_total") == 1 + 4 + 1 + 1
        assert value(samples, "relay_intake_messages_refused_total", reason="auth_535") == 2
        assert value(samples, "relay_intake_commit_seconds_count") == 21
        assert value(samples, "relay_intake_commit_batch_size_sum") == 21
        assert 1 <= value(samples, "relay_intake_commit_batch_size_count") <= 21
        assert fetch(port, "/healthz") == (200, "ok\n")
        assert intake.stop() == 0


def _authenticated_send(intake: IntakeProcess, count: int) -> None:
    with intake.smtp() as client:
        client.login("alice", "s3cret")
        for _ in range(count):
            client.sendmail("a@a.test", ["b@b.test"], MESSAGE)


def test_refused_client_is_counted(spool_dir: Path) -> None:
    """A client that is not local, refused at connect: one session, one connect_554."""
    address = non_loopback_address()
    if address is None:
        pytest.skip("this host has no non-loopback IPv4 address to appear as a remote client")
    port = free_port()
    with IntakeProcess(spool_dir, "--metrics", f"127.0.0.1:{port}",
                       interface=address) as intake:
        with pytest.raises(smtplib.SMTPConnectError):
            smtplib.SMTP(address, intake.port, source_address=(address, 0), timeout=10)
        samples = wait_for_value(port, "relay_intake_sessions_active", 0)
        assert value(samples, "relay_intake_sessions_total") == 1
        assert value(samples, "relay_intake_messages_refused_total", reason="connect_554") == 1
        intake.stop()


def test_intake_metrics_port_in_use(spool_dir: Path) -> None:
    """--metrics on a port in use: a clear message, said once, and exit 78; no SMTP port
    is opened."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        done = subprocess.run([INTAKE, "--spool-dir", str(spool_dir), "--port",
                               str(free_port()), "--metrics", f"127.0.0.1:{port}"],
                              capture_output=True, text=True, timeout=30, env=program_env())
    assert done.returncode == os.EX_CONFIG
    assert done.stderr.count(f"metrics: cannot listen on 127.0.0.1:{port}: Address already"
                             " in use") == 1, done.stderr
    assert "intake_started" not in done.stderr


def test_intake_and_deliver_agree_with_the_sink(spool: Spool, sink: Sink) -> None:
    """30 messages through intake and deliver: accepted 30, forwarded 30, the sink has 30,
    the queue is empty by deliver's own scan."""
    intake_port, deliver_port = free_port(), free_port()
    deliver = Deliver(spool, sink.address, "--metrics", f"127.0.0.1:{deliver_port}",
                      "--poll", "1")
    try:
        with IntakeProcess(spool.path, "--metrics", f"127.0.0.1:{intake_port}") as intake:
            for _ in range(3):
                send(intake, 10)
                scrape(intake_port)  # while mail flows
                scrape(deliver_port)
            wait_for_value(intake_port, "relay_intake_messages_accepted_total", 30)
            samples = wait_for_value(deliver_port, "relay_deliver_messages_forwarded_total", 30)
            assert value(samples, "relay_deliver_forward_seconds_count") == 30
            assert len(sink.wait_for(30)) == 30
            wait_for_value(deliver_port, "relay_queue_messages", 0, state="ready")
            intake.stop()
    finally:
        deliver.stop()
