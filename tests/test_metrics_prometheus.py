"""The Grafana dashboard's queries and the alert rules against a real Prometheus (Debian's
prometheus server) that scrapes a real relay-intake and relay-deliver while mail flows: every
panel's expression returns series, the rates and latencies are the run's, and every alert
rule loads and evaluates without error."""

from __future__ import annotations

import json
import shutil
import smtplib
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from support.deliver import Deliver
from support.intake import IntakeProcess
from support.metrics import wait_for_value
from support.sink import Sink, free_port

from spool import Spool

DOCS = Path(__file__).resolve().parents[1] / "docs"
PROMETHEUS = shutil.which("prometheus")
MESSAGE = b"Subject: graphed\r\n\r\nbody\r\n"


def api(port: int, path: str, **query: str) -> dict[str, object]:
    """GET Prometheus' HTTP API; the decoded `data` of a successful answer."""
    url = f"http://127.0.0.1:{port}/api/v1/{path}"
    if query:
        url += "?" + urllib.parse.urlencode(query)
    with urllib.request.urlopen(url, timeout=10) as reply:
        answer = json.loads(reply.read())
    assert answer["status"] == "success", answer
    data = answer["data"]
    assert isinstance(data, dict)
    return data


def wait_ready(port: int, process: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/-/ready", timeout=2) as reply:
                if reply.status == 200:
                    return
        except OSError:
            pass
        assert process.poll() is None, "prometheus exited"
        assert time.monotonic() < deadline, "prometheus never became ready"
        time.sleep(0.2)


def dashboard_expressions() -> list[tuple[str, str]]:
    """(panel title, expression) for every target, with Grafana's variables filled in."""
    dashboard = json.loads((DOCS / "grafana" / "relay-dashboard.json").read_text())
    found = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"].replace("$instance", ".+").replace("$__rate_interval", "20s")
            found.append((panel["title"], expr))
    return found


def send_for(intake: IntakeProcess, seconds: float, stop: threading.Event) -> int:
    """A message every 0.1 s for *seconds*; the number the intake accepted."""
    sent = 0
    deadline = time.monotonic() + seconds
    with intake.smtp() as client:
        while time.monotonic() < deadline and not stop.is_set():
            recipient = "no@b.test" if sent % 10 == 9 else "b@b.test"
            client.sendmail("a@a.test", [recipient], MESSAGE)
            sent += 1
            time.sleep(0.1)
    return sent


@pytest.mark.skipif(PROMETHEUS is None,
                    reason="prometheus (Debian package prometheus) is not installed")
def test_dashboard_and_rules_on_a_real_prometheus(tmp_path: Path, spool: Spool,
                                                  sink: Sink) -> None:
    """Prometheus scrapes both programs each second while mail flows (one recipient in ten
    refused with 550, one RCPT refused by intake): each dashboard query returns data, the
    forwarded rate and the forward latency are positive, and the six alert rules are
    loaded and healthy."""
    assert PROMETHEUS is not None
    sink.behaviour.rcpt_replies["no@b.test"] = "550 5.1.1 no such user"
    intake_metrics, deliver_metrics, web = free_port(), free_port(), free_port()
    shutil.copy(DOCS / "prometheus" / "relay-rules.yml", tmp_path / "relay-rules.yml")
    (tmp_path / "prometheus.yml").write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        "rule_files:\n  - relay-rules.yml\n"
        "scrape_configs:\n"
        f"  - job_name: relay-intake\n    static_configs:\n"
        f"      - targets: ['127.0.0.1:{intake_metrics}']\n"
        f"  - job_name: relay-deliver\n    static_configs:\n"
        f"      - targets: ['127.0.0.1:{deliver_metrics}']\n")
    intake = IntakeProcess(spool.path, "--processes", "1", "--metrics",
                           f"127.0.0.1:{intake_metrics}")
    deliver = Deliver(spool, sink.address, "--metrics", f"127.0.0.1:{deliver_metrics}")
    prometheus = subprocess.Popen(
        [PROMETHEUS, f"--config.file={tmp_path / 'prometheus.yml'}",
         f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{web}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp_path)
    stop = threading.Event()
    try:
        wait_ready(web, prometheus)
        with intake.smtp() as client, pytest.raises(smtplib.SMTPRecipientsRefused):
            client.sendmail("a@a.test", ["<>"], MESSAGE)  # intake's rcpt_553
        sent = send_for(intake, 8.0, stop)
        refused = sent // 10
        wait_for_value(deliver_metrics, "relay_deliver_messages_forwarded_total",
                       sent - refused, timeout=30)
        time.sleep(3)  # three more scrapes of the final counts
        for title, expr in dashboard_expressions():
            result = api(web, "query", query=expr)["result"]
            assert isinstance(result, list) and result, f"{title}: {expr} returned nothing"
        forwarded = api(web, "query", query="sum(increase(relay_deliver_messages_forwarded_total"
                                            "[30s]))")["result"]
        assert isinstance(forwarded, list) and float(forwarded[0]["value"][1]) > 0
        p99 = api(web, "query", query="histogram_quantile(0.99, sum by (le) (rate("
                                      "relay_deliver_forward_seconds_bucket[30s])))")["result"]
        assert isinstance(p99, list) and 0 < float(p99[0]["value"][1]) < 10
        failed = api(web, "query", query="sum(relay_deliver_messages_failed_total)")["result"]
        assert isinstance(failed, list) and float(failed[0]["value"][1]) == refused
        groups = api(web, "rules")["groups"]
        assert isinstance(groups, list)
        rules = [rule for group in groups for rule in group["rules"]]
        assert len(rules) == 6
        assert all(rule["health"] == "ok" for rule in rules), rules
        up = api(web, "query", query="up")["result"]
        assert isinstance(up, list) and sorted(float(s["value"][1]) for s in up) == [1.0, 1.0]
    finally:
        stop.set()
        prometheus.terminate()
        prometheus.wait(30)
        deliver.stop()
        intake.stop()
