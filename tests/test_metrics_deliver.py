"""relay-deliver --metrics: scraped over HTTP while mail flows to a real sink and parsed with
prometheus_client's parser; counters checked against what was sent; /healthz; a port in use."""

from __future__ import annotations

import os
import socket
import subprocess
import time

from support.deliver import Deliver
from support.metrics import fetch, scrape, value, wait_for_value, wait_for_values
from support.programs import DELIVER, program_env
from support.sink import Sink, free_port
from support.tools import emailrelay_envelope

from common.metrics import parse_listen, reason_class
from spool import Envelope, Spool


def store(spool: Spool, number: int, *recipients: str) -> str:
    return spool.store(f"Subject: metrics {number}\r\n\r\nbody {number}\r\n".encode(),
                       Envelope(sender="a@a.test", to_remote=recipients or ("b@b.test",)))


def test_counters_match_what_was_sent(spool: Spool, sink: Sink) -> None:
    """10 messages forwarded, 2 refused with 550 (failed, smtp_5xx), 1 deferred with 451:
    the counters, the latency histogram's count and the queue gauges say exactly that."""
    port = free_port()
    sink.behaviour.rcpt_replies["no@b.test"] = "550 5.1.1 no such user"
    sink.behaviour.rcpt_replies["later@b.test"] = "451 4.3.0 try later"
    deliver = Deliver(spool, sink.address, "--metrics", f"127.0.0.1:{port}")
    try:
        for number in range(10):
            store(spool, number)
        store(spool, 10, "no@b.test")
        store(spool, 11, "no@b.test")
        store(spool, 12, "later@b.test")
        # The 13 go over 4 connections in any order, and the queue gauges are set by
        # deliver's scans: wait for every counter's final value, then for one scan
        # that saw the end state (a scan from before the last refusal says bad 1).
        wait_for_value(port, "relay_deliver_messages_forwarded_total", 10)
        wait_for_value(port, "relay_deliver_messages_failed_total", 2, reason_class="smtp_5xx")
        wait_for_value(port, "relay_deliver_messages_deferred_total", 1,
                       reason_class="smtp_4xx")
        samples = wait_for_values(port, {("relay_queue_messages", (("state", "ready"),)): 1,
                                         ("relay_queue_messages", (("state", "bad"),)): 2,
                                         ("relay_queue_messages", (("state", "busy"),)): 0})
        assert value(samples, "relay_deliver_messages_failed_total",
                     reason_class="smtp_5xx") == 2
        assert value(samples, "relay_deliver_messages_deferred_total",
                     reason_class="connection") == 0
        assert value(samples, "relay_deliver_forward_seconds_count") == 13
        assert 0 < value(samples, "relay_deliver_forward_seconds_sum") < 13 * 2
        assert value(samples, "relay_smarthost_up") == 1
        assert value(samples, "relay_queue_oldest_message_age_seconds") >= 0
        assert len(sink.messages) == 10
        assert fetch(port, "/healthz") == (200, "ok\n")
        assert fetch(port, "/nothing")[0] == 404
    finally:
        deliver.stop()


def test_queue_gauges_show_the_end_of_a_burst(spool: Spool, sink: Sink) -> None:
    """A message refused after deliver's last scan (a `.bad` wakes no scan): the queue
    gauges still say bad 1, ready 0 soon after, not only at the next --poll (60 s)."""
    port = free_port()
    sink.behaviour.rcpt_replies["no@b.test"] = "550 5.1.1 no such user"
    sink.behaviour.stall_at_rcpt = 0.5  # the refusal comes well after the scan that found it
    deliver = Deliver(spool, sink.address, "--metrics", f"127.0.0.1:{port}")
    try:
        store(spool, 1, "no@b.test")
        wait_for_value(port, "relay_deliver_messages_failed_total", 1, reason_class="smtp_5xx")
        wait_for_values(port, {("relay_queue_messages", (("state", "bad"),)): 1,
                               ("relay_queue_messages", (("state", "ready"),)): 0,
                               ("relay_queue_messages", (("state", "busy"),)): 0}, timeout=20)
    finally:
        deliver.stop()


def test_smarthost_down_and_the_oldest_message(spool: Spool) -> None:
    """A smarthost that refuses connections: relay_smarthost_up 0, deferred{connection},
    and the oldest waiting message's age from the time in its id."""
    port = free_port()
    closed = free_port()
    message_id = f"emailrelay.1.{int(time.time()) - 600}.1"  # arrived ten minutes ago
    (spool.path / f"{message_id}.content").write_bytes(b"Subject: old\r\n\r\nx\r\n")
    (spool.path / f"{message_id}.envelope").write_bytes(emailrelay_envelope())
    deliver = Deliver(spool, f"127.0.0.1:{closed}", "--metrics", f"127.0.0.1:{port}")
    try:
        samples = wait_for_value(port, "relay_deliver_messages_deferred_total", 1,
                                 reason_class="connection")
        samples = wait_for_value(port, "relay_smarthost_up", 0)
        assert value(samples, "relay_deliver_messages_forwarded_total") == 0
        age = value(samples, "relay_queue_oldest_message_age_seconds")
        assert 600 <= age < 700
    finally:
        deliver.stop()


def test_a_metrics_port_in_use_is_refused(spool: Spool) -> None:
    """--metrics on a port another socket holds: a clear message and exit 78, no start."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        done = subprocess.run([DELIVER, "--spool-dir", str(spool.path), "--forward-to",
                               "127.0.0.1:25", "--metrics", f"127.0.0.1:{port}"],
                              capture_output=True, text=True, timeout=30, env=program_env())
    assert done.returncode == os.EX_CONFIG
    assert f"metrics: cannot listen on 127.0.0.1:{port}: Address already in use" in done.stderr
    assert "deliver_started" not in done.stderr
    bad = subprocess.run([DELIVER, "--spool-dir", str(spool.path), "--forward-to",
                          "127.0.0.1:25", "--metrics", "9125"],
                         capture_output=True, text=True, timeout=30, env=program_env())
    assert bad.returncode == os.EX_CONFIG and "give HOST:PORT" in bad.stderr


def test_parse_listen_and_reason_class() -> None:
    """HOST:PORT forms for --metrics, and the reason classes deliver counts by."""
    assert parse_listen("127.0.0.1:9125") == ("127.0.0.1", 9125)
    assert parse_listen("[::1]:9125") == ("::1", 9125)
    assert parse_listen(":9125") == ("0.0.0.0", 9125)
    assert reason_class(None, connected=False) == "connection"
    assert reason_class(None) == "no_reply"
    assert reason_class(451) == "smtp_4xx" and reason_class(554) == "smtp_5xx"
    assert reason_class(451, max_age=True) == "max_age"


def test_scrape_parses_process_metrics(spool: Spool, sink: Sink) -> None:
    """The endpoint also carries the process collector's series (CPU, memory, fds)."""
    port = free_port()
    deliver = Deliver(spool, sink.address, "--metrics", f"127.0.0.1:{port}")
    try:
        samples = scrape(port)
        assert value(samples, "process_open_fds") > 0
    finally:
        deliver.stop()
