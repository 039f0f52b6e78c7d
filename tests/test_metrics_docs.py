"""The monitoring files in docs/: the alert rules pass `promtool check rules` and fire in
`promtool test rules`, the scrape config passes `promtool check config`, operations.md quotes
them verbatim, and every relay_* series the rules and the Grafana dashboard use exists."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from common.metrics import DeliverMetrics, IntakeMetrics

DOCS = Path(__file__).resolve().parents[1] / "docs"
PROMETHEUS = DOCS / "prometheus"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool (Debian package prometheus) is not installed; .ci/run"
    " installs it")


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=60,
                          cwd=PROMETHEUS, check=False)


@needs_promtool
def test_alert_rules_pass_promtool_check_rules() -> None:
    """promtool check rules accepts relay-rules.yml."""
    done = promtool("check", "rules", "relay-rules.yml")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS: 6 rules found" in done.stdout


@needs_promtool
def test_alert_rules_fire_on_their_series() -> None:
    """promtool test rules: queue age, smarthost down fire (and not before their time)."""
    done = promtool("test", "rules", "relay-rules.test.yml")
    assert done.returncode == 0, done.stdout + done.stderr


@needs_promtool
def test_scrape_config_passes_promtool_check_config() -> None:
    """promtool check config accepts the scrape configuration (with its rule file)."""
    done = promtool("check", "config", "prometheus.yml")
    assert done.returncode == 0, done.stdout + done.stderr


def test_operations_md_quotes_the_files_verbatim() -> None:
    """The rules and the scrape config in operations.md are the files, byte for byte."""
    text = (DOCS / "operations.md").read_text()
    for name in ("relay-rules.yml", "prometheus.yml"):
        assert f"```yaml\n{(PROMETHEUS / name).read_text()}```" in text, name


def exported_names() -> set[str]:
    """Every sample name relay's two registries export (counters with _total, histograms
    with _bucket, _sum, _count)."""
    names: set[str] = set()
    for metrics in (IntakeMetrics(), DeliverMetrics()):
        for family in metrics.registry.collect():
            names.add(family.name)
            names.update(sample.name for sample in family.samples)
            if family.type == "histogram":
                names.update(f"{family.name}_{end}" for end in ("bucket", "sum", "count"))
            if family.type == "counter":
                names.add(f"{family.name}_total")
    return names


def test_rules_and_dashboard_use_only_series_relay_exports() -> None:
    """No rule and no dashboard panel refers to a relay_* series that does not exist."""
    exported = exported_names()
    dashboard = json.loads((DOCS / "grafana" / "relay-dashboard.json").read_text())
    expressions = [target["expr"] for panel in dashboard["panels"]
                   for target in panel["targets"]]
    expressions.append((PROMETHEUS / "relay-rules.yml").read_text())
    used = {name for text in expressions for name in re.findall(r"\brelay_[a-z_]+", text)}
    assert len(used) >= 12
    assert used - exported == set()
